"""The quarantine: malicious files moved into a private folder, recorded in the client's
state, and put back on request.

A quarantined file is named by its record's id (16 random hex digits: no name from the
scanned tree ever becomes a path here, and ids are not guessable from one another) and is
0600 in a 0700 folder, so it can neither run nor be read by other users. The record
(``proxy.client.state.QuarantineRecord``) keeps the original path, digests, threat,
time, size and mode; restoring puts the content back with that mode.

The record is written before the file moves and removed again if the move fails: a crash
in between leaves a record whose file is reported missing, never a quarantined file no
record knows. Across file systems a rename cannot move the file, so it is copied (whole,
fsync'd, under a temporary name) and the original unlinked after; ``rename`` is the seam
for tests to take that path.
"""

from __future__ import annotations

import builtins
import errno
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from proxy.client.digests import Digests
from proxy.client.errors import ClientError
from proxy.client.state import ClientState, QuarantineRecord
from proxy.files import PRIVATE_FILE, check_private_dir, fsync_dir, make_dirs, write_atomic_with

__all__ = ["Quarantine", "QuarantineRecord"]

_ID = re.compile(r"[0-9a-f]{16}")

Rename = Callable[[Path, Path], None]


class Quarantine:
    """Quarantine records in ``state``; new files go into ``folder`` (made 0700; refused when
    another user owns it or may write to it). Listing, restoring and deleting follow each
    record's own stored path, so records made with another folder are handled too."""

    def __init__(self, state: ClientState, folder: Path, *, rename: Rename = os.rename,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.folder = Path(folder)
        self._rename = rename
        self._clock = clock

    def put(self, path: Path, digests: Digests, threat: str) -> QuarantineRecord:
        """Move the regular file ``path`` into the quarantine; ClientError naming it when it is
        not a regular file or cannot be moved (then it is left where it was)."""
        path = Path(os.path.abspath(path))
        try:
            info = os.lstat(path)
        except OSError as e:
            raise ClientError(f"{path}: cannot quarantine: {e.strerror or e}") from None
        if not stat.S_ISREG(info.st_mode):
            raise ClientError(f"{path}: is not a regular file; not quarantined")
        folder = check_private_dir(self.folder, "quarantine folder", error=ClientError)
        id = secrets.token_hex(8)
        while os.path.lexists(folder / id):
            id = secrets.token_hex(8)
        rec = QuarantineRecord(id=id, path=str(path), stored=str(folder / id), digests=digests,
                               threat=threat, at=self._clock(), size=info.st_size,
                               mode=stat.S_IMODE(info.st_mode))
        self.state.add_quarantine(rec)
        try:
            self._move(path, folder / id, info, PRIVATE_FILE, "move it into the quarantine")
        except BaseException:
            self.state.remove_quarantine(id)
            raise
        return rec

    def list(self, *, here_only: bool = False) -> builtins.list[QuarantineRecord]:
        """Every record, oldest first (with ``here_only``, only those stored in ``folder``)."""
        records = self.state.quarantine_records()
        if here_only:
            here = os.path.abspath(self.folder)
            records = [r for r in records if os.path.dirname(r.stored) == here]
        return records

    def present(self, rec: QuarantineRecord) -> bool:
        """Whether the record's file is still in the quarantine, at its recorded size."""
        try:
            info = os.lstat(rec.stored)
        except OSError:
            return False
        return stat.S_ISREG(info.st_mode) and info.st_size == rec.size

    def restore(self, id: str, *, to: Path | None = None, overwrite: bool = False) -> Path:
        """Put the file back at its original path (or ``to``; a folder there means the original
        name inside it) with its original mode, and forget the record; returns where it went.
        ClientError for an unknown id, a quarantined file gone or changed, or a target that
        exists (unless ``overwrite``; a folder is never overwritten)."""
        rec = self._record(id)
        stored = Path(rec.stored)
        info = self._stored_info(rec)
        target = Path(os.path.abspath(to if to is not None else rec.path))
        if to is not None and target.is_dir():
            target = target / Path(rec.path).name
        if os.path.lexists(target):
            if target.is_dir() and not target.is_symlink():
                raise ClientError(f"cannot restore {id} to {target}: a folder is there")
            if not overwrite:
                raise ClientError(f"cannot restore {id}: {target} exists; restore it elsewhere "
                                  "or allow overwriting")
        try:
            make_dirs(target.parent)
        except OSError as e:
            raise ClientError(f"cannot restore {id} to {target}: {e.strerror or e}") from None
        self._move(stored, target, info, rec.mode, f"restore {id} there")
        self.state.remove_quarantine(id)
        return target

    def delete(self, id: str) -> QuarantineRecord:
        """Remove the quarantined file for good (a file already gone is fine) and its record."""
        rec = self._record(id)
        try:
            os.unlink(rec.stored)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ClientError(f"cannot delete quarantined file {rec.stored}: {e.strerror or e}") from None
        self.state.remove_quarantine(id)
        return rec

    # ------------------------------------------------------------ inside

    def _record(self, id: str) -> QuarantineRecord:
        if not _ID.fullmatch(id):
            raise ClientError(f"{id[:100]!r} is not a quarantine record id (16 hex digits, "
                              "as rampart client quarantine list shows)")
        rec = self.state.quarantine_record(id)
        if rec is None:
            raise ClientError(f"no quarantine record {id}")
        return rec

    def _stored_info(self, rec: QuarantineRecord) -> os.stat_result:
        """The stored file's lstat; ClientError saying so when it vanished or changed."""
        try:
            info = os.lstat(rec.stored)
        except FileNotFoundError:
            raise ClientError(f"quarantine record {rec.id} ({rec.path}): its file {rec.stored} is "
                              f"missing; delete the record with: rampart client quarantine delete {rec.id}"
                              ) from None
        except OSError as e:
            raise ClientError(f"quarantine record {rec.id}: cannot read {rec.stored}: "
                              f"{e.strerror or e}") from None
        if not stat.S_ISREG(info.st_mode) or info.st_size != rec.size:
            raise ClientError(f"quarantine record {rec.id} ({rec.path}): {rec.stored} has changed since "
                              f"it was quarantined (not a regular file of {rec.size} bytes)")
        return info

    def _move(self, src: Path, dst: Path, info: os.stat_result, mode: int, what: str) -> None:
        """Move ``src`` (the file ``info`` describes) to ``dst`` with exactly ``mode``: a rename,
        or across file systems a whole copy then an unlink of ``src``."""
        try:
            self._rename(src, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise ClientError(f"{src}: cannot {what}: {e.strerror or e}") from None
            _copy_then_unlink(src, dst, info, mode, what)
        else:
            _set_mode(dst, info, mode, what)
        fsync_dir(dst.parent)


def _open_same(path: Path, info: os.stat_result, what: str) -> int:
    """``path`` opened without following a symlink, checked to be the file ``info`` describes
    (a swap in between is refused, not acted on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise ClientError(f"{path}: cannot {what}: {e.strerror or e}") from None
    now = os.fstat(fd)
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
        os.close(fd)
        raise ClientError(f"{path}: was replaced meanwhile; cannot {what}")
    return fd


def _set_mode(path: Path, info: os.stat_result, mode: int, what: str) -> None:
    """Give the file just renamed to ``path`` exactly ``mode`` (through its descriptor)."""
    fd = _open_same(path, info, what)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _copy_then_unlink(src: Path, dst: Path, info: os.stat_result, mode: int, what: str) -> None:
    """Copy ``src`` whole to ``dst`` (``mode``, times kept), then unlink ``src``; when the
    unlink is refused the copy is removed again, so the file is in one place only."""
    fd = _open_same(src, info, what)
    try:
        with os.fdopen(fd, "rb") as f:
            os.set_blocking(f.fileno(), True)

            def fill(out: BinaryIO) -> None:
                shutil.copyfileobj(f, out, 1 << 20)

            write_atomic_with(dst, fill, mode=mode)
    except OSError as e:
        raise ClientError(f"{src}: cannot {what} (copying to {dst}): {e.strerror or e}") from None
    os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
    try:
        os.unlink(src)
    except OSError as e:
        os.unlink(dst)
        raise ClientError(f"{src}: cannot {what}: copied, but the original cannot be removed: "
                          f"{e.strerror or e}") from None
