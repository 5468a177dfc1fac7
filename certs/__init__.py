"""The appliance's TLS material: its CA, the certificates it issues, and TLS contexts.

On first start ``CA.ensure(DATA)`` creates the appliance CA (EC P-256, key 0600)
and mirrors it into mitmproxy's confdir (``DATA/mitmproxy``) so intercepted
connections, the query door and the reference cloud (and the planned console) all present
certificates from one CA that products trust once (``export_pem``/``export_der``).
``server_context`` issues and reuses the servers' own certificates;
``client_context`` is the verifying client side, never unverified.

This package imports ``cryptography`` (and ``pyopenssl`` where needed) and, of
Rampart, only the bottom layer: ``proxy.errors`` (its ``CertError``),
``proxy.files`` (bounded reads, private directories, atomic writes, locks) and
``proxy.clock`` (UTC now); never the rest of ``proxy`` or ``mitmproxy``.
"""

from certs.ca import (
    CA,
    CA_CERT_FILE,
    CA_KEY_FILE,
    DEFAULT_CA_NAME,
    MITMPROXY_DIR,
    KeyType,
    export_der,
    export_pem,
)
from certs.names import default_names, normalize_name, normalize_names
from certs.tls import (
    RENEW_BEFORE,
    client_context,
    expiry_report,
    leaf_path,
    renewal_reason,
    server_context,
)
from proxy.errors import CertError

__all__ = [
    "CA",
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "DEFAULT_CA_NAME",
    "MITMPROXY_DIR",
    "RENEW_BEFORE",
    "CertError",
    "KeyType",
    "client_context",
    "default_names",
    "expiry_report",
    "export_der",
    "export_pem",
    "leaf_path",
    "normalize_name",
    "normalize_names",
    "renewal_reason",
    "server_context",
]
