"""Table diffs: the rows turning one ``proxy.patterns.tables`` table into another, and the merge.

``make_table_diff(base, result) -> bytes`` describes the change (format in its
docstring); ``apply_table_diff(base, diff, out)`` merges it into the base in a
streaming, vectorised pass and checks the result's content SHA-256 before the
new file is renamed into place; ``parse_table_diff`` checks a diff's header,
size and trailing SHA-256. The update source (``proxy.updates.repo``) ships these diffs.

This module is the second half of the table format: it shares the table
writer's internals (``_emit``, ``_Layout``, the descriptor struct) with
``proxy.patterns.tables``' modules.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from proxy.errors import PatternError
from proxy.patterns.tables.format import (
    _DESCRIPTOR,
    COLUMN_DTYPES,
    FLAG_RANGES,
    MAX_COLUMNS,
    MAX_INDEX_BITS,
    MAX_KEY_WIDTH,
    MIN_INDEX_BITS,
    MIN_KEY_WIDTH,
    _Layout,
    _lex_less,
    _raw,
    _top_bits,
    _word_dtype,
)
from proxy.patterns.tables.read import Table
from proxy.patterns.tables.write import _emit

logger = logging.getLogger(__name__)

DIFF_MAGIC = b"RMTD"
DIFF_FORMAT = 1
_DIFF_HEADER = struct.Struct("<4sHHIIQQIIQ32s32s")  # 112 bytes
assert _DIFF_HEADER.size == 112
_TRAILER = 32
MERGE_CHUNK_ROWS = 1 << 20
MAX_DIFF_ROWS = 1 << 34


@dataclass(frozen=True, slots=True)
class TableDiff:
    """A parsed table diff; the arrays are read-only views of the diff bytes."""

    ranges: bool
    width: int
    result_bits: int
    result_count: int
    columns: tuple[tuple[str, str], ...]
    base_sha256: str
    result_sha256: str
    removed: npt.NDArray[np.uint8]  # (R, W), sorted
    added: npt.NDArray[np.uint8]  # (A, W), sorted
    added_ends: npt.NDArray[np.uint8] | None  # (A, W), range tables only
    added_columns: dict[str, npt.NDArray[Any]]


def _layout_of(t: Table) -> tuple[tuple[str, str], ...]:
    return tuple((name, f"<u{t.column(name).dtype.itemsize}") for name in t.column_names)


def _changes(a: Table, b: Table) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
    """(which rows of ``a`` go, which rows of ``b`` come): a row whose key stays but whose
    values change does both."""
    removed_mask = np.ones(a.count, dtype=bool)
    matched = np.zeros(b.count, dtype=bool)
    a_keys = a.sorted_keys()
    for s in range(0, a.count, MERGE_CHUNK_ROWS):
        e = min(a.count, s + MERGE_CHUNK_ROWS)
        rows = b.lookup_many(a_keys[s:e])
        found = rows >= 0
        at = np.where(found, rows, 0)
        same = found.copy()
        if b.count:
            for name in a.column_names:
                same &= a.column(name)[s:e] == b.column(name)[at]
            if a.is_range:
                same &= (a.ends()[s:e] == b.ends()[at]).all(axis=1)
        removed_mask[s:e] = ~same
        matched[rows[same]] = True
    return removed_mask, np.flatnonzero(~matched)


def make_table_diff(base: Path, result: Path) -> bytes:
    """The diff turning table ``base`` into table ``result`` (see ``apply_table_diff``).

    Format (version 1, little-endian)::

        0    4     magic b"RMTD"
        4    2     format version (1)
        6    2     flags: bit 0 = range table
        8    4     key width W
        12   4     index bits of the result
        16   8     removed count R
        24   8     added count A
        32   4     column count C
        36   4     reserved, 0
        40   8     row count of the result
        48   32    content SHA-256 of the base table (its header field)
        80   32    content SHA-256 of the result table
        112  32*C  column descriptors, as in the table
        ...  R*W   removed keys, sorted
        ...  A*W   added keys, sorted
        ...  A*W   added range ends (range tables only)
        ...        added column values, one block per column: A * itemsize
        EOF-32 32  SHA-256 of every byte before it

    A row whose key stays but whose values change is removed and added again.
    Both tables must have the same key width, kind and columns.
    """
    with Table.open(base) as a, Table.open(result) as b:
        if (a.key_width, a.is_range, _layout_of(a)) != (b.key_width, b.is_range, _layout_of(b)):
            raise PatternError(f"{Path(base).name}: cannot diff tables of different layouts")
        removed_mask, added_rows = _changes(a, b)
        ends = b.ends()[added_rows] if b.is_range else None
        return encode_diff(
            _layout_of(b), a.key_width, b.index_bits, b.count, a.content_sha256,
            b.content_sha256, a.sorted_keys()[removed_mask], b.sorted_keys()[added_rows], ends,
            {n: b.column(n)[added_rows] for n in b.column_names})


def encode_diff(columns: tuple[tuple[str, str], ...], width: int, result_bits: int,
                result_count: int, base_sha256: str, result_sha256: str,
                removed: npt.NDArray[np.uint8], added: npt.NDArray[np.uint8],
                added_ends: npt.NDArray[np.uint8] | None,
                added_columns: dict[str, npt.NDArray[Any]]) -> bytes:
    """The bytes of a diff (format in ``make_table_diff``) from its parts: sorted removed keys,
    sorted added rows (with range ends for a range table) and their column values."""
    parts: list[bytes | memoryview] = [
        _DIFF_HEADER.pack(DIFF_MAGIC, DIFF_FORMAT, FLAG_RANGES if added_ends is not None else 0,
                          width, result_bits, len(removed), len(added), len(columns), 0,
                          result_count, bytes.fromhex(base_sha256), bytes.fromhex(result_sha256)),
        b"".join(_DESCRIPTOR.pack(n.encode("ascii"), d.encode("ascii")) for n, d in columns),
        _raw(removed),
        _raw(added),
    ]
    if added_ends is not None:
        parts.append(_raw(added_ends))
    parts.extend(_raw(added_columns[n].astype(d, copy=False)) for n, d in columns)
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def parse_table_diff(data: bytes | memoryview, what: str = "table diff") -> TableDiff:
    """Check a diff's header, size and trailing SHA-256; PatternError naming the problem."""
    mv = memoryview(data).cast("B")
    if len(mv) < _DIFF_HEADER.size + _TRAILER:
        raise PatternError(f"{what}: truncated ({len(mv)} bytes)")
    (magic, version, flags, width, bits, nrem, nadd, ncols, reserved, count, base,
     result) = _DIFF_HEADER.unpack_from(mv, 0)
    if magic != DIFF_MAGIC:
        raise PatternError(f"{what}: not a table diff (bad magic {bytes(magic)!r})")
    if version != DIFF_FORMAT:
        raise PatternError(f"{what}: diff format {version} not supported")
    if (flags & ~FLAG_RANGES or reserved or not MIN_KEY_WIDTH <= width <= MAX_KEY_WIDTH
            or not MIN_INDEX_BITS <= bits <= MAX_INDEX_BITS or ncols > MAX_COLUMNS
            or nrem > MAX_DIFF_ROWS or nadd > MAX_DIFF_ROWS or count > MAX_DIFF_ROWS):
        raise PatternError(f"{what}: bad header")
    pos = _DIFF_HEADER.size
    if len(mv) < pos + ncols * _DESCRIPTOR.size + _TRAILER:
        raise PatternError(f"{what}: truncated in its column descriptors")
    columns: list[tuple[str, str]] = []
    for i in range(ncols):
        raw_name, raw_dtype = _DESCRIPTOR.unpack_from(mv, pos + i * _DESCRIPTOR.size)
        try:
            cname = raw_name.rstrip(b"\0").decode("ascii")
            dtype = raw_dtype.rstrip(b"\0").decode("ascii")
        except UnicodeDecodeError:
            raise PatternError(f"{what}: bad column descriptor {i}") from None
        if dtype not in COLUMN_DTYPES or not cname.isidentifier():
            raise PatternError(f"{what}: bad column descriptor {i}")
        columns.append((cname, dtype))
    pos += ncols * _DESCRIPTOR.size
    ranges = bool(flags & FLAG_RANGES)
    row_bytes = width * (2 if ranges else 1) + sum(int(d[-1]) for _, d in columns)
    want = pos + nrem * width + nadd * row_bytes + _TRAILER
    if len(mv) != want:
        state = "truncated" if len(mv) < want else "has trailing bytes"
        raise PatternError(f"{what}: {state} ({len(mv)} bytes, header says {want})")
    if hashlib.sha256(mv[:-_TRAILER]).digest() != bytes(mv[-_TRAILER:]):
        raise PatternError(f"{what}: SHA-256 mismatch (corrupt diff)")

    def take(n: int, dtype: str, shape: tuple[int, ...]) -> npt.NDArray[Any]:
        nonlocal pos
        arr = np.frombuffer(mv, dtype=dtype, count=n, offset=pos).reshape(shape)
        pos += n * arr.dtype.itemsize
        return arr

    removed = take(nrem * width, "u1", (nrem, width))
    added = take(nadd * width, "u1", (nadd, width))
    ends = take(nadd * width, "u1", (nadd, width)) if ranges else None
    cols = {name: take(nadd, dt, (nadd,)) for name, dt in columns}
    return TableDiff(ranges, width, bits, count, tuple(columns), base.hex(), result.hex(),
                     removed, added, ends, cols)


