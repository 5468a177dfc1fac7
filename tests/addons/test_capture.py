"""Capture: flow files mitmproxy reads back, the live stream and `rampart capture`, and a round
trip through a real appliance (query door and intercept door)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from mitmproxy import io as mio
from mitmproxy.io import tnetstring
from mitmproxy.test import tflow

from addons.capture import (
    QUEUE_FLOWS,
    Capture,
    Selection,
    Subscriber,
    parse_filter,
    query_flow,
    split_flows,
)
from addons.intercept import META
from proxy.config import Config
from proxy.errors import ConfigError
from proxy.serve.conns import ConnectionCaps
from proxy.wire.http import Request, Response
from tests.addons.test_intercept import start_intercepting
from tests.conftest import EICAR_SHA256, RAMPART, Proc, free_port, start_cloud

ANSWER = (b'{"protocol":1,"pattern":"1","results":[{"sha256":"' + EICAR_SHA256.encode()
          + b'","verdict":"malicious","threat":"EICAR-Test-File","source":"pattern","ttl":3600}]}')


def read_flows(data: bytes) -> list:
    return list(mio.FlowReader(io.BytesIO(data)).stream())


def door_request(path: str, method: str = "GET", body: bytes = b"") -> Request:
    return Request(method, path.encode(), [(b"Host", b"appliance.test:8080")], body, "192.0.2.5")


def intercepted(path: str, host: str = "cloud.rampart.test", service: str | None = "file"):
    f = tflow.tflow(resp=True)
    f.client_conn.sni = host
    f.request.host, f.request.path = host, path
    f.request.headers["host"] = host
    f.metadata[META] = {"action": "answered", "service": service, "sources": ["pattern"]}
    return f


# ---------------------------------------------------------------- pure parts


def test_split_flows_cuts_whole_flows_and_keeps_the_rest() -> None:
    one = tnetstring.dumps(tflow.tflow(resp=True).get_state())
    two = tnetstring.dumps(tflow.tflow(resp=True).get_state())
    buffer = bytearray(one + two + two[:50])
    assert split_flows(buffer) == [one, two]
    assert bytes(buffer) == two[:50]
    buffer += two[50:]
    assert split_flows(buffer) == [two] and buffer == bytearray()
    assert split_flows(bytearray(b"12")) == []  # a length still arriving


@pytest.mark.parametrize("garbage", [b"HTTP/1.1 200 OK\r\n", b"5:hello,", b"x" * 20, b"1234567890123456"])
def test_split_flows_refuses_what_is_not_a_flow_stream(garbage: bytes) -> None:
    with pytest.raises(ValueError, match="flow stream"):
        split_flows(bytearray(garbage))


@pytest.mark.parametrize(
    "query, host, service, wanted",
    [
        ("", "cloud.rampart.test", "file", True),
        ("service=file", "cloud.rampart.test", "file", True),
        ("service=web", "cloud.rampart.test", "file", False),
        ("host=cloud.rampart.test", "cloud.rampart.test", "web", True),
        ("host=*.rampart.test&service=file", "cloud.rampart.test", "file", True),
        ("host=other.test", "cloud.rampart.test", "file", False),
        ("service=file", "cloud.rampart.test", None, False),  # forwarded, not a service
    ],
)
def test_selection(query: str, host: str, service: str | None, wanted: bool) -> None:
    assert Selection.from_query(query).wants(intercepted("/v1/file", host, service)) is wanted


@pytest.mark.parametrize(
    "query, message",
    [("service=dns", "service must be"), ("host=a.*.test", "host must be"),
     ("a=1&b=2&c=3&d=4&e=5", "at most 4 query parameters"), ("host=%ff.test", "not UTF-8")],
)
def test_bad_selection_refused(query: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Selection.from_query(query)


def test_capture_filter_is_checked_naming_the_key() -> None:
    assert parse_filter("") is None
    assert parse_filter("~u /v1/file")(intercepted("/v1/file/x"))
    with pytest.raises(ConfigError, match="'capture_filter'"):
        parse_filter("~nonsense (")


def test_query_door_exchange_becomes_a_flow_mitmproxy_reads_back() -> None:
    f = query_flow(door_request(f"/v1/file/{EICAR_SHA256}"), Response(200, ANSWER), 0.0042)
    buf = io.BytesIO()
    mio.FlowWriter(buf).add(f)
    (back,) = read_flows(buf.getvalue())
    assert back.request.method == "GET" and back.request.pretty_host == "appliance.test"
    assert back.request.path == f"/v1/file/{EICAR_SHA256}" and back.request.port == 8080
    assert back.client_conn.peername[0] == "192.0.2.5"
    assert back.response.status_code == 200 and back.response.content == ANSWER
    assert back.response.headers["X-Rampart-Source"] == "pattern"
    meta = back.metadata[META]
    assert meta["door"] == "query" and meta["service"] == "file" and meta["latency_ms"] == 4.2
    assert meta["sources"] == ["pattern"] and meta["matched"] == ["EICAR-Test-File"]


# ---------------------------------------------------------------- the addon


async def test_file_capture_is_filtered_and_flushed_per_flow(tmp_path: Path) -> None:
    path = tmp_path / "flows" / "capture.mitm"
    cap = Capture(Config(capture=path, capture_filter="~u /v1/file", capture_port=0))
    await cap.start()
    cap.observe(door_request("/v1/file", "POST", b"{}"), Response(200, ANSWER), 0.001)
    cap.observe(door_request("/v1/web?url=x"), Response(200, b"{}"), 0.001)  # filtered out
    cap.observe(door_request("/healthz"), Response(200, b"{}"), 0.001)  # not reputation traffic
    cap.response(intercepted("/v1/file/abc"))
    cap.response(tflow.tflow(resp=True))  # not an intercept-host flow: never captured
    flows = read_flows(path.read_bytes())  # readable while still open: flushed per flow
    assert [f.request.path for f in flows] == ["/v1/file", "/v1/file/abc"]
    await cap.done()
    again = Capture(Config(capture=path, capture_port=0))  # a restart appends
    await again.start()
    again.response(intercepted("/v1/web", service="web"))
    await again.done()
    assert len(read_flows(path.read_bytes())) == 3


async def test_nothing_is_built_while_nobody_listens(tmp_path: Path) -> None:
    cap = Capture(Config(capture_port=0))
    observers: list[object] = []
    cap.attach(observers)  # type: ignore[arg-type]
    await cap.start()
    assert not cap.active and observers == []  # the query door does not even call it
    cap.observe(door_request("/v1/file/x"), Response(200, ANSWER), 0.001)  # no error, no work
    await cap.done()
    to_file = Capture(Config(capture=tmp_path / "c.mitm", capture_port=0))
    to_file.attach(observers)  # type: ignore[arg-type]
    await to_file.start()
    assert observers == [to_file.observe]  # while capturing, every answer
    await to_file.done()
    assert observers == []


async def test_unwritable_capture_file_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    cap = Capture(Config(capture=tmp_path / "dir", capture_port=0))
    with pytest.raises(Exception, match="cannot open capture file"):
        await cap.start()


async def _get(port: int, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


async def test_live_stream_sends_matching_flows_to_each_subscriber() -> None:
    cap = Capture(Config(capture_port=free_port()))
    observers: list[object] = []
    cap.attach(observers)  # type: ignore[arg-type]
    await cap.start()
    try:
        _, w0, head = await _get(cap.bound_port, "/v2/nothing")
        assert head.startswith(b"HTTP/1.1 400")
        w0.close()
        r1, w1, h1 = await _get(cap.bound_port, "/v1/capture?service=file")
        r2, w2, h2 = await _get(cap.bound_port, "/v1/capture?service=web")
        assert h1.startswith(b"HTTP/1.1 200") and h2.startswith(b"HTTP/1.1 200")
        for _ in range(50):
            if len(cap.subscribers) == 2:
                break
            await asyncio.sleep(0.01)
        assert observers == [cap.observe]  # the query door's answers reach it now
        cap.response(intercepted("/v1/file/abc"))
        cap.observe(door_request("/v1/web?url=http://x.test/"), Response(200, b"{}"), 0.001)
        buffer, whole = bytearray(), []
        while not whole:
            buffer += await asyncio.wait_for(r1.read(65536), 5)
            whole = split_flows(buffer)
        got = read_flows(b"".join(whole))
        assert [f.request.path for f in got] == ["/v1/file/abc"]
        web = bytearray(await asyncio.wait_for(r2.read(65536), 5))
        assert [f.metadata[META]["door"] for f in read_flows(bytes(web))] == ["query"]
        w1.close()
        w2.close()
        for _ in range(100):  # a subscriber that hangs up is dropped
            if not cap.subscribers:
                break
            await asyncio.sleep(0.01)
        assert not cap.subscribers and observers == []
    finally:
        await cap.done()


async def test_capture_connections_count_against_the_process_caps() -> None:
    caps = ConnectionCaps(total=10, per_client=1)
    cap = Capture(Config(capture_port=free_port()), caps)
    await cap.start()
    try:
        _, w1, h1 = await _get(cap.bound_port, "/v1/capture")
        assert h1.startswith(b"HTTP/1.1 200") and caps.held_by("127.0.0.1") == 1
        r2, w2 = await asyncio.open_connection("127.0.0.1", cap.bound_port)
        assert await asyncio.wait_for(r2.read(), 5) == b""  # over the cap: closed, nothing read
        assert caps.refused[("capture", "client_cap")] == 1
        w1.close()
        w2.close()
        for _ in range(100):
            if caps.held_by("127.0.0.1") == 0:
                break
            await asyncio.sleep(0.01)
        assert caps.held_by("127.0.0.1") == 0
    finally:
        await cap.done()


async def test_slow_subscriber_loses_flows_instead_of_slowing_the_doors() -> None:
    cap = Capture(Config(capture_port=0))
    sub = Subscriber(Selection())
    cap.subscribers.add(sub)
    for _ in range(QUEUE_FLOWS + 5):
        cap.response(intercepted("/v1/file/abc"))
    assert sub.queue.qsize() == QUEUE_FLOWS and sub.dropped == 5


# ---------------------------------------------------------------- round trip, real processes


def unknown_hash() -> str:
    return hashlib.sha256(f"capture-{time.time_ns()}".encode()).hexdigest()


def wait_for(path: Path, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path.name}: {path.read_text()[-2000:]}")


def test_capture_round_trip_through_both_doors(tmp_path: Path) -> None:
    cloud = start_cloud(tmp_path)
    capture_port = free_port()
    served = tmp_path / "served.mitm"
    appliance: Proc | None = None
    client: subprocess.Popen[bytes] | None = None
    try:
        appliance = start_intercepting(
            tmp_path, cloud, "--capture-port", str(capture_port), "--capture", str(served),
            "--capture-filter", "~u /v1/file",
        )
        out, log = tmp_path / "live.mitm", tmp_path / "capture-cli.log"
        with log.open("wb") as sink:
            client = subprocess.Popen(
                [*RAMPART, "capture", "-w", str(out), "--service", "file",
                 "--server", f"http://127.0.0.1:{capture_port}"], stdout=sink, stderr=sink,
            )
        wait_for(log, "capturing to")
        time.sleep(0.2)  # the subscription is registered right after the head is sent

        proxy = f"http://127.0.0.1:{appliance.ports['proxy']}"
        ca = str(appliance.data_dir / "ca.pem")
        cloud_url = f"https://localhost:{cloud.ports['https']}"
        fresh = unknown_hash()
        with httpx.Client(proxy=proxy, verify=ssl.create_default_context(cafile=ca)) as c:
            assert c.get(f"{cloud_url}/v1/file/{EICAR_SHA256}").status_code == 200
            assert c.get(f"{cloud_url}/healthz").status_code == 200  # forwarded: not captured here
        door = f"http://127.0.0.1:{appliance.ports['http']}"
        r = httpx.post(f"{door}/v1/file", json={"items": [{"sha256": fresh}]}, timeout=15)
        assert r.json()["results"][0]["source"] == "cloud"
        httpx.post(f"{door}/v1/domain", json={"items": ["example.test"]}, timeout=15)  # not file

        wait_for(log, "capturing to")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(read_flows(out.read_bytes())) < 2:
            time.sleep(0.05)
        client.send_signal(signal.SIGINT)
        assert client.wait(15) == 0
        assert "wrote 2 flows" in log.read_text()

        flows = read_flows(out.read_bytes())
        by_door = {f.metadata[META].get("door", "intercept"): f for f in flows}
        assert set(by_door) == {"intercept", "query"}
        mine = by_door["intercept"]
        assert mine.request.pretty_url == f"{cloud_url}/v1/file/{EICAR_SHA256}"
        assert mine.metadata[META]["sources"] == ["pattern"]
        assert mine.metadata[META]["matched"] == ["EICAR-Test-File"]
        assert mine.response.headers["X-Rampart-Source"] == "pattern"
        assert by_door["query"].metadata[META]["sources"] == ["cloud"]
        assert fresh.encode() in by_door["query"].request.content

        # --capture FILE with its filter, written while the appliance runs
        paths = sorted(f.request.path for f in read_flows(served.read_bytes()))
        assert paths == ["/v1/file", f"/v1/file/{EICAR_SHA256}"]

        if shutil.which("mitmdump"):
            shown = subprocess.run(["mitmdump", "-nr", str(out)], capture_output=True, text=True,
                                   timeout=60)
            assert shown.returncode == 0 and "/v1/file/" + EICAR_SHA256[:20] in shown.stdout
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        if appliance is not None:
            appliance.stop()
        cloud.stop()


def test_capture_without_a_running_appliance_says_so() -> None:
    r = subprocess.run([*RAMPART, "capture", "-w", "/dev/null", "--server",
                        f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "cannot reach the capture port" in r.stderr
