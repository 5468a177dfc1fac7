"""Memory-mapped sorted fixed-width tables: the storage under every pattern
(docs/architecture.md, “Patterns and updates”).

A table maps fixed-width binary keys (digests, or the start addresses of IP
ranges) to a row of small integer columns. It is written once, sorted, and then
only read, through ``mmap`` and zero-copy numpy views: opening one costs a
header parse however many entries it holds, and a lookup touches one small
window of the key block.

File format (version 1, all integers little-endian, sections 64-byte aligned)::

    offset  size  field
    0       4     magic b"RMPT"
    4       2     format version (1)
    6       2     flags: bit 0 = range table (an "ends" block follows the keys)
    8       4     key width W in bytes (4..64)
    12      4     index bits B (16..24): the bucket index covers the first B key bits
    16      8     count N (rows)
    24      4     column count C
    28      4     largest bucket (rows), bounds the batched binary search
    32      32    content SHA-256: of bytes [0, 32) followed by bytes [64, EOF)
    64      32*C  column descriptors: name (24 bytes ASCII, NUL padded),
                  dtype (8 bytes ASCII, NUL padded: "<u1", "<u2", "<u4" or "<u8")
    ...           index: 2**B + 1 uint64 row offsets; bucket b holds rows
                  [index[b], index[b + 1]) whose keys start with the B bits b
    ...           keys: N * W raw bytes, sorted by memcmp, no duplicates
    ...           ends (range tables only): N * W raw bytes, ends[i] >= keys[i],
                  and keys[i + 1] > ends[i] (ranges never overlap)
    ...           one block per column, in descriptor order: N * itemsize bytes

The file size must equal what the header implies, so a truncated file is
refused on open; ``Table.verify`` recomputes the content digest. B grows with
N (16 bits up to ~1M rows, one more bit per doubling, at most 24) so a bucket
holds about 16 rows: measured here, a single lookup then stays above 750k/s at
10M entries, where a fixed 16-bit index (about 150 rows per bucket) gave 500k/s.

Keys are compared as raw bytes everywhere. Never through numpy ``S`` scalars,
which drop trailing NUL bytes (one SHA-256 in 256 ends in one).

Diffs between two tables, and merging one into a base table, are
``proxy.patterns.table_diff``.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import mmap
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from proxy.errors import PatternError
from proxy.files import write_atomic_with

logger = logging.getLogger(__name__)

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


# ---------------------------------------------------------------- writing


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


@dataclass(frozen=True, slots=True)
class _Layout:
    """What a table header says; the rest of the file follows from it."""

    width: int
    bits: int
    count: int
    ranges: bool
    columns: tuple[tuple[str, str], ...]  # (name, dtype)
    largest: int


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


def _top_bits(k: npt.NDArray[np.uint8], bits: int) -> npt.NDArray[np.int64]:
    """The first ``bits`` bits of every key row (keys are at least 3 bytes wide)."""
    top = (k[:, 0].astype(np.int64) << 16) | (k[:, 1].astype(np.int64) << 8) | k[:, 2]
    return top >> (24 - bits)


# ---------------------------------------------------------------- reading


class Table:
    """A table opened read-only through ``mmap``; see the module docstring for the format."""

    def __init__(self, path: Path, mm: mmap.mmap) -> None:
        self.path = path
        self._mm: mmap.mmap | None = mm
        name = path.name
        size = len(mm)
        if size < _HEADER.size:
            raise PatternError(f"{name}: truncated ({size} bytes, no header)")
        magic, version, flags, width, bits, count, ncols, largest, digest = _HEADER.unpack_from(
            mm, 0
        )
        if magic != MAGIC:
            raise PatternError(f"{name}: not a Rampart table (bad magic {magic!r})")
        if version != FORMAT_VERSION:
            raise PatternError(f"{name}: table format {version} not supported")
        if flags & ~FLAG_RANGES:
            raise PatternError(f"{name}: unknown flags {flags:#x}")
        if not MIN_KEY_WIDTH <= width <= MAX_KEY_WIDTH:
            raise PatternError(f"{name}: bad key width {width}")
        if not MIN_INDEX_BITS <= bits <= MAX_INDEX_BITS:
            raise PatternError(f"{name}: bad index bits {bits}")
        if ncols > MAX_COLUMNS:
            raise PatternError(f"{name}: bad column count {ncols}")
        self.key_width: int = width
        self.index_bits: int = bits
        self.count: int = count
        self.is_range: bool = bool(flags & FLAG_RANGES)
        self.content_sha256: str = digest.hex()
        self._largest = largest
        self._shift = 24 - bits

        if size < _HEADER.size + _DESCRIPTOR.size * ncols:
            raise PatternError(f"{name}: truncated in its column descriptors")
        layout: list[tuple[str, np.dtype[Any]]] = []
        for i in range(ncols):
            raw_name, raw_dtype = _DESCRIPTOR.unpack_from(mm, _HEADER.size + i * _DESCRIPTOR.size)
            try:
                cname = raw_name.rstrip(b"\0").decode("ascii")
                dtype = raw_dtype.rstrip(b"\0").decode("ascii")
            except UnicodeDecodeError:
                raise PatternError(f"{name}: bad column descriptor {i}") from None
            if dtype not in COLUMN_DTYPES or not cname.isidentifier():
                raise PatternError(f"{name}: bad column descriptor {i} ({cname!r}, {dtype!r})")
            layout.append((cname, np.dtype(dtype)))

        pos = _align(_HEADER.size + _DESCRIPTOR.size * ncols)
        index_off = pos
        pos = _align(pos + ((1 << bits) + 1) * 8)
        keys_off = pos
        pos = _align(pos + count * width)
        ends_off = pos
        if self.is_range:
            pos = _align(pos + count * width)
        col_offs: list[int] = []
        for _, dt in layout:
            col_offs.append(pos)
            pos = _align(pos + count * dt.itemsize)
        if size != pos:
            state = "truncated" if size < pos else "has trailing bytes"
            raise PatternError(f"{name}: {state} ({size} bytes, header says {pos})")

        first, final = struct.unpack_from("<Q", mm, index_off)[0], struct.unpack_from(
            "<Q", mm, index_off + (1 << bits) * 8
        )[0]
        if first != 0 or final != count:
            raise PatternError(f"{name}: corrupt bucket index")
        self._keys_off = keys_off
        self._ends_off = ends_off
        self._index_mv = memoryview(mm)[index_off : keys_off].cast("B").cast("Q")
        self._index = np.frombuffer(mm, dtype="<u8", count=(1 << bits) + 1, offset=index_off)
        self._keys = np.frombuffer(mm, dtype=np.uint8, count=count * width, offset=keys_off)
        self._keys = self._keys.reshape(count, width)
        wdt = np.dtype(_word_dtype(width))
        per_row = width // wdt.itemsize
        self._words = np.frombuffer(mm, dtype=wdt, count=count * per_row, offset=keys_off)
        self._words = self._words.reshape(count, per_row)
        self._first_words = self._words[:, 0]
        self._columns: dict[str, npt.NDArray[Any]] = {}
        self._column_mvs: dict[str, memoryview] = {}
        for (cname, dt), off in zip(layout, col_offs, strict=True):
            self._columns[cname] = np.frombuffer(mm, dtype=dt, count=count, offset=off)
            raw = memoryview(mm)[off : off + count * dt.itemsize]
            self._column_mvs[cname] = _cast_unsigned(raw, dt.itemsize)

    # ------------------------------------------------------------ open / close

    @classmethod
    def open(cls, path: Path) -> Table:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    raise PatternError(f"{path.name}: empty file")
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise PatternError(f"{path.name}: cannot open: {e.strerror or e}") from None
        try:
            return cls(path, mm)
        except BaseException:
            with contextlib.suppress(BufferError):
                mm.close()
            raise

    def close(self) -> None:
        """Drop every view and unmap. Views a caller still holds keep the map alive."""
        mm = self._mm
        if mm is None:
            return
        self._mm = None
        self._index_mv.release()
        for mv in self._column_mvs.values():
            mv.release()
        self._column_mvs = {}
        self._columns = {}
        del self._index, self._keys, self._words, self._first_words
        try:
            mm.close()
        except BufferError:
            # A caller still holds a numpy view; the map is released with the last one.
            logger.debug("table %s closed while views are held", self.path.name)

    def __enter__(self) -> Table:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> mmap.mmap:
        if self._mm is None:
            raise PatternError(f"{self.path.name}: table is closed")
        return self._mm

    @property
    def closed(self) -> bool:
        return self._mm is None

    def __len__(self) -> int:
        return self.count

    # ------------------------------------------------------------ access

    @property
    def column_names(self) -> list[str]:
        return list(self._columns)

    def column(self, name: str) -> npt.NDArray[Any]:
        """Read-only zero-copy view of a column."""
        self._check_open()
        try:
            return self._columns[name]
        except KeyError:
            raise PatternError(f"{self.path.name}: no column {name!r}") from None

    def value(self, name: str, row: int) -> int:
        """One column value as a Python int (fast path for single lookups)."""
        self._check_open()
        return int(self._column_mvs[name][row])

    def sorted_keys(self) -> npt.NDArray[np.uint8]:
        """Read-only (N, W) uint8 view of the sorted keys."""
        self._check_open()
        return self._keys

    def ends(self) -> npt.NDArray[np.uint8]:
        """Read-only (N, W) uint8 view of range ends (range tables only)."""
        mm = self._check_open()
        if not self.is_range:
            raise PatternError(f"{self.path.name}: not a range table")
        n, w = self.count, self.key_width
        return np.frombuffer(mm, dtype=np.uint8, count=n * w, offset=self._ends_off).reshape(n, w)

    def key(self, row: int) -> bytes:
        mm = self._check_open()
        off = self._keys_off + row * self.key_width
        return mm[off : off + self.key_width]

    def end(self, row: int) -> bytes:
        mm = self._check_open()
        off = self._ends_off + row * self.key_width
        return mm[off : off + self.key_width]

    def verify(self) -> None:
        """Recompute the content SHA-256; raise PatternError naming the file if it differs."""
        mm = self._check_open()
        sha = hashlib.sha256(mm[:32])
        step = 1 << 24
        for off in range(64, len(mm), step):
            sha.update(mm[off : min(off + step, len(mm))])
        if sha.hexdigest() != self.content_sha256:
            raise PatternError(f"{self.path.name}: content digest mismatch (corrupt file)")

    # ------------------------------------------------------------ lookups

    def lookup(self, key: bytes) -> int | None:
        """Row of ``key`` (raw bytes, exactly ``key_width`` long), or None."""
        mm = self._mm
        if mm is None:
            raise PatternError(f"{self.path.name}: table is closed")
        width = self.key_width
        if len(key) != width:
            raise PatternError(f"{self.path.name}: key is {len(key)} bytes, expected {width}")
        b = int.from_bytes(key[:3], "big") >> self._shift
        base = self._keys_off
        start = base + self._index_mv[b] * width
        end = base + self._index_mv[b + 1] * width
        # memcmp search over the bucket window; a hit must fall on a row boundary.
        p = mm.find(key, start, end)
        while p >= 0:
            rel = p - base
            if rel % width == 0:
                return rel // width
            p = mm.find(key, p + 1, end)
        return None

    def lookup_many(self, keys: KeysLike) -> npt.NDArray[np.int64]:
        """Rows of many keys (-1 where missing), by a vectorised binary search per bucket."""
        self._check_open()
        q = _as_key_matrix(keys, self.key_width, self.path.name) if len(keys) else None
        if q is None or self.count == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        qw = np.ascontiguousarray(q).view(self._words.dtype)
        q0 = qw[:, 0].astype(np.uint64)
        w0 = self._first_words
        buckets = _top_bits(q, self.index_bits)
        lo = self._index[buckets].astype(np.int64)
        hi = self._index[buckets + 1].astype(np.int64)
        last = self.count - 1
        # Branchless lower bound on the first key word within each bucket window.
        pos = lo
        step = 1 << max(0, self._largest.bit_length() - 1)
        while step:
            cand = pos + step
            less = w0[np.minimum(cand - 1, last)] < q0
            pos = pos + step * ((cand <= hi) & less)
            step >>= 1
        inside = pos < hi
        at = np.minimum(pos, last)
        found = inside & (self._words[at] == qw).all(axis=1)
        out = np.where(found, pos, -1)
        # Rows sharing the first word with the query but not the rest: settle those one by one.
        for i in np.flatnonzero(inside & ~found & (w0[at] == q0)):
            row = self.lookup(q[i].tobytes())
            out[i] = -1 if row is None else row
        return out

    def lookup_range(self, key: bytes) -> int | None:
        """Range table: the row whose [start, end] holds ``key``, or None."""
        mm = self._check_open()
        if not self.is_range:
            raise PatternError(f"{self.path.name}: not a range table")
        width = self.key_width
        if len(key) != width:
            raise PatternError(f"{self.path.name}: key is {len(key)} bytes, expected {width}")
        b = int.from_bytes(key[:3], "big") >> self._shift
        lo = self._index_mv[b]
        hi = self._index_mv[b + 1]
        base = self._keys_off
        # last row in the bucket with start <= key; else the row before the bucket
        while lo < hi:
            mid = (lo + hi) >> 1
            off = base + mid * width
            if mm[off : off + width] <= key:
                lo = mid + 1
            else:
                hi = mid
        row = lo - 1
        if row < 0:
            return None
        return row if key <= self.end(row) else None


class RangeTable(Table):
    """A range table of IPv4 (4-byte) or IPv6 (16-byte) big-endian addresses."""

    @classmethod
    def open(cls, path: Path) -> RangeTable:
        table = super().open(path)
        assert isinstance(table, RangeTable)
        if not table.is_range or table.key_width not in (4, 16):
            table.close()
            raise PatternError(f"{Path(path).name}: not an IP range table")
        return table

    def lookup_ip(self, ip: IPAddress) -> int | None:
        """Row of the range holding ``ip``, or None (also for the other address family)."""
        packed = ip.packed
        if len(packed) != self.key_width:
            return None
        return self.lookup_range(packed)
