"""The agent pattern's constants, digest keys and Rice coding (``proxy.patterns.agent``
describes the format): bit streams of fixed-width remainders and unary quotients, and
sorted sets coded as gaps. ``filter`` and ``diff`` build on it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from proxy.errors import PatternError

AGENT_FORMAT = 1
MAGIC = b"RMAG"

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
_TRAILER = 32
assert _HEADER.size == 32

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


def _max_unary_bits(coded: int, groups: int) -> int:
    return 6 * coded + 8 * groups + _UNARY_SLACK_BITS
