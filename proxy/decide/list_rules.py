"""What one approved/blocked rule is, and how each of its fields is read and checked.

A rule (``Entry``) is a kind and a value on one list, with optional client networks it
applies to, an optional expiry, a note, who added it, from where and when. Every field
that comes from a person or a file is checked here, so the store, the importer and the
console refuse the same things with the same words:

- ``classify``: the value of a kind, normalised (a kind told from the form for hashes,
  domains and URL prefixes; keywords and regular expressions are always named);
- ``parse_clients``: CIDR networks (a bare address is its /32 or /128);
- ``parse_expiry``: a duration (``30m``, ``12h``, ``7d``, ``2w``) or an ISO-8601 time;
- ``check_text``: a note or a name, one bounded line.

Keywords and regular expressions are matched against a URL's canonical form with its
scheme (``http://www.example.test/path?q=1``): a keyword anywhere in it, whatever the
case; a regular expression in RE2 syntax (no backreferences or lookaround, so every
match takes linear time), searched, case-sensitive unless it says ``(?i)``.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import re2  # type: ignore[import-untyped,unused-ignore]

from proxy.clock import parse_iso
from proxy.errors import ListError, UrlError
from proxy.model import Network
from proxy.wire import urls

MAX_VALUE_LENGTH = 2048
MAX_NOTE_LENGTH = 1024
MAX_NAME_LENGTH = 128  # who added a rule, and from where
MAX_CLIENTS = 64  # networks one rule is scoped to
MIN_KEYWORD_LENGTH = 3  # shorter would match almost every URL
MAX_REGEX_PROGRAM = 5_000  # RE2 program size of one expression (a plain 1,000-character one is ~1,000)
MAX_EXPIRY_SECONDS = 100 * 365 * 86400

_HEX = frozenset(string.hexdigits)
_HASH_LENGTHS = (32, 40, 64)  # MD5, SHA-1, SHA-256
_MIN_HASHLIKE = 20  # this many hex digits and no dot: a hash with digits missing, not a name
_CIDR = re.compile(r"[0-9A-Fa-f.:\[\]]+/[0-9]{1,3}")  # 10.0.0.0/8, 2001:db8::/32
_DURATION = re.compile(r"([1-9][0-9]{0,9})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class ListName(enum.Enum):
    BLOCKED = "blocked"
    APPROVED = "approved"


class EntryKind(enum.Enum):
    HASH = "hash"
    DOMAIN = "domain"
    URL = "url"
    KEYWORD = "keyword"
    REGEX = "regex"


PATTERN_KINDS = (EntryKind.KEYWORD, EntryKind.REGEX)  # matched by one compiled RE2 set


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change and from where (``"cli"``, a console client's address)."""

    who: str
    origin: str

    def __post_init__(self) -> None:
        check_text(self.who, "who", MAX_NAME_LENGTH)
        check_text(self.origin, "origin", MAX_NAME_LENGTH)


