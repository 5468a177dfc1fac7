"""Two real `rampart serve` appliances (own data directories, own ports) sharing one real
redis-server, relaying to a real `rampart cloud`: the cloud-answer cache, the lists and the
rate limits are shared; Redis stopped under load fails no query, refuses writes clearly,
shows in /readyz and /metrics, and the shared state catches up once it is back."""

from __future__ import annotations

import os
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import EICAR_SHA256, RAMPART, Proc, free_port, metric, start_appliance, start_cloud
from tests.integration.test_integration import eventually, unknown_hash
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


@dataclass
class Fleet:
    redis: RedisServer
    cloud: Proc
    a: Proc
    b: Proc
    key: str  # an operator API key of a's console
    tmp: Path

    def cli(self, *args: str, redis: bool = True) -> subprocess.CompletedProcess[str]:
        """``rampart lists ARGS`` on a's data directory (the local mode), with $RAMPART_REDIS."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_REDIS")}
        if redis:
            env["RAMPART_REDIS"] = self.redis.url
        return subprocess.run([*RAMPART, "lists", *args, "--data-dir", str(self.a.data_dir)],
                              env=env, capture_output=True, text=True, timeout=60)

    def api(self, path: str, body: dict[str, object]) -> httpx.Response:
        ca = ssl.create_default_context(cafile=str(self.a.data_dir / "ca.pem"))
        return httpx.post(f"https://localhost:{self.a.ports['console']}{path}", json=body, verify=ca,
                          timeout=15, headers={"Authorization": f"Bearer {self.key}"})


def url(p: Proc) -> str:
    return f"http://127.0.0.1:{p.ports['http']}"


def domain_source(p: Proc, name: str) -> str:
    return str(httpx.get(f"{url(p)}/v1/domain/{name}", timeout=10).json()["results"][0]["source"])


def file_answer(p: Proc, digest: str) -> dict[str, object]:
    r = httpx.get(f"{url(p)}/v1/file/{digest}", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json()["results"][0])


def readyz(p: Proc) -> httpx.Response:
    return httpx.get(f"{url(p)}/readyz", timeout=10)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("shared")
    redis = RedisServer(tmp).start()
    procs: list[Proc] = []
    try:
        cloud = start_cloud(tmp)
        procs.append(cloud)
        console = free_port()
        a = start_appliance(tmp / "a", cloud, "--redis", redis.url, "--console-port", str(console))
        a.ports["console"] = console
        procs.append(a)
        b = start_appliance(tmp / "b", cloud, "--redis", redis.url)
        procs.append(b)
        made = subprocess.run([*RAMPART, "admin", "key", "create", "--name", "ops", "--role", "operator",
                               "--data-dir", str(a.data_dir)], capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        yield Fleet(redis, cloud, a, b, made.stdout.strip().splitlines()[-1], tmp)
    finally:
        for p in reversed(procs):
            p.stop()
        redis.stop()


def test_a_cloud_answer_fetched_through_a_is_served_by_b_from_the_shared_cache(fleet: Fleet) -> None:
    tls = ssl.create_default_context(cafile=str(fleet.cloud.data_dir / "ca.pem"))
    cloud_metrics = f"https://localhost:{fleet.cloud.ports['https']}/metrics"
    before = metric(httpx.get(cloud_metrics, verify=tls).text, "rampart_items_total", service="file")
    fresh = unknown_hash("shared")
    assert file_answer(fleet.a, fresh)["source"] == "cloud"
    stored = f"rampart:answer:file:{fresh}"
    assert eventually(lambda: fleet.redis.command("EXISTS", stored) == b":1\r\n")
    got = file_answer(fleet.b, fresh)
    assert got["source"] == "cache" and got["verdict"] == "unknown" and int(str(got["ttl"])) > 0
    after = metric(httpx.get(cloud_metrics, verify=tls).text, "rampart_items_total", service="file")
    assert after - before == 1  # one ask, through a; b never asked the cloud
    assert metric(httpx.get(f"{url(fleet.b)}/metrics").text, "rampart_redis_cache_total",
                  result="hit") >= 1
    # the banner says what is shared and where, never the URL's secrets
    where = fleet.redis.url.removeprefix("redis://")
    assert f"shared      cloud answers, lists and rate limits through Redis at {where}" in (
        fleet.b.log.read_text())


def test_a_blocked_rule_added_on_a_is_answered_by_b_within_2_s(fleet: Fleet) -> None:
    added = fleet.cli("add", "--blocked", "cli-shared.example.test")
    assert added.returncode == 0, added.stderr
    assert eventually(lambda: domain_source(fleet.b, "cli-shared.example.test") == "blocked-list")
    r = fleet.api("/api/lists", {"list": "blocked", "values": ["api-shared.example.test"]})
    assert r.status_code == 200, r.text
    assert eventually(lambda: domain_source(fleet.b, "api-shared.example.test") == "blocked-list")
    assert domain_source(fleet.a, "api-shared.example.test") == "blocked-list"
    removed = fleet.cli("remove", "cli-shared.example.test")
    assert removed.returncode == 0, removed.stderr
    assert eventually(lambda: domain_source(fleet.b, "cli-shared.example.test") != "blocked-list")


class Load:
    """Queries to both appliances in a thread until stopped; every failure is kept."""

    def __init__(self, targets: list[Proc]) -> None:
        self.targets = targets
        self.failures: list[str] = []
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self._stop.is_set():
                p = self.targets[i % len(self.targets)]
                digest = EICAR_SHA256 if i % 3 == 0 else unknown_hash(f"load{i}")
                try:
                    r = client.get(f"{url(p)}/v1/file/{digest}")
                    source = r.json()["results"][0]["source"] if r.status_code == 200 else ""
                    if r.status_code != 200 or source == "degraded":
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        self.answered += 1
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    self.failures.append(repr(e))
                i += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_redis_stopped_under_load_fails_no_query_and_catches_up(fleet: Fleet) -> None:
    with Load([fleet.a, fleet.b]) as load:
        assert eventually(lambda: load.answered > 20, 10)
        fleet.redis.stop()
        assert eventually(lambda: readyz(fleet.a).json()["redis"]["state"] == "down", 10)
        ready = readyz(fleet.a)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        body = ready.json()["redis"]
        assert body["url"] == f"127.0.0.1:{fleet.redis.port}/0" and body["last_error"]
        text = httpx.get(f"{url(fleet.a)}/metrics").text
        assert metric(text, "rampart_redis_up") == 0
        refused = fleet.cli("add", "--blocked", "during-outage.example.test")
        assert refused.returncode != 0
        assert "shared lists are unreachable" in refused.stderr and "nothing was changed" in refused.stderr
        r = fleet.api("/api/lists", {"list": "blocked", "values": ["during-outage.example.test"]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "redis_unavailable", r.text
        assert domain_source(fleet.a, "during-outage.example.test") != "blocked-list"
        assert domain_source(fleet.b, "api-shared.example.test") == "blocked-list"  # local copy
        seen = load.answered
        assert eventually(lambda: load.answered > seen + 20, 10)
        fleet.redis.start()  # back empty, as after losing its data: reseeded from the local lists
        assert eventually(lambda: readyz(fleet.a).json()["redis"]["state"] == "up", 15)
        assert eventually(lambda: readyz(fleet.b).json()["redis"]["state"] == "up", 15)
        seen = load.answered
        assert eventually(lambda: load.answered > seen + 20, 10)
    assert load.failures == []
    assert eventually(lambda: b"api-shared.example.test" in fleet.redis.command(
        "HKEYS", "rampart:lists:rules"), 5)
    after = fleet.cli("add", "--blocked", "after-outage.example.test")
    assert after.returncode == 0, after.stderr
    assert eventually(lambda: domain_source(fleet.b, "after-outage.example.test") == "blocked-list")
    assert domain_source(fleet.b, "api-shared.example.test") == "blocked-list"


def test_a_rate_limit_counts_across_both_appliances(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:
        cfg = tmp_path / "rampart.toml"
        cfg.write_text("rate_burst = 10\n")
        flags = ("--redis", redis.url, "--rate-limit", "0.1", "--config", str(cfg))
        a = start_appliance(tmp_path / "a", None, *flags)
        try:
            b = start_appliance(tmp_path / "b", None, *flags)
            try:
                with httpx.Client(timeout=10) as client:
                    # a's burst of 10, less what the start-up health checks of both took
                    first = [client.get(f"{url(a)}/v1/file/{EICAR_SHA256}").status_code
                             for _ in range(12)]
                    assert 0 < first.count(200) <= 10 and first[-1] == 429
                    key = "rampart:rate:query:127.0.0.1"
                    assert eventually(lambda: int(redis.command("GET", key).split(b"\r\n")[1]) >= 10, 5)
                    codes = []
                    for _ in range(10):
                        codes.append(client.get(f"{url(b)}/v1/file/{EICAR_SHA256}").status_code)
                        time.sleep(0.05)
                assert 429 in codes and codes.count(200) < 5  # alone, b would allow all 10
            finally:
                b.stop()
        finally:
            a.stop()
