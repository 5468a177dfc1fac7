"""Replacing the appliance CA: import an organisation's CA, rotate to a new one, overlap bundle.

Files in the data directory ``DATA`` besides those of :mod:`certs.ca`::

    DATA/ca-bundle.pem     the current CA certificate, then every retired one still in its
                           overlap period (0644): what products should trust across a change
    DATA/ca-retired.json   retired CA certificates (PEM) and the end of their overlap

Installing a CA (``rotate`` or ``import_ca``) writes the new key and certificate,
moves the old certificate (never its key, which is deleted with the old file)
into the overlap list until ``now + overlap_days``, mirrors the new CA into
mitmproxy's confdir, reissues every served certificate (``DATA/tls/tls-*.pem``)
for the same names from the new CA, and rewrites the bundle, all under the CA lock
(``DATA/.ca.lock``) a running server loads them under (``certs.follow``): it takes the
whole new set within seconds, never a new certificate with an old key. A product that
trusts the bundle trusts certificates of both CAs during the overlap, so
appliances, clouds and clients that still present or expect the old CA keep
working while products are moved to the new one. ``refresh_bundle`` drops a
retired CA once its overlap (or its own validity) has ended.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs.ca import (
    CA,
    CA_CERT_FILE,
    CA_KEY_FILE,
    CA_LOCK_FILE,
    DEFAULT_CA_DAYS,
    DEFAULT_CA_NAME,
    MITMPROXY_DIR,
    CAKey,
    KeyType,
    _parse_cert,
    _parse_key,
    cert_pem,
    fingerprint,
    key_pem,
    same_public_key,
)
from certs.files import MAX_PEM_BYTES, lock_file, make_private_dir, read_pem, write_pem
from certs.tls import san_names
from proxy.clock import utcnow
from proxy.errors import CertError
from proxy.files import read_json

logger = logging.getLogger(__name__)

BUNDLE_FILE = "ca-bundle.pem"
RETIRED_FILE = "ca-retired.json"
SERVED_DIR = "tls"
"""Where ``server_context`` keeps the served certificates (``DATA/tls/tls-<purpose>.pem``)."""
DEFAULT_OVERLAP_DAYS = 30
MAX_OVERLAP_DAYS = 3650
MAX_RETIRED = 16
"""Retired CAs kept in the bundle at most (the oldest overlap ends first)."""


@dataclass(frozen=True, slots=True)
class Retired:
    """A former CA certificate kept in the bundle until ``until``."""

    cert: x509.Certificate
    until: dt.datetime


@dataclass(frozen=True, slots=True)
class Installed:
    """What installing a CA changed."""

    ca: CA
    previous: x509.Certificate | None
    overlap_until: dt.datetime | None
    reissued: tuple[str, ...]
    bundle: tuple[x509.Certificate, ...]


def key_description(key: object) -> str:
    """``EC secp256r1`` / ``RSA 2048`` for a public or private key."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return type(key).__name__


# -- validation of an organisation's CA --------------------------------------------------


