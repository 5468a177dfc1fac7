"""Two real appliances behind a real haproxy running appliance/haproxy.cfg as shipped: the
answers through it, the HTTPS query door and the intercept door passed through in tcp mode,
and an appliance killed under load and restarted without a single failed query (issue 13)."""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import EICAR_MD5, EICAR_SHA256, Proc, start_cloud
from tests.integration.scale import (
    BLOCKED_SHA256,
    HAPROXY,
    HAPROXY_CFG,
    Appliance,
    Haproxy,
    Load,
    Probe,
    add_to_list,
    metric,
    standard_probes,
    two_behind_haproxy,
)
from tests.redis_server import RedisServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy is not installed"),
]

ITEMS = "rampart_items_total"
Behind = tuple[list[Appliance], Haproxy]


@dataclass
class World:
    cloud: Proc
    redis: RedisServer
    pair: list[Appliance]
    lb: Haproxy


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The README's setup: a cloud, one Redis, and appliances a and b relaying to the cloud
    and sharing their state through Redis (one CA, their intercept doors on), behind
    haproxy; BLOCKED_SHA256 added once, on a."""
    tmp = tmp_path_factory.mktemp("lb")
    with RedisServer(tmp) as redis:
        cloud = start_cloud(tmp)
        try:
            with two_behind_haproxy(tmp, cloud=cloud, redis=redis.url, intercept=True) as (pair, lb):
                add_to_list(pair[:1], "--blocked", BLOCKED_SHA256)
                for a in pair:
                    wait_source(a.url(f"/v1/file/{BLOCKED_SHA256}"), "blocked-list")
                yield World(cloud, redis, pair, lb)
        finally:
            cloud.stop()


@pytest.fixture
def behind(world: World) -> Behind:
    return world.pair, world.lb


def source(url: str) -> str:
    r = httpx.get(url, timeout=15)
    assert r.status_code == 200, r.text
    return str(r.json()["results"][0]["source"])


def wait_source(url: str, wanted: str, timeout: float = 3.0) -> None:
    """``url`` answers from ``wanted`` within ``timeout`` (a shared list change: 2 s)."""
    deadline = time.monotonic() + timeout
    while (got := source(url)) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} answers from {got}, not {wanted}")
        time.sleep(0.05)


def file_results(base: str, *items: dict[str, str]) -> list[dict[str, str]]:
    r = httpx.post(f"{base}/v1/file", json={"items": list(items)}, timeout=15)
    assert r.status_code == 200, r.text
    results: list[dict[str, str]] = r.json()["results"]
    return results


def test_the_shipped_config_checks_and_refuses_to_run_without_the_appliances() -> None:
    env = {**os.environ, "RAMPART_LB_A": "192.0.2.11", "RAMPART_LB_B": "192.0.2.12"}
    ok = subprocess.run([HAPROXY, "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True,
                        text=True, timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    env.pop("RAMPART_LB_B")
    bad = subprocess.run([HAPROXY, "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode != 0 and "RAMPART_LB_B" in bad.stdout + bad.stderr


def test_answers_through_haproxy_are_right_and_spread_over_both(behind: Behind) -> None:
    pair, lb = behind
    before = [a.counter(ITEMS, service="file") for a in pair]
    for _ in range(10):  # round robin: each appliance answers about half
        r = httpx.get(lb.url(f"/v1/file/{EICAR_SHA256}"), timeout=15)
        assert r.status_code == 200
        assert r.json()["results"][0] == {**r.json()["results"][0], "verdict": "malicious",
                                          "threat": "EICAR-Test-File", "source": "pattern"}
        got = file_results(lb.url(), {"md5": EICAR_MD5}, {"sha256": BLOCKED_SHA256})
        assert [(x["verdict"], x["source"]) for x in got] == [("malicious", "pattern"),
                                                             ("malicious", "blocked-list")]
    after = [a.counter(ITEMS, service="file") for a in pair]
    assert all(b > a for a, b in zip(before, after)), (before, after)
    assert sum(after) - sum(before) == 30  # one item a GET, two a batch: nothing asked twice


def test_the_https_door_passes_through_with_the_appliance_ca(behind: Behind) -> None:
    pair, lb = behind
    tls = ssl.create_default_context(cafile=str(pair[0].ca))  # b runs a's CA, imported
    before = [a.counter(ITEMS, service="file") for a in pair]
    for _ in range(6):  # a new connection each time: leastconn spreads them
        r = httpx.get(lb.tls_url(f"/v1/file/{EICAR_SHA256}"), verify=tls, timeout=15)
        assert r.status_code == 200 and r.json()["results"][0]["source"] == "pattern"
    after = [a.counter(ITEMS, service="file") for a in pair]
    assert all(b > a for a, b in zip(before, after)), (before, after)
    with pytest.raises(httpx.ConnectError):  # TLS is the appliance's: no CA, no trust
        httpx.get(lb.tls_url("/healthz"), timeout=15)


def test_the_intercept_door_passes_through_to_both_appliances(world: World) -> None:
    cloud, pair, lb = world.cloud, world.pair, world.lb
    tls = ssl.create_default_context(cafile=str(pair[0].ca))
    proxy = f"http://127.0.0.1:{lb.ports['proxy']}"
    url = f"https://localhost:{cloud.ports['https']}/v1/file/{EICAR_SHA256}"
    before = [a.counter(ITEMS, service="file") for a in pair]
    for _ in range(6):  # a product with the appliance as its proxy, a new tunnel each time
        with httpx.Client(proxy=proxy, verify=tls, timeout=15) as client:
            r = client.get(url)
        assert r.status_code == 200, r.text
        assert r.headers["x-rampart-source"] == "pattern"  # answered by an appliance, not the cloud
        assert r.json()["results"][0]["threat"] == "EICAR-Test-File"
    after = [a.counter(ITEMS, service="file") for a in pair]
    assert all(b > a for a, b in zip(before, after)), (before, after)


def test_a_cloud_answer_is_asked_once_whichever_appliance_haproxy_picks(world: World) -> None:
    cloud, lb = world.cloud, world.lb
    tls = ssl.create_default_context(cafile=str(cloud.data_dir / "ca.pem"))
    cloud_metrics = f"https://localhost:{cloud.ports['https']}/metrics"
    asked = metric(httpx.get(cloud_metrics, verify=tls, timeout=15).text, ITEMS, service="file")
    fresh = hashlib.sha256(f"lb-shared-{time.time_ns()}".encode()).hexdigest()
    assert source(lb.url(f"/v1/file/{fresh}")) == "cloud"
    stored = f"rampart:answer:file:{fresh}"  # stored by a task after the reply
    deadline = time.monotonic() + 3
    while world.redis.command("EXISTS", stored) != b":1\r\n":
        assert time.monotonic() < deadline, "the cloud answer never reached Redis"
        time.sleep(0.05)
    sources = [source(lb.url(f"/v1/file/{fresh}")) for _ in range(6)]  # round robin: both
    assert sources == ["cache"] * 6
    after = metric(httpx.get(cloud_metrics, verify=tls, timeout=15).text, ITEMS, service="file")
    assert after - asked == 1, "the other appliance asked the cloud again"


def test_a_blocked_rule_added_on_a_is_answered_through_haproxy_by_both(behind: Behind) -> None:
    pair, lb = behind
    add_to_list(pair[:1], "--blocked", "lb-shared.example.test")
    for a in pair:  # each appliance directly, within 2 s
        wait_source(a.url("/v1/domain/lb-shared.example.test"), "blocked-list")
    assert {source(lb.url("/v1/domain/x.lb-shared.example.test")) for _ in range(6)} == {"blocked-list"}


def test_an_appliance_killed_under_load_and_restarted_costs_no_request(behind: Behind) -> None:
    (a, b), lb = behind
    retried = lb.resent()
    with Load(lb.url(), [*standard_probes(), big_batch()], clients=4) as load:
        load.wait_for(100)
        a.kill()
        lb.wait_state("a", "DOWN")  # the health checks see it gone
        assert lb.states("query_tls")["a"] == "DOWN"  # and the tcp doors follow
        load.wait_for(100)  # b alone answers everything
        add_to_list([b], "--blocked", "while-a-was-away.example.test")  # shared through Redis
        a.restart()  # same ports, same data
        lb.wait_state("a", "UP")
        wait_source(a.url("/v1/domain/while-a-was-away.example.test"), "blocked-list")
        answered = a.counter(ITEMS, service="file")
        load.wait_for(100)
        spread_again = a.counter(ITEMS, service="file") > answered  # a takes its share again
    result = load.result
    assert result.failed == 0 and result.wrong == 0, result.problems
    assert result.ok == result.sent
    assert spread_again, "no query reached the restarted appliance"
    assert lb.resent() > retried, "nothing was retried: the kill found no query under way"
    # both methods were resent and answered: POST batches are retried like GETs
    assert {"GET", "POST"} <= resent_methods(lb), resent_methods(lb)


def resent_methods(lb: Haproxy) -> set[str]:
    """The methods of requests haproxy's log shows answered 200 after a retry (its httplog
    lines: the fifth of the connection counts is the retries, "+N" when redispatched)."""
    found = set()
    for line in lb.log.read_text(errors="replace").splitlines():
        fields = line.split()
        if (len(fields) > 11 and fields[2] == "query" and fields[5] == "200" and '"' in line
                and fields[10].split("/")[-1] not in ("0", "")):
            found.add(line.split('"')[1].split()[0])
    return found


def big_batch() -> Probe:
    """1,000 SHA-256 items (about 78 KB): the largest batch, which still fits the buffer a
    retried request must fit in (tune.bufsize in the shipped file)."""
    items = [{"sha256": EICAR_SHA256}] + [{"sha256": f"{i:064x}"} for i in range(1, 1000)]

    def check(r: httpx.Response) -> str | None:
        got = r.json()["results"]
        if len(got) != 1000 or got[0]["source"] != "pattern" or got[-1]["sha256"] != items[-1]["sha256"]:
            return f"{len(got)} results, first {got[:1]}"
        return None

    return Probe("POST", "/v1/file", {"items": items}, check=check)
