"""Tests for certs/: the appliance CA on disk, issued certificates, and real TLS handshakes
on loopback with the contexts the doors use."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import (
    CA,
    DEFAULT_CA_NAME,
    CertError,
    KeyType,
    client_context,
    default_names,
    expiry_report,
    export_der,
    export_pem,
    leaf_path,
    normalize_name,
    server_context,
)

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """A permissive umask, so a file is private only if it was created private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def shared_ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA.ensure(tmp_path_factory.mktemp("shared") / "data")


# -- the CA on disk ----------------------------------------------------------------------


def test_ensure_creates_private_key_and_public_cert(tmp_path: Path, umask_zero: None) -> None:
    data = tmp_path / "data"
    ca = CA.ensure(data)
    assert mode(data / "ca-key.pem") == 0o600
    assert mode(data / "ca.pem") == 0o644
    assert mode(data / "mitmproxy" / "mitmproxy-ca.pem") == 0o600
    assert mode(data / "mitmproxy" / "mitmproxy-ca-cert.pem") == 0o644
    assert (data / "ca.pem").read_bytes() == ca.cert_pem()
    assert (data / "mitmproxy" / "mitmproxy-ca-cert.pem").read_bytes() == ca.cert_pem()
    assert b"PRIVATE KEY" not in (data / "ca.pem").read_bytes()
    assert not [p for p in data.rglob("*.tmp")]


def test_created_ca_is_a_proper_ca(tmp_path: Path) -> None:
    ca = CA.ensure(tmp_path, now=NOW)
    cert = ca.cert
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEFAULT_CA_NAME
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    assert ca.not_after == NOW + dt.timedelta(days=3650)
    assert ca.subject_text() == f"O=Rampart,CN={DEFAULT_CA_NAME}"
    cert.verify_directly_issued_by(cert)


def test_second_ensure_loads_the_same_ca(tmp_path: Path) -> None:
    first = CA.ensure(tmp_path)
    key_before = (tmp_path / "ca-key.pem").read_bytes()
    second = CA.ensure(tmp_path)
    assert second.fingerprint_sha256() == first.fingerprint_sha256()
    assert (tmp_path / "ca-key.pem").read_bytes() == key_before
    assert CA.load(tmp_path).fingerprint_sha256() == first.fingerprint_sha256()


def test_fingerprint_matches_openssl_format(shared_ca: CA) -> None:
    fp = shared_ca.fingerprint_sha256()
    assert len(fp) == 95 and fp.count(":") == 31 and fp == fp.upper()
    assert bytes.fromhex(fp.replace(":", "")) == shared_ca.cert.fingerprint(hashes.SHA256())


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_key_readable_by_others_is_refused(tmp_path: Path, loose: int) -> None:
    CA.ensure(tmp_path)
    key = tmp_path / "ca-key.pem"
    key.chmod(loose)
    with pytest.raises(CertError, match=r"chmod 600") as info:
        CA.ensure(tmp_path)
    assert str(key) in info.value.message
    assert info.value.exit_code == 2


def test_loose_mitmproxy_key_copy_is_refused(tmp_path: Path) -> None:
    CA.ensure(tmp_path)
    (tmp_path / "mitmproxy" / "mitmproxy-ca.pem").chmod(0o644)
    with pytest.raises(CertError, match=r"mitmproxy-ca\.pem.*chmod 600"):
        CA.ensure(tmp_path)


@pytest.mark.parametrize(("keep", "missing"), [("ca.pem", "ca-key.pem"), ("ca-key.pem", "ca.pem")])
def test_half_a_ca_is_refused_not_replaced(tmp_path: Path, keep: str, missing: str) -> None:
    CA.ensure(tmp_path)
    kept = (tmp_path / keep).read_bytes()
    (tmp_path / missing).unlink()
    with pytest.raises(CertError, match=f"does not; restore {missing}"):
        CA.ensure(tmp_path)
    assert (tmp_path / keep).read_bytes() == kept
    assert not (tmp_path / missing).exists()


def test_load_without_ca_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CertError, match=r"ca\.pem does not exist"):
        CA.load(tmp_path)