def import_problems(
    cert: x509.Certificate, key: CAKey, now: dt.datetime
) -> list[str]:
    """Why ``cert`` + ``key`` cannot serve as the appliance CA (empty when they can)."""
    problems: list[str] = []
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        problems.append("the certificate is not a CA (no basicConstraints CA:true)")
    elif constraints.path_length is not None and constraints.path_length < 0:
        problems.append("the certificate has a negative path length")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        problems.append("the certificate's key usage does not allow signing certificates")
    if not same_public_key(cert, key):
        problems.append("the key is not the private key of the certificate")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        problems.append(f"the RSA key has {key.key_size} bits; at least 2048 are needed")
    if cert.not_valid_after_utc <= now:
        problems.append(f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        problems.append(f"the certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    return problems


# -- the overlap bundle ------------------------------------------------------------------


def bundle_members(
    current: x509.Certificate, retired: Sequence[Retired], now: dt.datetime
) -> list[x509.Certificate]:
    """The certificates the bundle holds at ``now``: the current CA, then retired CAs whose
    overlap and own validity have not ended, newest overlap first, without duplicates."""
    out = [current]
    for entry in sorted(retired, key=lambda r: r.until, reverse=True):
        if entry.until > now and entry.cert.not_valid_after_utc > now and entry.cert not in out:
            out.append(entry.cert)
    return out


def load_retired(data_dir: Path) -> list[Retired]:
    """The retired CAs recorded in ``DATA/ca-retired.json`` (none when the file is missing)."""
    path = Path(data_dir) / RETIRED_FILE
    if not path.exists():
        return []
    try:
        doc = read_json(path, MAX_PEM_BYTES, error=ValueError)  # refused: not a valid list
        entries = doc["retired"]
        if not isinstance(entries, list):
            raise TypeError("'retired' is not a list")
        out = []
        for item in entries[:MAX_RETIRED]:
            cert = x509.load_pem_x509_certificate(item["cert"].encode("ascii"))
            until = dt.datetime.fromisoformat(item["until"])
            if until.tzinfo is None:
                raise ValueError("'until' has no time zone")
            out.append(Retired(cert, until))
    except OSError as exc:
        raise CertError(f"cannot open {path}: {exc.strerror}") from None
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeError) as exc:
        raise CertError(f"{path} is not a valid list of retired CAs ({exc}); move it aside") from None
    return out


def _save_retired(data_dir: Path, retired: Sequence[Retired]) -> None:
    doc = {
        "retired": [
            {
                "sha256": fingerprint(r.cert),
                "subject": r.cert.subject.rfc4514_string(),
                "until": r.until.isoformat(),
                "cert": cert_pem(r.cert).decode("ascii"),
            }
            for r in retired
        ]
    }
    write_pem(Path(data_dir) / RETIRED_FILE, json.dumps(doc, indent=2).encode(), private=False)


def refresh_bundle(data_dir: Path, *, now: dt.datetime | None = None) -> list[x509.Certificate]:
    """Rewrite ``DATA/ca-bundle.pem`` for ``now`` (dropping CAs whose overlap ended) and
    return its members; nothing is written when the data directory has no CA yet."""
    data_dir = Path(data_dir)
    now = now or utcnow()
    cert_path = data_dir / CA_CERT_FILE
    if not cert_path.exists():
        return []
    make_private_dir(data_dir)  # refuses a folder others can write: its CA is not to be handed out
    current = _parse_cert(cert_path, read_pem(cert_path))
    retired = load_retired(data_dir)
    members = bundle_members(current, retired, now)
    live = [r for r in retired if r.cert in members]
    if len(live) != len(retired):
        for gone in retired:
            if gone not in live:
                logger.info("retired CA left the bundle", extra={"sha256": fingerprint(gone.cert)})
        _save_retired(data_dir, live)
    wanted = b"".join(cert_pem(c) for c in members)
    path = data_dir / BUNDLE_FILE
    if not path.exists() or read_pem(path) != wanted:
        write_pem(path, wanted, private=False)
    return members


# -- installing a new CA -----------------------------------------------------------------


def served_paths(data_dir: Path) -> list[Path]:
    """The served certificate files (``DATA/tls/tls-*.pem``), sorted."""
    folder = Path(data_dir) / SERVED_DIR
    return sorted(folder.glob("tls-*.pem")) if folder.is_dir() else []


def _names_in_order(cert: x509.Certificate) -> list[str]:
    names = sorted(san_names(cert))
    common = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    if common:
        first = str(common[0].value)
        if first in names:
            names.remove(first)
            names.insert(0, first)
    return names


def reissue_served(ca: CA, data_dir: Path, *, now: dt.datetime | None = None) -> list[str]:
    """Reissue every served certificate from ``ca`` for the names it carried; returns the
    purposes reissued. An unreadable file is removed so the server issues a fresh one."""
    reissued = []
    for path in served_paths(data_dir):
        purpose = path.stem.removeprefix("tls-")
        try:
            leaf = x509.load_pem_x509_certificates(read_pem(path, private=True))[0]
            names = _names_in_order(leaf)
            if not names:
                raise ValueError("no names")
        except (CertError, ValueError) as exc:
            logger.warning("served certificate %s unusable (%s); removed", purpose, exc)
            path.unlink(missing_ok=True)
            continue
        chain_pem, key_pem = ca.issue(names, now=now)
        write_pem(path, key_pem + chain_pem, private=True)
        reissued.append(purpose)
    return reissued


def install(
    data_dir: Path,
    ca: CA,
    *,
    overlap_days: int = DEFAULT_OVERLAP_DAYS,
    now: dt.datetime | None = None,
) -> Installed:
    """Make ``ca`` the appliance CA, keeping the previous certificate in the bundle for
    ``overlap_days`` (0: drop it at once). See the module docstring for every step."""
    if not 0 <= overlap_days <= MAX_OVERLAP_DAYS:
        raise CertError(f"overlap of {overlap_days} days is out of range (0 to {MAX_OVERLAP_DAYS})")
    data_dir = Path(data_dir)
    now = now or utcnow()
    make_private_dir(data_dir)
    with lock_file(data_dir / CA_LOCK_FILE):  # a running server loads the set under it too
        return _install_locked(data_dir, ca, overlap_days, now)


def _install_locked(data_dir: Path, ca: CA, overlap_days: int, now: dt.datetime) -> Installed:
    cert_path, key_path = data_dir / CA_CERT_FILE, data_dir / CA_KEY_FILE
    previous = _parse_cert(cert_path, read_pem(cert_path)) if cert_path.exists() else None
    retired = load_retired(data_dir)
    until = None
    if previous is not None and previous != ca.cert and overlap_days > 0:
        until = now + dt.timedelta(days=overlap_days)
        retired = [r for r in retired if r.cert != previous and r.cert != ca.cert]
        retired.insert(0, Retired(previous, until))
        retired = retired[:MAX_RETIRED]
    else:
        retired = [r for r in retired if r.cert != ca.cert]
    _save_retired(data_dir, retired)
    write_pem(key_path, key_pem(ca.key), private=True)
    write_pem(cert_path, ca.cert_pem(), private=False)
    ca.sync_mitmproxy(data_dir / MITMPROXY_DIR)
    reissued = reissue_served(ca, data_dir, now=now)
    members = refresh_bundle(data_dir, now=now)
    logger.info(
        "installed CA",
        extra={"sha256": ca.fingerprint_sha256(), "reissued": reissued, "bundle": len(members)},
    )
    return Installed(ca, previous, until, tuple(reissued), tuple(members))


def _rotated_name(old: str, now: dt.datetime) -> str:
    base = old
    parts = old.rsplit(" ", 1)
    if len(parts) == 2 and len(parts[1]) == 10 and parts[1][4] == "-" and parts[1][7] == "-":
        base = parts[0]
    stamp = f" {now:%Y-%m-%d}"
    return base[: 64 - len(stamp)] + stamp


def rotate(
    data_dir: Path,
    *,
    overlap_days: int = DEFAULT_OVERLAP_DAYS,
    days: int = DEFAULT_CA_DAYS,
    key_type: KeyType | None = None,
    common_name: str | None = None,
    now: dt.datetime | None = None,
) -> Installed:
    """Create a new CA and install it, the current one staying in the bundle for the overlap.

    The new CA keeps the current key type and common name (with the rotation date
    appended, so products can tell the two apart) unless told otherwise.
    """
    data_dir = Path(data_dir)
    now = now or utcnow()
    current = CA.load(data_dir)
    if key_type is None:
        key_type = KeyType.RSA_2048 if isinstance(current.key, rsa.RSAPrivateKey) else KeyType.EC_P256
    if common_name is None:
        names = current.cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        common_name = _rotated_name(str(names[0].value) if names else DEFAULT_CA_NAME, now)
    new = CA.create(common_name=common_name, days=days, key_type=key_type, now=now)
    return install(data_dir, new, overlap_days=overlap_days, now=now)


def import_ca(
    data_dir: Path,
    cert_file: Path,
    key_file: Path,
    *,
    overlap_days: int = DEFAULT_OVERLAP_DAYS,
    now: dt.datetime | None = None,
) -> Installed:
    """Install an organisation's own CA (PEM certificate + unencrypted PEM key) after checking
    it is a CA, the key is its key, and it is valid now. Raises CertError naming the problem."""
    now = now or utcnow()
    cert = _parse_cert(cert_file, read_pem(cert_file))
    key = _parse_key(key_file, read_pem(key_file))
    problems = import_problems(cert, key, now)
    if problems:
        raise CertError(f"cannot import {cert_file} with {key_file}: " + "; ".join(problems))
    return install(data_dir, CA(cert=cert, key=key), overlap_days=overlap_days, now=now)
