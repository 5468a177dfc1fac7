"""Host names and addresses for certificates: validation and the appliance's defaults.

A name is an IP address when it parses as one, a DNS name otherwise; DNS names
are checked label by label (LDH, 1–63 characters, at most 253 in all; one
leading ``*`` label allowed) and Unicode names are IDNA-encoded.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Sequence

from cryptography import x509

from proxy.errors import CertError

logger = logging.getLogger(__name__)

MAX_DNS_NAME = 253
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def normalize_name(name: str) -> str:
    """The canonical form of a SAN name: an IP address in compressed form or a lower-case,
    ASCII DNS name without a trailing dot. Raises ``CertError`` naming the bad name."""
    if not isinstance(name, str) or not name:
        raise CertError(f"certificate name {name!r} is empty")
    if name != name.strip():
        raise CertError(f"certificate name {name!r} has surrounding spaces")
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            raise CertError(f"certificate name {name!r}: a scoped IPv6 address cannot be a SAN")
        return ip.compressed
    return _normalize_dns(name)


def _normalize_dns(name: str) -> str:
    original = name
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise CertError(f"certificate name {original!r} is not a valid host name") from None
    name = name.lower().removesuffix(".")
    if not name or len(name) > MAX_DNS_NAME:
        raise CertError(
            f"certificate name {original!r} must be 1 to {MAX_DNS_NAME} characters long"
        )
    labels = name.split(".")
    for index, label in enumerate(labels):
        if label == "*" and index == 0 and len(labels) > 2:
            continue
        if not _LABEL.match(label):
            raise CertError(
                f"certificate name {original!r} is not a valid host name or IP address "
                f"(bad label {label!r})"
            )
    return name


def general_name(name: str) -> x509.GeneralName:
    """The SAN entry for ``name``: ``IPAddress`` for addresses, ``DNSName`` otherwise."""
    canonical = normalize_name(name)
    try:
        return x509.IPAddress(ipaddress.ip_address(canonical))
    except ValueError:
        return x509.DNSName(canonical)


def normalize_names(names: Sequence[str]) -> list[str]:
    """Canonical names, in order, without duplicates; refuses an empty list."""
    if isinstance(names, str):
        raise CertError("certificate names must be a list of names, not one string")
    out: list[str] = []
    for name in names:
        canonical = normalize_name(name)
        if canonical not in out:
            out.append(canonical)
    if not out:
        raise CertError("a certificate needs at least one name")
    return out


def default_names(
    extra: Sequence[str] = (),
    *,
    hostname: Callable[[], str] = socket.gethostname,
    fqdn: Callable[[], str] = socket.getfqdn,
) -> list[str]:
    """The names the appliance's own server certificates carry.

    ``localhost``, ``127.0.0.1``, ``::1``, the host name and its fully qualified
    name (when different and valid), then ``extra``; de-duplicated. A host name
    that is not a valid DNS name is left out (and logged); a bad ``extra`` name
    is an error, since an operator asked for it.
    """
    names = ["localhost", "127.0.0.1", "::1"]
    for source in (hostname, fqdn):
        try:
            candidate = source()
        except OSError as exc:
            logger.debug("host name lookup failed: %s", exc)
            continue
        try:
            names.append(normalize_name(candidate))
        except CertError:
            logger.info("host name %r is not a valid certificate name; left out", candidate)
    names.extend(extra)
    return normalize_names(names)