def test_key_of_another_ca_is_refused(tmp_path: Path) -> None:
    CA.ensure(tmp_path / "a")
    CA.ensure(tmp_path / "b")
    os.replace(tmp_path / "b" / "ca-key.pem", tmp_path / "a" / "ca-key.pem")
    with pytest.raises(CertError, match="is not the private key of the certificate"):
        CA.load(tmp_path / "a")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("ca.pem", b"not a certificate\n", "does not hold a PEM certificate"),
        (
            "ca-key.pem",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "does not hold a PEM private key",
        ),
        ("ca.pem", b"x" * (2 << 20), "at most"),
    ],
)
def test_broken_files_are_refused(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    CA.ensure(tmp_path)
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CertError, match=message):
        CA.load(tmp_path)


def test_encrypted_key_is_refused(tmp_path: Path) -> None:
    ca = CA.ensure(tmp_path)
    encrypted = ca.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "ca-key.pem").write_bytes(encrypted)
    with pytest.raises(CertError, match="encrypted"):
        CA.load(tmp_path)


def test_leaf_certificate_as_ca_is_refused(tmp_path: Path, shared_ca: CA) -> None:
    chain, key = shared_ca.issue(["localhost"])
    (tmp_path / "ca.pem").write_bytes(chain)
    fd = os.open(tmp_path / "ca-key.pem", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key)
    os.close(fd)
    with pytest.raises(CertError, match="not a CA certificate"):
        CA.load(tmp_path)


def test_export_gives_the_certificate_only(shared_ca: CA) -> None:
    assert x509.load_der_x509_certificate(export_der(shared_ca)) == shared_ca.cert
    pem = export_pem(shared_ca)
    assert x509.load_pem_x509_certificate(pem) == shared_ca.cert
    assert b"PRIVATE" not in pem


# -- mitmproxy shares the CA ----------------------------------------------------------------


@pytest.mark.parametrize("key_type", list(KeyType))
def test_mitmproxy_certstore_uses_the_appliance_ca(tmp_path: Path, key_type: KeyType) -> None:
    from mitmproxy.certs import CertStore

    ca = CA.ensure(tmp_path, key_type=key_type)
    store = CertStore.from_store(tmp_path / "mitmproxy", "mitmproxy", 2048)
    assert store.default_ca.fingerprint().hex(":").upper() == ca.fingerprint_sha256()
    forged = store.get_cert("cloud.example.test", [x509.DNSName("cloud.example.test")])
    assert ca.signed(x509.load_pem_x509_certificate(forged.cert.to_pem()))


def test_stale_mitmproxy_ca_is_replaced(tmp_path: Path) -> None:
    from mitmproxy.certs import CertStore

    CertStore.create_store(tmp_path / "mitmproxy", "mitmproxy", 2048)
    ca = CA.ensure(tmp_path)
    store = CertStore.from_store(tmp_path / "mitmproxy", "mitmproxy", 2048)
    assert store.default_ca.fingerprint().hex(":").upper() == ca.fingerprint_sha256()
    assert not (tmp_path / "mitmproxy" / "mitmproxy-ca.p12").exists()


async def test_certificate_forged_by_mitmproxy_verifies_against_ca_pem(tmp_path: Path) -> None:
    from mitmproxy.certs import CertStore

    ca = CA.ensure(tmp_path / "data")
    store = CertStore.from_store(tmp_path / "data" / "mitmproxy", "mitmproxy", 2048)
    forged = store.get_cert("localhost", [x509.DNSName("localhost")])
    pem = tmp_path / "forged.pem"
    pem.write_bytes(
        forged.privatekey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + forged.cert.to_pem()
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pem)
    client = client_context(tmp_path / "data" / "ca.pem")
    assert await handshake(server, client, "127.0.0.1", "localhost") == b"ok"
    assert ca.signed(x509.load_pem_x509_certificate(forged.cert.to_pem()))


