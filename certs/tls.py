"""TLS contexts for the appliance's own servers and for its clients.

``server_context`` gives the query door and the reference cloud (and the planned console) a
server certificate issued by the appliance CA. The key and chain live together
in one 0600 file in the state folder, ``tls-<purpose>.pem``, so a reader never
sees a new certificate with an old key; it is reused while it was issued by the
current CA for exactly the wanted names and has more than 30 days left, and
reissued otherwise.

``client_context`` is the verifying client side: the system bundle, or one CA
file (the appliance's ``ca.pem``, a cloud's CA). Verification is never turned off.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.ca import CA, CAKey, same_public_key
from certs.files import make_private_dir, read_pem, write_pem
from certs.names import normalize_name, normalize_names
from proxy.clock import utcnow
from proxy.errors import CertError

logger = logging.getLogger(__name__)

RENEW_BEFORE = dt.timedelta(days=30)
"""A server certificate with this little validity left is reissued at start."""


def leaf_path(state_dir: Path, purpose: str = "server") -> Path:
    """Where ``server_context`` keeps the key and chain for ``purpose``."""
    if not purpose.replace("-", "").isalnum():
        raise CertError(f"certificate purpose {purpose!r} must be letters, digits and dashes")
    return Path(state_dir) / f"tls-{purpose}.pem"


def san_names(cert: x509.Certificate) -> set[str]:
    """The certificate's DNS and IP SANs in canonical form."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    out: set[str] = set()
    for value in [*san.get_values_for_type(x509.DNSName), *san.get_values_for_type(x509.IPAddress)]:
        try:
            out.add(normalize_name(str(value)))
        except CertError:
            out.add(str(value))
    return out


def renewal_reason(
    ca: CA, chain: Sequence[x509.Certificate], names: Sequence[str], now: dt.datetime
) -> str | None:
    """Why a stored server chain must be reissued, or ``None`` when it can be reused."""
    if not chain:
        return "no certificate"
    leaf = chain[0]
    if not ca.signed(leaf) or chain[-1] != ca.cert:
        return "issued by another CA"
    if san_names(leaf) != set(normalize_names(names)):
        return "names changed"
    if leaf.not_valid_before_utc > now:
        return "not valid yet"
    if leaf.not_valid_after_utc - now <= RENEW_BEFORE:
        return "expires within 30 days"
    return None


def server_context(
    ca: CA,
    names: Sequence[str],
    *,
    state_dir: Path,
    purpose: str = "server",
    now: dt.datetime | None = None,
) -> ssl.SSLContext:
    """A server-side TLS (1.2 or later) context with a certificate for ``names`` from ``ca``.

    The certificate is issued on first use and reused while ``renewal_reason``
    finds nothing wrong with it.
    """
    names = normalize_names(names)
    now = now or utcnow()
    path = leaf_path(state_dir, purpose)
    reason = _stored_leaf_problem(ca, path, names, now)
    if reason is not None:
        make_private_dir(Path(state_dir))
        chain_pem, key_pem = ca.issue(names, now=now)
        write_pem(path, key_pem + chain_pem, private=True)
        logger.info("issued server certificate", extra={"purpose": purpose, "reason": reason})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslobject_class = DirectSSLObject
    try:
        context.load_cert_chain(path)
    except (OSError, ssl.SSLError) as exc:
        raise CertError(f"cannot load server certificate {path}: {exc}") from None
    return context


class DirectSSLObject(ssl.SSLObject):
    """An ``ssl.SSLObject`` whose ``read``, ``write`` and ``pending`` are its C object's own.

    ``ssl.SSLObject`` wraps each in a Python method that only forwards the call (the same
    arguments, result and exceptions). The event loop's TLS layer (uvloop's, asyncio's)
    calls them several times a request, so binding the C methods on each instance saves
    a Python frame a call: about 1.5 µs a request on the HTTPS query door, an eighth of
    it. Everything else is ``SSLObject``'s (tests/certs/test_tls_direct.py holds the two
    alike over a handshake and data both ways).
    """

    @classmethod
    def _create(cls, *args: object, **kwargs: object) -> DirectSSLObject:
        made: DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        inner = made._sslobj  # type: ignore[attr-defined]
        vars(made).update(read=inner.read, write=inner.write, pending=inner.pending)
        return made


def _stored_leaf_problem(ca: CA, path: Path, names: Sequence[str], now: dt.datetime) -> str | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return "first use"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_IMODE(info.st_mode) & 0o077:
        logger.warning(
            "server key was readable by others; issuing a new one", extra={"purpose": path.stem}
        )
        return "key file mode too open"
    try:
        data = read_pem(path, private=True)
        chain = x509.load_pem_x509_certificates(data)
        key = serialization.load_pem_private_key(data, password=None)
    except (CertError, ValueError, TypeError) as exc:
        logger.warning("stored server certificate unusable: %s", exc)
        return "unusable file"
    if not isinstance(key, CAKey) or not same_public_key(chain[0], key):
        return "key does not match"
    return renewal_reason(ca, chain, names, now)


def client_context(cafile: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """A verifying client context (hostname and chain, TLS 1.2 or later).

    ``cafile=None`` trusts the system bundle; otherwise only the CAs in ``cafile``.
    """
    try:
        context = ssl.create_default_context(cafile=os.fspath(cafile) if cafile else None)
    except FileNotFoundError:
        raise CertError(f"CA file {cafile} does not exist") from None
    except (OSError, ssl.SSLError) as exc:
        raise CertError(f"cannot use CA file {cafile}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def expiry_report(ca: CA, leaf_paths: Iterable[Path]) -> list[tuple[str, dt.datetime]]:
    """When the CA and each stored certificate expire, CA first; missing files are left out."""
    report = [(f"CA {ca.subject_text()}", ca.not_after)]
    for path in leaf_paths:
        if not Path(path).exists():
            continue
        try:
            cert = x509.load_pem_x509_certificates(read_pem(Path(path)))[0]
        except ValueError:
            raise CertError(f"{path} does not hold a PEM certificate") from None
        report.append((str(path), cert.not_valid_after_utc))
    return report
