"""The intercept door: routing rules as tables, hooks driven directly, then real clients through
a real `rampart serve` (explicit proxy) in front of a real `rampart cloud`, all on loopback."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mitmproxy import http as mhttp
from mitmproxy import tls
from mitmproxy.proxy import context
from mitmproxy.test import taddons, tflow

from addons.intercept import META, Intercept
from proxy.config import Config
from proxy.errors import ProtocolError
from proxy.wire.http import Request, Response
from tests.conftest import EICAR_SHA256, RAMPART, Proc, free_port, start_cloud

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")

# ---------------------------------------------------------------- pure rules


# ---------------------------------------------------------------- hooks


def fake_routes(request: Request) -> Response:
    if request.target.startswith(b"/v1/file/bad"):
        raise ProtocolError("bad_hash", "not a hash", item=0)
    if request.target.startswith(b"/v1/file/boom"):
        raise RuntimeError("engine bug")
    return Response(200, b'{"results":[{"sha256":"x","threat":"T","source":"pattern"}]}')


async def relaying_routes(request: Request) -> Response:
    return Response(200, b'{"results":[{"sha256":"x","source":"pattern"},{"sha256":"y","source":"cloud"}]}')


async def hook(result) -> None:
    """What mitmproxy does with a hook's return value."""
    if result is not None:
        await result


async def failing_relay(request: Request) -> Response:
    raise RuntimeError("relay bug")


async def no_dns(host: str, port: int) -> list[ipaddress.IPv4Address]:
    """Unit tests resolve nothing: every name is a documentation address (sent no traffic)."""
    return [ipaddress.IPv4Address("198.51.100.7")]


def addon(routes=fake_routes, **cfg) -> Intercept:
    a = Intercept(Config(intercept_hosts=["cloud.rampart.test"], **cfg), lambda: routes)
    a.destinations.lookup = no_dns
    return a


def cloud_flow(path: str, host: str = "cloud.rampart.test", method: str = "GET") -> mhttp.HTTPFlow:
    f = tflow.tflow()
    f.client_conn.sni = host
    f.request.host, f.request.path, f.request.method = host, path, method
    f.request.headers["host"] = host
    return f


def test_clients_outside_the_allowed_networks_are_refused() -> None:
    a = addon(allow_clients=["10.0.0.0/8"])
    with taddons.context(a):
        inside, outside = tflow.tclient_conn(), tflow.tclient_conn()
        inside.peername, outside.peername = ("10.9.8.7", 5000), ("127.0.0.1", 5000)
        a.client_connected(inside)
        a.client_connected(outside)
    assert inside.error is None
    assert outside.error and "127.0.0.1" in outside.error and a.refused == 1


@pytest.mark.parametrize(
    "sni, address, ignored",
    [
        ("cloud.rampart.test", ("192.0.2.1", 443), False),
        ("www.example.test", ("cloud.rampart.test", 443), True),  # SNI decides when there is one
        (None, ("cloud.rampart.test", 443), False),
        (None, ("192.0.2.1", 443), True),
    ],
)
def test_tls_to_other_hosts_is_not_intercepted(sni, address, ignored) -> None:
    a = addon()
    client = tflow.tclient_conn()
    ctx = context.Context(client, None)  # type: ignore[arg-type]
    ctx.server = tflow.tserver_conn()
    ctx.server.address = address

    class Hello:
        pass

    hello = Hello()
    hello.sni = sni  # type: ignore[attr-defined]
    data = tls.ClientHelloData(ctx, hello)  # type: ignore[arg-type]
    a.tls_clienthello(data)
    assert data.ignore_connection is ignored


async def test_engine_paths_on_intercept_hosts_are_answered_with_the_decision() -> None:
    a = addon()
    f = cloud_flow(f"/v1/file/{EICAR_SHA256}")
    with taddons.context(a):
        a.requestheaders(f)
        assert not f.request.stream
        await hook(a.request(f))
    assert f.response is not None and f.response.status_code == 200
    assert f.response.headers["X-Rampart-Source"] == "pattern"
    assert f.response.headers["content-type"] == "application/json"
    meta = f.metadata[META]
    assert meta["action"] == "answered" and meta["service"] == "file"
    assert meta["sources"] == ["pattern"] and meta["matched"] == ["T"] and meta["latency_ms"] >= 0


async def test_every_answer_goes_to_the_query_log_as_the_query_doors_do() -> None:
    logged: list[tuple[Request, Response, float]] = []
    local = Intercept(Config(intercept_hosts=["cloud.rampart.test"]), lambda: fake_routes,
                      log=lambda *answer: logged.append(answer))
    relayed = Intercept(Config(intercept_hosts=["cloud.rampart.test"]), lambda: relaying_routes,
                        log=lambda *answer: logged.append(answer))
    first, second = cloud_flow(f"/v1/file/{EICAR_SHA256}"), cloud_flow("/v1/file", method="POST")
    with taddons.context(local):
        await hook(local.request(first))
    with taddons.context(relayed):
        await hook(relayed.request(second))
    assert [(r.target, a.status) for r, a, _ in logged] == [
        (f"/v1/file/{EICAR_SHA256}".encode(), 200), (b"/v1/file", 200)]
    assert all(seconds >= 0 and r.client for r, _, seconds in logged)


