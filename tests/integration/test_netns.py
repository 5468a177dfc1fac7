"""Transparent mode for real: three network namespaces, product → gateway → cloud.

    product ns                gateway ns                          cloud ns
    10.200.1.2  ──veth──  10.200.1.1 | 10.200.2.1  ──veth──  10.200.2.2  rampart cloud :443
    default via 10.200.1.1   rampart serve (transparent :8081)   10.200.2.3  another HTTPS site :443
                             + `rampart appliance setup --transparent --interface <to product>`

The product runs an unmodified HTTPS client (curl, trusting the appliance CA for the
cloud host name) against ``https://cloud.rampart.test`` and is routed through the
gateway: pattern hits are answered by the gateway, unknown items are relayed to the
cloud, and another HTTPS site passes through untouched (its own certificate). The
gateway's own traffic to the cloud is not redirected (the loop guard).

Everything happens inside namespaces this test creates (and always deletes); the
host's network is never touched. Needs root, ``ip`` (iproute2), ``nft`` or
``iptables``, and ``curl``; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from certs import CA
from tests.conftest import EICAR_SHA256, RAMPART

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
CLOUD_HOST = "cloud.rampart.test"
OTHER_HOST = "other.rampart.test"
PRODUCT_IP, GW_PRODUCT_IP = "10.200.1.2", "10.200.1.1"
GW_CLOUD_IP, CLOUD_IP, OTHER_IP = "10.200.2.1", "10.200.2.2", "10.200.2.3"
TRANSPARENT_PORT = 8081

OTHER_SERVER = r"""
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"the other site itself\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer((sys.argv[1], 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"""


def _missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run as root"
    for tool in ("ip", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y iproute2 curl)"
    if shutil.which("nft") is None and shutil.which("iptables") is None:
        return "neither nft nor iptables is installed (apt-get install -y nftables)"
    probe = f"rp-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _missing_transparent_mode() -> str | None:
    help_text = subprocess.run([*RAMPART, "serve", "--help"], capture_output=True, text=True,
                               cwd=REPO, timeout=60).stdout
    if "--transparent-port" not in help_text or "--intercept-host" not in help_text:
        return "rampart serve has no --transparent-port/--intercept-host (the intercept door)"
    return None


