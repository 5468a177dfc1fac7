"""Values that flow through Rampart: services, verdicts, ratings, queries, answers, and
the network values the config names (an address in every form the resolver reads, an
allowed destination).

Everything is a frozen, slotted dataclass or an enum. The protocol module turns
JSON into these and back; the engine only ever sees these.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from dataclasses import dataclass

PROTOCOL_VERSION = 1

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Enum(enum.Enum):
    """Enum members are singletons: hash by identity (C speed) instead of Enum's Python-level
    ``hash(self._name_)``; the request path hashes verdicts, sources and kinds per item."""

    __hash__ = object.__hash__


class Service(_Enum):
    FILE = "file"
    WEB = "web"
    DOMAIN = "domain"
    INSPECT = "inspect"


class Verdict(_Enum):
    MALICIOUS = "malicious"
    SUSPICIOUS = "suspicious"
    CLEAN = "clean"
    UNKNOWN = "unknown"


class Rating(_Enum):
    """Web and domain/IP ratings, most severe first (``severity`` 4 … 0)."""

    DANGEROUS = "dangerous"
    HIGHLY_SUSPICIOUS = "highly_suspicious"
    SUSPICIOUS = "suspicious"
    SAFE = "safe"
    UNTESTED = "untested"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @property
    def default_score(self) -> int:
        return _DEFAULT_SCORE[self]


_SEVERITY = {
    Rating.DANGEROUS: 4,
    Rating.HIGHLY_SUSPICIOUS: 3,
    Rating.SUSPICIOUS: 2,
    Rating.UNTESTED: 1,
    Rating.SAFE: 0,
}
# Scores are "how bad": 0 is certainly safe, 100 certainly dangerous.
_DEFAULT_SCORE = {
    Rating.DANGEROUS: 95,
    Rating.HIGHLY_SUSPICIOUS: 75,
    Rating.SUSPICIOUS: 55,
    Rating.UNTESTED: 50,
    Rating.SAFE: 5,
}


class Source(_Enum):
    """Where an answer came from (docs/protocol.md, "Sources"). ``LOCAL``: nothing local knew
    the item and no cloud is configured, so none was asked; the answer is final for its TTL."""

    BLOCKED_LIST = "blocked-list"
    APPROVED_LIST = "approved-list"
    PATTERN = "pattern"
    CACHE = "cache"
    CLOUD = "cloud"
    DEGRADED = "degraded"
    LOCAL = "local"


class Policy(_Enum):
    """Web policy level: which ratings are blocked."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    def blocks(self, rating: Rating) -> bool:
        return rating in _BLOCKED_BY[self]


_BLOCKED_BY = {
    Policy.LOW: frozenset({Rating.DANGEROUS}),
    Policy.MEDIUM: frozenset({Rating.DANGEROUS, Rating.HIGHLY_SUSPICIOUS}),
    Policy.HIGH: frozenset(
        {Rating.DANGEROUS, Rating.HIGHLY_SUSPICIOUS, Rating.SUSPICIOUS, Rating.UNTESTED}
    ),
}


class HashKind(_Enum):
    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"

    @property
    def size(self) -> int:
        """Digest length in bytes."""
        return _HASH_SIZE[self]

    @classmethod
    def from_hex_length(cls, n: int) -> HashKind | None:
        return _HASH_BY_HEXLEN.get(n)


_HASH_SIZE = {HashKind.MD5: 16, HashKind.SHA1: 20, HashKind.SHA256: 32}
_HASH_BY_HEXLEN = {32: HashKind.MD5, 40: HashKind.SHA1, 64: HashKind.SHA256}


# ---------------------------------------------------------------- queries


@dataclass(frozen=True, slots=True)
class FileQuery:
    kind: HashKind
    digest: bytes  # raw bytes, len == kind.size

    @property
    def hex(self) -> str:
        return self.digest.hex()


