"""The appliance CA: create it on first start, load it after, issue server certificates.

Files in the data directory ``DATA``::

    DATA/ca.pem                          the CA certificate (0644), what products trust
    DATA/ca-key.pem                      the CA private key (0600, never leaves the appliance)
    DATA/mitmproxy/mitmproxy-ca.pem      key + certificate (0600): mitmproxy's ``confdir`` CA
    DATA/mitmproxy/mitmproxy-ca-cert.pem the certificate again (and ``.cer``), as mitmproxy names it

so the intercept door (mitmproxy with ``confdir=DATA/mitmproxy``) signs its
interception certificates with the same CA the query door uses.
mitmproxy reuses the CA key as the key of every certificate it forges, so the
key type is the one products must handshake with: EC P-256 by default, RSA-2048
for old products that cannot do ECDSA.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.files import lock_file, make_private_dir, read_pem, write_pem
from certs.names import general_name, normalize_names
from proxy.clock import utcnow
from proxy.errors import CertError

logger = logging.getLogger(__name__)

DEFAULT_CA_NAME = "Rampart Appliance CA"
ORGANIZATION = "Rampart"
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
MITMPROXY_DIR = "mitmproxy"
CA_LOCK_FILE = ".ca.lock"
MITMPROXY_BASENAME = "mitmproxy"
DEFAULT_CA_DAYS = 3650
DEFAULT_LEAF_DAYS = 397
"""The longest validity browsers and most TLS stacks accept for a server certificate."""
CA_WARN_DAYS = 90
_BACKDATE = dt.timedelta(hours=1)
"""Certificates start an hour in the past so clients with a slow clock accept them."""

CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyType(enum.Enum):
    """The CA's key algorithm (mitmproxy's forged certificates use the same key)."""

    EC_P256 = "ec-p256"
    RSA_2048 = "rsa-2048"


def _new_key(key_type: KeyType) -> CAKey:
    if key_type is KeyType.RSA_2048:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: CAKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (the files are private: mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as ``AB:CD:…`` (what ``openssl x509 -fingerprint -sha256`` prints
    and what products show)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def same_public_key(cert: x509.Certificate, key: CAKey) -> bool:
    """Whether ``key`` is the private key of ``cert``."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


