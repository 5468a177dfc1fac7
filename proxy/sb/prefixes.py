"""The threat lists as Safe Browsing v4 clients keep them: full hashes, prefixes, checksums,
Rice-Golomb encoding and the difference between two versions.

Where the full hashes come from (the pattern's web tables are keyed by the SHA-256 of a URL
expression, ``proxy.wire.urls.expressions``/``digest``, exactly the v4 full hash):

========================================  =========================  ====================
source entry                              category                   threat list
========================================  =========================  ====================
Web Blocking List, dangerous or           phishing, social-          SOCIAL_ENGINEERING
highly_suspicious                         engineering, fraud, scam
the same                                  unwanted, adware, pua,     UNWANTED_SOFTWARE
                                          potentially-unwanted,
                                          grayware
the same                                  any other (malware, ...)   MALWARE
administrator's blocked domain (as        (blocked-by-administrator) MALWARE
``name/``) or URL prefix rule (its
expression), for every client (unscoped)
suspicious, safe, untested entries;       -                          not listed
approved rules; keyword and regex rules
========================================  =========================  ====================

Every list is ``ANY_PLATFORM``/``URL``. A prefix is the first 4 bytes of a full hash, longer
where two full hashes of the list share their first 4 bytes (until it is unique, at most 32).
The checksum is the SHA-256 of the list's prefixes sorted and concatenated, as clients verify it.

``PrefixCache.current(engine)`` computes the ``PrefixSet`` of a pattern version and list
snapshot once and shares it; it keeps the last few so a client's state from one of them gets
a partial update (``diff``), computed once per pair too.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from proxy.model import Rating
from proxy.patterns.layout import STRINGS_FILE, SUSPICIOUS_URLS_TABLE, WEB_BLOCKING_TABLE
from proxy.patterns.pattern import RATING_CODES, PatternSet, load_strings

THREAT_TYPES = ("MALWARE", "SOCIAL_ENGINEERING", "UNWANTED_SOFTWARE")
PHISHING_CATEGORIES = frozenset({"phishing", "social-engineering", "fraud", "scam"})
UNWANTED_CATEGORIES = frozenset({"unwanted", "adware", "pua", "potentially-unwanted", "grayware"})
LISTED_RATINGS = (Rating.DANGEROUS, Rating.HIGHLY_SUSPICIOUS)
PREFIX_SIZE = 4
HASH_SIZE = 32
KEEP_SETS = 4  # prefix sets remembered for partial updates

logger = logging.getLogger(__name__)
MIN_RICE, MAX_RICE = 2, 28


def threat_type(rating: Rating, category: str | None) -> str | None:
    """The threat list of an entry with this rating and category (the module's table)."""
    if rating not in LISTED_RATINGS:
        return None
    if category in PHISHING_CATEGORIES:
        return "SOCIAL_ENGINEERING"
    if category in UNWANTED_CATEGORIES:
        return "UNWANTED_SOFTWARE"
    return "MALWARE"


def rule_expression(kind: str, value: str) -> str:
    """The URL expression of a blocked domain (``name/``) or URL prefix rule (itself)."""
    if kind == "domain":
        return f"[{value}]/" if ":" in value else f"{value}/"
    return value


def prefix_sizes(blob: bytes) -> npt.NDArray[np.uint8]:
    """Prefix sizes of sorted, distinct full hashes laid end to end: 4, more until each is
    unique among them (the first byte after the longest prefix it shares with a neighbour)."""
    n = len(blob) // HASH_SIZE
    size = np.full(n, PREFIX_SIZE, dtype=np.int64)
    if n > 1:
        h = np.frombuffer(blob, dtype=np.uint8).reshape(n, HASH_SIZE)
        lcp = np.argmax(h[1:] != h[:-1], axis=1) + 1  # 1 + common prefix of each neighbour pair
        np.maximum(size[1:], lcp, out=size[1:])
        np.maximum(size[:-1], lcp, out=size[:-1])
    return np.minimum(size, HASH_SIZE).astype(np.uint8)


def prefixes_of(hashes: Sequence[bytes]) -> list[bytes]:
    """Prefixes of sorted, distinct full hashes: 4 bytes, longer until unique among them."""
    blob = b"".join(hashes)
    return _cut(blob, prefix_sizes(blob))


def _cut(blob: bytes, sizes: npt.NDArray[np.uint8]) -> list[bytes]:
    if not (sizes > PREFIX_SIZE).any():
        return [blob[i:i + PREFIX_SIZE] for i in range(0, len(blob), HASH_SIZE)]
    return [blob[i * HASH_SIZE:i * HASH_SIZE + s] for i, s in enumerate(sizes.tolist())]


def checksum(prefixes: Iterable[bytes]) -> bytes:
    """SHA-256 over the sorted prefixes, concatenated."""
    return hashlib.sha256(b"".join(sorted(prefixes))).digest()


class ThreatList:
    """One list: its sorted, distinct full hashes kept end to end (32 bytes each, and one
    byte for each one's prefix size: about 33 MB a million), its prefixes made on demand."""

    __slots__ = ("_keys", "blob", "checksum", "sizes", "threat_type")

    def __init__(self, threat_type: str, blob: bytes, sizes: npt.NDArray[np.uint8],
                 checksum: bytes) -> None:
        self.threat_type = threat_type
        self.blob = blob
        self.sizes = sizes
        self.checksum = checksum
        self._keys = np.frombuffer(blob, dtype=f"S{HASH_SIZE}")

    @classmethod
    def of(cls, threat: str, hashes: Iterable[bytes]) -> ThreatList:
        blob = b"".join(sorted(set(hashes)))
        sizes = prefix_sizes(blob)
        return cls(threat, blob, sizes, hashlib.sha256(b"".join(_cut(blob, sizes))).digest())

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def hashes(self) -> list[bytes]:
        """The full hashes, sorted (a new list each time)."""
        blob = self.blob
        return [blob[i:i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]

    @property
    def prefixes(self) -> list[bytes]:
        """The prefixes, sorted, one per full hash (a new list each time)."""
        return _cut(self.blob, self.sizes)

    def full_hashes(self, prefix: bytes) -> list[bytes]:
        """Every full hash starting with ``prefix``."""
        # numpy pads the prefix with NULs: the first full hash >= the prefix, as bytes order it
        at = int(np.searchsorted(self._keys, prefix))
        out = []
        blob = self.blob
        while at < len(self.sizes):
            full = blob[at * HASH_SIZE:(at + 1) * HASH_SIZE]
            if not full.startswith(prefix):
                break
            out.append(full)
            at += 1
        return out


@dataclass(frozen=True, slots=True)
class PrefixSet:
    """Every threat list of one pattern version and list snapshot."""

    version: str
    id: bytes  # 12 bytes naming the content: the same lists give the same id
    lists: dict[str, ThreatList]

    @property
    def state(self) -> bytes:
        """The client state naming this set: ``rampart:VERSION:ID-HEX``."""
        return b"rampart:" + self.version.encode() + b":" + self.id.hex().encode()

    @classmethod
    def of(cls, version: str, hashes: Mapping[str, Iterable[bytes]]) -> PrefixSet:
        lists = {t: ThreatList.of(t, hashes.get(t, ())) for t in THREAT_TYPES}
        ident = hashlib.sha256(b"".join(t.encode() + lst.checksum for t, lst in lists.items())).digest()
        return cls(version, ident[:12], lists)


def state_id(state: bytes) -> bytes | None:
    """The set id a client state names, or None for a state this server never made."""
    head, _, rest = state.partition(b":")
    _, _, hexid = rest.rpartition(b":")
    if head != b"rampart" or len(hexid) != 24:
        return None
    try:
        return bytes.fromhex(hexid.decode("ascii"))
    except ValueError:
        return None


def pattern_hashes(patterns: PatternSet) -> dict[str, list[bytes]]:
    """The full hashes of each threat list in the pattern's web tables."""
    _, categories = load_strings(patterns.directory / STRINGS_FILE)
    out: dict[str, list[bytes]] = {t: [] for t in THREAT_TYPES}
    # (rating code, category id) -> index into THREAT_TYPES, or -1
    index = np.full((max(RATING_CODES.values()) + 1, len(categories) + 1), -1, dtype=np.int64)
    for rating, code in RATING_CODES.items():
        for cat_id, name in enumerate(categories):
            t = threat_type(rating, name or None)
            if t is not None:
                index[code, cat_id] = THREAT_TYPES.index(t)
    for name in (WEB_BLOCKING_TABLE, SUSPICIOUS_URLS_TABLE):
        table = patterns.table(name)
        if not len(table):
            continue
        ratings = np.minimum(table.column("rating").astype(np.int64), index.shape[0] - 1)
        cats = np.minimum(table.column("category").astype(np.int64), index.shape[1] - 1)
        which = index[ratings, cats]
        keys = table.sorted_keys()
        for i, t in enumerate(THREAT_TYPES):
            raw = keys[which == i].tobytes()
            out[t] += [raw[j:j + HASH_SIZE] for j in range(0, len(raw), HASH_SIZE)]
    return out


def rule_hashes(lists: Any) -> list[bytes]:
    """The full hashes of the administrator's blocked domain and URL prefix rules for every
    client (a list snapshot's ``web_rules``; none for lists without it)."""
    rules = getattr(lists, "web_rules", None)
    if rules is None:
        return []
    return [hashlib.sha256(rule_expression(kind, value).encode()).digest() for kind, value in rules()]


def build(patterns: PatternSet, lists: Any) -> PrefixSet:
    hashes = pattern_hashes(patterns)
    hashes["MALWARE"] += rule_hashes(lists)
    return PrefixSet.of(patterns.version, hashes)


@dataclass(frozen=True, slots=True)
class Diff:
    removals: list[int]  # indices into the old sorted prefixes, ascending
    additions: list[bytes]  # new prefixes, sorted


def diff(old: ThreatList, new: ThreatList) -> Diff:
    """What turns ``old``'s prefixes into ``new``'s."""
    old_prefixes, new_prefixes = old.prefixes, new.prefixes
    keep, had = set(new_prefixes), set(old_prefixes)
    return Diff([i for i, p in enumerate(old_prefixes) if p not in keep],
                [p for p in new_prefixes if p not in had])


# ---------------------------------------------------------------- Rice-Golomb


def rice_parameter(values: Sequence[int]) -> int:
    """A good Rice parameter for sorted values: log2 of the mean delta, in [2, 28]."""
    if len(values) < 2:
        return MIN_RICE
    mean = (values[-1] - values[0]) // (len(values) - 1)
    return min(MAX_RICE, max(MIN_RICE, mean.bit_length() - 1))


def rice_encode(values: Sequence[int], k: int | None = None) -> tuple[int, int, int, bytes]:
    """Sorted non-negative integers as v4's RiceDeltaEncoding: (first_value, rice_parameter,
    num_entries, encoded_data). Each delta: its quotient ``delta >> k`` in unary (that many 1
    bits, then a 0), then its ``k`` low bits, least significant first; bits fill each byte
    from its least significant bit."""
    if not values:
        return 0, 0, 0, b""
    k = rice_parameter(values) if k is None else k
    out = bytearray()
    acc = 0  # bits not yet written, bit i at 1 << i
    pos = 0
    mask = (1 << k) - 1
    for prev, value in itertools.pairwise(values):
        delta = value - prev
        if delta < 0:
            raise ValueError("values are not sorted")
        q = delta >> k
        while q >= 32:  # a long unary run: whole ones at a time
            acc |= 0xFFFFFFFF << pos
            pos += 32
            q -= 32
            out += (acc & 0xFFFFFFFF).to_bytes(4, "little")
            acc >>= 32
            pos -= 32
        acc |= ((1 << q) - 1) << pos
        pos += q + 1
        acc |= (delta & mask) << pos
        pos += k
        if pos >= 32:
            out += (acc & 0xFFFFFFFF).to_bytes(4, "little")
            acc >>= 32
            pos -= 32
    out += acc.to_bytes((pos + 7) // 8, "little")
    return values[0], k, len(values) - 1, bytes(out)


def rice_decode(first: int, k: int, count: int, data: bytes) -> list[int]:
    """The inverse of ``rice_encode``; raises ValueError on data too short."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little").tolist()
    total = len(bits)
    pos = 0
    out = [first]
    for _ in range(count):
        q = 0
        while pos < total and bits[pos]:
            q += 1
            pos += 1
        pos += 1
        if pos + k > total:
            raise ValueError("Rice data ends early")
        r = 0
        for i in range(k):
            r |= bits[pos + i] << i
        out.append(out[-1] + ((q << k) | r))
        pos += k
    return out


def prefix_values(prefixes: Iterable[bytes]) -> list[int]:
    """4-byte prefixes as the little-endian integers v4 Rice-encodes, sorted."""
    return sorted(int.from_bytes(p, "little") for p in prefixes)


# ---------------------------------------------------------------- the shared cache


class PrefixCache:
    """The current prefix set per (pattern, list snapshot), built once; the last few kept.

    Building a set takes seconds at a million entries, so it never happens on a request
    once a set exists: after a pattern swap or a list change, ``current`` starts the new
    build in a thread and goes on answering from the set it has. The new lists reach
    clients at their next update, as with the vendor's own servers. Only the very first
    set (or ``wait=True``) is built in the caller."""

    def __init__(self, keep: int = KEEP_SETS) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._key: tuple[Any, Any] | None = None  # the objects themselves: ids never reused
        self._current: PrefixSet | None = None
        self._building: tuple[Any, Any] | None = None
        self._sets: OrderedDict[bytes, PrefixSet] = OrderedDict()
        self._diffs: OrderedDict[tuple[bytes, bytes, str], Diff] = OrderedDict()

    def current(self, engine: Any, *, wait: bool = False) -> PrefixSet:
        patterns, lists = engine.patterns, engine.lists
        with self._lock:
            key = self._key
            if key is not None and key[0] is patterns and key[1] is lists and self._current:
                return self._current
            if self._current is not None and not wait:
                if self._building is None or self._building[0] is not patterns \
                        or self._building[1] is not lists:
                    self._building = (patterns, lists)
                    threading.Thread(target=self._build_later, args=(patterns, lists),
                                     name="sb-prefixes", daemon=True).start()
                return self._current
        return self._install(patterns, lists, build(patterns, lists))

    def _build_later(self, patterns: Any, lists: Any) -> None:
        try:
            made = build(patterns, lists)
        except Exception:  # a pattern closed meanwhile, say: the next request tries again
            logger.exception("Safe Browsing prefix set not built")
            with self._lock:
                self._building = None
            return
        self._install(patterns, lists, made)

    def _install(self, patterns: Any, lists: Any, made: PrefixSet) -> PrefixSet:
        with self._lock:
            self._sets[made.id] = made  # the same content keeps its id, with the new version
            self._sets.move_to_end(made.id)
            while len(self._sets) > self._keep:
                self._sets.popitem(last=False)
            if self._building is not None and self._building[0] is patterns \
                    and self._building[1] is lists:
                self._building = None
            self._key, self._current = (patterns, lists), made
            return made

    def find(self, state: bytes) -> PrefixSet | None:
        ident = state_id(state)
        with self._lock:
            return None if ident is None else self._sets.get(ident)

    def diff(self, old: PrefixSet, new: PrefixSet, threat: str) -> Diff:
        key = (old.id, new.id, threat)
        with self._lock:
            found = self._diffs.get(key)
        if found is None:
            found = diff(old.lists[threat], new.lists[threat])
            with self._lock:
                self._diffs[key] = found
                while len(self._diffs) > 4 * self._keep * len(THREAT_TYPES):
                    self._diffs.popitem(last=False)
        return found
