"""proxy.serve.fleet: several processes' metrics merged into one scrape, readiness across them,
over real unix sockets in a temporary run folder."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.errors import RampartError
from proxy.serve import fleet
from proxy.wire.http import Request, Response

W0 = b"""# HELP rampart_items_total Items answered
# TYPE rampart_items_total counter
rampart_items_total{service="file",source="pattern"} 3.0
rampart_items_total{service="file",source="local"} 1.0
# HELP rampart_request_latency_seconds latency
# TYPE rampart_request_latency_seconds histogram
rampart_request_latency_seconds_bucket{le="0.001"} 2.0
rampart_request_latency_seconds_bucket{le="+Inf"} 3.0
rampart_request_latency_seconds_count 3.0
rampart_request_latency_seconds_sum 0.5
# HELP rampart_connections_open open
# TYPE rampart_connections_open gauge
rampart_connections_open{door="query-http"} 2.0
# HELP rampart_uptime_seconds up
# TYPE rampart_uptime_seconds gauge
rampart_uptime_seconds 10.0
# HELP rampart_pattern_version v
# TYPE rampart_pattern_version gauge
rampart_pattern_version{pattern="smart-scan"} 20260101010000.0
# HELP rampart_redis_up up
# TYPE rampart_redis_up gauge
rampart_redis_up 1.0
# HELP rampart_worker_requests_total by worker
# TYPE rampart_worker_requests_total counter
rampart_worker_requests_total{worker="0"} 7.0
"""
W1 = (W0.replace(b'source="pattern"} 3.0', b'source="pattern"} 4.0')
      .replace(b'door="query-http"} 2.0', b'door="query-http"} 5.0')
      .replace(b"rampart_uptime_seconds 10.0", b"rampart_uptime_seconds 30.0")
      .replace(b"20260101010000.0", b"20260101000000.0")
      .replace(b'worker="0"} 7.0', b'worker="1"} 9.0')
      .replace(b"rampart_redis_up 1.0", b"rampart_redis_up 0.0"))


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_merge_sums_counters_and_histograms_and_combines_gauges_by_meaning() -> None:
    got = samples(fleet.render(fleet.merge({"worker-0": W0, "worker-1": W1})))
    assert got[("rampart_items_total", (("service", "file"), ("source", "pattern")))] == 7.0
    assert got[("rampart_items_total", (("service", "file"), ("source", "local")))] == 2.0
    assert got[("rampart_request_latency_seconds_bucket", (("le", "+Inf"),))] == 6.0
    assert got[("rampart_request_latency_seconds_sum", ())] == 1.0
    assert got[("rampart_connections_open", (("door", "query-http"),))] == 7.0  # each its share
    assert got[("rampart_uptime_seconds", ())] == 30.0  # the oldest process
    assert got[("rampart_redis_up", ())] == 0.0  # up only while every process reaches it
    # the version every worker serves at least, while one still swaps
    assert got[("rampart_pattern_version", (("pattern", "smart-scan"),))] == 20260101000000.0
    # the per-worker series stay apart
    assert got[("rampart_worker_requests_total", (("worker", "0"),))] == 7.0
    assert got[("rampart_worker_requests_total", (("worker", "1"),))] == 9.0


def test_a_text_that_does_not_parse_is_left_out() -> None:
    got = samples(fleet.render(fleet.merge({"worker-0": W0, "worker-1": b"{not metrics\n"})))
    assert got[("rampart_items_total", (("service", "file"), ("source", "pattern")))] == 3.0


def test_up_families_name_each_worker() -> None:
    got = samples(fleet.render(fleet.up_families(3, {0: True, 2: True})))
    assert got[("rampart_workers", ())] == 3.0
    assert got[("rampart_workers_up", ())] == 2.0
    assert got[("rampart_worker_up", (("worker", "1"),))] == 0.0


def test_a_socket_path_too_long_is_refused_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(RampartError, match="--data-dir"):
        fleet.socket_path(tmp_path / ("x" * 120), "worker-0")


def _ready(index: int, version: str = "1") -> dict[str, Any]:
    return {"status": "ready", "pid": 1000 + index, "worker": index,
            "pattern": {"version": version, "update": None}}


async def _fleet_of(run: Path, members: dict[str, tuple[bytes, dict[str, Any]]],
                    count: int) -> tuple[fleet.Fleet, list[fleet.Member]]:
    started = []
    for name, (text, body) in members.items():
        m = fleet.Member(fleet.socket_path(run, name), lambda t=text: t, lambda b=body: b)
        await m.start()
        started.append(m)
    me = fleet.Fleet(run, 0, count, metrics=lambda: W0, ready=lambda: _ready(0))
    return me, started


def test_readiness_and_metrics_across_members(tmp_path: Path) -> None:
    run = fleet.run_dir(tmp_path)

    async def scenario() -> None:
        main = {"status": "ready", "pid": 999,
                "pattern": {"version": "1", "update": {"last": {"ok": True}}}}
        me, members = await _fleet_of(run, {"main": (b"", main), "worker-1": (W1, _ready(1))}, 2)
        try:
            assert stat.S_IMODE((run / "worker-1.sock").stat().st_mode) == 0o600
            status, body = await me.readiness()
            assert status == 200 and body["status"] == "ready"
            assert [w["pid"] for w in body["workers"]] == [1000, 1001]
            assert body["main"]["pid"] == 999
            assert body["pattern"]["update"] == {"last": {"ok": True}}  # the main's updater
            got = samples(await me.metrics())
            assert got[("rampart_workers_up", ())] == 2.0
            assert got[("rampart_items_total", (("service", "file"), ("source", "pattern")))] == 7.0
        finally:
            for m in members:
                await m.close()
        assert not (run / "worker-1.sock").exists()

    asyncio.run(scenario())


def test_a_missing_worker_is_named_and_makes_readyz_a_503(tmp_path: Path) -> None:
    run = fleet.run_dir(tmp_path)

    async def scenario() -> None:
        me, members = await _fleet_of(run, {"main": (b"", {"status": "ready", "pid": 9}),
                                            "worker-2": (W1, _ready(2))}, 3)
        try:
            status, body = await me.readiness()
            assert status == 503
            assert body["missing_workers"] == [1]
            assert body["workers"][1] == {"worker": 1, "status": "missing"}
            got = samples(await me.metrics())
            assert got[("rampart_worker_up", (("worker", "1"),))] == 0.0
            assert got[("rampart_workers_up", ())] == 2.0
            # the front answers both paths for the appliance, and passes the rest on
            served = me.front(lambda r: Response(200, b"own"))
            answer = served(Request("GET", b"/readyz", [], b"", "127.0.0.1"))
            assert not isinstance(answer, Response)
            assert (await answer).status == 503  # type: ignore[misc]
            other = served(Request("GET", b"/healthz", [], b"", "127.0.0.1"))
            assert isinstance(other, Response) and other.body == b"own"
        finally:
            for m in members:
                await m.close()

    asyncio.run(scenario())


def test_a_member_bounds_what_it_reads(tmp_path: Path) -> None:
    run = fleet.run_dir(tmp_path)

    async def scenario() -> None:
        m = fleet.Member(fleet.socket_path(run, "main"), lambda: b"m", lambda: {"ok": 1})
        await m.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(run / "main.sock"))
            writer.write(b"x" * 100_000)  # no line end: refused, closed
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert await fleet.ask(run / "main.sock", "metrics") == b"m"
            assert await fleet.ask(run / "nobody.sock", "metrics") is None
        finally:
            await m.close()

    asyncio.run(scenario())


def test_the_main_process_can_ask_every_worker(tmp_path: Path) -> None:
    run = fleet.run_dir(tmp_path)

    async def scenario() -> None:
        members = []
        for i in (0, 1):
            m = fleet.Member(fleet.socket_path(run, fleet.worker_name(i)), lambda i=i: (W0, W1)[i],
                             lambda i=i: _ready(i))
            await m.start()
            members.append(m)
        main = fleet.Fleet(run, -1, 2, metrics=lambda: b"", ready=lambda: {"status": "ready",
                                                                          "pid": 9, "pattern": {}})
        try:
            assert main.others() == ["worker-0", "worker-1"]
            status, body = await main.readiness()
            assert status == 200 and [w["pid"] for w in body["workers"]] == [1000, 1001]
            got = samples(await main.metrics())
            assert got[("rampart_items_total", (("service", "file"), ("source", "pattern")))] == 7.0
        finally:
            for m in members:
                await m.close()

    asyncio.run(scenario())
