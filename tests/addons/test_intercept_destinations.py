"""The intercept door never connects back into the appliance: its hooks driven directly, then
curl and raw sockets through a real `rampart serve` towards its own capture port, its query
door and a local web server (all on loopback), refused unless an administrator allows them."""

from __future__ import annotations

import http.server
import ipaddress
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mitmproxy import connection
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from addons.intercept import Intercept
from proxy.config import Config
from proxy.serve.destinations import literal
from tests.addons.test_intercept import curl, needs_curl
from tests.conftest import EICAR_SHA256, RAMPART, Proc, free_port

# ---------------------------------------------------------------- hooks


async def to_loopback(host: str, port: int) -> list[ipaddress.IPv4Address]:
    """A name that resolves to loopback (as a name in /etc/hosts may); nothing is sent."""
    return [ipaddress.IPv4Address("127.0.0.1")]


def door(**cfg: Any) -> Intercept:
    a = Intercept(Config(intercept_hosts=["cloud.rampart.test"], **cfg), lambda: None)
    a.destinations.lookup = to_loopback
    return a


def connect_data(address: tuple[str, int]) -> server_hooks.ServerConnectionHookData:
    client = tflow.tclient_conn()
    client.peername = ("10.1.2.3", 50000)
    server = connection.Server(address=address)
    return server_hooks.ServerConnectionHookData(server=server, client=client)


async def hook(result: Any) -> None:
    if result is not None:
        await result


@pytest.mark.parametrize(
    "address",
    [("127.0.0.1", 4344), ("2130706433", 8080), ("::ffff:127.0.0.1", 80), ("::1", 9000),
     ("0.0.0.0", 80), ("169.254.169.254", 80), ("alias.test", 443)],
)
async def test_every_upstream_connection_to_this_machine_is_killed_before_connect(address) -> None:
    """Tunnels, TLS passed through and transparent mode's original destination all connect
    through server_connect; mitmproxy kills a connection whose ``error`` is set."""
    a = door()
    data = connect_data(address)
    with taddons.context(a):
        await hook(a.server_connect(data))
    assert data.server.error and f"{address[0]}" in data.server.error
    assert "does not connect to" in data.server.error and a.refused_destinations == 1


async def test_other_destinations_and_mitmproxys_own_refusals_are_left_alone() -> None:
    a = door()
    public = connect_data(("198.51.100.7", 443))
    looping = connect_data(("127.0.0.1", 3128))
    looping.server.error = "Request destination unknown."  # mitmproxy's self-connect check
    with taddons.context(a):
        await hook(a.server_connect(public))
        await hook(a.server_connect(looping))
    assert public.server.error is None
    assert looping.server.error == "Request destination unknown." and a.refused_destinations == 0


class _Writer:
    closed = False

    def close(self) -> None:
        self.closed = True


class Proxyserver:
    """Stands in for mitmproxy's proxy server addon: the transports of one client."""

    def __init__(self, client: connection.Client, server: connection.Server) -> None:
        io = type("IO", (), {"writer": _Writer()})()
        handler = type("Handler", (), {"transports": {server: io}})()
        self.connections = {client.id: handler}
        self.writer = io.writer


def test_a_name_that_reached_this_machine_after_all_is_cut_at_connect() -> None:
    """DNS rebinding: the name resolved elsewhere at the check than at the connect."""
    a = door()
    data = connect_data(("rebound.test", 443))
    data.server.peername = ("127.0.0.1", 443)
    fake = Proxyserver(data.client, data.server)
    with taddons.context(a, fake):
        a.server_connected(data)
    assert fake.writer.closed and a.refused_destinations == 1
    assert data.server.error and "rebound.test (127.0.0.1) is loopback" in data.server.error


def test_the_cloud_endpoint_is_reached_wherever_its_name_points() -> None:
    a = door(cloud=["https://localhost:9443"])
    data = connect_data(("localhost", 9443))
    data.server.peername = ("127.0.0.1", 9443)
    fake = Proxyserver(data.client, data.server)
    with taddons.context(a, fake):
        a.server_connected(data)
    assert not fake.writer.closed and data.server.error is None


