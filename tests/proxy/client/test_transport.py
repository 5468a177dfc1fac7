"""proxy.client.transport: ask() with failover, cool-downs, location and TLS against real
HTTP servers on 127.0.0.1 (tests/proxy/client/fake_server.py)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from proxy.client.errors import ClientError, NoServer
from proxy.client.servers import Server, ServerPool, parse_server
from proxy.client.transport import HttpTransport, ask, batches, retry_after, server_message
from tests.proxy.client.fake_server import FakeServer
from tests.proxy.client.test_servers import Clock, closed_port_url
from tests.proxy.relay.test_http_client import Pki, make_pki

Serve = Callable[..., Awaitable[FakeServer]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    started: list[FakeServer] = []

    async def start(name: str = "s", **kw: object) -> FakeServer:
        server = await FakeServer(name, **kw).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def transport(clock: Clock) -> AsyncIterator[HttpTransport]:
    t = HttpTransport(timeout=2.0, clock=clock)
    yield t
    await t.close()


def pool_of(*servers: FakeServer | str, clock: Clock, **kw: object) -> ServerPool:
    urls = [s if isinstance(s, str) else s.url for s in servers]
    return ServerPool([Server(u, i) for i, u in enumerate(urls)], clock=clock, **kw)  # type: ignore[arg-type]


async def post(t: HttpTransport, pool: ServerPool, clock: Clock, location: str | None = "inside",
               **kw: object) -> dict[str, object]:
    answer = await ask(t, pool, location, "POST", "/v1/file", b'{"items":[]}',  # type: ignore[arg-type]
                       {"Content-Type": "application/json"}, clock() + 10, **kw)  # type: ignore[arg-type]
    assert answer.status == 200
    got: dict[str, object] = json.loads(answer.body)
    return got


# ---------------------------------------------------------------- failover


@pytest.mark.parametrize("mode", ["close", "503", "429", "hang", "garbage"])
async def test_failed_first_server_fails_over_to_the_next(serve: Serve, clock: Clock, mode: str) -> None:
    first, second = await serve("first", mode=mode), await serve("second")
    t = HttpTransport(timeout=0.3, clock=clock)  # "hang" gives up after 0.3 s of silence
    try:
        pool = pool_of(first, second, clock=clock)
        got = await post(t, pool, clock, check=json.loads)
        assert got["server"] == "second" and got["got"] == '{"items":[]}'
        assert first.asked() == 1 and pool.last == pool.servers[1]
        assert pool.health(pool.servers[0]).failures == 1
        assert pool.candidates("inside") == [pool.servers[1]]  # first cools down
    finally:
        await t.close()


async def test_refused_connection_fails_over(serve: Serve, clock: Clock, transport: HttpTransport) -> None:
    dead, up = closed_port_url(), await serve("up")
    pool = pool_of(dead, up, clock=clock)
    assert (await post(transport, pool, clock))["server"] == "up"
    error = pool.health(pool.servers[0]).last_error
    assert error is not None and error.startswith("connect: cannot connect")


async def test_cooling_server_is_skipped_until_it_expires(serve: Serve, clock: Clock,
                                                          transport: HttpTransport) -> None:
    first, second = await serve("first", mode="503"), await serve("second")
    pool = pool_of(first, second, clock=clock, cooldown=30)
    await post(transport, pool, clock)
    first.mode = "ok"
    for _ in range(3):
        assert (await post(transport, pool, clock))["server"] == "second"
    assert first.asked() == 1
    clock.t += 31
    assert (await post(transport, pool, clock))["server"] == "first"


async def test_retry_after_is_the_cooldown(serve: Serve, clock: Clock, transport: HttpTransport) -> None:
    first, second = await serve("first", mode="429", retry_after="5"), await serve("second")
    pool = pool_of(first, second, clock=clock, cooldown=300)
    await post(transport, pool, clock)
    first.mode = "ok"
    clock.t += 4
    assert (await post(transport, pool, clock))["server"] == "second"
    clock.t += 2
    assert (await post(transport, pool, clock))["server"] == "first"


async def test_all_down_lists_every_server_and_why(serve: Serve, clock: Clock,
                                                   transport: HttpTransport) -> None:
    busy, dead = await serve("busy", mode="503"), closed_port_url()
    pool = pool_of(busy, dead, clock=clock)
    with pytest.raises(NoServer) as info:
        await post(transport, pool, clock)
    message = info.value.message
    assert message.startswith("no server answered POST /v1/file (the client is inside")
    assert f"{busy.url}: HTTP 503 too_many_connections: busy" in message
    assert f"{dead}: connect: cannot connect" in message
    # all cooling now: the next ask tries them anyway, in order
    busy.mode = "ok"
    assert (await post(transport, pool, clock))["server"] == "busy"


async def test_bad_request_is_a_client_error_without_failover(serve: Serve, clock: Clock,
                                                              transport: HttpTransport) -> None:
    first, second = await serve("first", mode="400"), await serve("second")
    pool = pool_of(first, second, clock=clock)
    refusal = "refused POST /v1/file: HTTP 400 bad_hash: hash '12' has 2 characters"
    with pytest.raises(ClientError, match=refusal) as info:
        await post(transport, pool, clock)
    assert not isinstance(info.value, NoServer)
    assert second.asked() == 0
    assert pool.health(pool.servers[0]).failures == 0 and pool.candidates("inside")[0] == pool.servers[0]


async def test_deadline_passed_tries_nothing(serve: Serve, clock: Clock, transport: HttpTransport) -> None:
    up = await serve("up")
    pool = pool_of(up, clock=clock)
    with pytest.raises(NoServer, match="not tried: the deadline passed"):
        await ask(transport, pool, "inside", "POST", "/v1/file", b"{}", None, clock() - 1)
    assert up.asked() == 0


async def test_random_order_spreads_over_one_priority(serve: Serve, clock: Clock,
                                                      transport: HttpTransport) -> None:
    same = [await serve(f"s{i}") for i in range(3)]
    spare = await serve("spare")
    servers = [Server(s.url, 0) for s in same] + [Server(spare.url, 1)]
    pool = ServerPool(servers, order="random", rng=random.Random(3), clock=clock)
    for _ in range(30):
        await post(transport, pool, clock)
    assert all(s.asked() >= 3 for s in same) and spare.asked() == 0
    assert sum(s.asked() for s in same) == 30


async def test_keep_alive_reuses_one_connection(serve: Serve, clock: Clock,
                                                transport: HttpTransport) -> None:
    up = await serve("up")
    pool = pool_of(up, clock=clock)
    for _ in range(5):
        await post(transport, pool, clock)
    assert up.asked() == 5 and up.connections == 1 and transport.connections_opened == 1


async def test_a_server_that_answers_garbage_is_kept_without_check(serve: Serve, clock: Clock,
                                                                   transport: HttpTransport) -> None:
    odd = await serve("odd", mode="garbage")
    answer = await ask(transport, pool_of(odd, clock=clock), "inside", "POST", "/v1/file", b"{}", None,
                       clock() + 5)
    assert answer.body == b"<html>captive portal</html>"


# ---------------------------------------------------------------- location and external servers


async def test_outside_uses_the_external_server_over_https(serve: Serve, clock: Clock, pki: Pki) -> None:
    internal_dead = closed_port_url()
    external = await serve("external", tls=pki.server_context())
    t = HttpTransport(pki.ca_file, timeout=2.0, clock=clock)
    try:
        pool = ServerPool([Server(internal_dead), parse_server(f"external:{external.url}")], clock=clock)
        assert (await post(t, pool, clock, location=None))["server"] == "external"
        assert pool.location == "outside"
        assert "no internal server answered /healthz" in pool.location_reason
    finally:
        await t.close()


async def test_external_plain_http_is_never_sent(serve: Serve, clock: Clock,
                                                 transport: HttpTransport) -> None:
    plain = await serve("plain")
    pool = ServerPool([Server(plain.url, zone="external")], clock=clock)
    with pytest.raises(NoServer, match="external server must be https; nothing was sent"):
        await post(transport, pool, clock, location="outside")
    assert plain.requests == []


async def test_outside_without_external_servers(clock: Clock, transport: HttpTransport) -> None:
    pool = ServerPool([Server(closed_port_url())], clock=clock)
    with pytest.raises(NoServer, match=r"the client is outside .* no external server is configured"):
        await post(transport, pool, clock, location=None)


async def test_every_server_failing_probes_the_location_again(serve: Serve, clock: Clock, pki: Pki) -> None:
    """A laptop that left the office: the kept "inside" fails everywhere, so ask probes again
    and goes to the external server in the same ask."""
    office = await serve("office")
    external = await serve("external", tls=pki.server_context())
    t = HttpTransport(pki.ca_file, timeout=2.0, clock=clock)
    try:
        pool = ServerPool([Server(office.url), parse_server(f"external:{external.url}")],
                          external_fallback=False, clock=clock)
        assert (await post(t, pool, clock, location=None))["server"] == "office"
        office.mode = office.health = "close"
        assert (await post(t, pool, clock, location=None))["server"] == "external"
        assert pool.location == "outside"
    finally:
        await t.close()


# ---------------------------------------------------------------- TLS


async def test_tls_verified_with_the_given_ca(serve: Serve, clock: Clock, pki: Pki) -> None:
    secure = await serve("secure", tls=pki.server_context())
    t = HttpTransport(pki.ca_file, clock=clock)
    try:
        assert (await post(t, pool_of(secure, clock=clock), clock))["server"] == "secure"
    finally:
        await t.close()


async def test_wrong_ca_fails_over_as_a_tls_error(serve: Serve, clock: Clock, pki: Pki,
                                                  other_pki: Pki) -> None:
    strange = await serve("strange", tls=other_pki.server_context())
    known = await serve("known", tls=pki.server_context())
    t = HttpTransport(pki.ca_file, clock=clock)
    try:
        pool = pool_of(strange, known, clock=clock)
        assert (await post(t, pool, clock))["server"] == "known"
        error = pool.health(pool.servers[0]).last_error
        assert error is not None and error.startswith("tls: certificate not trusted")
        assert strange.requests == []
    finally:
        await t.close()


def test_unusable_ca_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ClientError, match=re.escape(f"CA file '{missing}' cannot be used")):
        HttpTransport(missing)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ClientError, match=r"junk\.pem' cannot be used"):
        HttpTransport(junk)


# ---------------------------------------------------------------- small pieces


def test_batches() -> None:
    assert list(batches(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(batches([], 1000)) == []
    assert [len(b) for b in batches(range(2500), 1000)] == [1000, 1000, 500]
    with pytest.raises(ClientError, match="batch size 0"):
        list(batches([1], 0))


@pytest.mark.parametrize(("value", "seconds"), [("7", 7.0), (" 0 ", 0.0), ("-1", None), ("1.5", None),
                                                ("Wed, 21 Oct 2015 07:28:00 GMT", None),
                                                ("9" * 20, None), ("", None)])
def test_retry_after(value: str, seconds: float | None) -> None:
    assert retry_after({"retry-after": value}) == seconds


def test_server_message_is_bounded_and_printable() -> None:
    body = json.dumps({"error": {"code": "bad_url", "message": "x\x1b[31m" + "y" * 1000}}).encode()
    text = server_message(body)
    assert text.startswith(" bad_url: x?[31my") and len(text) <= 301
    assert server_message(b"<html>") == "" and server_message(b'{"error": 3}') == ""
    assert server_message(b"{not json") == ""


async def test_caller_headers_replace_the_defaults(serve: Serve, clock: Clock,
                                                   transport: HttpTransport) -> None:
    up = await serve("up")
    await ask(transport, pool_of(up, clock=clock), "inside", "GET", "/v1/agent-pattern", b"",
              {"accept": "application/octet-stream"}, clock() + 5)
    head = up.heads[-1].lower()
    assert "accept: application/octet-stream" in head and "application/json" not in head
    assert "user-agent: rampart-client/1" in head