@dataclass(frozen=True, slots=True)
class Entry:
    """One rule. ``clients`` empty: every client; ``expires`` None: never (epoch seconds)."""

    list: ListName
    kind: EntryKind
    value: str
    note: str = ""
    created: float = 0.0
    clients: tuple[Network, ...] = ()
    expires: float | None = None
    added_by: str = ""
    origin: str = ""

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now

    def applies_to(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        """Whether the rule is for this client (None: unknown, so only unscoped rules are)."""
        if not self.clients:
            return True
        return ip is not None and any(ip.version == n.version and ip in n for n in self.clients)

    def same_rule(self, other: Entry) -> bool:
        """Same list, scope, expiry and note: storing ``other`` over this would change nothing."""
        return (self.list, self.clients, self.expires, self.note) == (
            other.list, other.clients, other.expires, other.note)


# ---------------------------------------------------------------- values


def classify(value: str, kind: EntryKind | None = None) -> tuple[EntryKind, str]:
    """Tell an entry's kind from its form (or check it against ``kind``) and normalise it.

    A 32/40/64-character hex string is a hash (lower case); anything with a
    scheme, a ``/`` or a ``?`` is a URL prefix (``urls.normalize_expression``);
    everything else is a domain or an IP (``urls.normalize_domain``). Keywords and
    regular expressions are never guessed: ``kind`` must name them.
    A guessed kind is also checked for the usual slips (``_doubt``): a mistyped hash
    or an IP range would otherwise be stored as a rule that never matches, so it is
    refused with a hint; a given ``kind`` insists and skips that check.
    Raises ``ListError`` naming the value and why it was refused.
    """
    text = value.strip()
    shown = text if len(text) <= 80 else text[:80] + "…"
    if not text:
        raise ListError("empty list value")
    if len(text) > MAX_VALUE_LENGTH:
        raise ListError(f"{shown!r}: longer than {MAX_VALUE_LENGTH} characters")
    if kind is None:
        kind = _guess_kind(text)
        doubt = _doubt(text, kind)
        if doubt:
            raise ListError(f"{shown!r} {doubt}")
    try:
        normal = _NORMALIZE[kind](text)
    except (UrlError, ValueError) as e:
        raise ListError(f"{shown!r} is not a valid {kind.value}: {e}") from None
    if len(normal) > MAX_VALUE_LENGTH:  # percent-escaping can lengthen a URL
        raise ListError(f"{shown!r}: longer than {MAX_VALUE_LENGTH} characters once normalised")
    return kind, normal


def _guess_kind(text: str) -> EntryKind:
    if len(text) in _HASH_LENGTHS and all(c in _HEX for c in text):
        return EntryKind.HASH
    if "/" in text or "?" in text or "://" in text:
        return EntryKind.URL
    return EntryKind.DOMAIN


def _doubt(text: str, kind: EntryKind) -> str | None:
    """Why a value of a guessed kind is probably a slip, with the fix; None if it looks right.

    Each of these would be stored as a rule that never matches what was meant: a
    digest with a digit missing as a domain, ``12345`` or ``10.1.1`` as a domain
    (a URL host of that form is read as an IP address, so no query names it), an
    IP range as a URL prefix with the path ``/8``.
    """
    if kind is EntryKind.DOMAIN:
        if len(text) >= _MIN_HASHLIKE and all(c in _HEX for c in text):
            return (f"looks like a mistyped file hash: {len(text)} hex digits, but MD5, SHA-1 and "
                    "SHA-256 have 32, 40 and 64; check it, or add --kind domain if it is a name")
        last = text.rstrip(".").rpartition(".")[2]
        if last.isdigit() and urls.parse_ip(text.rstrip(".")) is None:
            return ("is neither a host name (its last label is a number) nor an IP address; "
                    "write an IPv4 address as four decimal numbers (192.0.2.7), "
                    "or add --kind domain to store it as a name anyway")
    elif kind is EntryKind.URL and _CIDR.fullmatch(text):
        address = text.partition("/")[0]
        if urls.parse_ip(address) is not None:
            return (f"is an IP range; lists hold single addresses, not ranges: add each address "
                    f"({address}, ...), or write a URL prefix with its scheme (http://{text})")
    return None


def _normalize_url(text: str) -> str:
    """A URL prefix rule, refused when its host is one the query door refuses (it could never match)."""
    normal = urls.normalize_expression(text)
    urls.check_host(urls.host_of(normal))
    return normal


def _normalize_hash(text: str) -> str:
    if len(text) not in _HASH_LENGTHS:
        raise ValueError(f"{len(text)} characters; MD5, SHA-1 and SHA-256 have 32, 40 or 64")
    if not all(c in _HEX for c in text):
        raise ValueError("not hexadecimal")
    return text.lower()


def _normalize_keyword(text: str) -> str:
    """Lower case, escaped as canonical URLs escape (so ``ü`` is ``%c3%bc``, ``%`` is ``%25``)."""
    if len(text) < MIN_KEYWORD_LENGTH:
        raise ValueError(f"shorter than {MIN_KEYWORD_LENGTH} characters, it would match almost every URL")
    out = []
    for c in text.lower():
        if 0x20 < ord(c) < 0x7F and c not in "#%":
            out.append(c)
        elif c.isspace():
            raise ValueError("a URL holds no spaces; write one word, or a regex")
        else:
            out.extend(f"%{b:02x}" for b in c.encode("utf-8"))
    return "".join(out)


def regex_options() -> object:
    """RE2 options for list expressions: UTF-8, errors returned rather than printed."""
    options = re2.Options()
    options.log_errors = False
    return options


def _check_regex(text: str) -> str:
    try:
        compiled = re2.compile(text, options=regex_options())
    except re2.error as e:
        why = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(f"{why} (RE2 syntax: no backreferences or lookaround)") from None
    if compiled.programsize > MAX_REGEX_PROGRAM:
        raise ValueError(f"too complex (program size {compiled.programsize}, at most {MAX_REGEX_PROGRAM})")
    if compiled.search("") is not None:
        raise ValueError("it matches the empty text, so it would match every URL")
    return text


_NORMALIZE = {
    EntryKind.HASH: _normalize_hash,
    EntryKind.URL: _normalize_url,
    EntryKind.DOMAIN: urls.normalize_domain,
    EntryKind.KEYWORD: _normalize_keyword,
    EntryKind.REGEX: _check_regex,
}


# ---------------------------------------------------------------- scope, expiry, text


def parse_network(text: str) -> Network:
    """One client network: ``10.0.0.0/8``, ``2001:db8::/32``, or an address (its /32 or /128)."""
    t = text.strip()
    try:
        return ipaddress.ip_network(t)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(t, strict=False)
    except ValueError:
        raise ListError(f"client network {t[:80]!r} is not an IP address or CIDR network "
                        "(e.g. 10.0.0.0/8, 192.0.2.7, 2001:db8::/32)") from None
    raise ListError(f"client network {t!r} has host bits set; did you mean {loose}?")


def parse_clients(texts: Iterable[str]) -> tuple[Network, ...]:
    """Client networks, each once, in a stable order (so equal scopes compare equal)."""
    nets: set[Network] = set()
    for text in texts:
        nets.add(parse_network(text))
        if len(nets) > MAX_CLIENTS:
            raise ListError(f"more than {MAX_CLIENTS} client networks for one rule")
    return tuple(sorted(nets, key=lambda n: (n.version, n.network_address, n.prefixlen)))


def clients_text(clients: Iterable[Network]) -> str:
    """Networks as one space-separated text (the store's and CSV's form)."""
    return " ".join(str(n) for n in clients)


def parse_expiry(text: str, now: float, *, past_ok: bool = False) -> float:
    """A duration from ``now`` (``30m``, ``12h``, ``7d``, ``2w``) or an ISO-8601 time, as epoch seconds.

    A time already past is refused unless ``past_ok`` (an exported rule that has expired
    since is still imported, as expired).
    """
    t = text.strip()
    m = _DURATION.fullmatch(t)
    if m:
        seconds = int(m[1]) * _UNITS[m[2]]
        if seconds > MAX_EXPIRY_SECONDS:
            raise ListError(f"expiry {t!r} is more than 100 years away")
        return now + seconds
    try:
        when = parse_iso(t).timestamp()
    except (ValueError, OverflowError):
        raise ListError(f"expiry {t[:80]!r} is neither a duration (30m, 12h, 7d, 2w) nor an "
                        "ISO-8601 time (2026-03-01T12:00:00Z)") from None
    if when > now + MAX_EXPIRY_SECONDS:
        raise ListError(f"expiry {t!r} is more than 100 years away")
    if when <= now and not past_ok:
        raise ListError(f"expiry {t!r} is already past")
    return when


def iso_time(epoch: float) -> str:
    """Epoch seconds as ``2026-03-01T12:00:00Z`` (to the second: what listings and exports show)."""
    return datetime.fromtimestamp(int(epoch), UTC).isoformat().replace("+00:00", "Z")


def check_text(text: str, field: str, limit: int) -> str:
    """A note or a name: text, one line, at most ``limit`` characters."""
    if not isinstance(text, str):
        raise ListError(f"{field} must be text")
    if len(text) > limit:
        raise ListError(f"{field} longer than {limit} characters")
    if any(c in text for c in "\r\n\x00"):
        raise ListError(f"{field} must be one line of text")
    return text
