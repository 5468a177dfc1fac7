"""proxy.client.servers: the server list, its order, cool-downs and the location decision,
probed against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.client.errors import ClientError
from proxy.client.servers import Server, ServerPool, parse_server
from proxy.client.transport import HttpTransport
from tests.proxy.client.fake_server import FakeServer


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[FakeServer]]]:
    started: list[FakeServer] = []

    async def start(name: str = "s", **kw: object) -> FakeServer:
        server = await FakeServer(name, **kw).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def transport() -> AsyncIterator[HttpTransport]:
    t = HttpTransport(timeout=2.0)
    yield t
    await t.close()


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(("text", "expected"), [
    ("http://10.0.0.5:8080", Server("http://10.0.0.5:8080", 0, "internal")),
    ("https://sps.corp:4443/@2", Server("https://sps.corp:4443", 2, "internal")),
    ("  HTTPS://SPS.Corp:443/  ", Server("https://sps.corp", 0, "internal")),
    ("external:https://global.example:9443@5", Server("https://global.example:9443", 5, "external")),
    ("internal:http://[::1]:8080@1", Server("http://[::1]:8080", 1, "internal")),
    ("https://sps.corp/rampart", Server("https://sps.corp/rampart", 0, "internal")),
])
def test_parse_server(text: str, expected: Server) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize(("text", "problem"), [
    ("external:http://global.example", "external server must be https"),
    ("ftp://sps.corp", "scheme must be http or https"),
    ("https://sps.corp@high", "'high' after '@' is not a priority"),
    ("https://user:pw@sps.corp", "credentials in server URLs are not supported"),
    ("https://sps.corp@1000", "from 0 to 999"),
    ("https://sps.corp/?q=1", "no query"),
    ("", "want URL"),
    ("https://" + "a" * 3000, "want URL"),
    ("https://", "no host"),
])
def test_parse_server_refuses(text: str, problem: str) -> None:
    with pytest.raises(ClientError, match=problem) as info:
        parse_server(text)
    assert text[:20].strip() in info.value.message


def test_pool_refuses_bad_lists() -> None:
    with pytest.raises(ClientError, match="no server configured"):
        ServerPool([])
    with pytest.raises(ClientError, match="configured twice"):
        ServerPool([Server("http://a:1"), parse_server("http://a:1/@3")])
    with pytest.raises(ClientError, match="priority -1"):
        ServerPool([Server("http://a:1", -1)])
    with pytest.raises(ClientError, match="server order 'fastest'"):
        ServerPool([Server("http://a:1")], order="fastest")  # type: ignore[arg-type]
    with pytest.raises(ClientError, match="cooldown -1"):
        ServerPool([Server("http://a:1")], cooldown=-1)


# ---------------------------------------------------------------- order and cool-down


def test_in_order_by_priority_internal_then_external() -> None:
    servers = [parse_server(t) for t in ("http://b:1@2", "http://a:1@1", "external:https://g:1@0",
                                         "http://c:1@1")]
    pool = ServerPool(servers)
    assert [s.url for s in pool.candidates("inside")] == ["http://a:1", "http://c:1", "http://b:1",
                                                          "https://g:1"]
    assert [s.url for s in pool.candidates("outside")] == ["https://g:1"]
    no_fallback = ServerPool(servers, external_fallback=False)
    assert "https://g:1" not in [s.url for s in no_fallback.candidates("inside")]


def test_random_within_priority_is_spread_and_seeded() -> None:
    servers = [Server(f"http://p0-{i}:1", 0) for i in range(3)] + [Server("http://p1:1", 1)]
    pool = ServerPool(servers, order="random", rng=random.Random(7))
    firsts = [pool.candidates("inside")[0].url for _ in range(60)]
    assert {u: firsts.count(u) > 5 for u in set(firsts)} == {s.url: True for s in servers[:3]}
    assert all(pool.candidates("inside")[-1].url == "http://p1:1" for _ in range(20))
    again = ServerPool(servers, order="random", rng=random.Random(7))
    assert [again.candidates("inside")[0].url for _ in range(60)] == firsts


def test_cooldown_skips_then_expires() -> None:
    clock = Clock()
    a, b = Server("http://a:1"), Server("http://b:1")
    pool = ServerPool([a, b], cooldown=30, clock=clock)
    pool.failed(a, "connect: refused")
    assert pool.candidates("inside") == [b]
    assert pool.plan("inside") == [b, a]  # a is still the last resort within one ask
    clock.t += 29.9
    assert pool.candidates("inside") == [b]
    clock.t += 0.2
    assert pool.candidates("inside") == [a, b]


def test_all_cooling_are_tried_anyway_in_order() -> None:
    clock = Clock()
    a, b = Server("http://a:1"), Server("http://b:1", 1)
    pool = ServerPool([b, a], clock=clock)
    pool.failed(b, "HTTP 503")
    pool.failed(a, "HTTP 503")
    assert pool.candidates("inside") == [a, b]


def test_retry_after_sets_the_cooldown_bounded() -> None:
    clock = Clock()
    a, b = Server("http://a:1"), Server("http://b:1")
    pool = ServerPool([a, b], cooldown=30, max_retry_after=120, clock=clock)
    pool.failed(a, "HTTP 429", retry_after=5)
    pool.failed(b, "HTTP 429", retry_after=10**6)
    clock.t += 6
    assert pool.candidates("inside") == [a]
    clock.t += 115
    assert pool.candidates("inside") == [a, b]


def test_status_records_successes_errors_and_the_last() -> None:
    clock, wall = Clock(), Clock(1.7e9)
    a, b = Server("http://a:1"), Server("http://b:1")
    pool = ServerPool([a, b], clock=clock, wall=wall)
    pool.failed(a, "connect: refused")
    pool.succeeded(b)
    rows = {r["url"]: r for r in pool.status()}
    assert rows["http://a:1"] == {
        "url": "http://a:1", "zone": "internal", "priority": 0, "requests": 1, "failures": 1,
        "last_success": None, "last_error": "connect: refused", "last_error_at": 1.7e9,
        "cooling_for": 30.0, "answered_last": False}
    assert rows["http://b:1"]["last_success"] == 1.7e9 and rows["http://b:1"]["answered_last"]
    assert pool.last == b


def test_state_survives_a_restart_and_ignores_garbage() -> None:
    clock, wall = Clock(), Clock(1.7e9)
    a, b = Server("http://a:1"), Server("http://b:1")
    pool = ServerPool([a, b], clock=clock, wall=wall)
    pool.failed(a, "tls: certificate not trusted")
    pool.succeeded(b)
    pool.decide("inside", "http://b:1 answered /healthz")
    saved = json.loads(json.dumps(pool.export_state()))
    wall.t += 10
    later = ServerPool([a, b, Server("http://c:1")], clock=Clock(5.0), wall=wall)
    later.import_state(saved)
    assert later.last == b and later.location == "inside"
    assert later.candidates("inside") == [b, Server("http://c:1")]  # a cools 20 s more
    assert later.health(a).last_error == "tls: certificate not trusted"
    wall.t += 3600
    stale = ServerPool([a, b], wall=wall)
    stale.import_state(saved)
    assert stale.location is None and stale.candidates("inside") == [a, b]
    for junk in (None, [], {"saved_at": "x"}, {"saved_at": 1.7e9, "servers": [{"url": 3}, 7],
                                               "location": {"value": "moon"}}):
        fresh = ServerPool([a, b], wall=wall)
        fresh.import_state(junk)
        assert fresh.location is None and fresh.last is None


# ---------------------------------------------------------------- location


async def test_inside_when_an_internal_server_answers_healthz(serve, transport: HttpTransport) -> None:
    up = await serve("up")
    pool = ServerPool([Server(closed_port_url()), Server(up.url, 1),
                       parse_server("external:https://global.invalid")])
    assert await pool.locate(transport) == "inside"
    assert pool.location_reason == f"{up.url} answered /healthz"


async def test_outside_when_internal_servers_are_unreachable(serve, transport: HttpTransport) -> None:
    sick = await serve("sick", health="503")
    dead = closed_port_url()
    pool = ServerPool([Server(dead), Server(sick.url), parse_server("external:https://global.invalid")])
    assert await pool.locate(transport) == "outside"
    assert f"{dead}: connect: cannot connect" in pool.location_reason
    assert f"{sick.url}: HTTP 503" in pool.location_reason
    assert [s.zone for s in pool.candidates("outside")] == ["external"]


async def test_outside_when_the_probe_hangs(serve) -> None:
    slow = await serve("slow", health="hang")
    t = HttpTransport(timeout=30)
    try:
        pool = ServerPool([Server(slow.url)], probe_timeout=0.2)
        assert await pool.locate(t) == "outside"
        assert "no answer in time" in pool.location_reason or "timeout" in pool.location_reason
    finally:
        await t.close()


async def test_no_internal_servers_is_outside(transport: HttpTransport) -> None:
    pool = ServerPool([parse_server("external:https://global.invalid")])
    assert await pool.locate(transport) == "outside"
    assert pool.location_reason == "no internal server is configured"


async def test_decision_is_kept_then_probed_again(serve) -> None:
    clock = Clock()
    up = await serve("up")
    t = HttpTransport(timeout=2.0, clock=clock)
    try:
        pool = ServerPool([Server(up.url)], location_ttl=60, clock=clock)
        assert await pool.locate(t) == "inside"
        up.health = "close"
        clock.t += 59
        assert await pool.locate(t) == "inside"
        assert up.requests.count("GET /healthz") == 1
        clock.t += 2
        assert await pool.locate(t) == "outside"
        up.health = "ok"
        assert await pool.locate(t) == "outside"  # kept again
        pool.forget_location()
        assert await pool.locate(t) == "inside"
        assert up.requests.count("GET /healthz") == 3
    finally:
        await t.close()


async def test_a_probe_cut_short_by_the_callers_deadline_is_not_kept(serve) -> None:
    clock = Clock()
    slow = await serve("slow", health="hang")
    t = HttpTransport(timeout=30, clock=clock)
    try:
        pool = ServerPool([Server(slow.url)], probe_timeout=1.0, clock=clock)
        assert await pool.locate(t, deadline=clock() + 0.1) == "outside"
        assert pool.location is None  # the next ask probes again, with its full probe_timeout
        assert "deadline passed" in pool.location_reason
    finally:
        await t.close()