def test_tunnels_to_intercept_hosts_are_decided_request_by_request() -> None:
    """The engine answers some of their requests itself; forwarded ones are checked then."""
    a = door()
    f = tflow.tflow()
    f.request.method, f.request.host, f.request.port = "CONNECT", "cloud.rampart.test", 443
    with taddons.context(a):
        assert a.http_connect(f) is None
    assert f.response is None and a.refused_destinations == 0


# ---------------------------------------------------------------- real processes


class _Site(http.server.BaseHTTPRequestHandler):
    """A local web server that is not the appliance's: counts what reaches it."""

    hits = 0
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).hits += 1
        body = b"the site's own page"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def start_door(tmp: Path, ports: dict[str, int], *extra: str) -> Proc:
    """`rampart serve` with the explicit proxy, the capture port and localhost intercepted."""
    args = [*RAMPART, "serve", "--data-dir", str(tmp / "appliance"), "--listen", "127.0.0.1",
            "--query-port", str(ports["http"]), "--query-tls-port", "0", "--log-level", "info",
            "--proxy-port", str(ports["proxy"]), "--transparent-port", "0",
            "--capture-port", str(ports["capture"]), "--intercept-host", "localhost", *extra]
    p = Proc(args, tmp / "appliance", tmp / "appliance.log", ports)
    return p.start(f"http://127.0.0.1:{ports['http']}/healthz")