def _strictly_sorted(k: npt.NDArray[np.uint8]) -> bool:
    if len(k) < 2:
        return True
    words = np.ascontiguousarray(k).view(_word_dtype(k.shape[1]))
    return bool(_lex_less(words[:-1], words[1:]).all())


def _insert_positions(base: Table, keys: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """For each sorted key: how many base keys are below it (a vectorised lower bound)."""
    n = base.count
    if n == 0 or len(keys) == 0:
        return np.zeros(len(keys), dtype=np.int64)
    w0 = base._first_words
    q0 = np.ascontiguousarray(keys).view(w0.dtype)[:, 0]
    pos = np.searchsorted(w0, q0, side="left").astype(np.int64)
    tie = np.flatnonzero((pos < n) & (w0[np.minimum(pos, n - 1)] == q0))
    for i in tie.tolist():  # first words equal: settle on the full bytes
        key = keys[i].tobytes()
        p = int(pos[i])
        while p < n and base.key(p) < key:
            p += 1
        pos[i] = p
    return pos


def apply_table_diff(base_path: Path, diff: bytes | memoryview | Path, out_path: Path) -> int:
    """Merge a diff into the table at ``base_path``, writing ``out_path`` atomically.

    A streaming, vectorised merge over the memory-mapped base, chunk by chunk:
    nothing proportional to the table is copied into Python objects. The result
    equals a full build of the same rows byte for byte; its content SHA-256 is
    checked against the diff's before the file is renamed into place. Raises
    PatternError for a diff made against another base, a corrupt or truncated
    diff, or a result that does not match. Returns the size written.
    """
    base_path, out_path = Path(base_path), Path(out_path)
    what = f"diff for {out_path.name}"
    if isinstance(diff, Path):
        what = diff.name
        with open(diff, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise PatternError(f"{what}: empty file")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            return _apply(base_path, parse_table_diff(memoryview(mm), what), out_path, what)
        finally:
            with contextlib.suppress(BufferError):
                mm.close()
    return _apply(base_path, parse_table_diff(diff, what), out_path, what)


def check_applies(base: Table, d: TableDiff, what: str
                  ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Refuse a diff that was not made for ``base``; else (the base rows it removes, the insert
    positions of its added keys in the base).

    PatternError (reason ``wrong_base``) for another base's content SHA-256, a removed key
    the base does not hold, or an added key it holds and does not remove; a plain one for
    another layout, unsorted keys or a row count other than the diff says.
    """
    if base.content_sha256 != d.base_sha256:
        raise PatternError(f"{what}: made for base {d.base_sha256[:16]}…, not for "
                           f"{base.path.name} ({base.content_sha256[:16]}…)", reason="wrong_base")
    if (base.key_width, base.is_range, _layout_of(base)) != (d.width, d.ranges, d.columns):
        raise PatternError(f"{what}: layout differs from {base.path.name}")
    n = base.count
    if not (_strictly_sorted(d.removed) and _strictly_sorted(d.added)):
        raise PatternError(f"{what}: keys not sorted (corrupt diff)")
    del_rows = base.lookup_many(d.removed) if len(d.removed) else np.zeros(0, np.int64)
    if (del_rows < 0).any():
        raise PatternError(f"{what}: removes a key the base does not hold", reason="wrong_base")
    ins = _insert_positions(base, d.added)
    # an added key equal to a base key must replace a removed row
    hit = np.flatnonzero(ins < n)
    if hit.size:
        same = (base.sorted_keys()[ins[hit]] == d.added[hit]).all(axis=1)
        clash = ins[hit][same]
        if clash.size and not np.isin(clash, del_rows).all():
            raise PatternError(f"{what}: adds a key the base already holds", reason="wrong_base")
    count = n - len(del_rows) + len(d.added)
    if count != d.result_count:
        raise PatternError(f"{what}: result would hold {count} rows, diff says "
                           f"{d.result_count}")
    if d.result_bits > 8 * d.width:
        raise PatternError(f"{what}: bad index bits {d.result_bits}")
    return del_rows, ins


def _apply(base_path: Path, d: TableDiff, out_path: Path, what: str) -> int:
    with Table.open(base_path) as base:
        del_rows, ins = check_applies(base, d, what)
        n = base.count
        count = d.result_count
        bits = d.result_bits
        size = 1 << bits
        if base.index_bits == bits:
            counts = np.diff(base._index).astype(np.int64)
        else:
            counts = np.zeros(size, dtype=np.int64)
            keys = base.sorted_keys()
            for s in range(0, n, MERGE_CHUNK_ROWS):
                counts += np.bincount(_top_bits(keys[s:s + MERGE_CHUNK_ROWS], bits),
                                      minlength=size)
        if len(d.removed):
            counts -= np.bincount(_top_bits(d.removed, bits), minlength=size)
        if len(d.added):
            counts += np.bincount(_top_bits(d.added, bits), minlength=size)
        index = np.zeros(size + 1, dtype="<u8")
        np.cumsum(counts, out=index[1:])
        largest = int(counts.max()) if count else 0

        plans = list(_chunk_plans(n, np.sort(del_rows), ins))
        blocks: list[Iterable[memoryview]] = [
            [_raw(index)],
            _merged(plans, base.sorted_keys(), d.added),
        ]
        if d.ranges:
            assert d.added_ends is not None
            blocks.append(_merged(plans, base.ends(), d.added_ends))
        for name, _ in d.columns:
            blocks.append(_merged(plans, base.column(name), d.added_columns[name]))
        layout = _Layout(d.width, bits, count, d.ranges, d.columns, largest)
        written, _ = _emit(out_path, layout, blocks, expect_sha256=d.result_sha256)
    logger.info("merged %s: -%d +%d rows into %d", out_path.name, len(d.removed), len(d.added),
                count)
    return written


@dataclass(frozen=True, slots=True)
class _ChunkPlan:
    start: int  # base rows [start, end)
    end: int
    kept: npt.NDArray[np.bool_]  # over the base rows of the chunk
    added_at: npt.NDArray[np.int64]  # output positions (in the chunk) of the added rows
    first: int  # added rows [first, last)
    last: int


def _chunk_plans(n: int, del_rows: npt.NDArray[np.int64],
                 ins: npt.NDArray[np.int64]) -> Iterator[_ChunkPlan]:
    s = 0
    while True:
        e = min(n, s + MERGE_CHUNK_ROWS)
        final = e >= n
        kept = np.ones(e - s, dtype=bool)
        d0, d1 = np.searchsorted(del_rows, [s, e])
        kept[del_rows[d0:d1] - s] = False
        a0 = int(np.searchsorted(ins, s, side="left"))
        a1 = len(ins) if final else int(np.searchsorted(ins, e, side="left"))
        at = ins[a0:a1]
        removed_before = np.searchsorted(del_rows, at, side="left") - d0
        added_at = (at - s) - removed_before + np.arange(a1 - a0)
        yield _ChunkPlan(s, e, kept, added_at.astype(np.int64), a0, a1)
        if final:
            return
        s = e


def _merged(plans: list[_ChunkPlan], base: npt.NDArray[Any],
            added: npt.NDArray[Any]) -> Iterator[memoryview]:
    for p in plans:
        old = base[p.start:p.end]
        total = int(p.kept.sum()) + (p.last - p.first)
        out = np.empty((total, *base.shape[1:]), dtype=base.dtype)
        is_added = np.zeros(total, dtype=bool)
        is_added[p.added_at] = True
        out[~is_added] = old[p.kept]
        out[is_added] = added[p.first:p.last]
        yield _raw(out)
