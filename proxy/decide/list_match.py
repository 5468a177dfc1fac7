"""Matching items against the lists: which rule decides, and how that stays fast with many rules.

What each kind matches:

- a file **hash**: a file query with that digest (MD5, SHA-1 or SHA-256);
- a **domain**: a domain query or a URL's host that is the domain or one of its
  subdomains (an IP literal matches that address only);
- a **URL prefix**: a URL whose canonical form without scheme starts with it
  (``example.test/shop`` matches ``http://example.test/shop/cart`` and ``/shopping``,
  never another host; ``example.test/`` is the whole site);
- a **keyword** or **regular expression**: a URL query whose canonical URL, scheme
  included, contains it (``proxy.decide.list_rules``); never a bare domain query.

Precedence, in this order:

1. Only rules that apply take part: an expired rule never matches, and a rule scoped to
   client networks applies only to a client in one of them (when the client is not
   known, as in ``lists test`` without ``--client``, only unscoped rules apply).
2. Any applying blocked rule beats every applying approved rule, whatever their kinds
   or specificity; both lists beat the pattern (``proxy.decide.engine``).
3. Within the list that wins, the rule reported as ``matched`` is the most specific: a
   hash (files); for a URL the longest URL prefix, then the longest domain, then the
   longest keyword, then the longest regular expression (ties: in text order).

Fast with many rules: hashes and domains are dict lookups (a domain's suffixes walked
from the longest), URL prefixes a dict per host probed once per distinct rule length,
and keywords and regular expressions are found by ``list_regex.PatternSet``: one
literal set of the text each expression requires, searched once per URL, confirming
only the expressions whose text is there. A URL asked again finds its rules in a bounded
memo (``ListSnapshot._memo``). A snapshot with no scoped and no expiring
rule (``plain``) skips the per-rule checks; ``tests/proxy/decide/test_list_precedence.py``
holds it equal to checking every rule by hand.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Sequence

from proxy.decide.list_regex import PatternSet
from proxy.decide.list_rules import PATTERN_KINDS, Entry, EntryKind, ListName
from proxy.wire import urls
from proxy.wire.ip_hosts import peer_address

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MEMO_URLS = 16_384  # URLs a snapshot remembers the matching rules of (then it starts again)
MEMO_URL_LENGTH = 512  # longer URLs are not remembered: at most 8 MB of URLs in all


client_ip = peer_address
"""A peer address as rules compare it (``proxy.wire.ip_hosts.peer_address``)."""


class _Prefixes:
    """One host's URL prefix rules: probed once per distinct rule length, longest first."""

    __slots__ = ("lengths", "rules")

    def __init__(self, rules: dict[str, Entry]) -> None:
        self.rules = rules
        self.lengths = (tuple(sorted({len(v) for v in rules}, reverse=True)) if len(rules) > 1
                        else tuple(map(len, rules)))

    def matching(self, target: str) -> list[Entry]:
        found = []
        size = len(target)
        rules = self.rules
        for n in self.lengths:
            if n <= size:
                e = rules.get(target[:n])
                if e is not None:
                    found.append(e)
        return found


_KIND_OF = {id(k): k for k in EntryKind}


def _hosts(domains: list[Entry], prefixes: list[Entry]) -> dict[str, tuple[Entry | None, _Prefixes | None]]:
    """Host name -> (its domain rule, its URL prefix rules): one probe of a URL's host finds both."""
    own: dict[str, Entry] = {e.value: e for e in domains}
    by_host: dict[str, dict[str, Entry]] = {}
    for e in prefixes:
        by_host.setdefault(e.value.partition("/")[0], {})[e.value] = e  # urls.host_of, for rules
    out: dict[str, tuple[Entry | None, _Prefixes | None]] = {name: (e, None) for name, e in own.items()}
    for host, rules in by_host.items():
        out[host] = (own.get(host), _Prefixes(rules))
    return out


def _specificity(e: Entry) -> tuple[int, int, str]:
    return (PATTERN_KINDS.index(e.kind), -len(e.value), e.value)


