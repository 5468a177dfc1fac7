"""The compiled lookups (proxy/patterns/tables/_finder.c) answer exactly as the Python ones.

Each table's ``lookup``, ``lookup_range`` and ``lookup_many`` are its Finder's when the
module is built; the class's own methods (and ``_lookup_many_plain``) stay the plain path,
and every test here compares the two on the same open table.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import PatternError
from proxy.patterns.table_diff import make_table_diff
from proxy.patterns.table_overlay import OverlaidTable, fold_diff
from proxy.patterns.tables import RangeTable, Table, write_range_table, write_table
from proxy.patterns.tables.format import _HEADER, _align
from proxy.patterns.tables.read import FINDER

REQUIRED = os.environ.get("RAMPART_REQUIRE_COMPILED") == "1"  # CI: the module must be built


def test_the_compiled_lookups_are_built_where_required() -> None:
    if FINDER is None and not REQUIRED:
        pytest.skip("proxy.patterns.tables._finder not built (no C compiler at install):"
                    " tables look up in Python")
    assert FINDER is not None, "RAMPART_REQUIRE_COMPILED=1 but the _finder module is not built"


compiled = pytest.mark.skipif(FINDER is None, reason="the _finder module is not built")


def _write(path: Path, keys: list[bytes], width: int) -> Path:
    keys = sorted(set(keys))
    k = np.frombuffer(b"".join(keys), np.uint8).reshape(-1, width) if keys else np.zeros((0, width), np.uint8)
    write_table(path, k, {"n": np.arange(len(keys), dtype=np.uint32)}, key_width=width)
    return path


def _probes(keys: list[bytes], extra: list[bytes], width: int) -> list[bytes]:
    """The keys, others, and each key's neighbours: one byte changed at either end, and
    the bytes straddling two rows of the key block (a hit only on a row boundary)."""
    out = list(keys) + extra
    for k in keys[:40]:
        out.append(k[:-1] + bytes([k[-1] ^ 1]))
        out.append(bytes([k[0] ^ 0x80]) + k[1:])
    block = b"".join(sorted(set(keys)))
    out += [block[i:i + width] for i in range(1, max(1, len(block) - width), max(1, width // 3))][:60]
    return [p for p in out if len(p) == width]


def _same(t: Table | OverlaidTable, plain_one, plain_many, probes: list[bytes]) -> None:
    for p in probes:
        assert t.lookup(p) == plain_one(t, p), p.hex()
        assert t.lookup(memoryview(p)) == plain_one(t, p)
    if probes:
        q = np.frombuffer(b"".join(probes), np.uint8).reshape(len(probes), -1)
        assert t.lookup_many(q).tolist() == plain_many(q).tolist()
        assert t.lookup_many(q[::2]).tolist() == plain_many(q[::2]).tolist()  # not contiguous
        assert t.lookup_many(probes).tolist() == plain_many(q).tolist()


widths = st.sampled_from([4, 8, 12, 16, 20, 32])


@compiled
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(widths, st.data())
def test_a_table_is_looked_up_as_the_python_path_does(width: int, data: st.DataObject) -> None:
    # few first bytes: buckets hold many rows, which the binary search then walks
    key = st.builds(lambda head, rest: bytes([head, 0, head]) + rest, st.integers(0, 3),
                    st.binary(min_size=width - 3, max_size=width - 3))
    keys = data.draw(st.lists(key, max_size=200))
    extra = data.draw(st.lists(st.binary(min_size=width, max_size=width), max_size=20))
    with tempfile.TemporaryDirectory() as tmp, Table.open(_write(Path(tmp) / "t.tbl", keys, width)) as t:
        assert t._finder is not None
        _same(t, Table.lookup, t._lookup_many_plain, _probes(keys, extra, width))


@compiled
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([4, 16]), st.data())
def test_a_range_table_is_looked_up_as_the_python_path_does(width: int, data: st.DataObject) -> None:
    top = (1 << (8 * width)) - 1
    bounds = sorted(set(data.draw(st.lists(st.integers(0, top), max_size=80))))
    starts, ends = bounds[0::2], bounds[1::2]
    pairs = list(zip(starts, ends))
    probes = [v for s, e in pairs for v in (s, e, s - 1, e + 1) if 0 <= v <= top]
    probes += data.draw(st.lists(st.integers(0, top), max_size=30))
    as_key = lambda v: v.to_bytes(width, "big")  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.tbl"
        write_range_table(path, [as_key(s) for s, _ in pairs], [as_key(e) for _, e in pairs],
                          {"n": np.arange(len(pairs), dtype=np.uint32)}, key_width=width)
        with RangeTable.open(path) as t:
            for v in probes:
                assert t.lookup_range(as_key(v)) == Table.lookup_range(t, as_key(v)), v
            if width == 4 and pairs:
                ip = ipaddress.IPv4Address(pairs[0][0])
                assert t.lookup_ip(ip) == 0


@compiled
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_an_overlaid_table_is_looked_up_as_the_python_path_does(data: st.DataObject) -> None:
    key = st.builds(lambda head, tail: bytes([head]) * 8 + tail.to_bytes(8, "big"),
                    st.integers(0, 3), st.integers(0, 60))
    base = set(data.draw(st.lists(key, max_size=80)))
    gone = set(data.draw(st.lists(st.sampled_from(sorted(base)), max_size=30))) if base else set()
    new = (base - gone) | set(data.draw(st.lists(key, max_size=40)))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        a, b = _write(d / "a.tbl", list(base), 16), _write(d / "b.tbl", list(new), 16)
        with Table.open(a) as t:
            (d / "ov").write_bytes(fold_diff(t, None, make_table_diff(a, b), "d"))
        with OverlaidTable.open(d / "x.tbl", a, d / "ov") as ov, Table.open(b) as full:
            assert ov._finder is not None
            probes = _probes(sorted(base | new), [bytes(16)], 16)
            _same(ov, OverlaidTable.lookup, ov._lookup_many_plain, probes)
            for p in probes:  # and both as the merged table answers
                got = ov.lookup(p)
                assert (got is None) == (full.lookup(p) is None)


@compiled
def test_errors_are_the_python_path_s(tmp_path: Path) -> None:
    keys = [bytes([i]) * 16 for i in range(10)]
    t = Table.open(_write(tmp_path / "t.tbl", keys, 16))
    for key in (b"short", b"\x01" * 17, b""):
        with pytest.raises(PatternError) as fast:
            t.lookup(key)
        with pytest.raises(PatternError) as plain:
            Table.lookup(t, key)
        assert str(fast.value) == str(plain.value) == f"t.tbl: key is {len(key)} bytes, expected 16"
    with pytest.raises(TypeError):
        t.lookup("a text, not bytes")  # type: ignore[arg-type]
    t.close()
    with pytest.raises(PatternError, match=r"^t\.tbl: table is closed$"):
        t.lookup(keys[0])
    with pytest.raises(PatternError, match=r"^t\.tbl: table is closed$"):
        t.lookup_many([keys[0]])


@compiled
def test_a_corrupt_bucket_index_finds_nothing_outside_the_map(tmp_path: Path) -> None:
    """The header checks the index's first and last entries only; the others are clamped
    to the key block, so a corrupt one gives a miss or the key's own row, never a read
    past the map."""
    keys = [os.urandom(32) for _ in range(3000)]
    path = _write(tmp_path / "t.tbl", keys, 32)
    raw = bytearray(path.read_bytes())
    bits = struct.unpack_from("<I", raw, 12)[0]
    index_off = _align(_HEADER.size + 32 * 1)  # one column descriptor
    rng = np.random.default_rng(1)
    for b in rng.integers(1, 1 << bits, 500).tolist():
        struct.pack_into("<Q", raw, index_off + 8 * b, int(rng.choice([1 << 62, 0, 7, 1 << 20])))
    path.write_bytes(bytes(raw))
    with Table.open(path) as t:
        for k in keys[:500] + [os.urandom(32) for _ in range(200)]:
            row = t.lookup(k)
            assert row is None or t.key(row) == k
        rows = t.lookup_many(keys)
        assert all(r == -1 or t.key(r) == k for r, k in zip(rows.tolist(), keys))
