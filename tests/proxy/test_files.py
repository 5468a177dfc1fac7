"""Atomic writes (a reader sees the old file or the new one, never half of one) and modes
(exact whatever the umask; a data directory others can write is refused)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy import files
from proxy.errors import RampartError


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


# -- modes: exact whatever the umask -------------------------------------------------------

def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(params=[0o000, 0o077], ids=["umask000", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_make_dirs_gives_every_created_folder_0700(tmp_path: Path, umask: int) -> None:
    files.make_dirs(tmp_path / "a" / "b" / "c")
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3


def test_make_dirs_leaves_an_existing_folder_alone(tmp_path: Path, umask: int) -> None:
    (tmp_path / "kept").mkdir(mode=0o755)
    os.chmod(tmp_path / "kept", 0o755)
    files.make_dirs(tmp_path / "kept" / "new")
    assert (mode(tmp_path / "kept"), mode(tmp_path / "kept" / "new")) == (0o755, 0o700)


def test_write_atomic_is_private_with_private_parents(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "new" / "state.json"
    files.write_atomic(target, b"{}")
    files.copy_atomic(target, tmp_path / "new" / "copy")
    assert (mode(tmp_path / "new"), mode(target), mode(tmp_path / "new" / "copy")) == (0o700, 0o600, 0o600)


def test_write_atomic_with_a_public_mode(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "pub" / "manifest.json"
    files.write_atomic(target, b"{}", mode=0o644)
    assert (mode(tmp_path / "pub"), mode(target)) == (0o755, 0o644)


def test_create_private_makes_a_0600_file_and_keeps_content(tmp_path: Path, umask: int) -> None:
    path = files.create_private(tmp_path / "lists.sqlite")
    assert mode(path) == 0o600 and path.read_bytes() == b""
    path.write_bytes(b"kept")
    files.create_private(path)
    assert path.read_bytes() == b"kept"


def test_an_existing_loose_file_is_narrowed_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / ".lock"
    path.write_bytes(b"x")
    path.chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="proxy.files"):
        os.close(files.open_private(path))
    assert mode(path) == 0o600 and path.read_bytes() == b"x"
    assert "was mode 0666; now 0600" in caplog.text


def test_open_private_leaves_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o644)
    os.chmod(fifo, 0o644)
    os.close(files.open_private(fifo))
    assert mode(fifo) == 0o644


def test_check_private_dir_creates_a_missing_one_0700(tmp_path: Path, umask: int) -> None:
    files.check_private_dir(tmp_path / "data" / "dir")
    assert mode(tmp_path / "data") == mode(tmp_path / "data" / "dir") == 0o700


@pytest.mark.parametrize(("loose", "who"), [(0o777, "its group and other users"),
                                             (0o775, "its group"), (0o757, "other users"),
                                             (0o1777, "its group and other users")])
def test_check_private_dir_refuses_a_folder_others_can_write(tmp_path: Path, loose: int, who: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(loose)
    with pytest.raises(RampartError) as e:
        files.check_private_dir(data)
    assert f"data directory {data} is writable by {who}" in e.value.message
    assert f"chmod go-w {data}" in e.value.message
    assert mode(data) == loose  # refused, not quietly changed


def test_check_private_dir_accepts_a_readable_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    assert files.check_private_dir(data) == data


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_check_private_dir_refuses_a_folder_another_user_owns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)
    with pytest.raises(RampartError) as e:
        files.check_private_dir(data)
    assert "belongs to" in e.value.message and "run rampart as" in e.value.message


@pytest.mark.parametrize("under", ["", "sub"])
def test_check_private_dir_refuses_a_file_clearly(tmp_path: Path, under: str) -> None:
    (tmp_path / "data").write_bytes(b"")
    with pytest.raises(RampartError) as e:
        files.check_private_dir(tmp_path / "data" / under)
    assert f"{tmp_path / 'data'} is not a directory" in e.value.message


def test_open_sqlite_gives_a_wal_connection_usable_from_other_threads(tmp_path):
    import threading

    from proxy.files import open_sqlite

    conn = open_sqlite(tmp_path / "x.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    got = []
    t = threading.Thread(target=lambda: got.append(conn.execute("SELECT 1").fetchone()[0]))
    t.start()
    t.join()
    assert got == [1]
    conn.close()
