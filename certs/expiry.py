"""When the appliance's certificates expire, and the warnings ``/readyz`` and metrics show.

Reads certificates only (``DATA/ca.pem`` and the served ``DATA/tls/tls-*.pem``),
never a key, so it works for any reader and costs a few small file reads.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from certs.ca import CA_CERT_FILE, CA_WARN_DAYS
from certs.files import read_pem
from certs.rotate import served_paths
from proxy.clock import utcnow
from proxy.errors import CertError

logger = logging.getLogger(__name__)

LEAF_WARN_DAYS = 30


@dataclass(frozen=True, slots=True)
class Expiry:
    """One certificate's end of validity. ``name`` is ``ca`` or ``tls-<purpose>``."""

    name: str
    subject: str
    not_after: dt.datetime

    def seconds_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds()

    def days_left(self, now: dt.datetime) -> int:
        """Whole days of validity left at ``now`` (negative once expired)."""
        return days_left(self.not_after, now)


def days_left(not_after: dt.datetime, now: dt.datetime) -> int:
    """Whole days from ``now`` to ``not_after`` (negative once it has passed)."""
    return int((not_after - now).total_seconds() // 86400)


def _first_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificates(read_pem(path))[0]
    except ValueError:
        raise CertError(f"{path.name} does not hold a PEM certificate") from None


def certificate_expiries(data_dir: Path) -> list[Expiry]:
    """The CA first, then each served certificate; missing or unreadable files are left out
    (an unreadable one is logged: the server replaces it at its next start)."""
    data_dir = Path(data_dir)
    out: list[Expiry] = []
    for name, path in [("ca", data_dir / CA_CERT_FILE)] + [(p.stem, p) for p in served_paths(data_dir)]:
        if not path.exists():
            continue
        try:
            cert = _first_cert(path)
        except CertError as exc:
            logger.warning("cannot read certificate %s: %s", name, exc)
            continue
        out.append(Expiry(name, cert.subject.rfc4514_string(), cert.not_valid_after_utc))
    return out


def warnings_for(
    expiries: Sequence[Expiry],
    now: dt.datetime,
    *,
    within_days: int = LEAF_WARN_DAYS,
    ca_within_days: int = CA_WARN_DAYS,
) -> list[str]:
    """One line per certificate that has expired or expires within its warning window
    (``ca_within_days`` for the CA, which products must be given again; ``within_days``
    for served certificates, which are reissued at start)."""
    out = []
    for e in expiries:
        window = ca_within_days if e.name == "ca" else within_days
        left = e.seconds_left(now)
        what = "the CA" if e.name == "ca" else f"served certificate {e.name}"
        if left <= 0:
            out.append(f"{what} expired on {e.not_after:%Y-%m-%d}")
        elif left <= window * 86400:
            days = e.days_left(now)
            fix = ("rotate it: rampart ca rotate" if e.name == "ca"
                   else "a running server reissues it within the hour")
            out.append(f"{what} expires in {days} days ({e.not_after:%Y-%m-%d}); {fix}")
    return out


def expiry_warnings(
    data_dir: Path, within_days: int = LEAF_WARN_DAYS, *, now: dt.datetime | None = None
) -> list[str]:
    """Warnings for the certificates in ``data_dir`` (see ``warnings_for``)."""
    now = now or utcnow()
    return warnings_for(certificate_expiries(data_dir), now, within_days=within_days)
