"""A CA rotation or import reaches a running `rampart serve` without a restart (issue 9, item 6).

A real appliance runs with its HTTPS query door and its explicit proxy on 127.0.0.1;
`rampart ca rotate` and `rampart ca import` run as separate processes. Within a bounded
wait, new TLS connections to every door (query, intercept, console) verify against the new ca.pem alone, and
`rampart ca show` says every door presents it (it said nothing of the kind before).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import RAMPART, Proc, free_port

pytestmark = pytest.mark.integration

HOST = "cloud.rotate.test"  # an intercept host: its TLS is answered with the appliance's certificates
WAIT = 30.0
ALL = (True, True, True)
NONE = (False, False, False)


def rampart(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAMPART, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("ca-reload")
    http, https, proxy, console = free_port(), free_port(), free_port(), free_port()
    data = tmp / "appliance"
    proc = Proc(
        [*RAMPART, "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
         "--query-port", str(http), "--query-tls-port", str(https), "--proxy-port", str(proxy),
         "--transparent-port", "0", "--capture-port", "0", "--intercept-host", HOST,
         "--console-port", str(console), "--log-level", "info"],
        data, tmp / "appliance.log", {"http": http, "https": https, "proxy": proxy, "console": console},
    )
    proc.start(f"http://127.0.0.1:{http}/healthz")
    yield proc
    proc.stop()


def query_door_cert(p: Proc, cafile: Path, door: str = "https") -> x509.Certificate:
    """A new TLS connection to the HTTPS query door (or ``door``), verified against ``cafile``
    only."""
    context = ssl.create_default_context(cafile=str(cafile))
    with (socket.create_connection(("127.0.0.1", p.ports[door]), timeout=5) as raw,
          context.wrap_socket(raw, server_hostname="localhost") as tls):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def intercept_door_cert(p: Proc, cafile: Path) -> x509.Certificate:
    """A new CONNECT through the explicit proxy to an intercept host, verified against ``cafile``."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", p.ports["proxy"]), timeout=5) as raw:
        raw.sendall(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = raw.recv(4096)
            assert chunk, "the proxy closed the CONNECT"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        with context.wrap_socket(raw, server_hostname=HOST) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def console_door_cert(p: Proc, cafile: Path) -> x509.Certificate:
    return query_door_cert(p, cafile, "console")


def presents(p: Proc, cafile: Path) -> tuple[bool, ...]:
    """Whether each door (query, intercept, console) presents a certificate ``cafile``
    verifies now."""
    results = []
    for door in (query_door_cert, intercept_door_cert, console_door_cert):
        try:
            door(p, cafile)
            results.append(True)
        except ssl.SSLCertVerificationError:
            results.append(False)
    return tuple(results)


def wait_until_all_present(p: Proc, cafile: Path) -> None:
    deadline = time.monotonic() + WAIT
    seen = presents(p, cafile)
    while seen != ALL and time.monotonic() < deadline:
        time.sleep(0.25)
        seen = presents(p, cafile)
    assert seen == ALL, f"(query, intercept, console) verified: {seen}\n{p.output()}"


def snapshot(path: Path, into: Path) -> Path:
    into.write_bytes(path.read_bytes())
    return into


def shown(p: Proc) -> dict:
    done = rampart("ca", "show", "--data-dir", str(p.data_dir), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def org_ca(tmp: Path) -> tuple[Path, Path]:
    """An organisation's CA as an administrator would bring it: PEM certificate and key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Corp Interception CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "org-ca.pem", tmp / "org-ca-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_a_rotation_reaches_every_door_of_the_running_server(appliance: Proc, tmp_path: Path) -> None:
    old_ca = snapshot(appliance.data_dir / "ca.pem", tmp_path / "old-ca.pem")
    assert presents(appliance, old_ca) == ALL

    done = rampart("ca", "rotate", "--data-dir", str(appliance.data_dir))
    assert done.returncode == 0, done.stderr
    new_ca = snapshot(appliance.data_dir / "ca.pem", tmp_path / "new-ca.pem")
    assert new_ca.read_bytes() != old_ca.read_bytes()

    wait_until_all_present(appliance, new_ca)
    assert "restart" not in done.stdout and "within 2 s" in done.stdout
    assert presents(appliance, old_ca) == NONE
    # during the overlap, products trusting the bundle verify the new certificates too
    assert presents(appliance, appliance.data_dir / "ca-bundle.pem") == ALL

    info = shown(appliance)
    assert sorted(s["door"] for s in info["serving"]) == ["console", "intercept", "query"]
    assert all(s["current"] and s["ca_sha256"] == info["sha256"] for s in info["serving"])
    assert {s["pid"] for s in info["serving"]} == {appliance.popen.pid}  # type: ignore[union-attr]


def test_an_imported_ca_reaches_every_door_of_the_running_server(appliance: Proc,
                                                                  tmp_path: Path) -> None:
    cert_path, key_path = org_ca(tmp_path)
    assert presents(appliance, cert_path) == NONE

    done = rampart("ca", "import", "--data-dir", str(appliance.data_dir),
                   "--cert", str(cert_path), "--key", str(key_path))
    assert done.returncode == 0, done.stderr

    wait_until_all_present(appliance, cert_path)
    leaf = query_door_cert(appliance, cert_path)
    assert leaf.issuer.rfc4514_string() == "CN=Example Corp Interception CA"
    assert intercept_door_cert(appliance, cert_path).issuer == leaf.issuer
    text = rampart("ca", "show", "--data-dir", str(appliance.data_dir)).stdout
    assert "query door (HTTPS), pid" in text and "intercept door, pid" in text
    assert "console door (HTTPS), pid" in text
    assert console_door_cert(appliance, cert_path).issuer == leaf.issuer
    assert "this CA since" in text and "still" not in text


def test_a_stopped_server_is_not_reported_as_serving(tmp_path: Path) -> None:
    http, https = free_port(), free_port()
    data = tmp_path / "appliance"
    proc = Proc([*RAMPART, "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
                 "--query-port", str(http), "--query-tls-port", str(https), "--proxy-port", "0",
                 "--transparent-port", "0", "--capture-port", "0", "--log-level", "warning"],
                data, tmp_path / "appliance.log")
    proc.start(f"http://127.0.0.1:{http}/healthz")
    try:
        assert [s["door"] for s in shown(proc)["serving"]] == ["query"]
    finally:
        proc.popen.kill()  # type: ignore[union-attr]  # no clean stop: the record stays behind
        proc.popen.wait()  # type: ignore[union-attr]
    assert shown(proc)["serving"] == []
    text = rampart("ca", "show", "--data-dir", str(data)).stdout
    assert "no running server on this data directory" in text