def test_local_answers_need_no_await() -> None:
    a = addon()
    f = cloud_flow(f"/v1/file/{EICAR_SHA256}")
    with taddons.context(a):
        assert a.request(f) is None
    assert f.response.status_code == 200


async def test_a_failing_relay_is_a_500_json_error() -> None:
    a = addon(routes=failing_relay)
    f = cloud_flow("/v1/file", method="POST")
    with taddons.context(a):
        await hook(a.request(f))
    assert f.response.status_code == 500 and f.response.json()["error"]["code"] == "internal"
    assert f.metadata[META]["status"] == 500


async def test_relayed_answers_are_awaited_and_name_every_source() -> None:
    a = addon(routes=relaying_routes)
    f = cloud_flow("/v1/file", method="POST")
    with taddons.context(a):
        await hook(a.request(f))
    assert f.response.headers["X-Rampart-Source"] == "pattern,cloud"


@pytest.mark.parametrize(
    "path, status, code",
    [("/v1/file/bad", 400, "bad_hash"), ("/v1/file/boom", 500, "internal")],
)
async def test_engine_errors_become_json_errors(path: str, status: int, code: str) -> None:
    a = addon()
    f = cloud_flow(path)
    with taddons.context(a):
        await hook(a.request(f))
    assert f.response.status_code == status
    assert f.response.json()["error"]["code"] == code
    assert "X-Rampart-Source" not in f.response.headers


async def test_a_request_before_the_engine_is_open_gets_503_retry() -> None:
    a = Intercept(Config(intercept_hosts=["cloud.rampart.test"]), lambda: None)
    f = cloud_flow("/v1/domain/example.test")
    with taddons.context(a):
        await hook(a.request(f))
    assert f.response.status_code == 503 and f.response.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    "host, path, forwarded_meta",
    [
        ("cloud.rampart.test", "/v1/agent-pattern", True),  # intercept host, not an engine path
        ("cloud.rampart.test", "/healthz", True),
        ("www.example.test", "/v1/file/" + EICAR_SHA256, False),  # not an intercept host at all
    ],
)
async def test_everything_else_is_forwarded_streamed_and_untouched(host, path, forwarded_meta) -> None:
    a = addon()
    f = cloud_flow(path, host=host)
    f.client_conn.sni = None if host != "cloud.rampart.test" else host
    with taddons.context(a):
        await hook(a.requestheaders(f))
        await hook(a.request(f))
        assert f.response is None and f.request.stream is True
        f.response = tflow.tresp()
        a.responseheaders(f)
    assert f.response.stream is True
    assert (f.metadata.get(META) == {"action": "forwarded", "service": None}) is forwarded_meta


async def test_oversized_engine_requests_go_to_the_real_host() -> None:
    a = addon()
    f = cloud_flow("/v1/file", method="POST")
    f.request.stream = True  # mitmproxy streams bodies over stream_large_bodies (max_body)
    with taddons.context(a):
        await hook(a.request(f))
    assert f.response is None and f.metadata[META] == {"action": "forwarded", "service": "file"}


@pytest.mark.parametrize(
    ("coding", "forwarded"), [("gzip", True), ("identity, br", True), ("identity", False)]
)
async def test_compressed_engine_requests_go_to_the_real_host(coding: str, forwarded: bool) -> None:
    """The engine reads plain JSON: a compressed body is neither misread nor refused, but left
    to the cloud the product meant to ask."""
    a = addon()
    f = cloud_flow("/v1/file", method="POST")
    f.request.headers["Content-Encoding"] = coding
    with taddons.context(a):
        await hook(a.request(f))
    assert (f.response is None) is forwarded
    if forwarded:
        assert f.metadata[META] == {"action": "forwarded", "service": "file"}


# ---------------------------------------------------------------- real processes


