"""A file's digests in one read: every wanted hash is fed from the same buffer.

The client never uploads content, only digests, so hashing is most of a scan's work
on a large file. The shape is chosen for that:

- one pass over the file, whatever the number of kinds: each chunk read is given to
  SHA-256, and to SHA-1 and MD5 when asked, before the next read;
- ``readv`` into a buffer allocated once per thread and chunk size, then reused (no
  bytes object per chunk, and no 1 MiB allocation per small file, which cost more than
  hashing it); 1 MiB by default: on a 1 GB file 256 KiB..8 MiB chunks all run at hashlib's (OpenSSL's) speed,
  smaller ones pay per-call overhead, larger ones only cost memory
  (``bench/bench_client.py`` measures it against ``sha256sum``);
- the file is opened with ``O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK`` after an ``lstat``
  that refuses anything but a regular file, so a symlink, fifo, socket or device given
  directly is refused (and a fifo cannot block the open), and the descriptor's own
  ``fstat`` is checked to be that same regular file, so a swap between the two is refused
  too. ``hashlib.file_digest`` is not used: it reads 256 KiB at a time and feeds one hash.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.client.errors import ClientError

ALGORITHMS = ("sha256", "sha1", "md5")
MIN_CHUNK = 4096
MAX_CHUNK = 64 << 20
_buffers = threading.local()


@dataclass(frozen=True)
class Digests:
    """A file's digests as lower-case hex; SHA-256 always, SHA-1 and MD5 when asked."""

    sha256: str
    sha1: str | None = None
    md5: str | None = None

    def items(self) -> list[tuple[str, str]]:
        """(kind, hex) for each kind present, in ``ALGORITHMS`` order (SHA-256 first)."""
        return [(kind, value) for kind in ALGORITHMS if (value := getattr(self, kind)) is not None]


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """The wanted kinds in ``ALGORITHMS`` order, SHA-256 always among them; ClientError
    naming an unknown kind (a typo must not silently hash less)."""
    unknown = [k for k in kinds if k not in ALGORITHMS]
    if unknown:
        raise ClientError(f"unknown digest kind {unknown[0]!r}; known: {', '.join(ALGORITHMS)}")
    return tuple(k for k in ALGORITHMS if k == "sha256" or k in kinds)


def hash_file(path: Path, kinds: Sequence[str] = ("sha256",), *,
              chunk: int = 1 << 20) -> tuple[Digests, os.stat_result]:
    """The digests of ``path`` and its ``fstat`` taken when it was opened.

    Refuses (ClientError naming the path) a symlink, folder, fifo, socket or device, and a
    file that cannot be opened or read. A file that changes while it is read is hashed as
    read, up to the end met at that time: the digests may then match neither its old nor
    its new content, but the stat returned is the one from before reading, so a cache keyed
    on size and mtime sees the change (the mtime moved) and hashes it again next time.
    """
    wanted = check_kinds(kinds)
    if not MIN_CHUNK <= chunk <= MAX_CHUNK:
        raise ClientError(f"chunk size {chunk} is outside {MIN_CHUNK}..{MAX_CHUNK} bytes")
    fd, info = _open_regular(path)
    try:
        hashes = [hashlib.new(k) for k in wanted]
        _feed(fd, hashes, chunk, path)
    finally:
        os.close(fd)
    found = {k: h.hexdigest() for k, h in zip(wanted, hashes)}
    return Digests(**found), info


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """An open descriptor on the regular file ``path`` and its fstat, or ClientError."""
    name = os.fspath(path)  # once: a Path makes its string again on every call
    try:
        before = os.lstat(name)
    except OSError as e:
        raise ClientError(f"{path}: cannot read: {e.strerror or e}") from None
    _refuse_special(path, before)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ClientError(f"{path}: is a symlink; not followed") from None
        raise ClientError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        _refuse_special(path, info)
        if (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
            raise ClientError(f"{path}: was replaced while being opened")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _refuse_special(path: Path, info: os.stat_result) -> None:
    """ClientError saying what ``path`` is when it is not a regular file."""
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return
    what = ("a symlink" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
            else "a fifo" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    raise ClientError(f"{path}: is {what}; only regular files are hashed")


def _feed(fd: int, hashes: list[hashlib._Hash], chunk: int, path: Path) -> None:
    """Read ``fd`` to its end into one reused buffer, updating every hash from each chunk."""
    buf, view = _buffer(chunk)
    updates = [h.update for h in hashes]
    bufs = [buf]
    readv = os.readv
    try:
        while n := readv(fd, bufs):
            part = view if n == chunk else view[:n]
            for update in updates:
                update(part)
    except OSError as e:
        raise ClientError(f"{path}: cannot read: {e.strerror or e}") from None


def _buffer(chunk: int) -> tuple[bytearray, memoryview]:
    """This thread's buffer of ``chunk`` bytes (made on first use, kept for the next file)."""
    held: tuple[bytearray, memoryview] | None = getattr(_buffers, "held", None)
    if held is None or len(held[0]) != chunk:
        buf = bytearray(chunk)
        held = buf, memoryview(buf)
        _buffers.held = held
    return held
