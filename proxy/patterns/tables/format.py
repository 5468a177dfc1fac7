"""The table file format's constants and the key helpers both sides share
(``proxy.patterns.tables`` describes the format).

Keys are compared as raw bytes: as rows of big-endian words (``_word_dtype``),
whose order is memcmp order, never as numpy ``S`` scalars.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from proxy.errors import PatternError

MAGIC = b"RMPT"
FORMAT_VERSION = 1
FLAG_RANGES = 1
MIN_KEY_WIDTH = 4
MAX_KEY_WIDTH = 64
MIN_INDEX_BITS = 16
MAX_INDEX_BITS = 24
MAX_COLUMNS = 32
ALIGN = 64
TARGET_BUCKET_ROWS = 16
COLUMN_DTYPES = ("<u1", "<u2", "<u4", "<u8")

_HEADER = struct.Struct("<4sHHIIQII32s")  # 64 bytes
_DESCRIPTOR = struct.Struct("<24s8s")  # 32 bytes
assert _HEADER.size == 64 and _DESCRIPTOR.size == 32

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
KeysLike = npt.NDArray[np.uint8] | Sequence[bytes]


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def index_bits_for(count: int) -> int:
    """Index bits for ``count`` rows: about ``TARGET_BUCKET_ROWS`` rows per bucket."""
    bits = max(1, count // TARGET_BUCKET_ROWS).bit_length()
    return min(MAX_INDEX_BITS, max(MIN_INDEX_BITS, bits))


def _word_dtype(width: int) -> str:
    """The widest big-endian unsigned word that tiles a key: memcmp order == word order."""
    for size in (8, 4, 2):
        if width % size == 0:
            return f">u{size}"
    return "u1"


def _lex_less(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Row-wise ``a < b`` for (n, k) arrays of big-endian words (lexicographic)."""
    neq = a != b
    first = neq.argmax(axis=1)
    rows = np.arange(a.shape[0])
    out: npt.NDArray[np.bool_] = neq[rows, first] & (a[rows, first] < b[rows, first])
    return out


def _as_key_matrix(keys: KeysLike, width: int | None, what: str) -> npt.NDArray[np.uint8]:
    """(n, W) uint8 matrix from a matrix or a list of equal-length bytes."""
    if isinstance(keys, np.ndarray):
        if keys.dtype != np.uint8 or keys.ndim != 2:
            raise PatternError(f"{what}: keys must be an (N, W) uint8 array, got {keys.dtype} "
                               f"with shape {keys.shape}")
        if width is not None and keys.shape[1] != width:
            raise PatternError(f"{what}: keys are {keys.shape[1]} bytes wide, expected {width}")
        return keys
    if width is None:
        if not keys:
            raise PatternError(f"{what}: key width unknown for an empty key list")
        width = len(keys[0])
    for i, k in enumerate(keys):
        if len(k) != width:
            raise PatternError(f"{what}: key {i} is {len(k)} bytes, expected {width}")
    joined = b"".join(keys)
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(keys), width)


def _top_bits(k: npt.NDArray[np.uint8], bits: int) -> npt.NDArray[np.int64]:
    """The first ``bits`` bits of every key row (keys are at least 3 bytes wide)."""
    top = (k[:, 0].astype(np.int64) << 16) | (k[:, 1].astype(np.int64) << 8) | k[:, 2]
    return top >> (24 - bits)


def _raw(arr: npt.NDArray[Any]) -> memoryview:
    """The bytes of a C-contiguous array, without a copy."""
    flat: Any = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    return memoryview(flat)


def _cast_unsigned(raw: memoryview, itemsize: int) -> memoryview:
    if itemsize == 1:
        return raw.cast("B")
    if itemsize == 2:
        return raw.cast("H")
    if itemsize == 4:
        return raw.cast("I")
    return raw.cast("Q")


@dataclass(frozen=True, slots=True)
class _Layout:
    """What a table header says; the rest of the file follows from it."""

    width: int
    bits: int
    count: int
    ranges: bool
    columns: tuple[tuple[str, str], ...]  # (name, dtype)
    largest: int