def _throwaway_site(tmp: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA and a 127.0.0.1 certificate that have nothing to do with the appliance."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Throwaway Site CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = tmp / "site-ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = tmp / "site.pem"
    chain.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(chain)
    return ca_pem, server_ctx


class _Site(http.server.BaseHTTPRequestHandler):
    gate: threading.Event
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/big":  # half now, the rest only when the test has seen the half
            half = b"x" * (2 << 20)
            self.send_response(200)
            self.send_header("Content-Length", str(2 * len(half)))
            self.end_headers()
            self.wfile.write(half)
            self.wfile.flush()
            self.gate.wait(20)
            self.wfile.write(half)
            return
        body = b"the site's own page"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(ssl_context: ssl.SSLContext | None, gate: threading.Event) -> http.server.ThreadingHTTPServer:
    handler = type("Site", (_Site,), {"gate": gate})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_intercepting(tmp: Path, cloud: Proc | None, *extra: str, unprivileged: bool = False) -> Proc:
    http_port, proxy, transparent = free_port(), free_port(), free_port()
    data = tmp / "appliance"
    args = [*RAMPART, "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
            "--query-port", str(http_port), "--query-tls-port", "0", "--log-level", "info",
            "--proxy-port", str(proxy), "--transparent-port", str(transparent), *extra]
    if cloud is not None:
        args += ["--cloud", f"https://localhost:{cloud.ports['https']}",
                 "--cloud-ca", str(cloud.data_dir / "ca.pem")]
    if unprivileged and os.geteuid() == 0 and shutil.which("setpriv"):
        args = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *args]
    p = Proc(args, data, tmp / "appliance.log",
             {"http": http_port, "proxy": proxy, "transparent": transparent})
    return p.start(f"http://127.0.0.1:{http_port}/healthz")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("intercept")
    cloud = start_cloud(tmp)
    gate = threading.Event()
    site_ca, site_ctx = _throwaway_site(tmp)
    tls_site, plain_site = _serve(site_ctx, gate), _serve(None, gate)
    try:
        # the sites are local test servers: destinations the intercept door refuses unless allowed
        appliance = start_intercepting(
            tmp, cloud, "--intercept-allow-destination", f"127.0.0.1:{tls_site.server_address[1]}",
            "--intercept-allow-destination", f"localhost:{plain_site.server_address[1]}",
            unprivileged=True,
        )
    except Exception:
        cloud.stop()
        raise
    yield {
        "cloud": cloud, "appliance": appliance, "gate": gate, "site_ca": site_ca,
        "tls_site": tls_site.server_address[1], "plain_site": plain_site.server_address[1],
        "proxy": f"http://127.0.0.1:{appliance.ports['proxy']}",
        "ca": str(appliance.data_dir / "ca.pem"),
        "cloud_url": f"https://localhost:{cloud.ports['https']}",
    }
    gate.set()
    appliance.stop()
    cloud.stop()
    tls_site.shutdown()
    plain_site.shutdown()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert CURL is not None
    return subprocess.run([CURL, "-sS", "--max-time", "20", *args], capture_output=True, text=True,
                          timeout=30)


def unknown_hash() -> str:
    return hashlib.sha256(f"intercept-{time.time_ns()}".encode()).hexdigest()


