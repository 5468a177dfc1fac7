"""The query door's HTTP/1.1 server, spoken to in raw bytes over loopback.

A real server runs in-process on 127.0.0.1 (port 0) with a small handler; each
test asserts what a client sees: the status line, the JSON error code, and
whether the connection was kept or closed. Slow handlers wait on an event the
test releases, so ordering is checked without sleeping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from proxy.errors import ProtocolError
from proxy.serve.gate import Gate, forwarded_client
from proxy.serve.server import ServerLimits, start_server
from proxy.wire.http import Request, Response

TIMEOUT = 5.0


@dataclass
class Handler:
    """Answers by path: /slow/* waits for ``gate``; /boom and /refuse raise; others echo."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    seen: list[bytes] = field(default_factory=list)

    def __call__(self, request: Request) -> Response | Awaitable[Response]:
        self.seen.append(request.target)
        target = request.target
        if target.startswith(b"/slow"):
            return self._slow(request)
        if target == b"/boom":
            raise RuntimeError("handler bug")
        if target == b"/aboom":
            return self._async_boom()
        if target == b"/refuse":
            raise ProtocolError(
                "method_not_allowed", "no", status=405, headers=(("Allow", "GET"),)
            )
        if target == b"/arefuse":
            return self._async_refuse()
        return Response(200, _echo(request))

    async def _slow(self, request: Request) -> Response:
        self.entered.set()
        await self.gate.wait()
        return Response(200, _echo(request))

    async def _async_boom(self) -> Response:
        raise RuntimeError("async handler bug")

    async def _async_refuse(self) -> Response:
        raise ProtocolError("not_found", "nothing at /arefuse", status=404)


def _echo(request: Request) -> bytes:
    return json.dumps(
        {"method": request.method, "target": request.target.decode(), "body": request.body.decode()}
    ).encode()


@dataclass
class Reply:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def error_code(self) -> object:
        error = self.json()["error"]
        assert isinstance(error, dict)
        return error["code"]

    @property
    def target(self) -> object:
        return self.json()["target"]


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")
    version, status, reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), TIMEOUT)
    return Reply(int(status), reason, headers, body)


async def closed(reader: asyncio.StreamReader) -> bool:
    """True when the server closed the connection with nothing more to say."""
    try:
        rest = await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionResetError:
        return True
    assert rest == b"", f"unexpected bytes after the last answer: {rest[:200]!r}"
    return True


async def still_open(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> bool:
    """True when the same connection answers another request."""
    writer.write(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
    reply = await read_reply(reader)
    return reply.status == 200 and reply.target == "/ping"


Serve = Callable[..., Awaitable[int]]


@pytest.fixture
def handler() -> Handler:
    return Handler()


@pytest.fixture
async def serve(handler: Handler) -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(**limits: object) -> int:
        server = await start_server(handler, "127.0.0.1", 0, limits=ServerLimits(**limits))  # type: ignore[arg-type]
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    handler.gate.set()
    for server in servers:
        server.close()
        await server.wait_closed()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def get(path: str, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: t", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---------------------------------------------------------------- connection reuse


async def test_keep_alive_serves_two_requests_on_one_connection(serve: Serve) -> None:
    reader, writer = await connect(await serve())
    writer.write(get("/one"))
    first = await read_reply(reader)
    writer.write(get("/two"))
    second = await read_reply(reader)
    assert (first.status, first.target) == (200, "/one")
    assert (second.status, second.target) == (200, "/two")
    assert "connection" not in first.headers and "connection" not in second.headers
    writer.close()


async def test_pipelined_requests_are_answered_in_order(serve: Serve) -> None:
    reader, writer = await connect(await serve())
    writer.write(get("/a") + get("/b") + get("/c"))
    targets = [(await read_reply(reader)).target for _ in range(3)]
    assert targets == ["/a", "/b", "/c"]
    assert await still_open(writer, reader)
    writer.close()


async def test_pipelining_waits_for_a_slow_async_first_answer(serve: Serve, handler: Handler) -> None:
    reader, writer = await connect(await serve())
    writer.write(get("/slow/a") + get("/b") + get("/c"))
    await asyncio.wait_for(handler.entered.wait(), TIMEOUT)
    assert handler.seen == [b"/slow/a"]  # the others wait their turn
    handler.gate.set()
    targets = [(await read_reply(reader)).target for _ in range(3)]
    assert targets == ["/slow/a", "/b", "/c"]
    assert await still_open(writer, reader)
    writer.close()


async def test_connection_close_is_honoured(serve: Serve) -> None:
    reader, writer = await connect(await serve())
    writer.write(get("/bye", "Connection: close"))
    reply = await read_reply(reader)
    assert reply.status == 200 and reply.headers["connection"] == "close"
    assert await closed(reader)
    writer.close()


async def test_async_answer_with_connection_close_closes_after_it(
    serve: Serve, handler: Handler
) -> None:
    reader, writer = await connect(await serve())
    writer.write(get("/slow/bye", "Connection: close"))
    await asyncio.wait_for(handler.entered.wait(), TIMEOUT)
    handler.gate.set()
    reply = await read_reply(reader)
    assert (reply.status, reply.target, reply.headers["connection"]) == (200, "/slow/bye", "close")
    assert await closed(reader)
    writer.close()


async def test_http10_without_keep_alive_closes(serve: Serve) -> None:
    reader, writer = await connect(await serve())
    writer.write(get("/old", version="1.0"))
    reply = await read_reply(reader)
    assert reply.status == 200 and reply.headers["connection"] == "close"
    assert await closed(reader)
    writer.close()


# ---------------------------------------------------------------- bodies


async def test_chunked_request_body_reaches_the_handler_whole(serve: Serve) -> None:
    reader, writer = await connect(await serve())
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    reply = await read_reply(reader)
    assert reply.json() == {"method": "POST", "target": "/echo", "body": "hello world"}
    assert await still_open(writer, reader)
    writer.close()


async def test_declared_body_over_max_body_is_refused_before_it_is_read(
    serve: Serve, handler: Handler
) -> None:
    reader, writer = await connect(await serve(max_body=1024))
    # Only the head is sent: the answer must not wait for the 10 MB body.
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
    reply = await read_reply(reader)
    assert (reply.status, reply.error_code) == (413, "body_too_large")
    assert "1024" in reply.body.decode()
    assert reply.headers["connection"] == "close"
    assert await closed(reader)
    assert handler.seen == []
    writer.close()


async def test_body_at_max_body_is_accepted(serve: Serve) -> None:
    reader, writer = await connect(await serve(max_body=1024))
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024)
    reply = await read_reply(reader)
    assert reply.status == 200 and reply.json()["body"] == "x" * 1024
    writer.close()


async def test_chunked_body_growing_over_max_body_is_refused(serve: Serve, handler: Handler) -> None:
    reader, writer = await connect(await serve(max_body=1024))
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):  # 3 x 600 bytes, no Content-Length to refuse up front
        writer.write(b"258\r\n" + b"y" * 600 + b"\r\n")
    reply = await read_reply(reader)
    assert (reply.status, reply.error_code) == (413, "body_too_large")
    assert await closed(reader)
    assert handler.seen == []
    writer.close()


# ---------------------------------------------------------------- heads


async def test_too_many_header_bytes_answer_431(serve: Serve, handler: Handler) -> None:
    reader, writer = await connect(await serve(max_header=1024))
    headers = [f"X-Filler-{i}: {'v' * 40}" for i in range(40)]
    writer.write(get("/h", *headers))
    reply = await read_reply(reader)
    assert (reply.status, reply.error_code) == (431, "headers_too_large")
    assert await closed(reader)
    assert handler.seen == []
    writer.close()


async def test_header_value_that_never_ends_is_cut_off(serve: Serve, handler: Handler) -> None:
    reader, writer = await connect(await serve(max_header=1024))
    writer.write(b"GET /h HTTP/1.1\r\nHost: t\r\nX-Endless: ")
    reply_task = asyncio.create_task(read_reply(reader))
    for _ in range(64):  # 640 KB of one header value, never terminated
        if reply_task.done():
            break
        writer.write(b"a" * 10_000)
        try:
            await writer.drain()
        except ConnectionError:
            break
    reply = await reply_task
    assert (reply.status, reply.error_code) == (431, "headers_too_large")
    assert handler.seen == []
    writer.close()


async def test_long_url_answers_414(serve: Serve, handler: Handler) -> None:
    reader, writer = await connect(await serve(max_header=1024))
    writer.write(get("/" + "u" * 2000))
    reply = await read_reply(reader)
    assert (reply.status, reply.error_code) == (414, "uri_too_long")
    assert await closed(reader)
    assert handler.seen == []
    writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT A REQUEST\r\n\r\n",
        b"GET /x HTTP/9.9\r\nHost: t\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /x HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
    ],
)
async def test_malformed_request_answers_400_json_and_closes(
    serve: Serve, handler: Handler, raw: bytes
) -> None:
    reader, writer = await connect(await serve())
    writer.write(raw)
    reply = await read_reply(reader)
    assert (reply.status, reply.error_code) == (400, "bad_request")
    assert "malformed HTTP request" in reply.json()["error"]["message"]  # type: ignore[index]
    assert await closed(reader)
    assert handler.seen == []
    writer.close()


async def test_malformed_request_behind_a_slow_one_is_answered_after_it(
    serve: Serve, handler: Handler
) -> None:
    reader, writer = await connect(await serve())
    writer.write(get("/slow/first") + b"NOT A REQUEST\r\n\r\n")
    await asyncio.wait_for(handler.entered.wait(), TIMEOUT)
    handler.gate.set()
    first = await read_reply(reader)
    second = await read_reply(reader)
    assert (first.status, first.target) == (200, "/slow/first")
    assert (second.status, second.error_code) == (400, "bad_request")
    assert await closed(reader)
    writer.close()


async def test_upgrade_request_is_refused_without_reaching_the_handler(
    serve: Serve, handler: Handler
) -> None:
    reader, writer = await connect(await serve())
    writer.write(get("/ws", "Connection: Upgrade", "Upgrade: websocket"))
    reply = await read_reply(reader)
    assert (reply.status, reply.error_code) == (400, "bad_request")
    assert "upgrade" in reply.body.decode()
    assert await closed(reader)
    assert handler.seen == []
    writer.close()


# ---------------------------------------------------------------- handler errors


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [("/refuse", 405, "method_not_allowed"), ("/arefuse", 404, "not_found")],
)
async def test_protocol_error_from_handler_becomes_its_status_and_json(
    serve: Serve, path: str, status: int, code: str
) -> None:
    reader, writer = await connect(await serve())
    writer.write(get(path))
    reply = await read_reply(reader)
    assert (reply.status, reply.error_code) == (status, code)
    if status == 405:
        assert reply.headers["allow"] == "GET"
    assert await still_open(writer, reader)  # a refused request is still a well-formed one
    writer.close()


@pytest.mark.parametrize("path", ["/boom", "/aboom"])
async def test_unexpected_handler_exception_is_a_500_and_the_server_keeps_serving(
    serve: Serve, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = await serve()
    reader, writer = await connect(port)
    writer.write(get(path))
    reply = await read_reply(reader)
    assert (reply.status, reply.error_code) == (500, "internal")
    assert "bug" not in reply.body.decode()  # internals stay in the log
    assert "handler failed" in caplog.text
    other_reader, other_writer = await connect(port)
    assert await still_open(other_writer, other_reader)
    assert await still_open(writer, reader)
    writer.close()
    other_writer.close()


# ---------------------------------------------------------------- time and load bounds


async def test_idle_connection_is_closed_after_idle_timeout(serve: Serve) -> None:
    reader, writer = await connect(await serve(idle_timeout=0.2))
    loop = asyncio.get_running_loop()
    writer.write(get("/once"))
    assert (await read_reply(reader)).status == 200
    started = loop.time()
    assert await closed(reader)
    assert 0.1 <= loop.time() - started < 0.9
    writer.close()


async def test_connection_waiting_for_an_answer_is_not_idle(serve: Serve, handler: Handler) -> None:
    reader, writer = await connect(await serve(idle_timeout=0.2))
    writer.write(get("/slow/long"))
    await asyncio.wait_for(handler.entered.wait(), TIMEOUT)
    await asyncio.sleep(0.5)  # past the idle timeout while the answer is pending
    handler.gate.set()
    reply = await read_reply(reader)
    assert (reply.status, reply.target) == (200, "/slow/long")
    writer.close()


async def test_too_many_pipelined_requests_answer_429_after_the_earlier_ones(
    serve: Serve, handler: Handler
) -> None:
    reader, writer = await connect(await serve(max_pipeline=2))
    writer.write(get("/slow/1") + get("/2") + get("/3") + get("/4") + get("/5"))
    await asyncio.wait_for(handler.entered.wait(), TIMEOUT)
    handler.gate.set()
    replies = [await read_reply(reader) for _ in range(4)]
    assert [r.status for r in replies] == [200, 200, 200, 429]
    assert [r.target for r in replies[:3]] == ["/slow/1", "/2", "/3"]
    assert replies[3].error_code == "too_many_requests"
    assert await closed(reader)
    assert b"/4" not in handler.seen and b"/5" not in handler.seen
    writer.close()


async def test_client_still_sending_a_refused_body_reads_the_413(serve: Serve) -> None:
    """The server drains for a moment after refusing, so the answer is not lost to a reset."""
    port = await serve(max_body=1024)
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://127.0.0.1:{port}/echo", content=b"z" * 4_000_000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


async def test_head_answer_has_the_length_but_no_body_and_keeps_the_connection_usable(
    serve: Serve,
) -> None:
    reader, writer = await connect(await serve())
    writer.write(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n" + get("/after"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    expected = len(_echo(Request("HEAD", b"/h", [], b"", "?")))
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"Content-Length: {expected}\r\n".encode() in head
    after = await read_reply(reader)  # the next bytes are the next answer, not a HEAD body
    assert (after.status, after.target) == (200, "/after")
    writer.close()


# ---------------------------------------------------------------- client networks and rates


async def test_a_client_outside_the_networks_gets_403_then_the_close(handler: Handler) -> None:
    server = await start_server(handler, "127.0.0.1", 0, limits=ServerLimits(),
                                gate=Gate(["10.0.0.0/8"]))
    try:
        reader, writer = await connect(int(server.sockets[0].getsockname()[1]))
        writer.write(get("/v1/file/x"))
        reply = await read_reply(reader)
        assert reply.status == 403 and reply.error_code == "forbidden"
        assert "127.0.0.1" in reply.json()["error"]["message"]  # type: ignore[index]
        assert await closed(reader)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_healthz_answers_loopback_whatever_the_client_networks(handler: Handler) -> None:
    """A local health check works under any --query-client; other paths stay refused."""
    server = await start_server(handler, "127.0.0.1", 0, limits=ServerLimits(),
                                gate=Gate(["10.0.0.0/8"]))
    try:
        port = int(server.sockets[0].getsockname()[1])
        reader, writer = await connect(port)
        writer.write(get("/healthz"))
        assert (await read_reply(reader)).status == 200
        writer.close()
        reader, writer = await connect(port)
        writer.write(get("/readyz"))
        assert (await read_reply(reader)).status == 403
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_over_its_rate_a_client_gets_429_with_retry_after_and_stays_connected(
    handler: Handler,
) -> None:
    server = await start_server(handler, "127.0.0.1", 0, limits=ServerLimits(),
                                gate=Gate(rate=0.5, burst=2))
    try:
        reader, writer = await connect(int(server.sockets[0].getsockname()[1]))
        statuses = []
        for _ in range(3):
            writer.write(get("/ping"))
            statuses.append(await read_reply(reader))
        assert [r.status for r in statuses] == [200, 200, 429]
        limited = statuses[2]
        assert limited.error_code == "rate_limited" and limited.headers["retry-after"] == "2"
        writer.write(get("/ping"))  # still limited, but the connection is kept
        assert (await read_reply(reader)).status == 429
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_behind_a_trusted_proxy_each_request_is_judged_by_the_client_it_names(
    handler: Handler,
) -> None:
    """HAProxy in front (trusted_proxies): one kept-alive connection carries many clients;
    each is let in, refused or rate-limited as itself, and a refusal keeps the connection."""
    gate = Gate(["10.0.0.0/8"], rate=0.001, burst=1, proxies=["127.0.0.1/32"])
    server = await start_server(handler, "127.0.0.1", 0, limits=ServerLimits(), gate=gate)
    try:
        reader, writer = await connect(int(server.sockets[0].getsockname()[1]))

        async def ask(*xff: str) -> tuple[int, str | None]:
            head = "".join(f"X-Forwarded-For: {v}\r\n" for v in xff)
            writer.write(f"GET /ping HTTP/1.1\r\nHost: t\r\n{head}\r\n".encode())
            reply = await read_reply(reader)
            return reply.status, (reply.error_code if reply.status != 200 else None)

        assert await ask("10.1.1.1") == (200, None)
        assert await ask("10.1.1.1") == (429, "rate_limited")  # its own bucket...
        assert await ask("10.2.2.2") == (200, None)  # ...not the next client's
        assert await ask("192.0.2.1") == (403, "forbidden")  # outside query_clients
        # only the proxy's own (last) entry counts: a client cannot name another one
        assert await ask("10.3.3.3, 192.0.2.9") == (403, "forbidden")
        assert await ask("10.9.9.9", "192.0.2.9") == (403, "forbidden")
        assert await ask("10.4.4.4", "192.0.2.9, 10.5.5.5") == (200, None)
        assert await ask() == (403, "forbidden")  # no name: the proxy's own address
        assert await ask("not-an-address") == (403, "forbidden")
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_forwarded_client_takes_the_last_entry_of_the_last_header_only() -> None:
    h = [(b"X-Forwarded-For", b"1.1.1.1, 2.2.2.2"), (b"x-forwarded-for", b" 2001:db8::1 ")]
    assert forwarded_client(h, "127.0.0.1") == "2001:db8::1"
    assert forwarded_client(h[:1], "127.0.0.1") == "2.2.2.2"
    assert forwarded_client([], "127.0.0.1") == "127.0.0.1"
    assert forwarded_client([(b"X-Forwarded-For", b"x" * 100)], "127.0.0.1") == "127.0.0.1"
    assert forwarded_client([(b"X-Forwarded-For", b"\xff")], "127.0.0.1") == "127.0.0.1"


# ---------------------------------------------------------------- half-closed clients


@pytest.mark.parametrize("targets", [["/slow/a"], ["/slow/a", "/b"], ["/a", "/slow/b", "/c"]])
async def test_a_half_closed_client_gets_every_answer_then_the_close(
    serve: Serve, handler: Handler, targets: list[str]
) -> None:
    """A client may shut its sending side once its requests are out (SHUT_WR); answers still
    being made, asynchronous ones above all, must reach it before the server closes."""
    reader, writer = await connect(await serve())
    writer.write(b"".join(get(t) for t in targets))
    writer.write_eof()
    await asyncio.wait_for(handler.entered.wait(), TIMEOUT)
    for _ in range(10):  # let the server see the EOF while the slow answer is pending
        await asyncio.sleep(0)
    handler.gate.set()
    replies = [await read_reply(reader) for _ in targets]
    assert [(r.status, r.target) for r in replies] == [(200, t) for t in targets]
    assert await closed(reader)
    writer.close()
