"""Atomic writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import pytest

from proxy import files


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "manifest.json"
    files.write_atomic(target, b"one")
    files.write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["manifest.json"]


def test_a_failed_copy_keeps_the_old_file(tmp_path):
    target = tmp_path / "table.tbl"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        files.copy_atomic(tmp_path / "missing", target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.tbl"]


def test_copy_atomic_copies(tmp_path):
    src = tmp_path / "a"
    src.write_bytes(bytes(range(256)) * 5000)
    files.copy_atomic(src, tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == src.read_bytes()