def peer_issuer(proxy_port: int, host: str, port: int, cafile: str) -> str:
    """CONNECT through the proxy, handshake verifying with ``cafile``; the issuer's CN."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as raw:
        raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = raw.recv(4096)
            assert chunk, "proxy closed the CONNECT"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        ctx = ssl.create_default_context(cafile=cafile)
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            cert = s.getpeercert()
    issuer = dict(x[0] for x in cert["issuer"])
    return str(issuer["commonName"])


@needs_curl
def test_curl_through_the_proxy_is_answered_by_the_appliance_from_the_pattern(world) -> None:
    r = curl("-i", "-x", world["proxy"], "--cacert", world["ca"],
             f"{world['cloud_url']}/v1/file/{EICAR_SHA256}")
    assert r.returncode == 0, r.stderr
    assert re.search(r"(?im)^x-rampart-source: pattern\r?$", r.stdout)
    body = r.stdout.split("\r\n\r\n")[-1]
    assert '"threat":"EICAR-Test-File"' in body and '"source":"pattern"' in body
    # the certificate the product saw was issued by the appliance CA, not the cloud's
    issuer = peer_issuer(world["appliance"].ports["proxy"], "localhost",
                         world["cloud"].ports["https"], world["ca"])
    assert issuer == "Rampart Appliance CA"


@needs_curl
def test_curl_unknown_hash_is_relayed_to_the_cloud(world) -> None:
    r = curl("-x", world["proxy"], "--cacert", world["ca"],
             f"{world['cloud_url']}/v1/file/{unknown_hash()}")
    assert r.returncode == 0, r.stderr
    assert '"source":"cloud"' in r.stdout and '"verdict":"unknown"' in r.stdout


@needs_curl
def test_intercepted_answers_are_in_the_query_log(world) -> None:
    from proxy.logs.search import Search, search
    from proxy.logs.store import LogStore

    item = unknown_hash()
    r = curl("-x", world["proxy"], "--cacert", world["ca"], f"{world['cloud_url']}/v1/file/{item}")
    assert r.returncode == 0, r.stderr
    store = LogStore.open(world["appliance"].data_dir)
    try:
        deadline = time.monotonic() + 10
        rows: list = []
        while not rows and time.monotonic() < deadline:
            rows = search(store, Search(text=item)).rows
            time.sleep(0.1)
    finally:
        store.close()
    assert rows and rows[0]["source"] == "cloud" and rows[0]["client"] == "127.0.0.1"


@needs_curl
def test_other_paths_on_the_cloud_host_reach_the_real_cloud(world) -> None:
    r = curl("-x", world["proxy"], "--cacert", world["ca"], f"{world['cloud_url']}/readyz")
    assert r.returncode == 0, r.stderr
    doors = httpx.Response(200, content=r.stdout.encode()).json()["doors"]
    assert {"name": "query", "scheme": "https", "port": world["cloud"].ports["https"]} in doors


@needs_curl
def test_other_https_sites_pass_through_with_their_own_certificate(world) -> None:
    url = f"https://127.0.0.1:{world['tls_site']}/"
    r = curl("-x", world["proxy"], "--cacert", str(world["site_ca"]), url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "the site's own page"
    # trusting only the appliance CA fails: the appliance did not touch this TLS
    assert curl("-x", world["proxy"], "--cacert", world["ca"], url).returncode != 0
    issuer = peer_issuer(world["appliance"].ports["proxy"], "127.0.0.1", world["tls_site"],
                         str(world["site_ca"]))
    assert issuer == "Throwaway Site CA"


def test_large_forwarded_transfers_are_streamed_not_buffered(world) -> None:
    """/big sends 2 MiB, then waits for the test to have seen them: a buffering proxy would
    deliver nothing until the end and this would time out."""
    world["gate"].clear()
    url = f"http://localhost:{world['plain_site']}/big"  # an intercept host, not an engine path
    seen = 0
    with httpx.Client(proxy=world["proxy"], timeout=15) as client, client.stream("GET", url) as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            seen += len(chunk)
            if seen >= 2 << 20:
                world["gate"].set()
    assert seen == 4 << 20


def test_httpx_with_https_proxy_environment_http1_and_http2(world, monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", world["proxy"])
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for http2, version in ((False, "HTTP/1.1"), (True, "HTTP/2")):
        verify = ssl.create_default_context(cafile=world["ca"])
        verify.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
        with httpx.Client(verify=verify, http2=http2, trust_env=True, timeout=15) as client:
            r = client.get(f"{world['cloud_url']}/v1/file/{EICAR_SHA256}")
            assert r.status_code == 200 and r.http_version == version
            assert r.headers["x-rampart-source"] == "pattern"
            assert r.json()["results"][0]["threat"] == "EICAR-Test-File"
            items = [{"sha256": EICAR_SHA256}, {"sha256": unknown_hash()}]
            r = client.post(f"{world['cloud_url']}/v1/file", json={"items": items})  # keep-alive
            assert [x["source"] for x in r.json()["results"]] == ["pattern", "cloud"]
            assert r.headers["x-rampart-source"] == "pattern,cloud"
            bad = client.post(f"{world['cloud_url']}/v1/file", content=b"{not json")
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_json"


def test_transparent_listener_starts_without_privileges(world) -> None:
    """The appliance in this module runs with every capability dropped (when the tests run as
    root); its transparent port still listens. Only receiving redirected traffic needs root."""
    with socket.create_connection(("127.0.0.1", world["appliance"].ports["transparent"]), timeout=5):
        pass


def test_clients_outside_allowed_networks_are_refused(tmp_path) -> None:
    appliance = start_intercepting(tmp_path, None, "--allow-client", "10.0.0.0/8")
    try:
        proxy = f"http://127.0.0.1:{appliance.ports['proxy']}"
        ca = str(appliance.data_dir / "ca.pem")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{appliance.ports['http']}/healthz", proxy=proxy, timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"https://localhost:{appliance.ports['http']}/", proxy=proxy, timeout=5,
                      verify=ssl.create_default_context(cafile=ca))
        if CURL is not None:
            r = curl("-x", proxy, f"http://127.0.0.1:{appliance.ports['http']}/healthz")
            assert r.returncode != 0 and "alive" not in r.stdout
        assert "not in allow_clients" in appliance.output()
        # the query door itself is not the intercept door: it still answers
        assert httpx.get(f"http://127.0.0.1:{appliance.ports['http']}/healthz").status_code == 200
    finally:
        appliance.stop()


def test_intercept_port_in_use_fails_with_a_clear_message(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [*RAMPART, "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1",
             "--query-port", str(free_port()), "--query-tls-port", "0", "--proxy-port", str(port),
             "--transparent-port", "0"],
            capture_output=True, text=True, timeout=60,
        )
    assert r.returncode == 1
    assert f"port {port} for the intercept door (explicit proxy) on 127.0.0.1 is in use" in r.stderr
    assert "--proxy-port" in r.stderr and "Traceback" not in r.stderr
