"""A running server follows its TLS material on disk: a CA rotation or import (or a served
certificate replaced) reaches new connections within ``POLL_SECONDS``, without a restart;
the query door's certificate is reissued when it enters its last 30 days.

A ``Follower`` polls the stamps (inode, size, modification time) of the files a door
presents, like the lists and pattern pollers do, and when one changed loads them again
and hands the result to the door (``use``); connections already open keep what they
had. Loads hold the CA lock (``DATA/.ca.lock``), which ``certs.rotate.install`` holds
while it writes the key, the certificate, mitmproxy's copy and the reissued served
certificates: a load sees all of the old set or all of the new, never a new CA with an
old key. Each file is also written whole (``proxy.files.write_atomic``). A load that
fails (a pair changed by hand that does not match) keeps what is served, logs why once,
and is tried again when the files change again.

``DoorTls`` is an HTTPS door's context: the query door's (and the reference cloud's) and
the console door's, each with its own served certificate; the intercept
door's follower lives in ``addons.certstore`` (it builds a mitmproxy certificate store).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from cryptography import x509

from certs.ca import CA, CA_CERT_FILE, CA_KEY_FILE, CA_LOCK_FILE, fingerprint
from certs.files import lock_file, read_pem
from certs.rotate import SERVED_DIR
from certs.serving import Serving
from certs.tls import RENEW_BEFORE, leaf_path, server_context
from proxy.errors import CertError

logger = logging.getLogger(__name__)

T = TypeVar("T")

POLL_SECONDS = 2.0
"""How often a running server looks at its certificate files (``rampart ca show`` says it)."""

RENEW_LOOK_SECONDS = 3600.0
"""How often the query door checks whether its certificate is due to be reissued."""

Stamp = tuple[tuple[int, int, int] | None, ...]
"""Per watched file: (inode, size, mtime in ns), or None while it is missing."""


def stamp(paths: Sequence[Path]) -> Stamp:
    """The stamps of ``paths``: a rename into place changes the inode even within one tick."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(out)


class Follower(Generic[T]):
    """Load what a door presents now (``first``), then again whenever ``paths`` change
    (``follow``), recording what is served in ``serving``."""

    def __init__(self, data_dir: Path, paths: Sequence[Path], serving: Serving) -> None:
        self.data_dir = Path(data_dir)
        self.paths = list(paths)
        self.serving = serving
        self._seen: Stamp = ()
        self._failed: Stamp | None = None

    def load(self) -> tuple[T, x509.Certificate, x509.Certificate | None]:
        """What the door is to present, the CA it comes from and its certificate (if one);
        called with the CA lock held. Raises ``CertError`` for material it cannot use."""
        raise NotImplementedError

    def _locked_load(self) -> T:
        with lock_file(self.data_dir / CA_LOCK_FILE):
            value, ca_cert, leaf = self.load()
            self._seen = stamp(self.paths)
        self.serving.record(ca_cert, leaf)
        logger.info("%s presents certificates from CA %s", self.serving.label, fingerprint(ca_cert))
        return value

    def first(self) -> T:
        """Load at start; a failure here is the start's (raised)."""
        return self._locked_load()

    def changed(self) -> bool:
        """Whether the files changed since the last load (or the last failed attempt), or what
        is presented is due to be renewed."""
        now = stamp(self.paths)
        return (now != self._seen and now != self._failed) or self.due()

    def due(self) -> bool:
        """Whether what is presented must be made again although no file changed (no: the
        default; the query door renews a certificate nearing its end)."""
        return False

    async def follow(self, use: Callable[[T], None], interval: float = POLL_SECONDS) -> None:
        """Poll forever; hand each new load to ``use`` (on the loop), keep the old on failure."""
        while True:
            await asyncio.sleep(interval)
            if not self.changed():
                continue
            attempt = stamp(self.paths)
            try:
                value = await asyncio.to_thread(self._locked_load)
            except CertError as exc:
                self._failed = attempt
                logger.warning("%s keeps its certificate: %s", self.serving.label, exc.message)
                continue
            except Exception:
                self._failed = attempt
                logger.exception("%s keeps its certificate: reloading failed", self.serving.label)
                continue
            self._failed = None
            use(value)

    def close(self) -> None:
        """The door stopped: it serves nothing any more."""
        self.serving.close()


class DoorTls(Follower[ssl.SSLContext]):
    """An HTTPS door's context: the served certificate ``DATA/tls/tls-PURPOSE.pem`` for
    ``names`` from the current CA, reissued from a new CA when the one on disk is not its
    (``purpose`` ``server``: the query door; ``console``: the console door)."""

    def __init__(self, data_dir: Path, names: Sequence[str],
                 clock: Callable[[], float] = time.time, *, purpose: str = "server",
                 door: str = "query", label: str = "query door (HTTPS)") -> None:
        data_dir = Path(data_dir)
        self.names = list(names)
        self.clock = clock
        self.purpose = purpose
        self._renew_at = dt.datetime.max.replace(tzinfo=dt.UTC)
        self._next_look = 0.0
        self.state_dir = data_dir / SERVED_DIR
        self.leaf = leaf_path(self.state_dir, purpose)
        watched = [data_dir / CA_CERT_FILE, data_dir / CA_KEY_FILE, self.leaf]
        super().__init__(data_dir, watched, Serving(data_dir, door, label))

    def load(self) -> tuple[ssl.SSLContext, x509.Certificate, x509.Certificate | None]:
        ca = CA.load(self.data_dir)
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        context = server_context(ca, self.names, state_dir=self.state_dir, now=now,
                                 purpose=self.purpose)
        leaf = x509.load_pem_x509_certificates(read_pem(self.leaf, private=True))[0]
        self._renew_at = leaf.not_valid_after_utc - RENEW_BEFORE
        self._next_look = self.clock() + RENEW_LOOK_SECONDS
        return context, ca.cert, leaf

    def due(self) -> bool:
        """The served certificate entered its last ``RENEW_BEFORE``: loading again reissues it
        (``server_context`` does). Looked at hourly, so a CA too close to its own end to give
        a longer certificate is not reissued every poll."""
        now = self.clock()
        if now < self._next_look:
            return False
        self._next_look = now + RENEW_LOOK_SECONDS
        return dt.datetime.fromtimestamp(now, dt.UTC) >= self._renew_at