def new_ports() -> dict[str, int]:
    return {"http": free_port(), "proxy": free_port(), "capture": free_port()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("destinations")
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Site", (_Site,), {"hits": 0}))
    threading.Thread(target=site.serve_forever, daemon=True).start()
    ports = new_ports()
    appliance = start_door(tmp, ports)
    yield {"appliance": appliance, "site": site, "ports": ports,
           "proxy": f"http://127.0.0.1:{ports['proxy']}", "ca": str(tmp / "appliance" / "ca.pem")}
    appliance.stop()
    site.shutdown()


def local_services(world: dict[str, Any]) -> dict[str, str]:
    """What a product must not reach through the door: name -> http URL."""
    ports = world["ports"]
    return {
        "capture stream": f"http://127.0.0.1:{ports['capture']}/v1/capture",
        "query door": f"http://127.0.0.1:{ports['http']}/readyz",
        "local web server": f"http://127.0.0.1:{world['site'].server_address[1]}/",
    }


def refusals(appliance: Proc) -> float:
    text = httpx.get(f"http://127.0.0.1:{appliance.ports['http']}/metrics", timeout=5).text
    m = re.search(r'(?m)^rampart_intercept_refused_total\{what="destination"\} (\S+)$', text)
    assert m, text[-2000:]
    return float(m.group(1))


def hits(world: dict[str, Any]) -> int:
    return int(world["site"].RequestHandlerClass.hits)


@needs_curl
def test_absolute_form_requests_to_local_services_get_403_naming_them(world) -> None:
    before, seen = refusals(world["appliance"]), hits(world)
    for name, url in local_services(world).items():
        r = curl("-i", "-x", world["proxy"], url)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("HTTP/1.1 403"), (name, r.stdout[:300])
        error = httpx.Response(403, content=r.stdout.split("\n\n", 1)[1]).json()["error"]
        hostport = url.split("/")[2]
        assert error["code"] == "destination_refused" and hostport in error["message"], name
        assert f"refused intercept-door destination {hostport} for client 127.0.0.1" in \
            world["appliance"].output()
    assert refusals(world["appliance"]) == before + 3
    assert hits(world) == seen  # the local server was never reached


@needs_curl
def test_connect_to_local_services_is_refused(world) -> None:
    before, seen = refusals(world["appliance"]), hits(world)
    for name, url in local_services(world).items():
        r = curl("-p", "-x", world["proxy"], url)
        assert r.returncode != 0 and "403" in r.stderr, (name, r.stderr)
        assert "the site's own page" not in r.stdout
    assert refusals(world["appliance"]) == before + 3
    assert hits(world) == seen


def _ask(proxy_port: int, head: str) -> bytes:
    """One raw request to the proxy; what it answers (up to the end of its head and body)."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as s:
        s.sendall(head.encode())
        answer = b""
        for _ in range(100):  # bounded: the answer is one short message
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
            head_end = answer.find(b"\r\n\r\n")
            if head_end >= 0:
                m = re.search(rb"(?i)content-length: (\d+)", answer[:head_end])
                if m is None or len(answer) >= head_end + 4 + int(m.group(1)):
                    break
    return answer


def _hosts_file_name() -> str:
    """A name /etc/hosts gives a loopback address (read here, so nothing asks a DNS server)."""
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return "localhost"
    for line in lines:
        address, *names = line.split("#", 1)[0].split() or [""]
        ip = literal(address)
        if ip is not None and ip.is_loopback:
            for name in names:
                if "localhost" not in name:
                    return name
    return "localhost"


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0", "[::]",
     _hosts_file_name()],
)
@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_every_way_of_naming_this_machine_is_refused(world, host: str, method: str) -> None:
    """localhost, an intercept host here, has its tunnels checked request by request (below)."""
    if method == "CONNECT" and host == "localhost":
        pytest.skip("this machine's name is localhost: an intercept host in this module")
    port = world["site"].server_address[1]
    target = f"{host}:{port}" if method == "CONNECT" else f"http://{host}:{port}/"
    seen = hits(world)
    answer = _ask(world["ports"]["proxy"], f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
    assert b'"destination_refused"' in answer and f"{host}:{port}".encode() in answer
    assert hits(world) == seen


def test_intercepted_tunnels_forward_nothing_to_this_machine(world) -> None:
    """localhost is an intercept host here: engine paths are still answered by the appliance,
    everything it would forward to the real (local) host is refused."""
    port = world["site"].server_address[1]
    seen = hits(world)
    verify = ssl.create_default_context(cafile=world["ca"])
    with httpx.Client(proxy=world["proxy"], verify=verify, timeout=15) as client:
        answered = client.get(f"https://localhost:{port}/v1/file/{EICAR_SHA256}")
        assert answered.status_code == 200 and answered.headers["x-rampart-source"] == "pattern"
        forwarded = client.get(f"https://localhost:{port}/")
        assert forwarded.status_code == 403
        assert forwarded.json()["error"]["code"] == "destination_refused"
        assert f"localhost:{port}" in forwarded.json()["error"]["message"]
    assert hits(world) == seen


def test_tls_passed_through_obeys_the_same_rule(world) -> None:
    """A tunnel to an intercept host whose TLS names another host is relayed byte for byte;
    towards this machine it is not relayed at all."""
    port = world["site"].server_address[1]
    before = refusals(world["appliance"])
    with socket.create_connection(("127.0.0.1", world["ports"]["proxy"]), timeout=10) as raw:
        raw.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(raw, server_hostname="elsewhere.test")
    assert refusals(world["appliance"]) == before + 1


@needs_curl
def test_destinations_an_administrator_allows_are_reached(tmp_path: Path, world) -> None:
    """A network entry opens local servers; the appliance's own ports need the port named."""
    ports = new_ports()
    site_port = world["site"].server_address[1]
    allowed = start_door(tmp_path, ports, "--intercept-allow-destination", "127.0.0.0/8",
                         "--intercept-allow-destination", f"127.0.0.1:{ports['http']}")
    try:
        proxy = f"http://127.0.0.1:{ports['proxy']}"
        for how in ("-x", "-px"):
            r = curl(how, proxy, f"http://127.0.0.1:{site_port}/")
            assert r.returncode == 0 and r.stdout == "the site's own page", (how, r.stderr)
        r = curl("-x", proxy, f"http://127.0.0.1:{ports['http']}/healthz")
        assert r.returncode == 0 and "alive" in r.stdout, r.stdout
        r = curl("-i", "-x", proxy, f"http://127.0.0.1:{ports['capture']}/v1/capture")
        assert r.stdout.startswith("HTTP/1.1 403") and "one of the appliance's ports" in r.stdout
        assert refusals(allowed) == 1
    finally:
        allowed.stop()
