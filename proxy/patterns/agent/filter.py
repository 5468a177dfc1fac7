"""The agent file: building it from digests, loading and validating it, and the filter
that answers "may this digest be bad?" (``proxy.patterns.agent`` describes the format).
"""

from __future__ import annotations

import bisect
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from proxy.errors import PatternError
from proxy.files import read_bounded, write_atomic
from proxy.patterns.agent.codec import (
    _HEADER,
    _TRAILER,
    AGENT_FORMAT,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_FP_RATE,
    MAGIC,
    MAX_BLOCK_SIZE,
    MAX_ENTRIES,
    MAX_FILE_BYTES,
    MAX_PREFIX_BITS,
    MAX_RICE,
    MIN_BLOCK_SIZE,
    MIN_PREFIX_BITS,
    U64,
    DigestsLike,
    _check_params,
    _choose_rice,
    _max_unary_bits,
    _pack_fixed,
    _pack_unary,
    _prefixes,
    _sorted_distinct,
    _unary_ones,
    _unpack_fixed,
    choose_prefix_bits,
    digest_key,
    digest_keys,
)

_QUERY_CHUNK_BLOCKS = 512




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




def read_agent(path: Path) -> AgentFilter:
    """Load and validate an agent file (bounded to MAX_FILE_BYTES)."""
    return AgentFilter.from_bytes(
        read_bounded(path, MAX_FILE_BYTES, error=PatternError, label=f"agent pattern {path.name}"))


def write_agent(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    write_atomic(path, data)
