"""hash_file gives hashlib's digests in one read, and refuses what is not a regular file."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import proxy.client.digests as digests_module
from proxy.client.digests import ALGORITHMS, Digests, hash_file
from proxy.client.errors import ClientError

CHUNK = 64 << 10
ALL = ("sha256", "sha1", "md5")


def expected(data: bytes) -> Digests:
    return Digests(*(hashlib.new(k, data).hexdigest() for k in ALGORITHMS))


@pytest.mark.parametrize("size", [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * CHUNK + 17])
def test_all_kinds_equal_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    digests, info = hash_file(path, ALL, chunk=CHUNK)
    assert digests == expected(data)
    assert info.st_size == size and stat.S_ISREG(info.st_mode)
    assert (info.st_ino, info.st_dev) == (path.stat().st_ino, path.stat().st_dev)


def test_default_is_sha256_only_and_lower_case_hex(tmp_path: Path) -> None:
    path = tmp_path / "eicar.com"
    data = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    path.write_bytes(data)
    digests, _ = hash_file(path)
    assert digests.sha256 == "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
    assert digests.sha1 is None and digests.md5 is None
    assert digests.items() == [("sha256", digests.sha256)]


def test_kinds_asked_in_any_order_sha256_always(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    full = expected(data)
    md5_only, _ = hash_file(path, ["md5"], chunk=CHUNK)
    assert md5_only == Digests(full.sha256, None, full.md5)
    both, _ = hash_file(path, ("md5", "sha1"), chunk=CHUNK)
    assert both == full
    assert both.items() == [("sha256", full.sha256), ("sha1", full.sha1), ("md5", full.md5)]


def test_default_chunk_multi_chunk_file(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) * 2 + 12345)
    path = tmp_path / "big"
    path.write_bytes(data)
    assert hash_file(path, ALL)[0] == expected(data)


def test_unknown_kind_and_bad_chunk_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(ClientError, match="unknown digest kind 'sha512'"):
        hash_file(path, ("sha256", "sha512"))
    with pytest.raises(ClientError, match="chunk size 10"):
        hash_file(path, chunk=10)


def test_fifo_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ClientError, match=f"{fifo}: is a fifo"):
        hash_file(fifo)


def test_folder_refused(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match=f"{tmp_path}: is a folder"):
        hash_file(tmp_path)


def test_symlink_given_directly_refused(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.write_bytes(b"content")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ClientError, match=f"{link}: is a symlink"):
        hash_file(link)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ClientError, match=f"{dangling}: is a symlink"):
        hash_file(dangling)


def test_socket_and_device_refused(tmp_path: Path) -> None:
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        with pytest.raises(ClientError, match=f"{sock_path}: is a socket"):
            hash_file(sock_path)
    with pytest.raises(ClientError, match="/dev/null: is a device"):
        hash_file(Path("/dev/null"))


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "gone.txt"
    with pytest.raises(ClientError, match=f"{missing}: cannot read: No such file"):
        hash_file(missing)


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"x")
    path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(ClientError, match=f"{path}: cannot read: Permission denied"):
            hash_file(path)
        return
    # root reads a 0000 file: ask from a child without the capabilities that let it
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to test this as root"
    code = ("import sys, pathlib\nfrom proxy.client.digests import hash_file\n"
            "try:\n    hash_file(pathlib.Path(sys.argv[1]))\nexcept Exception as e:\n    print(e)")
    done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all",
                           sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          timeout=60, cwd=str(Path(__file__).resolve().parents[3]))
    assert f"{path}: cannot read: Permission denied" in done.stdout, done.stdout + done.stderr


def test_file_growing_while_read_is_hashed_as_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes appended after the open are hashed (read to the end met); the stat stays the
    open's, so a size/mtime cache sees a change and hashes the file again next time."""
    path = tmp_path / "log"
    first, more = os.urandom(CHUNK), os.urandom(CHUNK // 2)
    path.write_bytes(first)
    real_feed = digests_module._feed

    def grow_then_feed(fd: int, hashes: list[Any], chunk: int, p: Path) -> None:
        with open(path, "ab") as f:
            f.write(more)
        real_feed(fd, hashes, chunk, p)

    monkeypatch.setattr(digests_module, "_feed", grow_then_feed)
    digests, info = hash_file(path, chunk=CHUNK)
    assert info.st_size == CHUNK
    assert digests.sha256 == hashlib.sha256(first + more).hexdigest()
    assert path.stat().st_size == CHUNK + CHUNK // 2


def test_threads_hashing_at_once_get_their_own_digests(tmp_path: Path) -> None:
    """The reused buffer is per thread: concurrent hashing (a product's worker pool) is safe."""
    from concurrent.futures import ThreadPoolExecutor

    files = []
    for i in range(8):
        data = os.urandom(CHUNK * (i + 1) + i)
        path = tmp_path / f"f{i}"
        path.write_bytes(data)
        files.append((path, expected(data)))
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda pe: hash_file(pe[0], ALL, chunk=CHUNK)[0], files * 4))
    assert got == [want for _, want in files * 4]
