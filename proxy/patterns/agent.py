"""The Smart Scan Agent Pattern: a compact "may this digest be bad?" filter
(docs/architecture.md, “Patterns and updates”).

Products load it, apply hourly diffs, and ask it before they ask a server. It has
no false negatives: every digest it was built from answers True. "Not in the
filter" means no query is needed; "in the filter" means ask the server, which
knows whether the hit is real or one of the documented false positives.

How a product queries it
------------------------
The filter is built from every SHA-256, SHA-1 and MD5 digest of the Smart Scan
Pattern, all in one key space. The key of a digest (of any of the three kinds)
is its first 8 bytes read as a big-endian unsigned 64-bit integer, and the
filter stores the top ``k`` bits of each key (``k`` = ``prefix_bits``)::

    prefix = int.from_bytes(digest[:8], "big") >> (64 - k)

The digests are uniform hashes already, so no second hash is needed, and the
build over tens of millions of digests is a vectorised shift. A file needs a
server query when ``may_contain`` is True for any digest the product computed
for it: its SHA-256 always, and its SHA-1 and MD5 too where the pattern holds
such entries (ClamAV ``.hdb``/``.hsb`` sources). A product that computes only
the SHA-256 will miss pattern entries that exist only as MD5 or SHA-1; that is
a property of those entries, not of the filter. Cross-kind prefix collisions
are ordinary false positives.

False positives: a digest that is not a member answers True with probability
``len(filter) / 2**k``. ``build_agent`` picks ``k = ceil(log2(n / fp_rate))``
unless told otherwise: 32 bits for 10M entries at the default 0.3 %, which
gives 0.23 %. A publisher keeps ``k`` across versions (pass ``prefix_bits=``)
so that diffs stay small; a diff across a change of ``k`` replaces everything.

Coding
------
The sorted, distinct prefixes are cut into blocks of ``block_size`` entries.
The block index holds each block's first prefix and where its unary bits
start. Every other prefix is coded as the gap from its predecessor, Rice coded
with parameter ``r`` (chosen as the one that minimises the total size): the
low ``r`` bits of every gap go, fixed width, into one remainder stream (the
gap of coded entry ``j`` sits at bit ``j * r``), and the quotient ``gap >> r``
goes into the unary stream as that many 0 bits followed by a 1 bit, each
block starting on a byte boundary. A lookup is a binary search of the block
index and the decode of one block. Bit order is most significant first.

File format (version 1, all integers little-endian)::

    offset  size          field
    0       4             magic b"RMAG"
    4       2             format version (1)
    6       1             prefix bits k (1..64)
    7       1             Rice parameter r (0..56)
    8       4             block size B (entries per block, 2..65536)
    12      4             reserved, 0
    16      8             count N (distinct prefixes)
    24      8             unary stream length U (bytes)
    32      NB * W        block index: first prefix of each block, W = 4 if k <= 32 else 8
    ...     NB * 4        block index: byte offset of each block's unary bits (first is 0)
    ...     ceil(M*r/8)   remainder stream, M = N - NB coded gaps
    ...     U             unary stream
    EOF-32  32            SHA-256 of every byte before it

``NB = ceil(N / B)``. The size must equal what the header implies.

Diff format (version 1)::

    0       4             magic b"RMAD"
    4       2             format version (1)
    6       1             flags: bit 0 = replace (the result is built from the added set alone)
    7       1             prefix bits k of the result
    8       4             block size of the result
    12      8             added count A
    20      8             removed count R
    28      8             added unary length (bytes)
    36      8             removed unary length (bytes)
    44      1             added Rice parameter
    45      1             removed Rice parameter
    46      2             reserved, 0
    48      32            SHA-256 of the base file the diff applies to
    80      32            SHA-256 of the resulting file
    112     ...           added set: remainder stream, unary stream
    ...     ...           removed set: remainder stream, unary stream
    EOF-32  32            SHA-256 of every byte before it

The added set holds prefixes; the removed set holds *positions* in the base
filter's sorted prefixes (about 11 bits each for 10k of 10M instead of 20).
Both are sorted and Rice coded as gaps (the first gap from 0). Applying a diff
rebuilds the result and checks it against the result digest, so
``apply_diff(old, make_diff(old, new)) == new`` byte for byte or an error.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from proxy.errors import PatternError
from proxy.files import read_bounded, write_atomic

logger = logging.getLogger(__name__)

AGENT_FORMAT = 1
MAGIC = b"RMAG"
DIFF_MAGIC = b"RMAD"
DIFF_FORMAT = 1
FLAG_REPLACE = 1

DIGEST_SIZES = (16, 20, 32)  # MD5, SHA-1, SHA-256
DEFAULT_FP_RATE = 0.003
DEFAULT_BLOCK_SIZE = 256
MIN_PREFIX_BITS = 1
MAX_PREFIX_BITS = 64
MAX_RICE = 56  # a remainder plus its bit offset within a byte fits one 64-bit word
MIN_BLOCK_SIZE = 2
MAX_BLOCK_SIZE = 65536
MAX_ENTRIES = 1 << 32
MAX_FILE_BYTES = 256 << 20  # about 200M entries; bounds the memory a decode can take
# With r chosen by _choose_rice, the quotients of m gaps sum to at most 5m (at most 256
# per gap, for at most 256 gaps, when r is capped at MAX_RICE), so a unary stream needs
# at most 6m bits plus a padding byte per block: a file claiming more is refused
# before anything is unpacked.
_UNARY_SLACK_BITS = 257 * 256

_HEADER = struct.Struct("<4sHBBIIQQ")  # 32 bytes
_DIFF_HEADER = struct.Struct("<4sHBBIQQQQBB2x32s32s")  # 112 bytes
_TRAILER = 32
_QUERY_CHUNK_BLOCKS = 512
assert _HEADER.size == 32 and _DIFF_HEADER.size == 112

U64 = npt.NDArray[np.uint64]
DigestsLike = Iterable[bytes] | npt.NDArray[Any]


# ---------------------------------------------------------------------------
# keys


def digest_key(digest: bytes) -> int:
    """The 64-bit key of one MD5, SHA-1 or SHA-256 digest: its first 8 bytes, big-endian."""
    if len(digest) not in DIGEST_SIZES:
        raise ValueError(f"a digest is 16, 20 or 32 bytes (MD5, SHA-1, SHA-256), not {len(digest)}")
    return int.from_bytes(digest[:8], "big")


def digest_keys(digests: DigestsLike) -> U64:
    """The 64-bit keys of many digests, in input order.

    Takes an iterable of ``bytes``; a 2-D ``uint8`` array of shape (n, 16|20|32); a 1-D
    ``S``/``V`` array of itemsize 16, 20 or 32 (read as raw bytes, trailing NULs kept);
    or a 1-D ``uint64`` array, taken as keys already.
    """
    if isinstance(digests, np.ndarray):
        return _array_keys(digests)
    buf = bytearray()
    for i, d in enumerate(digests):
        if not isinstance(d, bytes | bytearray | memoryview) or len(d) not in DIGEST_SIZES:
            size = len(d) if isinstance(d, bytes | bytearray | memoryview) else type(d).__name__
            raise ValueError(f"digest {i}: a digest is 16, 20 or 32 bytes, not {size}")
        buf += bytes(d[:8])
    return np.frombuffer(bytes(buf), dtype=">u8").astype(np.uint64)


def _array_keys(a: npt.NDArray[Any]) -> U64:
    if a.ndim == 1 and a.dtype == np.uint64:
        return a.astype(np.uint64, copy=False)
    if a.ndim == 1 and a.dtype.kind in "SV":
        width = a.dtype.itemsize
        a = np.ascontiguousarray(a).view(np.uint8).reshape(len(a), width)
    if a.ndim != 2 or a.dtype != np.uint8 or a.shape[1] not in DIGEST_SIZES:
        raise ValueError(
            "a digest array is (n, 16, 20 or 32) uint8, S/V bytes of those sizes or uint64 keys, "
            f"not {a.dtype}{a.shape}"
        )
    head = np.ascontiguousarray(a[:, :8])
    return head.view(">u8").ravel().astype(np.uint64)


def _prefixes(keys: U64, k: int) -> U64:
    return keys >> np.uint64(64 - k) if k < 64 else keys


def choose_prefix_bits(n: int, fp_rate: float = DEFAULT_FP_RATE) -> int:
    """``ceil(log2(n / fp_rate))``, clamped to 1..64: the prefix length for ``n`` entries."""
    if not 0.0 < fp_rate < 1.0:
        raise ValueError(f"fp_rate must be between 0 and 1, not {fp_rate}")
    k = math.ceil(math.log2(max(n, 1) / fp_rate))
    return min(max(k, MIN_PREFIX_BITS), MAX_PREFIX_BITS)


# ---------------------------------------------------------------------------
# bit streams


def _choose_rice(gaps: U64, limit: int) -> int:
    """The Rice parameter giving the smallest coding of ``gaps``: argmin of m*(r+1) + sum(gaps >> r)."""
    m = len(gaps)
    if m == 0:
        return 0
    mean = float(gaps.mean())
    guess = max(0, min(limit, int(math.log2(mean)) if mean >= 1 else 0))
    best_r, best_cost = 0, None
    for r in range(max(0, guess - 3), min(limit, guess + 3) + 1):
        cost = m * (r + 1) + int((gaps >> np.uint64(r)).sum(dtype=np.uint64))
        if best_cost is None or cost < best_cost:
            best_r, best_cost = r, cost
    return best_r


def _pack_fixed(values: U64, r: int) -> bytes:
    """``values`` as consecutive ``r``-bit fields, most significant bit first, zero padded."""
    m = len(values)
    if r == 0 or m == 0:
        return b""
    if r % 8 == 0:
        be = values.astype(">u8").view(np.uint8).reshape(m, 8)
        return be[:, 8 - r // 8 :].tobytes()
    shifts = np.arange(r - 1, -1, -1, dtype=np.uint64)
    out: list[bytes] = []
    chunk = 1 << 16  # a multiple of 8 values, so every chunk ends on a byte boundary
    for s in range(0, m, chunk):
        part = values[s : s + chunk]
        bits = ((part[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        out.append(np.packbits(bits.ravel()).tobytes())
    return b"".join(out)


def _unpack_fixed(buf: npt.NDArray[np.uint8], first_bit: npt.NDArray[np.int64], r: int) -> U64:
    """The ``r``-bit fields starting at the given bit positions of ``buf``.

    ``buf`` must run on for at least 7 bytes after the last field's first byte (callers
    pass a view that continues into the following sections, or pad it). Each field is
    assembled from the few bytes it spans: one-dimensional byte gathers are far faster
    than gathering unaligned 8-byte words.
    """
    if r == 0 or len(first_bit) == 0:
        return np.zeros(len(first_bit), dtype=np.uint64)
    byte = first_bit >> 3
    aligned = r % 8 == 0 and not bool((first_bit & 7).any())
    span = r // 8 if aligned else (r + 14) // 8
    word: U64 = buf[byte].astype(np.uint64)
    for i in range(1, span):
        word = (word << np.uint64(8)) | buf[byte + i]
    if aligned:
        return word
    drop = (8 * span - r - (first_bit & 7)).astype(np.uint64)
    fields: U64 = (word >> drop) & np.uint64((1 << r) - 1)
    return fields


def _pack_unary(q: U64, group_sizes: npt.NDArray[np.int64]) -> tuple[bytes, npt.NDArray[np.int64]]:
    """Unary code ``q`` (q zeros then a one) in groups that each start on a byte boundary.

    Returns the stream and the byte offset where each group starts.
    """
    ngroups = len(group_sizes)
    group_of = np.repeat(np.arange(ngroups), group_sizes)
    lengths = q.astype(np.int64) + 1
    group_bits = np.bincount(group_of, weights=lengths, minlength=ngroups).astype(np.int64)
    group_bytes = (group_bits + 7) // 8
    starts = np.zeros(ngroups, dtype=np.int64)
    np.cumsum(group_bytes[:-1], out=starts[1:])
    ends = np.cumsum(lengths)
    before = np.zeros(ngroups, dtype=np.int64)  # bits used by earlier groups' entries
    np.cumsum(group_bits[:-1], out=before[1:])
    pos = ends - 1 - before[group_of] + 8 * starts[group_of]
    total = int(group_bytes.sum())
    bits = np.zeros(total * 8, dtype=np.uint8)
    bits[pos] = 1
    return np.packbits(bits).tobytes(), starts


def _unary_ones(stream: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    # a bool view: nonzero() on bool is about 9x faster than on uint8
    return np.flatnonzero(np.unpackbits(stream).view(bool)).astype(np.int64, copy=False)


# ---------------------------------------------------------------------------
# sorted sets as single Rice-coded streams (diffs)


def _encode_set(values: U64) -> tuple[int, bytes, bytes]:
    """A sorted, distinct array as (rice parameter, remainder stream, unary stream)."""
    gaps = np.diff(values, prepend=np.uint64(0)) if len(values) else values
    r = _choose_rice(gaps, MAX_RICE)
    rem = _pack_fixed(gaps & np.uint64((1 << r) - 1), r)
    unary, _ = _pack_unary(gaps >> np.uint64(r), np.array([len(gaps)], dtype=np.int64))
    return r, rem, unary


def _decode_set(rem: bytes, unary: bytes, m: int, r: int, what: str) -> U64:
    if m == 0:
        if unary:
            raise PatternError(f"agent diff: {what}: unary bits for an empty set")
        return np.zeros(0, dtype=np.uint64)
    ones = _unary_ones(np.frombuffer(unary, dtype=np.uint8))
    if len(ones) != m:
        raise PatternError(f"agent diff: {what}: {len(ones)} unary codes for {m} entries")
    if len(unary) != (int(ones[-1]) + 8) // 8:
        raise PatternError(f"agent diff: {what}: unary stream has trailing bytes")
    q = np.diff(ones, prepend=-1) - 1
    if r and bool((q >> (64 - r)).any()):
        raise PatternError(f"agent diff: {what}: gap overflows 64 bits")
    first = np.arange(m, dtype=np.int64) * r
    rems = _unpack_fixed(np.frombuffer(rem + bytes(8), dtype=np.uint8), first, r)
    gaps = (q.astype(np.uint64) << np.uint64(r)) | rems
    values = np.cumsum(gaps, dtype=np.uint64)
    if m > 1 and not bool((values[1:] > values[:-1]).all()):
        raise PatternError(f"agent diff: {what}: entries are not strictly increasing")
    return values


# ---------------------------------------------------------------------------
# build


def _encode(prefixes: U64, k: int, block_size: int) -> bytes:
    """Encode sorted distinct prefixes (all < 2**k) as an agent file."""
    n = len(prefixes)
    if n > MAX_ENTRIES:
        raise PatternError(f"agent pattern: {n} entries is over the limit of {MAX_ENTRIES}")
    nb = -(-n // block_size)
    firsts = np.arange(nb, dtype=np.int64) * block_size
    bases = prefixes[firsts]
    coded = np.ones(n, dtype=bool)
    coded[firsts] = False
    gaps = np.diff(prefixes, prepend=np.uint64(0))[coded] if n else prefixes
    r = _choose_rice(gaps, min(MAX_RICE, k))
    rem = _pack_fixed(gaps & np.uint64((1 << r) - 1), r)
    sizes = np.full(nb, block_size - 1, dtype=np.int64)
    if nb:
        sizes[-1] = n - (nb - 1) * block_size - 1
    unary, starts = _pack_unary(gaps >> np.uint64(r), sizes)
    if len(unary) * 8 > _max_unary_bits(len(gaps), nb):  # cannot happen; the reader refuses it
        raise PatternError("agent pattern: unary stream over its bound")
    width = "<u4" if k <= 32 else "<u8"
    body = b"".join(
        [
            _HEADER.pack(MAGIC, AGENT_FORMAT, k, r, block_size, 0, n, len(unary)),
            bases.astype(width).tobytes(),
            starts.astype("<u4").tobytes(),
            rem,
            unary,
        ]
    )
    return body + hashlib.sha256(body).digest()


def build_agent(
    digests: DigestsLike,
    *,
    prefix_bits: int | None = None,
    fp_rate: float = DEFAULT_FP_RATE,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> bytes:
    """Build an agent file from digests (see ``digest_keys`` for the accepted forms).

    ``prefix_bits`` defaults to ``choose_prefix_bits(len(digests), fp_rate)``; identical
    prefixes are stored once, so ``len(filter)`` can be below the digest count.
    """
    keys = digest_keys(digests)
    k = prefix_bits if prefix_bits is not None else choose_prefix_bits(len(keys), fp_rate)
    _check_params(k, block_size)
    return _encode(_sorted_distinct(_prefixes(keys, k)), k, block_size)


def _sorted_distinct(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Sorted distinct values (sort + mask: ``np.unique`` is 20x slower here on numpy 2.4)."""
    x = np.sort(x)
    if len(x) < 2:
        return x
    keep = np.empty(len(x), dtype=bool)
    keep[0] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


