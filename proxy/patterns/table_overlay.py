"""A table served as a base table plus one diff, without merging them: the hourly swap.

Merging an hourly diff into a 10M-entry table rewrites the whole file (hundreds of
MB, about a second); an installed version may instead hold the previous table file
(the *base*, a hard link) and one *overlay*: a ``proxy.patterns.table_diff`` diff from
that base to the table the publisher made (``fold_diff`` folds each new diff into it,
so there is never more than one). ``OverlaidTable`` answers lookups as the merged table
would, and ``proxy.patterns.overlays`` compacts base + overlay into the full file off
the request path.

How a lookup stays as fast as the base's own (see ``OverlaidTable``): every key the
overlay touches (removed from the base, or added) is in one dict, key -> row handle,
and a small bit filter indexed by a key's first bits (about 6 % false positives) says
which keys may be there. A single lookup tests its bit, from the bytes the base lookup
reads anyway, and probes the dict only when it is set. A batch is looked up in the base,
then its keys index the filter (one vectorised gather from memory that stays in the CPU
cache); only the few that pass are settled, by the dict or, for many, by a vectorised
search of their first 8 bytes among the touched keys'.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from proxy.errors import PatternError
from proxy.patterns.table_diff import (
    TableDiff,
    _chunk_plans,
    _ChunkPlan,
    _layout_of,
    _merged,
    _strictly_sorted,
    check_applies,
    encode_diff,
    parse_table_diff,
)
from proxy.patterns.tables.format import (
    KeysLike,
    _as_key_matrix,
    _cast_unsigned,
    _raw,
    _top_bits,
    _word_dtype,
)
from proxy.patterns.tables.read import FINDER, Table

if TYPE_CHECKING:
    from proxy.patterns.tables._finder import Finder

DICT_SETTLED = 128
"""A batch's filter hits up to this many are settled one by one in the dict (below it, that
beats the vectorised search's fixed cost)."""