def sh(*argv: str, ns: str | None = None, check: bool = True, input: str | None = None,
       timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    done = subprocess.run(full, capture_output=True, text=True, input=input, timeout=timeout,
                          cwd=REPO)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(full)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@dataclass
class Net:
    """The three namespaces, their interfaces, and what runs in them."""

    tag: str
    tmp: Path
    product: str = ""
    gateway: str = ""
    cloud: str = ""
    gw_to_product: str = ""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def spawn(self, ns: str, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        path = self.tmp / log
        out = path.open("ab")
        popen = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=out, cwd=REPO,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.procs.append((popen, path))
        return popen

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for _, p in self.procs)

    def stop(self) -> None:
        for popen, _ in reversed(self.procs):
            if popen.poll() is None:
                popen.terminate()
        for popen, _ in self.procs:
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


def build(net: Net) -> None:
    t = net.tag
    net.product, net.gateway, net.cloud = f"rp-prod-{t}", f"rp-gw-{t}", f"rp-cloud-{t}"
    net.gw_to_product = f"rpg0-{t}"
    for ns in (net.product, net.gateway, net.cloud):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
    # veth pairs created directly inside the namespaces: never visible on the host
    sh("ip", "link", "add", f"rpp-{t}", "netns", net.product, "type", "veth",
       "peer", "name", net.gw_to_product, "netns", net.gateway)
    sh("ip", "link", "add", f"rpg1-{t}", "netns", net.gateway, "type", "veth",
       "peer", "name", f"rpc-{t}", "netns", net.cloud)
    for ns, dev, addrs in (
        (net.product, f"rpp-{t}", [PRODUCT_IP]),
        (net.gateway, net.gw_to_product, [GW_PRODUCT_IP]),
        (net.gateway, f"rpg1-{t}", [GW_CLOUD_IP]),
        (net.cloud, f"rpc-{t}", [CLOUD_IP, OTHER_IP]),
    ):
        for addr in addrs:
            sh("ip", "addr", "add", f"{addr}/24", "dev", dev, ns=ns)
        sh("ip", "link", "set", dev, "up", ns=ns)
    sh("ip", "route", "add", "default", "via", GW_PRODUCT_IP, ns=net.product)
    sh("ip", "route", "add", "default", "via", GW_CLOUD_IP, ns=net.cloud)
    # `ip netns exec` bind-mounts /etc/netns/NS/hosts over /etc/hosts: the gateway resolves
    # the cloud host name like any appliance would, through its hosts file
    hosts = Path("/etc/netns") / net.gateway / "hosts"
    hosts.parent.mkdir(parents=True, exist_ok=True)
    hosts.write_text(f"127.0.0.1 localhost\n::1 localhost\n{CLOUD_IP} {CLOUD_HOST}\n")


def destroy(net: Net) -> None:
    net.stop()
    for ns in (net.product, net.gateway, net.cloud):
        if ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    if net.gateway:
        shutil.rmtree(Path("/etc/netns") / net.gateway, ignore_errors=True)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """The namespaces with routing and the gateway's transparent rules; always torn down."""
    reason = _missing_tools()
    if reason:
        pytest.skip(reason)
    n = Net(secrets.token_hex(2), tmp_path_factory.mktemp("netns"))
    try:
        build(n)
        setup = sh(*RAMPART, "appliance", "setup", "--transparent", "--interface", n.gw_to_product,
                   "--port", str(TRANSPARENT_PORT), ns=n.gateway, check=False, timeout=60)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        yield n
    finally:
        destroy(n)


def wait_until(check, what: str, net: Net, timeout: float = 40) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for popen, path in net.procs:
            if popen.poll() is not None:
                raise AssertionError(f"{path.stem} exited {popen.returncode}:\n{net.logs()}")
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not come up within {timeout} s:\n{net.logs()}")


def curl(net: Net, ns: str, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return sh("curl", "-sS", "--max-time", "10", *extra, url, ns=ns, check=False, timeout=30)


@pytest.fixture(scope="module")
def servers(net: Net) -> Net:
    """rampart cloud and another HTTPS site in the cloud ns; rampart serve (transparent) on the gateway."""
    reason = _missing_transparent_mode()
    if reason:
        pytest.skip(reason)
    return start_servers(net)


def start_servers(net: Net) -> Net:
    cloud_data, gw_data = net.tmp / "cloud", net.tmp / "gateway"
    other = CA.create(common_name="Other Site CA")
    chain, key = other.issue([OTHER_HOST])
    (net.tmp / "other.pem").write_bytes(key + chain)
    (net.tmp / "other.pem").chmod(0o600)
    (net.tmp / "other-ca.pem").write_bytes(other.cert_pem())

    net.spawn(net.cloud, [*RAMPART, "cloud", "--data-dir", str(cloud_data), "--port", "443",
                          "--listen", CLOUD_IP, "--tls-name", CLOUD_HOST, "--log-level", "warning"],
              "cloud.log")
    net.spawn(net.cloud, [sys.executable, "-c", OTHER_SERVER, OTHER_IP, str(net.tmp / "other.pem")],
              "other.log")

    def cloud_up() -> bool:
        return (cloud_data / "ca.pem").exists() and curl(
            net, net.cloud, f"https://{CLOUD_HOST}/healthz", "--cacert", str(cloud_data / "ca.pem"),
            "--resolve", f"{CLOUD_HOST}:443:{CLOUD_IP}").returncode == 0

    wait_until(cloud_up, "rampart cloud", net)
    other_ca = str(net.tmp / "other-ca.pem")
    wait_until(lambda: curl(net, net.cloud, f"https://{OTHER_HOST}/", "--cacert", other_ca,
                            "--resolve", f"{OTHER_HOST}:443:{OTHER_IP}").returncode == 0,
               "the other HTTPS site", net)
    net.spawn(net.gateway, [
        *RAMPART, "serve", "--data-dir", str(gw_data), "--listen", "0.0.0.0", "--log-level", "info",
        "--proxy-port", "0", "--transparent-port", str(TRANSPARENT_PORT),
        "--intercept-host", CLOUD_HOST,
        "--cloud", f"https://{CLOUD_HOST}:443", "--cloud-ca", str(cloud_data / "ca.pem"),
    ], "gateway.log")
    wait_until(lambda: curl(net, net.gateway, "http://127.0.0.1:8080/healthz").returncode == 0,
               "rampart serve on the gateway", net)
    wait_until(lambda: product_get(net, "/healthz").returncode == 0, "the transparent door", net)
    return net


def product_get(net: Net, path: str) -> subprocess.CompletedProcess[str]:
    """What an unmodified product does: HTTPS to the cloud host, trusting the appliance CA."""
    return curl(net, net.product, f"https://{CLOUD_HOST}{path}",
                "--cacert", str(net.tmp / "gateway" / "ca.pem"),
                "--resolve", f"{CLOUD_HOST}:443:{CLOUD_IP}", "-D", "-", "--fail-with-body")


def results(done: subprocess.CompletedProcess[str]) -> list[dict]:
    assert done.returncode == 0, done.stderr + done.stdout
    body = done.stdout.split("\n\n", 1)[1]  # text mode turned CRLF into LF
    return json.loads(body)["results"]


# -- the plumbing (no rampart processes needed) -----------------------------------------


def test_product_is_routed_through_the_gateway(net: Net) -> None:
    """Plain routing for ports the redirect leaves alone: the cloud sees the product's own address."""
    site = net.tmp / "plain"
    site.mkdir(exist_ok=True)
    (site / "index.html").write_text("plain\n")
    server = net.spawn(net.cloud, [sys.executable, "-m", "http.server", "9000", "--bind", CLOUD_IP,
                                   "--directory", str(site)], "plain.log")
    try:
        wait_until(lambda: curl(net, net.product, f"http://{CLOUD_IP}:9000/").stdout == "plain\n",
                   "routing product -> gateway -> cloud", net, timeout=15)
        assert f"via {GW_PRODUCT_IP}" in sh("ip", "route", "get", CLOUD_IP, ns=net.product).stdout
        assert f"{PRODUCT_IP} - - " in (net.tmp / "plain.log").read_text()
    finally:
        server.terminate()
        server.wait(10)
        net.procs = [(p, log) for p, log in net.procs if p is not server]


def test_setup_applied_inside_the_gateway_only(net: Net) -> None:
    assert sh("cat", "/proc/sys/net/ipv4/ip_forward", ns=net.gateway).stdout.strip() == "1"
    assert sh("cat", f"/proc/sys/net/ipv4/conf/{net.gw_to_product}/send_redirects",
              ns=net.gateway).stdout.strip() == "0"
    if shutil.which("nft"):
        rules = sh("nft", "list", "table", "inet", "rampart", ns=net.gateway).stdout
        assert f'iifname "{net.gw_to_product}"' in rules and f"redirect to :{TRANSPARENT_PORT}" in rules
        # the host and the other namespaces have no such table
        for ns in (None, net.product, net.cloud):
            assert sh("nft", "list", "table", "inet", "rampart", ns=ns, check=False).returncode != 0


def test_setup_is_idempotent_and_teardown_removes_the_redirect(net: Net, tmp_path: Path) -> None:
    if not shutil.which("nft"):
        pytest.skip("nft is not installed; the iptables path is checked by its rules in test_appliance")
    again = sh(*RAMPART, "appliance", "setup", "--transparent", "--interface", net.gw_to_product,
               "--port", str(TRANSPARENT_PORT), ns=net.gateway, check=False, timeout=60)
    assert again.returncode == 0, again.stderr
    rules = sh("nft", "list", "table", "inet", "rampart", ns=net.gateway).stdout
    assert rules.count("redirect to") == 1


# -- through rampart -------------------------------------------------------------------


def test_pattern_hit_is_answered_by_the_gateway(servers: Net) -> None:
    done = product_get(servers, f"/v1/file/{EICAR_SHA256}")
    [result] = results(done)
    assert result["verdict"] == "malicious" and result["threat"] == "EICAR-Test-File"
    assert result["source"] == "pattern"
    assert "x-rampart-source: pattern" in done.stdout.lower()


def _cloud_sample_hash() -> tuple[str, str]:
    sample = REPO / "proxy" / "samples" / "cloud" / "hashes.txt"
    for line in sample.read_text().splitlines():
        parts = [p.strip() for p in line.strip().split(",")]
        if parts[0] and not parts[0].startswith("#") and (len(parts) < 3 or parts[2] == "malicious"):
            return parts[0], parts[1]
    raise AssertionError("no malicious hash in the cloud sample")


def test_unknown_item_is_relayed_to_the_cloud(servers: Net) -> None:
    known, threat = _cloud_sample_hash()
    [result] = results(product_get(servers, f"/v1/file/{known}"))
    assert result["source"] == "cloud" and result["threat"] == threat
    [again] = results(product_get(servers, f"/v1/file/{known}"))
    assert again["source"] == "cache"


def test_other_https_site_passes_through_with_its_own_certificate(servers: Net) -> None:
    resolve = ("--resolve", f"{OTHER_HOST}:443:{OTHER_IP}")
    url = f"https://{OTHER_HOST}/"
    own = curl(servers, servers.product, url, "--cacert", str(servers.tmp / "other-ca.pem"), *resolve)
    assert own.returncode == 0, own.stderr
    assert own.stdout == "the other site itself\n"
    # the appliance CA does not vouch for it: the site's own certificate reached the product
    forged = curl(servers, servers.product, url, "--cacert", str(servers.tmp / "gateway" / "ca.pem"),
                  *resolve)
    assert forged.returncode == 60, forged.stderr  # curl: peer certificate cannot be authenticated


def test_gateway_own_traffic_is_not_redirected(servers: Net) -> None:
    """The loop guard: the gateway's own connection to the cloud reaches the cloud itself
    (the cloud's certificate, not one forged by the gateway's transparent door)."""
    known, threat = _cloud_sample_hash()
    done = curl(servers, servers.gateway, f"https://{CLOUD_HOST}/v1/file/{known}",
                "--cacert", str(servers.tmp / "cloud" / "ca.pem"))
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)["results"]
    assert result["threat"] == threat and result["source"] == "pattern"  # the cloud's own answer
