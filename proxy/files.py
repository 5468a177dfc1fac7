"""Files the appliance writes: private whatever the umask, and whole or not at all.

Every folder Rampart makes is 0700 and every file 0600 unless a caller asks for
another mode: the mode is given when the file or folder is created and then set
exactly (``fchmod``/``chmod``), so neither a permissive umask (000 would give
0777 folders and 0666 files) nor an odd one changes it. Whole-file writes go
through a temporary file, fsync and a rename, so a reader never sees half of one.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from proxy.errors import RampartError

logger = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def dir_mode_for(file_mode: int) -> int:
    """The mode of a folder made to hold a file of ``file_mode``: searchable by whoever may
    read the file (0600 -> 0700, 0644 -> 0755)."""
    return file_mode | ((file_mode & 0o444) >> 2)


def make_dirs(path: Path, mode: int = PRIVATE_DIR) -> Path:
    """Create ``path`` and its missing parents, each with exactly ``mode``; returns ``path``.

    ``Path.mkdir(parents=True)`` gives the parents 0777 minus the umask and
    ``mode`` only to the last one. Folders that exist are left as they are.
    """
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.is_dir() and p.parent != p:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)  # the umask can only narrow this...
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # made meanwhile by another process
        os.chmod(d, mode)  # ...and this undoes the narrowing
    return path


def check_private_dir(path: Path, what: str = "data directory") -> Path:
    """Create ``path`` (0700) if missing; refuse it if another user owns it or may write to it.

    Refused rather than tightened: whoever could write there may already have
    swapped the pattern pointer, planted a list database or replaced a key, and
    a quiet chmod would then trust what they left. The operator checks the
    contents and fixes the mode (the message says how); a folder another user
    owns cannot be tightened by this one anyway.
    """
    path = Path(path)
    try:
        info = os.stat(make_dirs(path))
    except FileExistsError as e:
        raise RampartError(f"cannot use {what} {path}: {e.filename} is not a directory") from None
    except OSError as e:
        raise RampartError(f"cannot use {what} {path}: {e.strerror or e}") from None
    me = os.geteuid()
    if info.st_uid != me:
        raise RampartError(
            f"{what} {path} belongs to {_user(info.st_uid)}, not to {_user(me)} who runs rampart; "
            f"run rampart as {_user(info.st_uid)} (files made by another user break the service)"
        )
    loose = stat.S_IMODE(info.st_mode) & 0o022
    if loose:
        who = " and ".join(w for bit, w in ((0o020, "its group"), (0o002, "other users")) if loose & bit)
        raise RampartError(
            f"{what} {path} is writable by {who} (mode {stat.S_IMODE(info.st_mode):04o}), who could "
            f"have changed what rampart reads from it; check its contents, then: chmod go-w {path}"
        )
    return path


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r}"
    except KeyError:
        return f"uid {uid}"


def open_private(path: Path, flags: int = os.O_RDWR) -> int:
    """Open ``path`` (a file descriptor), creating it 0600; an existing file is set to 0600.

    A file group or others could use (made by an older release or under a loose
    umask) is narrowed, with a warning: its folder is private, so only its
    mode, not who wrote it, is in question. Anything but a regular file (say
    /dev/null) is opened as it is.
    """
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISREG(info.st_mode) and mode != PRIVATE_FILE:
            os.fchmod(fd, PRIVATE_FILE)
            if mode & 0o077:
                logger.warning("%s was mode %04o; now 0600 (private)", path, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private(path: Path) -> Path:
    """Make sure ``path`` exists as a private (0600) file, keeping what it holds.

    For files another library creates with its own mode (SQLite uses 0644
    minus the umask): made here first, the library opens it as it is.
    """
    os.close(open_private(path))
    return path


def _replace_with(dst: Path, fill: Callable[[BinaryIO], object], mode: int) -> None:
    make_dirs(dst.parent, dir_mode_for(mode))
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(dst: Path, data: bytes, *, mode: int = PRIVATE_FILE) -> None:
    """``dst`` holds ``data`` whole, or is left as it was; it gets exactly ``mode``."""
    _replace_with(dst, lambda out: out.write(data), mode)


def copy_atomic(src: Path, dst: Path, *, mode: int = PRIVATE_FILE) -> None:
    """``dst`` becomes a copy of ``src`` whole, or is left as it was; it gets exactly ``mode``."""

    def fill(out: BinaryIO) -> None:
        with open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    _replace_with(dst, fill, mode)
