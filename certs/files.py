"""Small file helpers for TLS material: bounded reads, private-key checks, atomic writes.

Private files are created with mode 0600 from the first byte (``os.open`` with
the mode), never written first and narrowed later, and replace their old
version atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from proxy.errors import CertError

logger = logging.getLogger(__name__)

MAX_PEM_BYTES = 1 << 20
"""The largest PEM file read (a CA file is a few kilobytes)."""

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


def read_bounded(path: Path, *, private: bool = False, limit: int = MAX_PEM_BYTES) -> bytes:
    """Read ``path`` whole, refusing files over ``limit`` bytes.

    With ``private=True`` the file must not be accessible to group or others
    (checked on the opened file, so a swap between check and read is harmless).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CertError(f"{path} does not exist") from None
    except OSError as exc:
        raise CertError(f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CertError(f"{path} is not a regular file")
        if private:
            check_private_mode(path, info.st_mode)
        if info.st_size > limit:
            raise CertError(f"{path} is {info.st_size} bytes; at most {limit} are accepted")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise CertError(f"{path} is over {limit} bytes")
    return data


def check_private_mode(path: Path, mode: int) -> None:
    """Refuse a private-key file that group or others may read or write."""
    loose = stat.S_IMODE(mode) & 0o077
    if loose:
        raise CertError(
            f"{path} holds a private key but its mode is {stat.S_IMODE(mode):04o} "
            f"(group/others have access); fix it with: chmod 600 {path}"
        )


def write_atomic(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Private files are created 0600 (the umask can only narrow that); both kinds
    are set to exactly their mode (0600, 0644) before any byte is written.
    """
    mode = PRIVATE_MODE if private else PUBLIC_MODE
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, mode)
    except OSError as exc:
        raise CertError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # exactly: the umask narrowed it, or cleared 0644
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CertError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents, each exactly 0700 whatever the umask; refuse an
    existing folder another user owns or may write to (they could have replaced a key in it).

    The same rule as ``proxy.files.check_private_dir``, which ``certs`` may not import.
    """
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.is_dir()]
    try:
        for folder in reversed(missing):
            folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
            os.chmod(folder, PRIVATE_DIR_MODE)  # mkdir's mode is narrowed by the umask
        info = os.stat(path)
    except OSError as exc:
        raise CertError(f"cannot create folder {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise CertError(f"{path} is not a folder")
    if info.st_uid != os.geteuid():
        raise CertError(f"{path} belongs to uid {info.st_uid}, not to uid {os.geteuid()} who "
                        f"runs rampart; run rampart as its owner")
    loose = stat.S_IMODE(info.st_mode) & 0o022
    if loose:
        who = " and ".join(w for bit, w in ((0o020, "its group"), (0o002, "other users")) if loose & bit)
        raise CertError(f"{path} is writable by {who} (mode {stat.S_IMODE(info.st_mode):04o}), who "
                        f"could have replaced a key in it; check its contents, then: chmod go-w {path}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        logger.debug("folder fsync not supported")
    finally:
        os.close(fd)
