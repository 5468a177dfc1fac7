"""Two real appliances behind a real haproxy running appliance/haproxy.cfg as shipped: the
answers through it, the HTTPS query door and the intercept door passed through in tcp mode,
and an appliance killed under load and restarted without a single failed query (issue 13)."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Iterator

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
    standard_probes,
    two_behind_haproxy,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy is not installed"),
]

ITEMS = "rampart_items_total"
World = tuple[Proc, list[Appliance], Haproxy]
Behind = tuple[list[Appliance], Haproxy]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A cloud, and appliances a and b relaying to it (one CA, their intercept doors on,
    BLOCKED_SHA256 on both blocked lists) behind haproxy."""
    tmp = tmp_path_factory.mktemp("lb")
    cloud = start_cloud(tmp)
    try:
        with two_behind_haproxy(tmp, cloud=cloud, intercept=True) as (pair, lb):
            add_to_list(pair, "--blocked", BLOCKED_SHA256)
            for a in pair:
                wait_blocked(a.url())
            yield cloud, pair, lb
    finally:
        cloud.stop()


@pytest.fixture
def behind(world: World) -> Behind:
    _, pair, lb = world
    return pair, lb


def file_results(base: str, *items: dict[str, str]) -> list[dict[str, str]]:
    r = httpx.post(f"{base}/v1/file", json={"items": list(items)}, timeout=15)
    assert r.status_code == 200, r.text
    results: list[dict[str, str]] = r.json()["results"]
    return results


def wait_blocked(base: str) -> None:
    """The blocked list reaches a running appliance within its poll (lists_poll, 1 s)."""
    for _ in range(100):
        if file_results(base, {"sha256": BLOCKED_SHA256})[0]["source"] == "blocked-list":
            return
        time.sleep(0.05)
    raise AssertionError(f"{base} does not answer the blocked list")


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
    cloud, pair, lb = world
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


def test_an_appliance_killed_under_load_and_restarted_costs_no_request(behind: Behind) -> None:
    (a, _), lb = behind
    retried = _retries(lb)
    with Load(lb.url(), [*standard_probes(), big_batch()], clients=4) as load:
        load.wait_for(100)
        a.kill()
        lb.wait_state("a", "DOWN")  # the health checks see it gone
        assert lb.states("query_tls")["a"] == "DOWN"  # and the tcp doors follow
        load.wait_for(100)  # b alone answers everything
        a.restart()  # same ports, same data
        lb.wait_state("a", "UP")
        answered = a.counter(ITEMS, service="file")
        load.wait_for(100)
        spread_again = a.counter(ITEMS, service="file") > answered  # a takes its share again
    result = load.result
    assert result.failed == 0 and result.wrong == 0, result.problems
    assert result.ok == result.sent
    assert spread_again, "no query reached the restarted appliance"
    assert _retries(lb) > retried, "nothing was retried: the kill found no query under way"
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


def _retries(lb: Haproxy) -> int:
    """How many requests haproxy resent to another appliance (retries and redispatches)."""
    lines = lb.command("show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        if row.get("pxname") == "query" and row.get("svname") == "BACKEND":
            return int(row.get("wretr") or 0) + int(row.get("wredis") or 0)
    raise AssertionError("no query backend in haproxy's stats")