def _prefix64(k: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    """The first 8 bytes of every key row as a big-endian number (zero-padded below 8)."""
    if k.shape[1] < 8:
        k = np.concatenate([k, np.zeros((len(k), 8 - k.shape[1]), np.uint8)], axis=1)
    head: npt.NDArray[np.uint64] = np.ascontiguousarray(k[:, :8]).view(">u8").reshape(-1).astype(
        np.uint64)
    return head


def _filter_bits(touched: int) -> int:
    """Index bits of the touched-key bit filter: about 16 bits a key (6 % false positives),
    2**16..2**24 bits. Small on purpose: 60k touched keys make 128 KB, which stays in the
    CPU cache across batches, where a byte a slot (4 MB for 1.5 %) missed it on every key."""
    return min(24, max(16, (touched * 16).bit_length()))


def _top_words(q: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
    """Every key row's first 4 bytes as a big-endian number, without a copy when it can."""
    if q.flags.c_contiguous and q.shape[1] % 4 == 0:
        return q.view(">u4")[:, 0]
    return np.ascontiguousarray(q[:, :4]).view(">u4")[:, 0]


def _key_list(k: npt.NDArray[np.uint8]) -> list[bytes]:
    raw, w = k.tobytes(), k.shape[1]
    return [raw[i:i + w] for i in range(0, len(raw), w)]


def _sort_rows(k: npt.NDArray[np.uint8]) -> npt.NDArray[np.intp]:
    """Row order of ``k`` by memcmp."""
    if len(k) < 2:
        return np.arange(len(k))
    words = np.ascontiguousarray(k).view(_word_dtype(k.shape[1]))
    words = words.astype(words.dtype.newbyteorder("="))  # same values; lexsort is faster native
    cols = [*words.T[::-1]]
    order: npt.NDArray[np.intp] = np.lexsort(cols)
    return order


class OverlaidTable:
    """The table a diff makes from ``base``, looked up without merging the two.

    Row *handles*: ``lookup`` and ``lookup_many`` return a base row (``< base.count``) or
    ``base.count + i`` for the overlay's added row ``i``; ``value``/``values`` read them.
    ``column``, ``sorted_keys`` and ``len`` are the merged table's (its live rows in key
    order, built in memory: for whole-table readers such as Safe Browsing, not for
    lookups). The overlay is trusted as installed: ``fold_diff`` checked that it applies.
    """

    is_range = False

    def __init__(self, path: Path, base: Table, diff: TableDiff, holder: Any = None) -> None:
        if diff.ranges or base.is_range:
            raise PatternError(f"{path.name}: range tables are not overlaid")
        if base.content_sha256 != diff.base_sha256:
            raise PatternError(f"{path.name}: overlay made for another base", reason="wrong_base")
        if (base.key_width, _layout_of(base)) != (diff.width, diff.columns):
            raise PatternError(f"{path.name}: overlay layout differs from its base")
        self.path = path  # the file it stands for, in messages
        self.base = base
        self.diff = diff
        self._holder = holder  # keeps the overlay's bytes (an mmap) open
        self.diff_bytes = len(holder) if isinstance(holder, mmap.mmap) else 0
        self.key_width = base.key_width
        self.index_bits = diff.result_bits
        self.count = diff.result_count
        self.content_sha256 = diff.result_sha256
        n = self._n = base.count
        added = diff.added
        touched: dict[bytes, int] = dict.fromkeys(_key_list(diff.removed), -1)
        touched.update(zip(_key_list(added), range(n, n + len(added)), strict=True))
        self._touched = touched
        self._mm = base._mm
        self._shift, self._keys_off, self._index_mv = base._shift, base._keys_off, base._index_mv
        self._base_mvs = base._column_mvs
        self._added_values = {name: _cast_unsigned(_raw(col), col.dtype.itemsize)
                              for name, col in diff.added_columns.items()}
        keys = np.concatenate([added, diff.removed])
        handles = np.concatenate([np.arange(n, n + len(added), dtype=np.int64),
                                  np.full(len(diff.removed), -1, np.int64)])
        # Sorted by the first 8 bytes only (stable: an added key before the same key removed);
        # a query equal to the first of its group is settled here, any other by the dict.
        prefix = _prefix64(keys)
        order = np.argsort(prefix, kind="stable")
        self._t_keys = np.ascontiguousarray(keys[order])
        self._t_first = prefix[order]
        self._t_handles = handles[order]
        self._fbits = _filter_bits(len(keys))
        slots = np.zeros(1 << self._fbits, dtype=bool)
        if len(keys):
            slots[_top_bits(keys, self._fbits)] = True
        self._filter = np.packbits(slots, bitorder="little")  # bit i of byte j: slot 8j + i
        self._fbytes = self._filter.tobytes()  # the same, for single lookups (an int per index)
        self._fdrop = 24 - self._fbits  # a key's first 3 bytes >> this: its slot
        self._plans: list[_ChunkPlan] | None = None
        self._finder: Finder | None = None
        if FINDER is not None and self._mm is not None:
            # compiled: the touched keys (in a hash table of the Finder's own, in place of the
            # filter and the dict) and the base's search in one call, as Table's
            self._finder = FINDER(self._mm, base._keys_off, base._index_off, -1, n, base.key_width,
                                  base.index_bits, PatternError, path.name, b"".join(touched),
                                  np.fromiter(touched.values(), np.int64, len(touched)))
            self.lookup = self._finder.lookup  # type: ignore[method-assign,assignment]

    @classmethod
    def open(cls, path: Path, base_path: Path, overlay_path: Path) -> OverlaidTable:
        """Open base and overlay (its SHA-256 trailer checked) standing for table ``path``."""
        try:
            with open(overlay_path, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    raise PatternError(f"{overlay_path.name}: empty file")
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise PatternError(f"{overlay_path.name}: cannot open: {e.strerror or e}") from None
        base: Table | None = None
        try:
            diff = parse_table_diff(memoryview(mm), overlay_path.name)
            base = Table.open(base_path)
            return cls(path, base, diff, mm)
        except BaseException:
            if base is not None:
                base.close()
            with contextlib.suppress(BufferError):
                mm.close()
            raise

    def close(self) -> None:
        self._mm = None
        if self._finder is not None:
            self._finder.release()
        del self._index_mv
        self.base.close()
        self._touched = {}
        self._added_values = {}
        holder, self._holder = self._holder, None
        if isinstance(holder, mmap.mmap):
            with contextlib.suppress(BufferError):
                holder.close()

    @property
    def closed(self) -> bool:
        return self.base.closed

    def __enter__(self) -> OverlaidTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.count

    @property
    def column_names(self) -> list[str]:
        return self.base.column_names

    # ------------------------------------------------------------ lookups

    def lookup(self, key: bytes) -> int | None:
        """Handle of ``key``, or None: the touched keys' bit filter, a dict probe only
        when its bit is set (about 6 % of the keys the overlay does not touch), then the
        base's bucket search.

        The filter is read from the key's first three bytes, which the base search reads
        anyway, so most lookups cost the base's alone plus a bit test; the base search is
        ``Table.lookup``'s body over the base's map, inlined: a second Python call would
        cost a tenth of a single lookup. With the compiled lookups (``tables.read``) the
        instance's ``lookup`` is its Finder's, which does the same in C.
        """
        top = int.from_bytes(key[:3], "big")
        slot = top >> self._fdrop
        if self._fbytes[slot >> 3] >> (slot & 7) & 1:
            try:
                h = self._touched.get(key)
            except TypeError:  # a memoryview or bytearray key
                h = self._touched.get(bytes(key))
            if h is not None:
                return h if h >= 0 else None
        mm = self._mm
        if mm is None:
            raise PatternError(f"{self.path.name}: table is closed")
        width = self.key_width
        if len(key) != width:
            raise PatternError(f"{self.path.name}: key is {len(key)} bytes, expected {width}")
        b = top >> self._shift
        base = self._keys_off
        index = self._index_mv
        end = base + index[b + 1] * width
        p = mm.find(key, base + index[b] * width, end)
        while p >= 0:
            rel = p - base
            if rel % width == 0:
                return rel // width
            p = mm.find(key, p + 1, end)
        return None

    def compiled_view(self, names: Sequence[str]
                      ) -> tuple[Finder, int, list[memoryview], list[memoryview]] | None:
        """``Table.compiled_view``: handles past the base's rows read the additions' columns."""
        if self._finder is None:
            return None
        return (self._finder, self._n, [self._base_mvs[n].cast("B") for n in names],
                [self._added_values[n].cast("B") for n in names])

    def value(self, name: str, row: int) -> int:
        n = self._n
        try:
            if row < n:
                return int(self._base_mvs[name][row])
            return int(self._added_values[name][row - n])
        except (ValueError, KeyError):
            if self.closed:
                raise PatternError(f"{self.path.name}: table is closed") from None
            raise PatternError(f"{self.path.name}: no column {name!r}") from None

    def values(self, name: str, rows: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """Column ``name`` at many handles (none of them -1)."""
        base_col = self.base.column(name)
        rows = np.asarray(rows, dtype=np.int64)
        in_base = rows < self._n
        if in_base.all():
            out: npt.NDArray[Any] = base_col[rows]
            return out
        out = np.empty(len(rows), dtype=base_col.dtype)
        out[in_base] = base_col[rows[in_base]]
        out[~in_base] = self.diff.added_columns[name][rows[~in_base] - self._n]
        return out

    def lookup_many(self, keys: KeysLike) -> npt.NDArray[np.int64]:
        """Handles of many keys (-1 where missing): the base's batched search, then the
        touched keys found by their first 8 bytes."""
        if not len(keys):
            return np.full(0, -1, dtype=np.int64)
        q = _as_key_matrix(keys, self.key_width, self.path.name)
        if self._finder is not None:
            out = np.empty(len(q), dtype=np.int64)
            self._finder.lookup_many(np.ascontiguousarray(q), out)
            return out
        return self._lookup_many_plain(q)

    def _lookup_many_plain(self, keys: KeysLike) -> npt.NDArray[np.int64]:
        q = _as_key_matrix(keys, self.key_width, self.path.name)
        out = self.base._lookup_many_plain(q)
        first = self._t_first
        if not len(first):
            return out
        slot = _top_words(q) >> (32 - self._fbits)
        maybe = np.flatnonzero((self._filter[slot >> 3] >> (slot & 7).astype(np.uint8)) & 1)
        if len(maybe) <= DICT_SETTLED:  # the usual: a few filter hits, settled by the dict
            w = self.key_width
            raw = q[maybe].tobytes()
            get = self._touched.get
            for j, i in enumerate(maybe.tolist()):
                h = get(raw[j * w:(j + 1) * w])
                if h is not None:
                    out[i] = h
            return out
        q0 = _prefix64(q[maybe])
        at = np.minimum(np.searchsorted(first, q0), len(first) - 1)
        hit = first[at] == q0
        cand, at = maybe[hit], at[hit]
        if cand.size:
            same = (self._t_keys[at] == q[cand]).all(axis=1)
            out[cand[same]] = self._t_handles[at[same]]
            for i in cand[~same].tolist():  # another touched key shares the first 8 bytes
                h = self._touched.get(q[i].tobytes())
                if h is not None:
                    out[i] = h
        return out

    # ------------------------------------------------------------ the merged table

    def _merge_plans(self) -> list[_ChunkPlan]:
        if self._plans is None:
            del_rows, ins = check_applies(self.base, self.diff, self.path.name)
            self._plans = list(_chunk_plans(self._n, np.sort(del_rows), ins))
        return self._plans

    def column(self, name: str) -> npt.NDArray[Any]:
        """The merged table's column ``name``, in key order (built in memory)."""
        if name not in self.diff.added_columns:
            raise PatternError(f"{self.path.name}: no column {name!r}")
        parts = list(_merged(self._merge_plans(), self.base.column(name),
                             self.diff.added_columns[name]))
        dtype = self.base.column(name).dtype
        return np.concatenate([np.frombuffer(p, dtype=dtype) for p in parts]) if parts else (
            np.zeros(0, dtype))

    def sorted_keys(self) -> npt.NDArray[np.uint8]:
        """The merged table's keys, sorted (built in memory)."""
        w = self.key_width
        parts = list(_merged(self._merge_plans(), self.base.sorted_keys(), self.diff.added))
        if not parts:
            return np.zeros((0, w), np.uint8)
        return np.concatenate([np.frombuffer(p, dtype=np.uint8) for p in parts]).reshape(-1, w)


def _check_first(base: Table, d: TableDiff, what: str) -> None:
    """``check_applies`` for a diff that becomes an overlay as it is: the same refusals, by
    batched lookups (no insert positions, which search the whole key block)."""
    if base.content_sha256 != d.base_sha256:
        raise PatternError(f"{what}: made for base {d.base_sha256[:16]}…, not for "
                           f"{base.path.name} ({base.content_sha256[:16]}…)", reason="wrong_base")
    if d.ranges or base.is_range or (base.key_width, _layout_of(base)) != (d.width, d.columns):
        raise PatternError(f"{what}: layout differs from {base.path.name}")
    if not (_strictly_sorted(d.removed) and _strictly_sorted(d.added)):
        raise PatternError(f"{what}: keys not sorted (corrupt diff)")
    gone = base.lookup_many(d.removed) if len(d.removed) else np.zeros(0, np.int64)
    if (gone < 0).any():
        raise PatternError(f"{what}: removes a key the base does not hold", reason="wrong_base")
    held = base.lookup_many(d.added) if len(d.added) else np.zeros(0, np.int64)
    if not np.isin(held[held >= 0], gone).all():
        raise PatternError(f"{what}: adds a key the base already holds", reason="wrong_base")
    if base.count - len(gone) + len(d.added) != d.result_count:
        raise PatternError(f"{what}: result would hold {base.count - len(gone) + len(d.added)} "
                           f"rows, diff says {d.result_count}")
    if d.result_bits > 8 * d.width:
        raise PatternError(f"{what}: bad index bits {d.result_bits}")


def fold_diff(base: Table, overlay: bytes | memoryview | None, diff: bytes | memoryview,
              what: str) -> bytes:
    """The one overlay (a diff from ``base``) that makes what ``diff`` makes of ``base`` +
    ``overlay`` (no overlay: ``diff`` itself, once checked to apply to ``base``).

    PatternError (reason ``wrong_base``) for a diff made for another table, a removed key
    that is not there or an added one that is; the diff's own checks
    (``parse_table_diff``) come first.
    """
    d = parse_table_diff(diff, what)
    if overlay is None:
        _check_first(base, d, what)
        return bytes(diff)
    ov = parse_table_diff(overlay, f"overlay of {base.path.name}")
    if ov.result_sha256 != d.base_sha256:
        raise PatternError(f"{what}: made for base {d.base_sha256[:16]}…, not for the "
                           f"overlaid {base.path.name} ({ov.result_sha256[:16]}…)",
                           reason="wrong_base")
    if d.ranges or (ov.width, ov.columns) != (d.width, d.columns):
        raise PatternError(f"{what}: layout differs from the overlaid {base.path.name}")
    if base.content_sha256 != ov.base_sha256:
        raise PatternError(f"overlay of {base.path.name}: made for another base", reason="wrong_base")
    live_added = {k: i for i, k in enumerate(_key_list(ov.added))}
    removed = set(_key_list(ov.removed))
    in_base = base.lookup_many(d.removed) >= 0 if len(d.removed) else np.zeros(0, bool)
    for k, held in zip(_key_list(d.removed), in_base.tolist(), strict=True):
        if live_added.pop(k, None) is not None:
            continue  # an overlay row goes (its base row, if any, is removed already)
        if not held or k in removed:
            raise PatternError(f"{what}: removes a key the table does not hold", reason="wrong_base")
        removed.add(k)
    in_base = base.lookup_many(d.added) >= 0 if len(d.added) else np.zeros(0, bool)
    for k, held in zip(_key_list(d.added), in_base.tolist(), strict=True):
        if k in live_added or (held and k not in removed):
            raise PatternError(f"{what}: adds a key the table already holds", reason="wrong_base")
    keep = np.array(sorted(live_added.values()), dtype=np.int64)
    added = np.concatenate([ov.added[keep], d.added])
    order = _sort_rows(added)
    cols = {n: np.concatenate([ov.added_columns[n][keep], d.added_columns[n]])[order]
            for n, _ in d.columns}
    gone = np.frombuffer(b"".join(removed), np.uint8).reshape(-1, d.width)
    gone = gone[_sort_rows(gone)]
    count = base.count - len(gone) + len(added)
    if count != d.result_count:
        raise PatternError(f"{what}: result would hold {count} rows, diff says {d.result_count}")
    return encode_diff(d.columns, d.width, d.result_bits, d.result_count, base.content_sha256,
                       d.result_sha256, np.ascontiguousarray(gone),
                       np.ascontiguousarray(added[order]), None, cols)