@dataclass(frozen=True, slots=True)
class CA:
    """The appliance certificate authority: its certificate and private key."""

    cert: x509.Certificate
    key: CAKey

    # -- creation and storage -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        common_name: str = DEFAULT_CA_NAME,
        days: int = DEFAULT_CA_DAYS,
        key_type: KeyType = KeyType.EC_P256,
        now: dt.datetime | None = None,
    ) -> CA:
        """A new CA in memory (nothing is written)."""
        if not common_name or len(common_name) > 64:
            raise CertError(f"CA common name {common_name!r} must be 1 to 64 characters")
        if not 1 <= days <= 36500:
            raise CertError(f"CA validity of {days} days is out of range (1 to 36500)")
        now = now or utcnow()
        key = _new_key(key_type)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            ]
        )
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key)

    @classmethod
    def load(cls, data_dir: Path) -> CA:
        """Load ``DATA/ca.pem`` and ``DATA/ca-key.pem``; refuse a key others can read."""
        cert_path, key_path = data_dir / CA_CERT_FILE, data_dir / CA_KEY_FILE
        cert = _parse_cert(cert_path, read_pem(cert_path))
        key = _parse_key(key_path, read_pem(key_path, private=True))
        ca = cls(cert=cert, key=key)
        ca._validate(cert_path, key_path)
        return ca

    @classmethod
    def ensure(
        cls,
        data_dir: Path,
        *,
        common_name: str = DEFAULT_CA_NAME,
        days: int = DEFAULT_CA_DAYS,
        key_type: KeyType = KeyType.EC_P256,
        now: dt.datetime | None = None,
    ) -> CA:
        """Load the CA from ``data_dir``, creating it on first start, and make sure
        mitmproxy's confdir (``DATA/mitmproxy``) holds the same CA.

        Starts racing on a fresh data directory create it once, under a lock
        (``DATA/.ca.lock``): the others load that one, never a mixed key and cert.
        """
        data_dir = Path(data_dir)
        if (data_dir / CA_CERT_FILE).exists() and (data_dir / CA_KEY_FILE).exists():
            ca = cls.load(data_dir)
        else:
            make_private_dir(data_dir)
            with lock_file(data_dir / CA_LOCK_FILE):
                ca = cls._load_or_create(data_dir, common_name=common_name, days=days,
                                         key_type=key_type, now=now)
        ca.sync_mitmproxy(data_dir / MITMPROXY_DIR)
        ca._warn_expiry(now or utcnow())
        return ca

    @classmethod
    def _load_or_create(cls, data_dir: Path, *, common_name: str, days: int, key_type: KeyType,
                        now: dt.datetime | None) -> CA:
        cert_path, key_path = data_dir / CA_CERT_FILE, data_dir / CA_KEY_FILE
        have_cert, have_key = cert_path.exists(), key_path.exists()
        if have_cert and have_key:
            ca = cls.load(data_dir)
        elif have_cert or have_key:
            present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
            raise CertError(
                f"{present} exists but {missing} does not; restore {missing.name}, "
                f"or move {present.name} aside to create a new CA"
            )
        else:
            ca = cls.create(common_name=common_name, days=days, key_type=key_type, now=now)
            write_pem(key_path, key_pem(ca.key), private=True)
            write_pem(cert_path, ca.cert_pem(), private=False)
            logger.info(
                "created CA",
                extra={"subject": ca.subject_text(), "sha256": ca.fingerprint_sha256()},
            )
        return ca

    def sync_mitmproxy(self, confdir: Path) -> None:
        """Write this CA into mitmproxy's confdir under the names ``CertStore.from_store``
        reads, only where they differ (a stale CA there is replaced)."""
        make_private_dir(confdir)
        combined = confdir / f"{MITMPROXY_BASENAME}-ca.pem"
        wanted = key_pem(self.key) + self.cert_pem()
        if not combined.exists() or read_pem(combined, private=True) != wanted:
            write_pem(combined, wanted, private=True)
            for stale in ("-ca.p12", "-ca-cert.p12"):
                (confdir / f"{MITMPROXY_BASENAME}{stale}").unlink(missing_ok=True)
            logger.info("mitmproxy confdir now holds the appliance CA")
        for suffix in ("-ca-cert.pem", "-ca-cert.cer"):
            path = confdir / f"{MITMPROXY_BASENAME}{suffix}"
            if not path.exists() or read_pem(path) != self.cert_pem():
                write_pem(path, self.cert_pem(), private=False)

    def _validate(self, cert_path: Path, key_path: Path) -> None:
        try:
            constraints = self.cert.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.value.ca:
            raise CertError(f"{cert_path} is not a CA certificate (no basicConstraints CA:true)")
        if not same_public_key(self.cert, self.key):
            raise CertError(f"{key_path} is not the private key of the certificate in {cert_path}")

    def _warn_expiry(self, now: dt.datetime) -> None:
        left = self.not_after - now
        if left <= dt.timedelta(0):
            logger.error("the CA expired", extra={"not_after": self.not_after.isoformat()})
        elif left <= dt.timedelta(days=CA_WARN_DAYS):
            logger.warning("the CA expires soon", extra={"not_after": self.not_after.isoformat()})

    # -- issuing --------------------------------------------------------------------------

    def issue(
        self,
        names: Sequence[str],
        *,
        days: int = DEFAULT_LEAF_DAYS,
        now: dt.datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """A server certificate for ``names``: (leaf + CA chain PEM, private key PEM).

        Names are DNS names or IP addresses (told by form); the first is the
        common name. The key has the CA's algorithm; validity ends at the earlier
        of ``days`` from now and the CA's own end.
        """
        canonical = normalize_names(names)
        if not 1 <= days <= DEFAULT_LEAF_DAYS:
            raise CertError(f"leaf validity of {days} days is out of range (1 to 397)")
        now = now or utcnow()
        if self.not_after <= now:
            raise CertError(
                f"the CA expired on {self.not_after:%Y-%m-%d}; create or import a new CA"
            )
        key: CAKey = _new_key(
            KeyType.RSA_2048 if isinstance(self.key, rsa.RSAPrivateKey) else KeyType.EC_P256
        )
        common_name = canonical[0]
        subject = (
            [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if len(common_name) <= 64 else []
        )
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=isinstance(key, rsa.RSAPrivateKey),
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(min(now + dt.timedelta(days=days), self.not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.SubjectAlternativeName([general_name(n) for n in canonical]),
                critical=not subject,
            )
            .add_extension(self._authority_key_id(), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(self.key, hashes.SHA256())
        )
        return cert_pem(leaf) + self.cert_pem(), key_pem(key)

    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)

    def signed(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` was issued by this CA (issuer name and signature)."""
        if cert.issuer != self.cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            return False
        return True

    # -- describing -----------------------------------------------------------------------

    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def fingerprint_sha256(self) -> str:
        """The certificate's SHA-256 fingerprint (``fingerprint``)."""
        return fingerprint(self.cert)

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    def subject_text(self) -> str:
        return self.cert.subject.rfc4514_string()


def export_pem(ca: CA) -> bytes:
    """The CA certificate (never the key) in PEM, for products to trust."""
    return ca.cert_pem()


def export_der(ca: CA) -> bytes:
    """The CA certificate (never the key) in DER (``.cer``/``.crt`` for Windows products)."""
    return ca.cert.public_bytes(serialization.Encoding.DER)


def _parse_cert(path: Path, data: bytes) -> x509.Certificate:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertError(f"{path} does not hold a PEM certificate") from None
    return certs[0]


def _parse_key(path: Path, data: bytes) -> CAKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertError(
            f"{path} is encrypted; Rampart needs the key unencrypted (kept private by mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(f"{path} does not hold a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertError(f"{path} holds a {type(key).__name__}; an EC or RSA key is needed")
    return key


__all__ = [
    "CA",
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "DEFAULT_CA_NAME",
    "MITMPROXY_DIR",
    "KeyType",
    "export_der",
    "export_pem",
]
