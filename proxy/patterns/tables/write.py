"""Writing a table: sorted, checked, and written whole (``proxy.patterns.tables``
describes the format). ``_emit`` also writes the tables ``proxy.patterns.table_diff``
merges.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from proxy.errors import PatternError
from proxy.files import write_atomic_with
from proxy.patterns.tables.format import (
    _DESCRIPTOR,
    _HEADER,
    FLAG_RANGES,
    FORMAT_VERSION,
    MAGIC,
    MAX_COLUMNS,
    MAX_INDEX_BITS,
    MAX_KEY_WIDTH,
    MIN_INDEX_BITS,
    MIN_KEY_WIDTH,
    KeysLike,
    _align,
    _as_key_matrix,
    _Layout,
    _lex_less,
    _raw,
    _top_bits,
    _word_dtype,
    index_bits_for,
)

logger = logging.getLogger(__name__)


def write_table(
    path: Path,
    keys: KeysLike,
    columns: Mapping[str, npt.NDArray[Any]],
    *,
    key_width: int | None = None,
    ends: KeysLike | None = None,
    index_bits: int | None = None,
) -> int:
    """Write a table atomically (temp file beside ``path``, fsync, rename); return its size.

    Rows are sorted by key; duplicate keys are refused (the caller merges). With
    ``ends`` the table is a range table: row i covers keys[i]..ends[i]
    inclusive, and ranges must not overlap. ``key_width`` is required only for
    an empty list of keys.
    """
    path = Path(path)
    what = path.name
    k = _as_key_matrix(keys, key_width, what)
    n, width = k.shape
    if not MIN_KEY_WIDTH <= width <= MAX_KEY_WIDTH:
        raise PatternError(f"{what}: key width {width} outside {MIN_KEY_WIDTH}..{MAX_KEY_WIDTH}")
    e = _as_key_matrix(ends, width, what) if ends is not None else None
    if e is not None and e.shape[0] != n:
        raise PatternError(f"{what}: {e.shape[0]} range ends for {n} starts")
    cols = _check_columns(what, columns, n)
    bits = index_bits if index_bits is not None else index_bits_for(n)
    if not MIN_INDEX_BITS <= bits <= min(MAX_INDEX_BITS, 8 * width):
        raise PatternError(f"{what}: index bits {bits} out of range")

    order, k, e = _sorted(what, k, e)
    cols = {name: np.ascontiguousarray(c[order]) for name, c in cols.items()}

    top = _top_bits(k, bits)
    index = np.searchsorted(top, np.arange((1 << bits) + 1), side="left").astype("<u8")
    largest = int(np.diff(index).max()) if n else 0

    blocks: list[Iterable[memoryview]] = [[_raw(index)], [_raw(k)]]
    if e is not None:
        blocks.append([_raw(e)])
    blocks.extend([_raw(c)] for c in cols.values())
    layout = _Layout(width, bits, n, e is not None,
                     tuple((name, f"<u{c.dtype.itemsize}") for name, c in cols.items()), largest)
    size, _ = _emit(path, layout, blocks)
    return size


def _sorted(what: str, k: npt.NDArray[np.uint8], e: npt.NDArray[np.uint8] | None
            ) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint8], npt.NDArray[np.uint8] | None]:
    """(row order, sorted keys, their range ends): refuses duplicate keys, ranges that end
    before they start and ranges that overlap."""
    n, width = k.shape
    wdt = _word_dtype(width)
    words = np.ascontiguousarray(k).view(wdt)
    order = np.lexsort(words.T[::-1]) if n > 1 else np.arange(n)
    k = np.ascontiguousarray(k[order])
    words = k.view(wdt)
    if n > 1:
        strictly = _lex_less(words[:-1], words[1:])
        if not strictly.all():
            dup = int(np.argmin(strictly))
            raise PatternError(f"{what}: duplicate key {k[dup].tobytes().hex()}")
    if e is not None:
        e = np.ascontiguousarray(e[order])
        ewords = e.view(wdt)
        if n and _lex_less(ewords, words).any():
            bad = int(np.argmax(_lex_less(ewords, words)))
            raise PatternError(f"{what}: range {k[bad].tobytes().hex()} ends before it starts")
        if n > 1 and not _lex_less(ewords[:-1], words[1:]).all():
            bad = int(np.argmin(_lex_less(ewords[:-1], words[1:])))
            raise PatternError(f"{what}: range {k[bad + 1].tobytes().hex()} overlaps the one "
                               f"before it")
    return order, k, e


def _emit(path: Path, layout: _Layout, blocks: Iterable[Iterable[memoryview | bytes]], *,
          expect_sha256: str | None = None) -> tuple[int, str]:
    """Write header, descriptors and blocks (each padded to ALIGN) atomically.

    Returns (size, content SHA-256 hex). With ``expect_sha256``, a content
    digest that differs removes the temporary file and raises PatternError
    before anything is renamed into place.
    """
    descriptors = b"".join(_DESCRIPTOR.pack(name.encode("ascii"), dt.encode("ascii"))
                           for name, dt in layout.columns)
    flags = FLAG_RANGES if layout.ranges else 0
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, flags, layout.width, layout.bits, layout.count,
                        len(layout.columns), layout.largest, b"\0" * 32)
    body_start = _align(len(head) + len(descriptors))
    sha = hashlib.sha256(head[:32])
    pos = body_start

    def fill(f: BinaryIO) -> None:
        nonlocal pos
        f.write(head)
        rest = descriptors + b"\0" * (body_start - len(head) - len(descriptors))
        f.write(rest)
        sha.update(rest)
        for block in blocks:
            for chunk in block:
                f.write(chunk)
                sha.update(chunk)
                pos += len(chunk)
            pad = b"\0" * (_align(pos) - pos)
            f.write(pad)
            sha.update(pad)
            pos += len(pad)
        if expect_sha256 is not None and sha.hexdigest() != expect_sha256:
            raise PatternError(f"{path.name}: the merged table does not match the "
                               f"expected content SHA-256")
        f.seek(32)
        f.write(sha.digest())

    write_atomic_with(path, fill)
    logger.debug("wrote table %s: %d rows, %d bytes", path.name, layout.count, pos)
    return pos, sha.hexdigest()


def write_range_table(
    path: Path,
    starts: KeysLike,
    ends: KeysLike,
    columns: Mapping[str, npt.NDArray[Any]],
    *,
    key_width: int | None = None,
) -> int:
    """A range table: row i covers starts[i]..ends[i] (inclusive, big-endian bytes)."""
    return write_table(path, starts, columns, key_width=key_width, ends=ends)


def _check_columns(
    what: str, columns: Mapping[str, npt.NDArray[Any]], n: int
) -> dict[str, npt.NDArray[Any]]:
    if len(columns) > MAX_COLUMNS:
        raise PatternError(f"{what}: more than {MAX_COLUMNS} columns")
    out: dict[str, npt.NDArray[Any]] = {}
    for name, col in columns.items():
        if not name.isascii() or not name.isidentifier() or len(name) > 24:
            raise PatternError(f"{what}: bad column name {name!r}")
        arr = np.asarray(col)
        if arr.ndim != 1 or arr.shape[0] != n:
            raise PatternError(f"{what}: column {name!r} has shape {arr.shape}, expected ({n},)")
        if arr.dtype.kind != "u":
            raise PatternError(f"{what}: column {name!r} has dtype {arr.dtype}, expected an "
                               f"unsigned integer type")
        out[name] = arr.astype(f"<u{arr.dtype.itemsize}", copy=False)
    return out