@dataclass(frozen=True, slots=True)
class WebQuery:
    url: str  # as the client sent it (echoed back)
    canonical: str  # canonical form, see proxy.wire.urls
    host: str  # canonical host, no port


@dataclass(frozen=True, slots=True)
class DomainQuery:
    item: str  # as the client sent it (echoed back)
    name: str  # normalised: lower-case domain without trailing dot, or compressed IP text
    ip: Address | None = None

    @property
    def key(self) -> str:
        return "ip" if self.ip is not None else "domain"


@dataclass(frozen=True, slots=True)
class InspectQuery:
    url: str
    digest: str  # hex SHA-256 of the canonical request body: the cache key
    body: bytes  # the original JSON item, relayed as is


# ---------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class FileAnswer:
    verdict: Verdict
    source: Source
    threat: str | None = None
    ttl: int | None = None
    retry_after: int | None = None
    matched: str | None = None  # which list entry or pattern decided


@dataclass(frozen=True, slots=True)
class WebAnswer:
    """Answer for a URL, a domain or an IP."""

    rating: Rating
    source: Source
    score: int = 50
    category: str | None = None
    ttl: int | None = None
    retry_after: int | None = None
    matched: str | None = None


@dataclass(frozen=True, slots=True)
class InspectAnswer:
    result: bytes  # the cloud's JSON result object, verbatim
    source: Source
    ttl: int | None = None
    retry_after: int | None = None


# ---------------------------------------------------------------- network values

HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")  # one label of a host name
_LEGACY_IPV4 = re.compile(r"(?i)[0-9a-fx.]{1,64}")


def literal(host: str) -> Address | None:
    """The address ``host`` names as an IP literal, in every form the system resolver takes.

    Besides the usual forms that means ``[v6]`` brackets, a ``%zone`` suffix,
    IPv4-mapped IPv6 (read as the IPv4 address it reaches) and the legacy IPv4
    forms ``inet_aton`` accepts: decimal (``2130706433``), octal (``0177.0.0.1``),
    hex (``0x7f.1``) and short (``127.1``). None: a name, to be resolved.
    """
    h = host.strip().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    h = h.split("%", 1)[0]
    try:
        ip: Address = ipaddress.ip_address(h)
    except ValueError:
        if not _LEGACY_IPV4.fullmatch(h):
            return None
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(h))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class Allowed:
    """One allowed destination of the intercept door (``intercept_allow_destinations``, a
    cloud endpoint): a name or a network, on one port or (None) any."""

    name: str | None
    network: Network | None
    port: int | None

    @classmethod
    def parse(cls, entry: str) -> Allowed:
        """``HOST[:PORT]``, ``[V6]:PORT``, an address or a network (CIDR, any port)."""
        text = entry.strip()
        if "/" in text:
            return cls(None, ipaddress.ip_network(text, strict=False), None)
        host, port = text, None
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"bad destination {entry!r}")
            port = _port(rest[1:], entry) if rest else None
        elif text.count(":") == 1:
            host, _, digits = text.partition(":")
            port = _port(digits, entry)
        ip = literal(host) if host else None
        if ip is not None:
            return cls(None, ipaddress.ip_network(ip), port)
        name = host.lower().rstrip(".")
        if not name or len(name) > 253 or not all(HOST_LABEL.fullmatch(x) for x in name.split(".")):
            raise ValueError(f"bad destination {entry!r}")
        return cls(name, None, port)

    def names(self, host: str, port: int) -> bool:
        return self.name is not None and self.name == host and self.port in (None, port)

    def covers(self, ip: Address, port: int, *, own_port: bool) -> bool:
        if self.network is None or ip.version != self.network.version or ip not in self.network:
            return False
        return self.port == port if own_port else self.port in (None, port)


def _port(digits: str, entry: str) -> int:
    if not digits.isdigit() or not 0 < int(digits) < 65536:
        raise ValueError(f"bad port in destination {entry!r}")
    return int(digits)
