"""docs/metrics.md tells the truth: a real appliance's /metrics exposes exactly the metrics the
reference lists, with the documented type and labels.

The appliance is set up so that every family has samples (its labels can then be checked):
an intercept door, a cloud endpoint on a closed loopback port (a relay failure), an update
source on a closed loopback port (an update failure) and max_client_connections = 1 (a
refused connection)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.updates.signing import keygen
from tests.conftest import EICAR_SHA256, Proc, free_port, start_appliance
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

REFERENCE = Path(__file__).parents[2] / "docs" / "metrics.md"


SCALE_OUT = "## With `workers` above 1, or `redis`"


def documented(scale_out: bool = False) -> dict[str, tuple[str, set[str]]]:
    """The reference tables: metric -> (type, label names); with ``scale_out``, the workers'
    and Redis metrics too (the section that appliances with both expose)."""
    out = {}
    text = REFERENCE.read_text()
    if not scale_out:
        text = text.split(SCALE_OUT, 1)[0]
    for line in text.splitlines():
        m = re.match(r"\| `(rampart_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*) \|", line)
        if m:
            labels = set(re.findall(r"`([a-z_]+)`", m.group(3)))
            out[m.group(1)] = (m.group(2), labels)
    return out


def exposed(text: str) -> dict[str, tuple[str, set[str] | None]]:
    """A scrape: metric (as queried: counters with _total) -> (type, label names of its
    samples, None when it has none yet)."""
    out: dict[str, tuple[str, set[str] | None]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        out[name] = (family.type, labels if family.samples else None)
    return out


def eventually(check: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("metrics")
    (tmp / "keys").mkdir(mode=0o700)
    pub = keygen(tmp / "keys" / "update.key")
    cfg = tmp / "rampart.toml"
    cfg.write_text(f'max_client_connections = 1\nupdate_source = "http://127.0.0.1:{free_port()}"\n'
                   f'update_key = "{pub}"\n')
    proc = start_appliance(tmp, None, "--config", str(cfg), "--proxy-port", str(free_port()),
                           "--cloud", f"http://127.0.0.1:{free_port()}", "--dns-port", str(free_port()))
    yield proc
    proc.stop()


def refuse_one_connection(appliance: Proc) -> None:
    """Two connections open at once from a client allowed one: one of them is refused
    (client_cap), each gets an answer (200, or 429 before the close)."""
    address = ("127.0.0.1", appliance.ports["http"])
    both = [socket.create_connection(address, timeout=10) for _ in range(2)]
    try:
        for conn in both:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = [conn.recv(65536) for conn in both]
    finally:
        for conn in both:
            conn.close()
    assert any(a.startswith(b"HTTP/1.1 429") for a in answers), answers


def test_every_exposed_metric_is_documented_and_every_documented_one_exists(appliance: Proc) -> None:
    base = f"http://127.0.0.1:{appliance.ports['http']}"
    scraped: list[str] = []

    def answered(client: httpx.Client, path: str) -> bool:
        """Asked on the client's one kept-alive connection (a 429 while another of this
        client's connections is still being closed: ask again)."""
        r = client.get(f"{base}{path}", timeout=20)
        if path == "/metrics" and r.status_code == 200:
            scraped.append(r.text)
        return r.status_code == 200

    def populated(client: httpx.Client) -> bool:
        if not answered(client, "/metrics"):
            return False
        metrics = exposed(scraped[-1])
        return all(metrics.get(name, ("", None))[1] is not None for name in (
            "rampart_update_failures_total", "rampart_connections_refused_total",
            "rampart_relay_requests_total", "rampart_items_total"))

    with httpx.Client() as client:
        assert eventually(lambda: answered(client, f"/v1/file/{EICAR_SHA256}"))  # pattern
        assert answered(client, f"/v1/file/{'ab' * 32}")  # relayed: the cloud port is closed
        refuse_one_connection(appliance)
        assert eventually(lambda: populated(client)), scraped[-1:]
    metrics, docs = exposed(scraped[-1]), documented()
    undocumented = sorted(set(metrics) - set(docs))
    assert not undocumented, f"/metrics exposes {undocumented}: add them to docs/metrics.md"
    missing = sorted(set(docs) - set(metrics))
    assert not missing, f"docs/metrics.md lists {missing}, which /metrics does not expose"
    for name, (kind, labels) in metrics.items():
        assert kind == docs[name][0], f"{name} is a {kind}, docs/metrics.md says {docs[name][0]}"
        if labels is not None:
            assert labels == docs[name][1], (
                f"{name} has labels {sorted(labels)}, docs/metrics.md says {sorted(docs[name][1])}")


def test_an_appliance_with_workers_and_redis_exposes_the_scale_out_metrics_too(
        tmp_path: Path) -> None:
    """Any worker's scrape speaks for the whole appliance: the reference's every metric, the
    workers' and Redis's included, and nothing else."""
    with RedisServer(tmp_path) as redis:
        proc = start_appliance(tmp_path, None, "--workers", "2", "--redis", redis.url,
                               "--dns-port", str(free_port()), "--console-port", "0",
                               "--proxy-port", str(free_port()),
                               "--cloud", f"http://127.0.0.1:{free_port()}")
        try:
            base = f"http://127.0.0.1:{proc.ports['http']}"
            assert eventually(lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 200)
            httpx.get(f"{base}/v1/file/{'cd' * 32}", timeout=20)  # a shared-cache miss
            metrics = exposed(httpx.get(f"{base}/metrics", timeout=20).text)
        finally:
            proc.stop()
    docs = documented(scale_out=True)
    extra = set(docs) - set(documented())
    assert extra and extra <= set(metrics), sorted(extra - set(metrics))
    assert not sorted(set(metrics) - set(docs)), sorted(set(metrics) - set(docs))
    for name, (kind, labels) in metrics.items():
        assert kind == docs[name][0], f"{name} is a {kind}, docs/metrics.md says {docs[name][0]}"
        if labels is not None:
            assert labels == docs[name][1], f"{name} has labels {labels}, docs say {docs[name][1]}"
