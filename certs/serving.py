"""What a running server presents, recorded so that ``rampart ca show`` can tell it rather
than guess it from the files (which change before a server takes them).

Each door that presents certificates writes ``DATA/tls/serving-<door>.json`` (0600,
written whole) every time it loads a CA: the CA's and its certificate's SHA-256, the
process id and when. While it runs, the process holds an exclusive lock on
``DATA/tls/serving-<door>.lock``. The kernel drops that lock when the process ends, however
it ends, so a reader that can take the lock knows the record was left by a server that
is gone (a crash, a kill): a pid could be reused, a lock cannot be left held.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from certs.ca import fingerprint
from certs.rotate import SERVED_DIR
from proxy import files
from proxy.clock import utcnow
from proxy.errors import CertError

logger = logging.getLogger(__name__)

RECORD_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Served:
    """One running door's record: ``door`` is ``query`` or ``intercept``."""

    door: str
    ca_sha256: str
    certificate_sha256: str | None
    pid: int
    since: str


def _paths(data_dir: Path, door: str) -> tuple[Path, Path]:
    folder = Path(data_dir) / SERVED_DIR
    return folder / f"serving-{door}.json", folder / f"serving-{door}.lock"


class Serving:
    """The record one door of this process keeps (``record`` after each load, ``close`` at
    stop). A second server on the same data directory finds the lock held: it serves as
    usual but leaves the record to the first, and says so."""

    def __init__(self, data_dir: Path, door: str, label: str) -> None:
        self.door = door
        self.label = label
        self.path, self._lock_path = _paths(data_dir, door)
        self._fd: int | None = None
        self._shared = False

    def _hold(self) -> bool:
        if self._fd is not None:
            return True
        if self._shared:
            return False
        files.make_dirs(self.path.parent)
        fd = files.open_private(self._lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            self._shared = True
            logger.warning("another server on this data directory records what its %s presents; "
                           "`rampart ca show` reports that one", self.label)
            return False
        self._fd = fd
        return True

    def record(self, ca_cert: x509.Certificate, leaf: x509.Certificate | None) -> None:
        """Record that this door now presents certificates from ``ca_cert`` (``leaf`` its own)."""
        try:
            if not self._hold():
                return
            body = {
                "door": self.door,
                "ca_sha256": fingerprint(ca_cert),
                "certificate_sha256": fingerprint(leaf) if leaf is not None else None,
                "pid": os.getpid(),
                "since": utcnow().isoformat(timespec="seconds"),
            }
            files.write_atomic(self.path, json.dumps(body).encode() + b"\n")
        except OSError as exc:  # the door serves regardless; only `ca show` loses its answer
            logger.warning("cannot record what the %s presents in %s: %s",
                           self.label, self.path, exc.strerror or exc)

    def close(self) -> None:
        """The door stopped: remove its record, then let go of the lock."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def _held(lock: Path) -> bool:
    """Whether a running process holds ``lock`` (False when it is missing or free)."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def running(data_dir: Path) -> list[Served]:
    """The records of the doors a running server holds on ``data_dir``, by door name;
    records stopped or killed servers left behind are left out."""
    folder = Path(data_dir) / SERVED_DIR
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("serving-*.json")):
        door = path.stem.removeprefix("serving-")
        try:
            if not _held(_paths(data_dir, door)[1]):
                continue
            body = files.read_json(path, RECORD_LIMIT, error=CertError)
            out.append(Served(str(body["door"]), str(body["ca_sha256"]),
                              None if body.get("certificate_sha256") is None
                              else str(body["certificate_sha256"]),
                              int(body["pid"]), str(body["since"])))
        except FileNotFoundError:
            continue  # the server stopped meanwhile
        except OSError as exc:
            raise CertError(f"cannot read {path}: {exc.strerror or exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CertError(f"{path} is not a serving record; a running server rewrites it "
                            "at its next load, or remove it") from None
    return out