def compile_set(entries: Iterable[Entry]) -> tuple[PatternSet | None, tuple[Entry, ...]]:
    """Keyword and regex rules, most specific first, compiled together (``list_regex``);
    (None, ()) when there are none.

    Raises ListError when RE2 cannot compile them together (the store checks this
    before it commits a new expression, so a server never meets it).
    """
    ordered = tuple(sorted(entries, key=_specificity))
    return (PatternSet(ordered) if ordered else None), ordered


class ListSnapshot:
    """An immutable in-memory view of both lists, as of one moment (expired rules left out)."""

    __slots__ = ("_clock", "_counts", "_hashes", "_hosts", "_memo", "_plain", "_set", "_set_entries",
                 "expires_next", "scoped")

    def __init__(self, entries: Iterable[Entry] = (), *, now: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        now = clock() if now is None else now
        live = [e for e in entries if e.expires is None or e.expires > now]
        by_kind: dict[EntryKind, list[Entry]] = {k: [] for k in EntryKind}
        for e in live:  # by identity: hashing an Enum runs Python code, 100,000 times
            by_kind[_KIND_OF[id(e.kind)]].append(e)
        self._counts = {(ln.value, k.value): sum(1 for e in es if e.list is ln)
                        for k, es in by_kind.items() for ln in ListName}
        self._hashes = {e.value: e for e in by_kind[EntryKind.HASH]}
        self._hosts = _hosts(by_kind[EntryKind.DOMAIN], by_kind[EntryKind.URL])
        self._set, self._set_entries = compile_set(by_kind[EntryKind.KEYWORD] + by_kind[EntryKind.REGEX])
        self._clock = clock
        self.scoped = any(e.clients for e in live)
        """Some rule applies to some clients only: an answer depends on who asks."""
        self.expires_next = min((e.expires for e in live if e.expires is not None), default=None)
        """When the first rule in this snapshot expires (epoch seconds), or None."""
        self._plain = not self.scoped and self.expires_next is None
        self._memo: dict[str, tuple[Entry, ...]] = {}
        """Canonical URL -> the rules matching its text (``_url_candidates``), for URLs asked
        again: those rules depend on the text alone (who asks and when is ``_decide``'s), and
        this snapshot never changes. Bounded: MEMO_URLS URLs of MEMO_URL_LENGTH at most."""

    def __len__(self) -> int:
        return sum(self._counts.values())

    def count(self, name: ListName | None = None, kind: EntryKind | None = None) -> int:
        """How many live entries are on a list (or both), of a kind (or all kinds)."""
        return sum(n for (ln, k), n in self._counts.items()
                   if (name is None or ln == name.value) and (kind is None or k == kind.value))

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"blocked": {"hash": 3, "domain": 1, ...}, "approved": {...}}``."""
        return {ln.value: {k.value: self._counts.get((ln.value, k.value), 0) for k in EntryKind}
                for ln in ListName}

    def web_rules(self) -> list[tuple[str, str]]:
        """(kind, value) of every blocked domain and URL prefix rule for every client (not
        scoped): the Safe Browsing lists' share of the lists (``proxy.sb.prefixes``)."""
        out = []
        for domain, prefixes in self._hosts.values():
            rules = ([domain] if domain is not None else []) + (
                list(prefixes.rules.values()) if prefixes is not None else [])
            out += [(e.kind.value, e.value) for e in rules
                    if e.list is ListName.BLOCKED and not e.clients]
        return out

    # -- the engine's lookups

    def match_hexes(self, hexes: Iterable[str], client: str | None = None) -> dict[str, tuple[ListName, str]]:
        """Hash rules matching any of these lowercase hex digests (one set operation)."""
        if not self._hashes:
            return {}
        found = self._hashes.keys() & set(hexes)
        if not found:
            return {}
        rules = [self._hashes[h] for h in found]
        if not self._plain:
            rules = [e for e in rules if self.applies(e, client)]
        return {e.value: (e.list, e.value) for e in rules}

    def match_url(self, canonical_url: str, client: str | None = None,
                  host: str | None = None) -> tuple[ListName, str] | None:
        """The deciding rule for a canonical URL (module docstring: precedence). ``host``:
        its ``urls.host_of``, when the caller has it already (the engine's ``WebQuery``)."""
        memo = self._memo
        found = memo.get(canonical_url)
        if found is None:
            found = tuple(self._url_candidates(canonical_url, host))
            if len(canonical_url) <= MEMO_URL_LENGTH:
                if len(memo) >= MEMO_URLS:
                    memo.clear()
                memo[canonical_url] = found
        return self._decide(found, client) if found else None

    def match_domain(self, name: str, client: str | None = None) -> tuple[ListName, str] | None:
        """The deciding rule for a normalised domain name or IP text."""
        return self._decide(self._domain_candidates(name), client)

    # -- every match, for explaining a decision

    def url_entries(self, canonical_url: str, client: str | None = None) -> list[Entry]:
        """Every rule applying to the URL for this client, most specific first."""
        return [e for e in self._url_candidates(canonical_url) if self.applies(e, client)]

    def domain_entries(self, name: str, client: str | None = None) -> list[Entry]:
        """Every domain rule applying to ``name`` or one of its parents, most specific first."""
        return [e for e in self._domain_candidates(name) if self.applies(e, client)]

    def url_matches(self, canonical_url: str, client: str | None = None) -> list[tuple[Entry, str]]:
        """Every rule matching the URL's text, most specific first, with why it does not
        apply ("" when it does): ``expired`` or ``not for this client``."""
        return [(e, self.why_not(e, client)) for e in self._url_candidates(canonical_url)]

    def applies(self, e: Entry, client: str | None) -> bool:
        if e.expires is not None and e.expires <= self._clock():
            return False
        return not e.clients or e.applies_to(client_ip(client))

    def why_not(self, e: Entry, client: str | None) -> str:
        if e.expires is not None and e.expires <= self._clock():
            return "expired"
        if e.clients and not e.applies_to(client_ip(client)):
            return "not for this client" if client else "scoped to client networks (give a client)"
        return ""

    # -- internals

    def _decide(self, found: Sequence[Entry], client: str | None) -> tuple[ListName, str] | None:
        if not found:
            return None
        first = None
        plain = self._plain
        for e in found:
            if plain or self.applies(e, client):
                if e.list is ListName.BLOCKED:
                    return e.list, e.value
                if first is None:
                    first = e
        return None if first is None else (first.list, first.value)

    def _url_candidates(self, canonical_url: str, host: str | None = None) -> list[Entry]:
        """Every rule matching the URL's text, most specific first.

        Shaped for the common case, a URL no rule matches, at 100,000 rules: one probe
        for the host (its domain rule and its URL prefixes together), one per parent
        domain, one search of the keyword and regex literals; the scheme-less text is
        cut only for a host that has URL prefix rules."""
        found: list[Entry] = []
        hosts = self._hosts
        if hosts:
            if host is None:
                host = urls.host_of(canonical_url)
            own = hosts.get(host)
            if own is not None and own[1] is not None:
                found = own[1].matching(urls.strip_scheme(canonical_url))
            if host[:1] == "[":  # IPv6: its domain rule is kept without brackets
                own = hosts.get(host[1:-1])
                if own is not None and own[0] is not None:
                    found.append(own[0])
            else:
                if own is not None and own[0] is not None:
                    found.append(own[0])
                self._parents(host, found)
        if self._set is not None:
            hits = self._set.match(canonical_url.encode())
            if hits:
                entries = self._set_entries
                found += [entries[i] for i in hits]  # in order: most specific first
        return found

    def _domain_candidates(self, name: str) -> list[Entry]:
        if not self._hosts:
            return []
        name = name.lower().rstrip(".")
        own = self._hosts.get(name)
        found = [] if own is None or own[0] is None else [own[0]]
        self._parents(name, found)
        return found

    def _parents(self, name: str, found: list[Entry]) -> None:
        """Append the domain rules of each parent of ``name`` with two labels or more, longest
        first (``urls.domain_suffixes`` without the list); an IP address has no parents."""
        if name[-1:].isdigit() and urls.parse_ip(name) is not None:
            return
        hosts = self._hosts
        rest = name.partition(".")[2]
        while "." in rest:  # partition, not find and slice: half the work per parent
            own = hosts.get(rest)
            if own is not None and own[0] is not None:
                found.append(own[0])
            rest = rest.partition(".")[2]
