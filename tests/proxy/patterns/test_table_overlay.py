"""Tests for proxy.patterns.table_overlay: base + overlay answers exactly like the full rebuild."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import PatternError
from proxy.patterns import table_overlay
from proxy.patterns.table_diff import apply_table_diff, make_table_diff
from proxy.patterns.table_overlay import OverlaidTable, fold_diff
from proxy.patterns.tables import Table, write_table

W = 16


def _key(head: int, tail: int) -> bytes:
    """Few heads: many keys share their first 8 bytes, the case the batch path settles by dict."""
    return bytes([head]) * 8 + tail.to_bytes(8, "big")


def _write(path: Path, rows: dict[bytes, tuple[int, int]]) -> Path:
    keys = sorted(rows)
    k = np.frombuffer(b"".join(keys), np.uint8).reshape(-1, W) if keys else np.zeros((0, W), np.uint8)
    write_table(path, k, {"verdict": np.array([rows[x][0] for x in keys], np.uint8),
                          "threat": np.array([rows[x][1] for x in keys], np.uint32)}, key_width=W)
    return path


def _check_same(t: OverlaidTable, full: Table, probes: list[bytes]) -> None:
    assert len(t) == len(full)
    assert t.content_sha256 == full.content_sha256
    for k in probes:  # single lookups
        a, b = t.lookup(k), full.lookup(k)
        assert (a is None) == (b is None), k.hex()
        if a is not None and b is not None:
            assert (t.value("verdict", a), t.value("threat", a)) == (
                full.value("verdict", b), full.value("threat", b))
    q = np.frombuffer(b"".join(probes), np.uint8).reshape(-1, len(probes[0]))
    ra, rb = t.lookup_many(q), full.lookup_many(q)
    assert ((ra < 0) == (rb < 0)).all()
    hit = ra >= 0
    for name in ("verdict", "threat"):
        assert (t.values(name, ra[hit]) == full.column(name)[rb[hit]]).all()
        assert (t.column(name) == full.column(name)).all()
    assert (t.sorted_keys() == full.sorted_keys()).all()


keys_st = st.builds(_key, st.integers(0, 3), st.integers(0, 40))
rows_st = st.dictionaries(keys_st, st.tuples(st.integers(1, 3), st.integers(0, 9)), max_size=60)


@st.composite
def histories(draw: st.DrawFn) -> list[dict[bytes, tuple[int, int]]]:
    """A base and one to three later states of it (rows removed, changed, added, re-added)."""
    states = [draw(rows_st)]
    for _ in range(draw(st.integers(1, 3))):
        cur = dict(states[-1])
        for k in draw(st.lists(st.sampled_from(sorted(cur)), max_size=20)) if cur else []:
            cur.pop(k, None)
        for k in draw(st.lists(st.sampled_from(sorted(cur)), max_size=10)) if cur else []:
            cur[k] = (cur[k][0] % 3 + 1, cur[k][1])
        cur.update(draw(rows_st))
        states.append(cur)
    return states


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.lists(keys_st, max_size=30), st.sampled_from([0, 128]))
def test_overlay_answers_like_the_full_rebuild(states, extra, settled) -> None:
    """Single and batched, both ways a batch is settled (vectorised, or by the dict)."""
    table_overlay.DICT_SETTLED = settled
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        paths = [_write(d / f"{i}.tbl", s) for i, s in enumerate(states)]
        probes = sorted({k for s in states for k in s} | set(extra)) or [_key(0, 0)]
        with Table.open(paths[0]) as base:
            overlay: bytes | None = None
            for i in range(1, len(paths)):
                overlay = fold_diff(base, overlay, make_table_diff(paths[i - 1], paths[i]), "d")
                (d / "ov").write_bytes(overlay)
                with OverlaidTable.open(d / "x.tbl", paths[0], d / "ov") as t, \
                        Table.open(paths[i]) as full:
                    _check_same(t, full, probes)
                # compaction: base + overlay is the full file, byte for byte
                apply_table_diff(paths[0], overlay, d / "c.tbl")
                assert (d / "c.tbl").read_bytes() == paths[i].read_bytes()
    table_overlay.DICT_SETTLED = 128


def _pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    a = _write(tmp_path / "a.tbl", {_key(1, i): (1, i) for i in range(50)})
    b = _write(tmp_path / "b.tbl", {_key(1, i): (2, i) for i in range(10, 70)})
    c = _write(tmp_path / "c.tbl", {_key(2, i): (3, i) for i in range(5)})
    return a, b, c


def test_a_diff_for_another_table_is_refused(tmp_path: Path) -> None:
    a, b, c = _pair(tmp_path)
    with Table.open(c) as other, pytest.raises(PatternError) as e:
        fold_diff(other, None, make_table_diff(a, b), "d")
    assert e.value.reason == "wrong_base"
    with Table.open(a) as base:
        ov = fold_diff(base, None, make_table_diff(a, b), "d")
        with pytest.raises(PatternError) as e:  # the same diff again: made for a, not for b
            fold_diff(base, ov, make_table_diff(a, b), "d")
        assert e.value.reason == "wrong_base"
        folded = fold_diff(base, ov, make_table_diff(b, c), "d")
    (tmp_path / "ov").write_bytes(folded)
    with OverlaidTable.open(tmp_path / "x", a, tmp_path / "ov") as t, Table.open(c) as full:
        _check_same(t, full, [_key(1, i) for i in range(80)] + [_key(2, i) for i in range(8)])


def test_a_corrupt_overlay_does_not_open(tmp_path: Path) -> None:
    a, b, _ = _pair(tmp_path)
    raw = bytearray(make_table_diff(a, b))
    raw[200] ^= 1
    (tmp_path / "ov").write_bytes(bytes(raw))
    with pytest.raises(PatternError, match="SHA-256 mismatch"):
        OverlaidTable.open(tmp_path / "x", a, tmp_path / "ov")


@pytest.mark.parametrize("width", [20, 32])
def test_wide_keys_and_a_large_base(tmp_path: Path, width: int) -> None:
    rng = np.random.default_rng(width)
    n = 40_000
    keys = rng.integers(0, 256, (n, width), dtype=np.uint8)
    v = rng.integers(1, 4, n, dtype=np.uint8)
    write_table(tmp_path / "a.tbl", keys, {"verdict": v, "threat": v.astype(np.uint32)})
    keep = np.ones(n, bool)
    keep[rng.choice(n, 500, replace=False)] = False
    v2 = v.copy()
    v2[:300] ^= 3
    new = rng.integers(0, 256, (2000, width), dtype=np.uint8)
    k2 = np.concatenate([keys[keep], new])
    c2 = np.concatenate([v2[keep], rng.integers(1, 4, 2000, dtype=np.uint8)])
    write_table(tmp_path / "b.tbl", k2, {"verdict": c2, "threat": c2.astype(np.uint32)})
    with Table.open(tmp_path / "a.tbl") as base:
        (tmp_path / "ov").write_bytes(
            fold_diff(base, None, make_table_diff(tmp_path / "a.tbl", tmp_path / "b.tbl"), "d"))
    probes = [r.tobytes() for r in np.concatenate([keys[:3000], new[:1000], keys[~keep]])]
    with OverlaidTable.open(tmp_path / "x", tmp_path / "a.tbl", tmp_path / "ov") as t, \
            Table.open(tmp_path / "b.tbl") as full:
        probes = [k for k in probes if len(k) == width]
        _check_same(t, full, probes)
