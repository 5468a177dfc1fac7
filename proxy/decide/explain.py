"""Why a URL gets the answer it gets: every list rule and pattern entry that matches, and the winner.

``rampart lists test URL [--client ADDR]`` prints this for administrators (and the
console shows it). The decision itself comes from the engine (the same code that
answers products), so the explanation cannot drift from what the appliance really
does. Each matching rule says its part: it decides, it also matches (and why it lost),
or it does not apply (expired, or scoped to other client networks; without a client
only unscoped rules apply, as for a request whose client is unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.decide.cache import AnswerCache
from proxy.decide.engine import Engine
from proxy.decide.list_match import ListSnapshot
from proxy.decide.list_rules import Entry, ListName, clients_text, iso_time
from proxy.model import WebAnswer
from proxy.patterns.pattern import PatternSet, WebHit
from proxy.wire import protocol, urls


class _NoStats:
    def count_items(self, service: Any, sources: Any) -> None:
        pass

    def count_item(self, service: Any, source: Any) -> None:
        pass


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """One rule whose text matches the URL, and its part in the decision."""

    entry: Entry
    part: str  # "decides", "also matches: ...", or why it does not apply

    def line(self) -> str:
        e = self.entry
        scope = [f"clients {clients_text(e.clients)}"] if e.clients else []
        if e.expires is not None:
            scope.append(f"expires {iso_time(e.expires)}")
        shown = f"{e.list.value:<8} {e.kind.value:<7} {e.value}"
        return shown + (f"  [{'; '.join(scope)}]" if scope else "") + f"  <- {self.part}"


@dataclass(frozen=True, slots=True)
class Explanation:
    url: str
    canonical: str
    expressions: tuple[str, ...]
    rules: tuple[tuple[str, str, str], ...]  # (list, kind, value) applying to the client, most specific first
    pattern_hits: tuple[tuple[str, WebHit], ...]  # (matched expression, domain or range)
    decision: WebAnswer | None  # None: not decided locally (the cache or the cloud answers)
    client: str | None = None
    matches: tuple[RuleMatch, ...] = ()  # every rule matching the URL's text, most specific first

    def lines(self) -> list[str]:
        out = [f"url        {self.url}", f"canonical  {self.canonical}",
               f"client     {self.client}" if self.client else
               "client     not given: rules scoped to client networks do not apply (--client ADDR)"]
        if self.matches:
            for i, m in enumerate(self.matches):
                out.append(f"{'list' if i == 0 else '':<10} {m.line()}")
        else:
            out.append("list       no approved or blocked rule matches")
        if self.pattern_hits:
            for i, (matched, hit) in enumerate(self.pattern_hits):
                out.append(
                    f"{'pattern' if i == 0 else '':<10} {hit.rating.value:<17} {hit.score:>3} "
                    f"{hit.category or '-':<12} {matched}  ({hit.pattern})"
                )
        else:
            out.append("pattern    no pattern entry matches")
        d = self.decision
        if d is None:
            out.append("decision   not decided here: the cache or the cloud answers (with no"
                       " cloud configured: untested, source local)")
        else:
            why = {
                "blocked-list": "a blocked rule wins over everything",
                "approved-list": "an approved rule wins over the pattern",
                "pattern": "the most severe pattern entry (the most specific on a tie)",
            }.get(d.source.value, "")
            out.append(f"decision   {d.rating.value} from {d.source.value}"
                       f"{f' ({d.matched})' if d.matched else ''}: {why}")
        return out


def explain_url(url: str, lists: ListSnapshot, patterns: PatternSet,
                client: str | None = None) -> Explanation:
    """How the engine answers ``url`` for a client at address ``client`` (None: unknown).

    Raises ProtocolError for a URL the query door would refuse, with the same message.
    """
    q = protocol.parse_url(url, protocol.Limits())
    expressions = urls.expressions(q.canonical)
    engine = Engine(patterns=patterns, lists=lists, cache=AnswerCache(0), relay=None,
                    stats=_NoStats())
    hits: list[tuple[str, WebHit]] = []
    for expression in expressions:
        found = patterns.lookup_url([expression])
        if found is not None:
            hits.append(found)
    host = q.host[1:-1] if q.host.startswith("[") else q.host
    ip = urls.parse_ip(host)
    found = patterns.lookup_ip(ip) if ip is not None else patterns.lookup_domain(host)
    if found is not None:
        hits.append(found)
    decision = engine.web_local_one(q, client)
    return Explanation(
        url=url,
        canonical=q.canonical,
        expressions=tuple(expressions),
        rules=tuple((e.list.value, e.kind.value, e.value) for e in lists.url_entries(q.canonical, client)),
        pattern_hits=tuple(hits),
        decision=decision,
        client=client,
        matches=_parts(lists.url_matches(q.canonical, client), decision),
    )


def _parts(found: list[tuple[Entry, str]], decision: WebAnswer | None) -> tuple[RuleMatch, ...]:
    """Each matching rule's part: the decider is the first applying rule of the deciding list
    with the value the engine reported (the snapshot orders the rules as it decides)."""
    winner = None
    if decision is not None and decision.source.value in ("blocked-list", "approved-list"):
        name = ListName.BLOCKED if decision.source.value == "blocked-list" else ListName.APPROVED
        winner = next((e for e, why in found if not why and e.list is name and e.value == decision.matched),
                      None)
    out = []
    for e, why in found:
        if why:
            part = f"does not apply: {why}"
        elif e is winner:
            part = "decides"
        elif winner is not None and winner.list is not e.list:
            part = "also matches; a blocked rule wins over every approved rule"
        else:
            part = "also matches; the most specific rule of its list is the one reported"
        out.append(RuleMatch(e, part))
    return tuple(out)