def _check_params(k: int, block_size: int) -> None:
    if not MIN_PREFIX_BITS <= k <= MAX_PREFIX_BITS:
        raise ValueError(f"prefix_bits must be {MIN_PREFIX_BITS}..{MAX_PREFIX_BITS}, not {k}")
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}, not {block_size}")


# ---------------------------------------------------------------------------
# the filter


class AgentFilter:
    """A loaded agent pattern. Immutable; build a new one to change it.

    Make one with ``AgentFilter.from_bytes`` (or ``read_agent``), which validates;
    the constructor trusts its input.
    """

    __slots__ = (
        "_base_list",
        "_bases",
        "_block_size",
        "_count",
        "_data",
        "_k",
        "_r",
        "_rem",
        "_sha256",
        "_start_list",
        "_starts",
        "_steps",
        "_unary",
        "_weights",
    )

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._sha256: str = hashlib.sha256(data).hexdigest()
        (_, _, k, r, bs, _, n, ulen) = _HEADER.unpack_from(data)
        nb = -(-n // bs)
        width = 4 if k <= 32 else 8
        pos = _HEADER.size
        self._k: int = k
        self._r: int = r
        self._block_size: int = bs
        self._count: int = n
        self._bases: U64 = np.frombuffer(data, dtype=f"<u{width}", count=nb, offset=pos).astype(np.uint64)
        pos += nb * width
        starts = np.frombuffer(data, dtype="<u4", count=nb, offset=pos).astype(np.int64)
        self._starts: npt.NDArray[np.int64] = np.append(starts, np.int64(ulen))
        pos += nb * 4
        rem_len = ((n - nb) * r + 7) // 8
        # the remainder stream runs on into the unary stream and trailer: _unpack_fixed
        # may read up to 7 bytes past its end (the extra bits are dropped)
        self._rem: npt.NDArray[np.uint8] = np.frombuffer(data, dtype=np.uint8, offset=pos)
        pos += rem_len
        self._unary: npt.NDArray[np.uint8] = np.frombuffer(data, dtype=np.uint8, count=ulen, offset=pos)
        self._base_list: list[int] = self._bases.tolist()
        self._start_list: list[int] = self._starts.tolist()
        self._steps = np.arange(bs, dtype=np.int64)
        self._weights = np.uint64(1) << np.arange(r - 1, -1, -1, dtype=np.uint64)

    # -- loading -------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes) -> AgentFilter:
        """Parse and fully validate an agent file; PatternError names what is wrong."""
        return _load(data)[0]

    # -- facts -----------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    @property
    def prefix_bits(self) -> int:
        return self._k

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def rice_bits(self) -> int:
        return self._r

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the file: what diffs name as their base, and a fine ETag."""
        return self._sha256

    def to_bytes(self) -> bytes:
        return self._data

    def false_positive_rate(self) -> float:
        """The chance that a digest that is not a member answers True: ``len / 2**k``."""
        return self._count / float(1 << self._k)

    def __repr__(self) -> str:
        return f"AgentFilter(entries={self._count}, prefix_bits={self._k}, bytes={len(self._data)})"

    # -- decoding --------------------------------------------------------------

    def _coded_values(self, blocks: npt.NDArray[np.int64], validate: bool) -> U64:
        """The gap-coded prefixes of the given blocks (ascending, distinct), concatenated.

        Each block's first prefix is its base in the index and is not included. For the
        j-th coded entry overall, whose 1 bit sits at ``ones[j]`` in the gathered unary
        bits: quotients summed within its block = ``ones[j] - j + first[b] - block_bit[b]``,
        and remainders summed within its block come from one running sum.
        """
        r = self._r
        coded = np.minimum(self._block_size, self._count - blocks * self._block_size) - 1
        lo, hi = self._starts[blocks], self._starts[blocks + 1]
        lengths = hi - lo
        out_start = np.cumsum(lengths) - lengths
        if len(blocks) == len(self._bases):
            stream = self._unary
        else:
            idx = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(lo - out_start, lengths)
            stream = self._unary[idx]
        ones = _unary_ones(stream)
        m = int(coded.sum())
        if validate and len(ones) != m:
            raise PatternError(f"agent pattern: {len(ones)} unary codes for {m} entries")
        first = np.cumsum(coded) - coded  # index of each block's first coded entry
        owner = np.repeat(np.arange(len(blocks), dtype=np.int64), coded)
        j = np.arange(m, dtype=np.int64)
        block_bit = 8 * out_start
        if validate and m:
            ob = block_bit[owner]
            if not bool(((ones >= ob) & (ones < ob + 8 * lengths[owner])).all()):
                raise PatternError("agent pattern: a block's unary bits overrun its index range")
        qsum = (ones - j + (first - block_bit)[owner]).astype(np.uint64)
        if validate and r and m and bool((qsum >> np.uint64(64 - r)).any()):
            raise PatternError("agent pattern: a gap overflows 64 bits")
        # coded entries in all earlier blocks: every earlier block is full
        rems = _unpack_fixed(self._rem, (j + (blocks * (self._block_size - 1) - first)[owner]) * r, r)
        rsum = np.cumsum(rems, dtype=np.uint64)
        rbefore = np.zeros(len(blocks), dtype=np.uint64)  # remainders summed in earlier blocks
        later = first > 0
        rbefore[later] = rsum[first[later] - 1]
        # wraps modulo 2**64 on purpose: the differences are exact
        values: U64 = (qsum << np.uint64(r)) + rsum + (self._bases[blocks] - rbefore)[owner]
        return values

    def keys(self) -> U64:
        """Every stored prefix, ascending (decodes and checks the whole filter)."""
        nb = len(self._bases)
        coded = self._coded_values(np.arange(nb, dtype=np.int64), validate=True)
        firsts = np.arange(nb, dtype=np.int64) * self._block_size
        is_first = np.zeros(self._count, dtype=bool)
        is_first[firsts] = True
        values = np.empty(self._count, dtype=np.uint64)
        values[firsts] = self._bases
        values[~is_first] = coded
        if self._count > 1 and not bool((values[1:] > values[:-1]).all()):
            raise PatternError("agent pattern: entries are not strictly increasing")
        if self._k < 64 and self._count and int(values[-1]) >> self._k:
            raise PatternError(f"agent pattern: an entry is wider than {self._k} bits")
        return values

    # -- queries ---------------------------------------------------------------

    def may_contain(self, digest: bytes) -> bool:
        """False: the digest is certainly not in the pattern. True: ask a server."""
        key = digest_key(digest)
        x = key >> (64 - self._k)
        return self._contains_prefix(x)

    def _contains_prefix(self, x: int) -> bool:
        bases = self._base_list  # Python ints: bisect beats numpy for one key
        b = bisect.bisect_right(bases, x) - 1
        if b < 0:
            return False
        if bases[b] == x:
            return True
        # Within block b, the j-th coded entry's 1 bit sits at bit (sum of q up to j) + j,
        # so the running sum of gaps is ((ones - j) << r) + (running sum of remainders).
        r, bs = self._r, self._block_size
        m = min(bs, self._count - b * bs) - 1
        ones = _unary_ones(self._unary[self._start_list[b] : self._start_list[b + 1]])
        dtype = np.int64 if self._k <= 62 else np.uint64  # int64 is the faster path
        total = (ones[:m] - self._steps[:m]).astype(dtype, copy=False) << dtype(r)
        if r:
            bit0 = b * (bs - 1) * r
            byte0 = bit0 >> 3
            if r == 8:
                fields: npt.NDArray[Any] = self._rem[byte0 : byte0 + m]
            else:
                bits = np.unpackbits(self._rem[byte0 : byte0 + ((bit0 & 7) + m * r + 7) // 8])
                fields = bits[bit0 & 7 : (bit0 & 7) + m * r].reshape(m, r) @ self._weights
            total += np.cumsum(fields, dtype=dtype)
        t = dtype(x - bases[b])
        i = int(total.searchsorted(t))
        return i < m and bool(total[i] == t)

    def may_contain_many(self, digests: DigestsLike) -> npt.NDArray[np.bool_]:
        """``may_contain`` for many digests at once (same forms as ``digest_keys``), in order."""
        x = _prefixes(digest_keys(digests), self._k)
        if len(x) == 0 or self._count == 0:
            return np.zeros(len(x), dtype=bool)
        block = np.searchsorted(self._bases, x, side="right").astype(np.int64) - 1
        hit = np.zeros(len(x), dtype=bool)
        inside = block >= 0
        hit[inside] = self._bases[block[inside]] == x[inside]
        # the rest: decode each block they fall in once, a few hundred blocks at a time so
        # the temporaries stay in cache
        todo = np.flatnonzero(inside & ~hit)
        todo = todo[np.argsort(x[todo], kind="stable")]
        xs, bs = x[todo], block[todo]
        needed = _sorted_distinct(bs)
        for c in range(0, len(needed), _QUERY_CHUNK_BLOCKS):
            chunk = needed[c : c + _QUERY_CHUNK_BLOCKS]
            lo, hi = np.searchsorted(bs, [chunk[0], chunk[-1] + 1])
            values = self._coded_values(chunk, validate=False)
            if len(values):
                pos = np.minimum(np.searchsorted(values, xs[lo:hi]), len(values) - 1)
                hit[todo[lo:hi]] = values[pos] == xs[lo:hi]
        return hit


def _max_unary_bits(coded: int, groups: int) -> int:
    return 6 * coded + 8 * groups + _UNARY_SLACK_BITS


def _load(data: bytes) -> tuple[AgentFilter, U64]:
    """Parse and validate an agent file; return it with its decoded prefixes."""
    data = bytes(data)
    _check_layout(data)
    f = AgentFilter(data)
    starts = f._starts
    if starts[0] != 0 or bool((np.diff(starts) < 0).any()):
        raise PatternError("agent pattern: block index offsets are not in order")
    return f, f.keys()  # decoding every block checks order and range


def _check_layout(data: bytes) -> None:
    """Header, sizes and integrity digest; raises PatternError naming the problem."""
    if len(data) > MAX_FILE_BYTES:
        raise PatternError(f"agent pattern: {len(data)} bytes is over the limit of {MAX_FILE_BYTES}")
    if len(data) < _HEADER.size + _TRAILER:
        raise PatternError(f"agent pattern: truncated ({len(data)} bytes, header needs {_HEADER.size + 32})")
    magic, version, k, r, bs, reserved, n, ulen = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PatternError(f"agent pattern: bad magic {magic!r} (want {MAGIC!r})")
    if version != AGENT_FORMAT:
        raise PatternError(f"agent pattern: format version {version} (this code reads {AGENT_FORMAT})")
    if not MIN_PREFIX_BITS <= k <= MAX_PREFIX_BITS:
        raise PatternError(f"agent pattern: prefix bits {k} out of range")
    if r > min(MAX_RICE, k):
        raise PatternError(f"agent pattern: Rice parameter {r} out of range")
    if not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE:
        raise PatternError(f"agent pattern: block size {bs} out of range")
    if reserved or n > MAX_ENTRIES or ulen >= 1 << 32:
        raise PatternError("agent pattern: bad header (reserved field, count or unary length)")
    nb = -(-n // bs)
    if ulen * 8 > _max_unary_bits(n - nb, nb):
        raise PatternError(f"agent pattern: unary stream of {ulen} bytes is too long for {n} entries")
    width = 4 if k <= 32 else 8
    want = _HEADER.size + nb * (width + 4) + ((n - nb) * r + 7) // 8 + ulen + _TRAILER
    if len(data) != want:
        what = "truncated" if len(data) < want else "trailing bytes"
        raise PatternError(f"agent pattern: {what}: {len(data)} bytes, header says {want}")
    if hashlib.sha256(data[:-_TRAILER]).digest() != data[-_TRAILER:]:
        raise PatternError("agent pattern: content SHA-256 mismatch (corrupt file)")


# ---------------------------------------------------------------------------
# diffs


def make_diff(old: bytes, new: bytes) -> bytes:
    """The diff that turns agent file ``old`` into agent file ``new``."""
    (a, old_keys), (b, new_keys) = _load(old), _load(new)
    flags = 0
    if a.prefix_bits == b.prefix_bits:
        added = new_keys[~_members(new_keys, old_keys)]
        removed = np.flatnonzero(~_members(old_keys, new_keys)).astype(np.uint64)
    else:
        flags = FLAG_REPLACE
        added, removed = new_keys, np.zeros(0, dtype=np.uint64)
    ar, arem, aun = _encode_set(added)
    rr, rrem, run = _encode_set(removed)
    body = b"".join(
        [
            _DIFF_HEADER.pack(
                DIFF_MAGIC, DIFF_FORMAT, flags, b.prefix_bits, b.block_size,
                len(added), len(removed), len(aun), len(run), ar, rr,
                hashlib.sha256(old).digest(), hashlib.sha256(new).digest(),
            ),
            arem, aun, rrem, run,
        ]
    )  # fmt: skip
    return body + hashlib.sha256(body).digest()


def _members(x: U64, sorted_set: U64) -> npt.NDArray[np.bool_]:
    if len(sorted_set) == 0:
        return np.zeros(len(x), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, x), len(sorted_set) - 1)
    found: npt.NDArray[np.bool_] = sorted_set[pos] == x
    return found


def apply_diff(old: bytes, diff: bytes) -> bytes:
    """Apply ``diff`` to agent file ``old``; the result is checked against the diff's digest.

    Raises PatternError for a diff made against another base, a corrupt or truncated
    diff, or a result that does not match.
    """
    if len(diff) > MAX_FILE_BYTES:
        raise PatternError(f"agent diff: {len(diff)} bytes is over the limit of {MAX_FILE_BYTES}")
    if len(diff) < _DIFF_HEADER.size + _TRAILER:
        raise PatternError(f"agent diff: truncated ({len(diff)} bytes)")
    (magic, version, flags, k, bs, na, nr, aul, rul, ar, rr, base, result) = _DIFF_HEADER.unpack_from(diff)
    if magic != DIFF_MAGIC:
        raise PatternError(f"agent diff: bad magic {magic!r} (want {DIFF_MAGIC!r})")
    if version != DIFF_FORMAT:
        raise PatternError(f"agent diff: format version {version} (this code reads {DIFF_FORMAT})")
    if flags & ~FLAG_REPLACE or ar > MAX_RICE or rr > MAX_RICE or na > MAX_ENTRIES or nr > MAX_ENTRIES:
        raise PatternError("agent diff: bad header (flags, Rice parameter or counts)")
    try:
        _check_params(k, bs)
    except ValueError as e:
        raise PatternError(f"agent diff: {e}") from None
    if aul * 8 > _max_unary_bits(na, 1) or rul * 8 > _max_unary_bits(nr, 1):
        raise PatternError("agent diff: a unary stream is too long for its entry count")
    arl, rrl = (na * ar + 7) // 8, (nr * rr + 7) // 8
    want = _DIFF_HEADER.size + arl + aul + rrl + rul + _TRAILER
    if len(diff) != want:
        what = "truncated" if len(diff) < want else "trailing bytes"
        raise PatternError(f"agent diff: {what}: {len(diff)} bytes, header says {want}")
    if hashlib.sha256(diff[:-_TRAILER]).digest() != diff[-_TRAILER:]:
        raise PatternError("agent diff: content SHA-256 mismatch (corrupt diff)")
    if hashlib.sha256(old).digest() != base:
        raise PatternError(
            f"agent diff: made for base {base.hex()[:16]}…, not for {hashlib.sha256(old).hexdigest()[:16]}…",
            reason="wrong_base",
        )
    p = _DIFF_HEADER.size
    added = _decode_set(diff[p : p + arl], diff[p + arl : p + arl + aul], na, ar, "added")
    p += arl + aul
    removed = _decode_set(diff[p : p + rrl], diff[p + rrl : p + rrl + rul], nr, rr, "removed")
    if k < 64 and na and int(added[-1]) >> k:
        raise PatternError(f"agent diff: an added entry is wider than {k} bits")
    base_filter, old_keys = _load(old)
    if flags & FLAG_REPLACE:
        if nr:
            raise PatternError("agent diff: a replacing diff removes nothing")
        merged = added
    else:
        if k != base_filter.prefix_bits:
            raise PatternError(
                f"agent diff: prefix bits {k} differ from the base's {base_filter.prefix_bits}",
                reason="wrong_base",
            )
        if nr and int(removed[-1]) >= len(old_keys):
            raise PatternError(f"agent diff: removes entry {int(removed[-1])} of {len(old_keys)}")
        kept = np.delete(old_keys, removed.astype(np.int64))
        if bool(_members(added, kept).any()):
            raise PatternError("agent diff: adds an entry the base already holds", reason="wrong_base")
        merged = np.sort(np.concatenate([kept, added]), kind="stable")
    out = _encode(merged, k, bs)
    if hashlib.sha256(out).digest() != result:
        raise PatternError("agent diff: the result does not match the diff's result SHA-256")
    logger.debug(
        "agent diff applied",
        extra={"base": base.hex()[:16], "result": result.hex()[:16], "added": na, "removed": nr},
    )
    return out


# ---------------------------------------------------------------------------
# files


def read_agent(path: Path) -> AgentFilter:
    """Load and validate an agent file (bounded to MAX_FILE_BYTES)."""
    return AgentFilter.from_bytes(
        read_bounded(path, MAX_FILE_BYTES, error=PatternError, label=f"agent pattern {path.name}"))


def write_agent(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    write_atomic(path, data)
