"""Values that flow through Rampart: services, verdicts, ratings, queries, answers.

Everything is a frozen, slotted dataclass or an enum. The protocol module turns
JSON into these and back; the engine only ever sees these.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

PROTOCOL_VERSION = 1


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
    BLOCKED_LIST = "blocked-list"
    APPROVED_LIST = "approved-list"
    PATTERN = "pattern"
    CACHE = "cache"
    CLOUD = "cloud"
    DEGRADED = "degraded"


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
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

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
