"""The intercept door follows the appliance CA: after ``rampart ca rotate`` or ``ca import``
new intercepted connections get certificates from the new CA within seconds.

mitmproxy's ``TlsConfig`` builds its certificate store from the confdir once, when it is
configured, and forges every interception certificate from that store. This addon
polls the CA files (``certs.follow``) and, when they changed, loads the CA from the data
directory, writes it into the confdir if it is not there yet (a CA replaced by hand),
builds a new ``CertStore`` from the confdir and puts it in place of the old one.
Connections already open keep the certificate they were given.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from mitmproxy.addons.tlsconfig import TlsConfig
from mitmproxy.certs import CertStore

import certs
from certs.ca import CA_CERT_FILE, CA_KEY_FILE
from certs.follow import Follower
from certs.serving import Serving
from proxy.errors import CertError

logger = logging.getLogger(__name__)

BASENAME = "mitmproxy"


class InterceptCerts(Follower[CertStore]):
    """A ``Follower`` whose load is a mitmproxy ``CertStore`` of the current CA."""

    def __init__(self, data_dir: Path) -> None:
        data_dir = Path(data_dir)
        self.confdir = data_dir / certs.MITMPROXY_DIR
        watched = [data_dir / CA_CERT_FILE, data_dir / CA_KEY_FILE,
                   self.confdir / f"{BASENAME}-ca.pem"]
        super().__init__(data_dir, watched, Serving(data_dir, "intercept", "intercept door"))

    def load(self) -> tuple[CertStore, x509.Certificate, x509.Certificate | None]:
        ca = certs.CA.load(self.data_dir)
        ca.sync_mitmproxy(self.confdir)
        ca_file = self.confdir / f"{BASENAME}-ca.pem"
        try:
            store = CertStore.from_files(ca_file, self.confdir / f"{BASENAME}-dhparam.pem")
        except (OSError, ValueError) as exc:
            raise CertError(f"cannot load {ca_file}: {exc}") from None
        if store.default_ca.fingerprint() != ca.cert.fingerprint(hashes.SHA256()):
            raise CertError(f"{ca_file} does not hold the CA in {self.data_dir / CA_CERT_FILE}")
        return store, ca.cert, None


class CertReload:
    """mitmproxy addon: keep ``tlsconfig.certstore`` on the current appliance CA."""

    def __init__(self, data_dir: Path, tlsconfig: TlsConfig) -> None:
        self.certs = InterceptCerts(data_dir)
        self.tlsconfig = tlsconfig
        self._task: asyncio.Task[None] | None = None

    def _use(self, store: CertStore) -> None:
        self.tlsconfig.certstore = store

    def running(self) -> None:
        """After TlsConfig's own ``running`` (added before this addon): load and record the
        CA now, so a change between its load and the first poll is not missed."""
        try:
            self._use(self.certs.first())
        except CertError as exc:  # TlsConfig's own store serves meanwhile
            logger.warning("intercept door: %s; trying again when the CA files change", exc.message)
        self._task = asyncio.get_running_loop().create_task(self.certs.follow(self._use))

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.certs.close()
