"""Tests for proxy.patterns.table_diff: table diffs and merging them, byte for byte like a full build."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import pytest

from proxy.errors import PatternError
from proxy.patterns.table_diff import apply_table_diff, make_table_diff, parse_table_diff
from proxy.patterns.tables import RangeTable, write_range_table, write_table
from tests.proxy.patterns.test_tables import nul_ended, sha


def _rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 32), dtype=np.uint8),
            rng.integers(0, 4, n, dtype=np.uint8))


def _write(path: Path, keys: np.ndarray, v: np.ndarray, index_bits: int | None = None) -> Path:
    write_table(path, keys, {"verdict": v, "threat": v.astype(np.uint32) * 7}, key_width=32,
                index_bits=index_bits)
    return path


def _change(keys: np.ndarray, v: np.ndarray, seed: int, add: int, remove: int, change: int
            ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keep = np.ones(len(keys), dtype=bool)
    keep[rng.choice(len(keys), remove, replace=False)] = False
    v = v.copy()
    v[rng.choice(len(keys), change, replace=False)] ^= 1
    extra_k, extra_v = _rows(add, seed + 1)
    return np.concatenate([keys[keep], extra_k]), np.concatenate([v[keep], extra_v])


@pytest.mark.parametrize(
    ("n", "add", "remove", "change"),
    [
        (0, 10, 0, 0),  # from empty
        (500, 0, 500, 0),  # to empty
        (3000, 200, 50, 20),
        (3000, 0, 0, 0),  # nothing changes
        (70_000, 30_000, 5, 3),  # several merge chunks
    ],
)
def test_diff_apply_equals_a_full_build_byte_for_byte(tmp_path: Path, monkeypatch, n, add,
                                                     remove, change) -> None:
    import proxy.patterns.table_diff as table_diff

    monkeypatch.setattr(table_diff, "MERGE_CHUNK_ROWS", 4096)  # exercise chunk edges
    keys, v = _rows(n, 1)
    a = _write(tmp_path / "a.tbl", keys, v)
    b = _write(tmp_path / "b.tbl", *_change(keys, v, 2, add, remove, change))
    diff = make_table_diff(a, b)
    d = parse_table_diff(diff)
    assert (len(d.removed), len(d.added)) == (remove + change, add + change)
    apply_table_diff(a, diff, tmp_path / "c.tbl")
    assert (tmp_path / "c.tbl").read_bytes() == b.read_bytes()


def test_diff_across_a_change_of_index_bits(tmp_path: Path) -> None:
    keys, v = _rows(2000, 3)
    a = _write(tmp_path / "a.tbl", keys, v, index_bits=18)
    b = _write(tmp_path / "b.tbl", *_change(keys, v, 4, 100, 10, 0))
    apply_table_diff(a, make_table_diff(a, b), tmp_path / "c.tbl")
    assert (tmp_path / "c.tbl").read_bytes() == b.read_bytes()


def test_diff_chain_reproduces_the_last_table(tmp_path: Path) -> None:
    keys, v = _rows(5000, 5)
    paths = [_write(tmp_path / "v0.tbl", keys, v)]
    for i in range(1, 4):
        keys, v = _change(keys, v, 10 * i, 300, 100, 30)
        paths.append(_write(tmp_path / f"v{i}.tbl", keys, v))
    cur = paths[0]
    for i in range(1, 4):
        out = tmp_path / f"applied{i}.tbl"
        apply_table_diff(cur, make_table_diff(paths[i - 1], paths[i]), out)
        cur = out
    assert cur.read_bytes() == paths[-1].read_bytes()


def test_diff_with_nul_ended_and_first_word_colliding_keys(tmp_path: Path) -> None:
    base_keys = [sha(i) for i in range(300)] + nul_ended(2)
    twin = base_keys[7][:8] + b"\xff" * 24  # same first word as an existing key
    keys = np.frombuffer(b"".join(base_keys), np.uint8).reshape(-1, 32)
    v = np.zeros(len(keys), np.uint8)
    a = _write(tmp_path / "a.tbl", keys, v)
    new = np.concatenate([keys[1:], np.frombuffer(twin + base_keys[0][:31] + b"\0", np.uint8)
                          .reshape(2, 32)])
    b = _write(tmp_path / "b.tbl", new, np.ones(len(new), np.uint8))
    apply_table_diff(a, make_table_diff(a, b), tmp_path / "c.tbl")
    assert (tmp_path / "c.tbl").read_bytes() == b.read_bytes()


def test_range_table_diff(tmp_path: Path) -> None:
    def ranges(path: Path, starts: list[int], ends: list[int], ids: list[int]) -> Path:
        write_range_table(path, [s.to_bytes(4, "big") for s in starts],
                          [e.to_bytes(4, "big") for e in ends],
                          {"ident": np.array(ids, dtype=np.uint16)})
        return path

    a = ranges(tmp_path / "a.tbl", [10, 100, 1000], [20, 200, 2000], [1, 2, 3])
    b = ranges(tmp_path / "b.tbl", [10, 100, 500], [25, 200, 600], [1, 2, 4])
    apply_table_diff(a, make_table_diff(a, b), tmp_path / "c.tbl")
    assert (tmp_path / "c.tbl").read_bytes() == b.read_bytes()
    with RangeTable.open(tmp_path / "c.tbl") as t:
        assert t.lookup_ip(ipaddress.IPv4Address(24)) == 0


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, bytes]:
    keys, v = _rows(1000, 7)
    a = _write(tmp_path / "a.tbl", keys, v)
    b = _write(tmp_path / "b.tbl", *_change(keys, v, 8, 50, 20, 5))
    return a, b, make_table_diff(a, b)


def test_diff_against_the_wrong_base_is_refused(tmp_path: Path, pair) -> None:
    _a, b, diff = pair
    with pytest.raises(PatternError, match="made for base"):
        apply_table_diff(b, diff, tmp_path / "c.tbl")
    assert not (tmp_path / "c.tbl").exists()


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d[:-1], "truncated"),
        (lambda d: d[:50], "truncated"),
        (lambda d: d + b"\0", "trailing bytes"),
        (lambda d: d[:200] + bytes([d[200] ^ 1]) + d[201:], "corrupt diff"),
        (lambda d: b"XXXX" + d[4:], "not a table diff"),
        (lambda d: b"", "truncated"),
    ],
)
def test_corrupt_or_truncated_diff_is_refused(tmp_path: Path, pair, mangle, message) -> None:
    a, _b, diff = pair
    before = a.read_bytes()
    with pytest.raises(PatternError, match=message):
        apply_table_diff(a, mangle(diff), tmp_path / "c.tbl")
    assert not (tmp_path / "c.tbl").exists()
    assert a.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_diff_from_a_file_path(tmp_path: Path, pair) -> None:
    a, b, diff = pair
    (tmp_path / "d.diff").write_bytes(diff)
    apply_table_diff(a, tmp_path / "d.diff", tmp_path / "c.tbl")
    assert (tmp_path / "c.tbl").read_bytes() == b.read_bytes()


def test_tables_of_different_layouts_cannot_be_diffed(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.tbl", *_rows(10, 1))
    write_table(tmp_path / "b.tbl", [sha(1)], {"other": np.array([1], np.uint8)})
    with pytest.raises(PatternError, match="different layouts"):
        make_table_diff(a, tmp_path / "b.tbl")
