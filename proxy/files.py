"""Files the appliance writes and reads: private whatever the umask, whole or not at all,
and bounded.

Every folder Rampart makes is 0700 and every file 0600 unless a caller asks for
another mode: the mode is given when the file or folder is created and then set
exactly (``fchmod``/``chmod``), so neither a permissive umask (000 would give
0777 folders and 0666 files) nor an odd one changes it. Whole-file writes go
through a temporary file, fsync, a rename and an fsync of the folder, so a
reader never sees half of one and a crash leaves the old file or the new one.
Reads are bounded (``read_bounded``, ``read_json``): a file larger than its
caller expects is refused before it is read into memory. ``locked`` serialises
processes on a lock file.

The readers, writers and ``locked`` raise ``OSError`` for what the system
refuses (a missing file, a full disk), so each caller says what that means to
it; what a helper refuses itself (and everything ``check_private_dir`` finds)
it raises as ``error`` (a ``RampartError`` by default, or the caller's own,
e.g. ``CertError``), with the same wording for every caller.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import pwd
import shutil
import sqlite3
import stat
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from proxy.errors import RampartError

logger = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
PUBLIC_FILE = 0o644

ErrorType = Callable[[str], Exception]
"""What a helper raises for what it refuses itself: an error class taking a message."""


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


def check_private_dir(path: Path, what: str = "data directory", *,
                      error: ErrorType = RampartError) -> Path:
    """Create ``path`` (0700) if missing; refuse it if another user owns it or may write to it.

    Refused rather than tightened: whoever could write there may already have
    swapped the pattern pointer, planted a list database or replaced a key, and
    a quiet chmod would then trust what they left. The operator checks the
    contents and fixes the mode (the message says how); a folder another user
    owns cannot be tightened by this one anyway. ``what`` names the folder in
    the message; ``error`` is raised.
    """
    path = Path(path)
    try:
        info = os.stat(make_dirs(path))
    except FileExistsError as e:
        raise error(f"cannot use {what} {path}: {e.filename} is not a directory") from None
    except OSError as e:
        raise error(f"cannot use {what} {path}: {e.strerror or e}") from None
    me = os.geteuid()
    if info.st_uid != me:
        raise error(
            f"{what} {path} belongs to {_user(info.st_uid)}, not to {_user(me)} who runs rampart; "
            f"run rampart as {_user(info.st_uid)} (files made by another user break the service)"
        )
    loose = stat.S_IMODE(info.st_mode) & 0o022
    if loose:
        who = " and ".join(w for bit, w in ((0o020, "its group"), (0o002, "other users")) if loose & bit)
        raise error(
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


SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def create_private_sqlite(path: Path) -> Path:
    """Make the SQLite database ``path`` 0600 before SQLite opens it (it would make it 0644
    minus the umask), and narrow the files it keeps beside it (``-wal``, ``-shm``,
    ``-journal``), which SQLite gives the database's mode; ones left by an older release
    are narrowed too. Call it again once WAL mode has made its files."""
    create_private(path)
    for suffix in SQLITE_SIDECARS:
        side = path.with_name(path.name + suffix)
        if side.exists():
            create_private(side)
    return path


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a file system that cannot is skipped."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
        logger.debug("folder fsync not supported for %s", path)
    finally:
        os.close(fd)


def write_atomic_with(dst: Path, fill: Callable[[BinaryIO], object], *,
                      mode: int = PRIVATE_FILE) -> None:
    """``dst`` becomes whatever ``fill`` writes into the open temporary file, whole, or is left
    as it was (``fill`` raising, say because what it wrote turned out wrong, removes the
    temporary file); it gets exactly ``mode``. Missing folders are made (``make_dirs``)."""
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
    fsync_dir(dst.parent)


def write_atomic(dst: Path, data: bytes, *, mode: int = PRIVATE_FILE) -> None:
    """``dst`` holds ``data`` whole, or is left as it was; it gets exactly ``mode``."""
    write_atomic_with(dst, lambda out: out.write(data), mode=mode)


def copy_atomic(src: Path, dst: Path, *, mode: int = PRIVATE_FILE) -> None:
    """``dst`` becomes a copy of ``src`` whole, or is left as it was; it gets exactly ``mode``."""

    def fill(out: BinaryIO) -> None:
        with open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    write_atomic_with(dst, fill, mode=mode)


def read_bounded(path: Path, limit: int, *, private: bool = False, error: ErrorType = RampartError,
                 label: str | None = None) -> bytes:
    """The bytes of ``path``, refusing anything but a regular file of at most ``limit`` bytes.

    With ``private`` the file (a key, say) must not be accessible to group or
    others. Both are checked on the opened file, so a swap between check and
    read is harmless. Refusals raise ``error`` naming ``label`` (default: the
    path); ``OSError`` when the file cannot be opened or read.
    """
    name = str(path) if label is None else label
    with open(os.open(path, os.O_RDONLY | os.O_CLOEXEC), "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{name} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if private and mode & 0o077:
            raise error(f"{name} holds a private key but its mode is {mode:04o} "
                        f"(group/others have access); fix it with: chmod 600 {path}")
        if info.st_size > limit:
            raise error(f"{name} is {info.st_size} bytes; at most {limit} are accepted")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{name} is over {limit} bytes")
    return data


def read_json(path: Path, limit: int, *, error: ErrorType = RampartError,
              label: str | None = None) -> Any:
    """The JSON document in ``path`` (``read_bounded``); ``error`` for one that is not JSON."""
    data = read_bounded(path, limit, error=error, label=label)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise error(f"{str(path) if label is None else label}: not JSON: {e}") from None


def read_toml(path: Path, limit: int, *, error: ErrorType = RampartError, label: str) -> dict[str, Any]:
    """The TOML document in ``path`` (``read_bounded``); ``error`` naming ``label`` (e.g.
    "config file X") for a file that cannot be read, is too large or is not TOML."""
    try:
        data = read_bounded(path, limit, error=error, label=label)
    except OSError as e:
        raise error(f"cannot read {label}: {e.strerror or e}") from None
    try:
        return tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise error(f"{label}: {e}") from None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (a 0600 file, made if missing) until the block ends."""
    fd = open_private(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def open_sqlite(path: Path, *, timeout: float = 10.0) -> sqlite3.Connection:
    """A connection to the SQLite file ``path`` in WAL mode (autocommit, usable from threads).

    Processes opening a new file at the same moment (servers started together on a
    fresh data directory) can have the switch to WAL refused at once, without SQLite's
    busy wait; it is tried again for up to ``timeout`` seconds. Raises sqlite3.Error.
    Make the file with its mode first (``create_private``): SQLite would use the umask.
    """
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        except sqlite3.OperationalError as e:
            conn.close()
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        except BaseException:
            conn.close()
            raise


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Cursor]:
    """One write transaction, as the stores take it: a new cursor inside ``BEGIN
    IMMEDIATE``, its work committed together or rolled back on any error (re-raised), the
    cursor closed either way. A store turns ``sqlite3.Error`` into its own error around it."""
    cur = conn.cursor()
    try:
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
    finally:
        cur.close()
