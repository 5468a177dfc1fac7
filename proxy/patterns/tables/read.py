"""Reading a table: opened through ``mmap``, checked against its header, and looked up
without copying (``proxy.patterns.tables`` describes the format).

Lookups are compiled when the optional C module ``_finder`` was built at install
(``_finder.c`` says why): a table's ``lookup``, ``lookup_range`` and ``lookup_many`` are
then its Finder's, set on the instance so that no Python frame is between the caller and
the search. Without it (no compiler at install, or ``RAMPART_PLAIN_LOOKUPS=1``) they are
the class's own methods, which give the same answers (tests/proxy/patterns/test_finder.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import mmap
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from proxy.errors import PatternError
from proxy.patterns.tables.format import (
    _DESCRIPTOR,
    _HEADER,
    COLUMN_DTYPES,
    FLAG_RANGES,
    FORMAT_VERSION,
    MAGIC,
    MAX_COLUMNS,
    MAX_INDEX_BITS,
    MAX_KEY_WIDTH,
    MIN_INDEX_BITS,
    MIN_KEY_WIDTH,
    IPAddress,
    KeysLike,
    _align,
    _as_key_matrix,
    _cast_unsigned,
    _top_bits,
    _word_dtype,
)

if TYPE_CHECKING:
    from proxy.patterns.tables._finder import Finder

logger = logging.getLogger(__name__)


def compiled_finder() -> type[Finder] | None:
    """The compiled lookups' type, or None: not built, or ``RAMPART_PLAIN_LOOKUPS`` set."""
    if os.environ.get("RAMPART_PLAIN_LOOKUPS"):
        return None
    try:
        found: type[Finder] = importlib.import_module("proxy.patterns.tables._finder").Finder
    except ImportError:
        return None
    return found


FINDER = compiled_finder()


def _read_header(mm: mmap.mmap, name: str) -> tuple[int, int, int, int, int, int, bytes]:
    """The checked header: (flags, key width, index bits, count, columns, largest bucket, digest)."""
    if len(mm) < _HEADER.size:
        raise PatternError(f"{name}: truncated ({len(mm)} bytes, no header)")
    magic, version, flags, width, bits, count, ncols, largest, digest = _HEADER.unpack_from(mm, 0)
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
    return flags, width, bits, count, ncols, largest, digest


def _read_descriptors(mm: mmap.mmap, name: str, ncols: int) -> list[tuple[str, np.dtype[Any]]]:
    """The checked column descriptors: (name, dtype) in file order."""
    if len(mm) < _HEADER.size + _DESCRIPTOR.size * ncols:
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
    return layout


class Table:
    """A table opened read-only through ``mmap``; see the module docstring for the format."""

    def __init__(self, path: Path, mm: mmap.mmap) -> None:
        self.path = path
        self._mm: mmap.mmap | None = mm
        name = path.name
        size = len(mm)
        flags, width, bits, count, ncols, largest, digest = _read_header(mm, name)
        self.key_width: int = width
        self.index_bits: int = bits
        self.count: int = count
        self.is_range: bool = bool(flags & FLAG_RANGES)
        self.content_sha256: str = digest.hex()
        self._largest = largest
        self._shift = 24 - bits

        layout = _read_descriptors(mm, name, ncols)
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
        self._index_off = index_off
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
        self._finder: Finder | None = None
        if FINDER is not None:
            # The compiled search replaces the methods on this instance (a Python frame
            # around it would cost as much as the search itself).
            self._finder = FINDER(mm, keys_off, index_off, ends_off if self.is_range else -1,
                                  count, width, bits, PatternError, name)
            if self.is_range:
                self.lookup_range = self._finder.lookup  # type: ignore[method-assign,assignment]
            else:
                self.lookup = self._finder.lookup  # type: ignore[method-assign,assignment]

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
        if self._finder is not None:
            self._finder.release()
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

    def values(self, name: str, rows: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """Column ``name`` at many rows (the batched ``value``)."""
        out: npt.NDArray[Any] = self.column(name)[rows]
        return out

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

    def compiled_view(self, names: Sequence[str]) -> tuple[Finder, int, list[memoryview], list[None]] | None:
        """What compiled code needs to search this table and read its columns ``names``
        (proxy/dns/_lane.c): its Finder, its row count, and each column's bytes (an
        overlaid table adds its additions'); None without the compiled lookups. KeyError
        for a column the table does not have."""
        if self._finder is None:
            return None
        return self._finder, self.count, [self._column_mvs[n].cast("B") for n in names], [None] * len(names)

    def lookup_many(self, keys: KeysLike) -> npt.NDArray[np.int64]:
        """Rows of many keys (-1 where missing): the compiled search, key by key, or
        ``_lookup_many_plain``'s vectorised one."""
        self._check_open()
        q = _as_key_matrix(keys, self.key_width, self.path.name) if len(keys) else None
        if q is None or self.count == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        if self._finder is None or self.is_range:
            return self._lookup_many_plain(q)
        out = np.empty(len(q), dtype=np.int64)
        self._finder.lookup_many(np.ascontiguousarray(q), out)
        return out

    def _lookup_many_plain(self, keys: KeysLike) -> npt.NDArray[np.int64]:
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