# -- issuing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("localhost", x509.DNSName("localhost")),
        ("Rampart.Example.TEST.", x509.DNSName("rampart.example.test")),
        ("*.example.test", x509.DNSName("*.example.test")),
        ("bücher.example", x509.DNSName("xn--bcher-kva.example")),
        ("127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ("::1", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("2001:DB8:0::7", x509.IPAddress(ipaddress.ip_address("2001:db8::7"))),
    ],
)
def test_issue_tells_dns_names_from_addresses(shared_ca: CA, name: str, expected: x509.GeneralName) -> None:
    chain, key_pem = shared_ca.issue([name, "localhost"])
    leaf, ca_cert = x509.load_pem_x509_certificates(chain)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert next(iter(san)) == expected
    assert ca_cert == shared_ca.cert
    assert shared_ca.signed(leaf)
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == normalize_name(name)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.public_key() == leaf.public_key()


@pytest.mark.parametrize(
    "names",
    [
        [],
        [""],
        [" localhost"],
        ["under_score.example"],
        ["-bad.example"],
        ["a" * 64 + ".example"],
        ["http://example.test/"],
        ["*.test"],
        ["a.*.example.test"],
        ["fe80::1%eth0"],
        ["x." * 127 + "com"],
        "localhost",
    ],
)
def test_issue_refuses_bad_names(shared_ca: CA, names: list[str]) -> None:
    with pytest.raises(CertError, match=r"certificate name|at least one name|not one string"):
        shared_ca.issue(names)


@pytest.mark.parametrize(
    ("ca_days", "leaf_days", "expected_days"),
    [(3650, 397, 397), (3650, 30, 30), (100, 397, 100)],
)
def test_leaf_validity_never_outlives_the_ca(
    tmp_path: Path, ca_days: int, leaf_days: int, expected_days: int
) -> None:
    ca = CA.create(days=ca_days, now=NOW)
    chain, _ = ca.issue(["localhost"], days=leaf_days, now=NOW)
    leaf = x509.load_pem_x509_certificate(chain)
    assert leaf.not_valid_after_utc == NOW + dt.timedelta(days=expected_days)
    assert leaf.not_valid_before_utc < NOW


def test_expired_ca_issues_nothing() -> None:
    ca = CA.create(days=10, now=NOW)
    with pytest.raises(CertError, match="CA expired"):
        ca.issue(["localhost"], now=NOW + dt.timedelta(days=11))


def test_rsa_ca_issues_rsa_leaves() -> None:
    ca = CA.create(key_type=KeyType.RSA_2048)
    _, key_pem = ca.issue(["localhost"])
    assert isinstance(serialization.load_pem_private_key(key_pem, None), rsa.RSAPrivateKey)


# -- default names -----------------------------------------------------------------------------


def _fail() -> str:
    raise OSError("no resolver")


@pytest.mark.parametrize(
    ("hostname", "fqdn", "extra", "expected_tail"),
    [
        ("box", "box.lan", (), ["box", "box.lan"]),
        ("box", "box", (), ["box"]),
        ("BOX", "box.", ("box", "10.0.0.5"), ["box", "10.0.0.5"]),
        ("bad_name", "bad_name", ("rampart.example",), ["rampart.example"]),
        ("box", None, ("localhost",), ["box"]),
    ],
)
def test_default_names(
    hostname: str, fqdn: str | None, extra: tuple[str, ...], expected_tail: list[str]
) -> None:
    names = default_names(extra, hostname=lambda: hostname, fqdn=(lambda: fqdn) if fqdn else _fail)
    assert names == ["localhost", "127.0.0.1", "::1", *expected_tail]


def test_default_names_refuse_a_bad_extra_name() -> None:
    with pytest.raises(CertError, match="not a valid host name"):
        default_names(["bad name"], hostname=lambda: "box", fqdn=lambda: "box")


# -- TLS contexts and real handshakes ------------------------------------------------------------


async def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str, server_hostname: str
) -> bytes:
    """One TLS connection on loopback; returns what the server sent."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, host, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=client_ctx, server_hostname=server_hostname),
            timeout=10,
        )
        data = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        return data
    finally:
        server.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("host", "server_hostname"),
    [
        ("127.0.0.1", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        pytest.param("::1", "::1", marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6")),
    ],
)
async def test_server_certificate_verifies_with_ca_pem(
    tmp_path: Path, host: str, server_hostname: str
) -> None:
    ca = CA.ensure(tmp_path / "data")
    server = server_context(ca, ["localhost", "127.0.0.1", "::1"], state_dir=tmp_path / "state")
    client = client_context(str(tmp_path / "data" / "ca.pem"))
    assert await handshake(server, client, host, server_hostname) == b"ok"
    assert mode(leaf_path(tmp_path / "state")) == 0o600


async def test_wrong_host_name_is_refused(tmp_path: Path) -> None:
    ca = CA.ensure(tmp_path / "data")
    server = server_context(ca, ["localhost"], state_dir=tmp_path / "state")
    client = client_context(tmp_path / "data" / "ca.pem")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await handshake(server, client, "127.0.0.1", "cloud.example.test")


async def test_system_bundle_does_not_trust_the_appliance_ca(tmp_path: Path) -> None:
    ca = CA.ensure(tmp_path / "data")
    server = server_context(ca, ["localhost"], state_dir=tmp_path / "state")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await handshake(server, client_context(None), "127.0.0.1", "localhost")


def test_contexts_require_tls_1_2_or_later(tmp_path: Path, shared_ca: CA) -> None:
    server = server_context(shared_ca, ["localhost"], state_dir=tmp_path)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_context(None).minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_context(None).verify_mode == ssl.CERT_REQUIRED


def test_client_context_names_a_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(CertError, match=r"missing\.pem does not exist"):
        client_context(tmp_path / "missing.pem")


def _leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


@pytest.mark.parametrize(
    ("names", "later", "reissued"),
    [
        (["localhost", "127.0.0.1"], dt.timedelta(0), False),
        (["127.0.0.1", "LOCALHOST"], dt.timedelta(days=300), False),
        (["localhost"], dt.timedelta(0), True),
        (["localhost", "127.0.0.1", "box.lan"], dt.timedelta(0), True),
        (["localhost", "127.0.0.1"], dt.timedelta(days=366), False),
        (["localhost", "127.0.0.1"], dt.timedelta(days=368), True),
    ],
)
def test_server_certificate_is_reused_while_valid_for_the_same_names(
    tmp_path: Path, shared_ca: CA, names: list[str], later: dt.timedelta, reissued: bool
) -> None:
    server_context(shared_ca, ["localhost", "127.0.0.1"], state_dir=tmp_path, now=NOW)
    before = _leaf(leaf_path(tmp_path))
    server_context(shared_ca, names, state_dir=tmp_path, now=NOW + later)
    after = _leaf(leaf_path(tmp_path))
    assert (after != before) is reissued


def test_server_certificate_is_reissued_for_a_new_ca(tmp_path: Path, shared_ca: CA) -> None:
    server_context(shared_ca, ["localhost"], state_dir=tmp_path)
    other = CA.create()
    server_context(other, ["localhost"], state_dir=tmp_path)
    assert other.signed(_leaf(leaf_path(tmp_path)))


def test_exposed_server_key_is_replaced(tmp_path: Path, shared_ca: CA) -> None:
    server_context(shared_ca, ["localhost"], state_dir=tmp_path)
    path = leaf_path(tmp_path)
    before = path.read_bytes()
    path.chmod(0o644)
    server_context(shared_ca, ["localhost"], state_dir=tmp_path)
    assert path.read_bytes() != before
    assert mode(path) == 0o600


def test_corrupt_stored_server_certificate_is_replaced(tmp_path: Path, shared_ca: CA) -> None:
    path = leaf_path(tmp_path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"garbage")
    os.close(fd)
    server_context(shared_ca, ["localhost"], state_dir=tmp_path)
    assert shared_ca.signed(_leaf(path))


def test_expiry_report_lists_ca_then_leaves(tmp_path: Path, shared_ca: CA) -> None:
    server_context(shared_ca, ["localhost"], state_dir=tmp_path, now=NOW)
    report = expiry_report(shared_ca, [leaf_path(tmp_path), tmp_path / "absent.pem"])
    assert report == [
        (f"CA {shared_ca.subject_text()}", shared_ca.not_after),
        (str(leaf_path(tmp_path)), NOW + dt.timedelta(days=397)),
    ]
