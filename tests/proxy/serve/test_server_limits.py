"""What a slow or greedy client can hold, and what every other client still gets.

Real servers in-process on 127.0.0.1; clients connect from other loopback
addresses (127.0.0.2, …) to stand for other hosts. Deadlines are set small and
each wait is bounded, so a test never sleeps longer than a few seconds.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from certs import CA, server_context
from proxy.serve.conns import ConnectionCaps
from proxy.serve.listener import Listener
from proxy.serve.server import ServerLimits, start_server
from proxy.wire.http import Request, Response
from tests.proxy.serve.test_server import TIMEOUT, closed, get, read_reply


def _ok(request: Request) -> Response:
    return Response(200, b'{"ok":true}')


Start = Callable[..., Awaitable[Listener]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[Listener] = []

    async def run(*, caps: ConnectionCaps | None = None, ssl_context: ssl.SSLContext | None = None,
                  **limits: float) -> Listener:
        server = await start_server(_ok, "127.0.0.1", 0, limits=ServerLimits(**limits),  # type: ignore[arg-type]
                                    caps=caps, ssl_context=ssl_context)
        servers.append(server)
        return server

    yield run
    for server in servers:
        server.close()
        await server.wait_closed()


def port_of(server: Listener) -> int:
    return int(server.sockets[0].getsockname()[1])


async def connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


# ---------------------------------------------------------------- deadlines


async def test_a_head_trickled_byte_by_byte_gets_408_at_the_head_deadline(start: Start) -> None:
    """Every byte used to restart the idle timer: a head could take forever."""
    port = port_of(await start(head_timeout=0.5, idle_timeout=60))
    reader, writer = await connect(port)
    writer.write(b"GET /x HTTP/1.1\r\n")
    answer = None
    for _ in range(40):  # a byte every 0.1 s, for at most 4 s
        writer.write(b"X")
        await writer.drain()
        try:
            answer = await asyncio.wait_for(read_reply(reader), 0.1)
            break
        except TimeoutError:
            continue
    assert answer is not None, "the server kept reading a head that never ended"
    assert answer.status == 408
    assert answer.error_code == "request_timeout"
    assert "request head" in str(answer.json()["error"])
    writer.close()


async def test_a_body_trickled_byte_by_byte_gets_408_at_the_request_deadline(start: Start) -> None:
    port = port_of(await start(head_timeout=5, request_timeout=0.5, idle_timeout=60))
    reader, writer = await connect(port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
    answer = None
    for _ in range(40):
        writer.write(b"a")
        try:
            answer = await asyncio.wait_for(read_reply(reader), 0.1)
            break
        except TimeoutError:
            continue
    assert answer is not None and answer.status == 408
    writer.close()


async def test_whole_requests_on_a_long_lived_connection_meet_no_deadline(start: Start) -> None:
    """The deadlines bound one request from its first byte, not the connection."""
    port = port_of(await start(head_timeout=0.3, request_timeout=0.3, idle_timeout=60))
    reader, writer = await connect(port)
    for _ in range(5):
        writer.write(get("/x"))
        assert (await read_reply(reader)).status == 200
        await asyncio.sleep(0.1)  # 0.5 s in all, past both deadlines
    writer.close()


async def test_a_tls_handshake_that_never_comes_is_closed_at_the_head_deadline(
    start: Start, tmp_path: object
) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    ca = CA.ensure(tmp_path)
    server = await start(ssl_context=server_context(ca, ["localhost"], state_dir=tmp_path / "tls"),
                         head_timeout=0.5)
    reader, writer = await connect(port_of(server))
    assert await closed(reader)  # within TIMEOUT, where a handshake used to be awaited 60 s
    writer.close()


# ---------------------------------------------------------------- codings


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("Content-Encoding: gzip", 415),
        ("Content-Encoding: identity, br", 415),
        ("Transfer-Encoding: gzip, chunked", 501),
    ],
)
async def test_coded_bodies_are_refused_not_read_as_plain_bytes(
    start: Start, header: str, status: int
) -> None:
    reader, writer = await connect(port_of(await start()))
    body = b"1f\r\n" + b"x" * 31 + b"\r\n0\r\n\r\n" if "chunked" in header else b"x" * 31
    length = "" if "chunked" in header else "\r\nContent-Length: 31"
    writer.write(f"POST /v1/file HTTP/1.1\r\nHost: t\r\n{header}{length}\r\n\r\n".encode() + body)
    reply = await read_reply(reader)
    assert reply.status == status
    assert reply.error_code == "unsupported_encoding"
    assert header.split(":")[0] in str(reply.json()["error"])
    writer.close()


async def test_identity_content_encoding_is_accepted(start: Start) -> None:
    reader, writer = await connect(port_of(await start()))
    writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Encoding: identity\r\nContent-Length: 2\r\n\r\n{}")
    assert (await read_reply(reader)).status == 200
    writer.close()


# ---------------------------------------------------------------- connection caps


async def test_a_client_at_its_connection_cap_is_refused_while_others_are_served(start: Start) -> None:
    caps = ConnectionCaps(total=20, per_client=3)
    port = port_of(await start(caps=caps))
    held = [await connect(port) for _ in range(3)]
    for reader, writer in held:  # each one really holds a place
        writer.write(get("/x"))
        assert (await read_reply(reader)).status == 200
    reader, writer = await connect(port)
    reply = await read_reply(reader)
    assert reply.status == 429
    assert reply.error_code == "too_many_connections"
    assert await closed(reader)
    other_reader, other_writer = await connect(port, "127.0.0.2")
    other_writer.write(get("/x"))
    assert (await read_reply(other_reader)).status == 200
    assert caps.refused[("http", "client_cap")] == 1
    # a place given back is taken again
    held[0][1].close()
    for _ in range(50):
        if caps.held_by("127.0.0.1") < 3:
            break
        await asyncio.sleep(0.02)
    again_reader, again_writer = await connect(port)
    again_writer.write(get("/x"))
    assert (await read_reply(again_reader)).status == 200
    for w in (writer, other_writer, again_writer, *(w for _, w in held[1:])):
        w.close()


async def test_the_total_cap_refuses_new_clients_with_503(start: Start) -> None:
    caps = ConnectionCaps(total=4, per_client=2)
    port = port_of(await start(caps=caps))
    held = [await connect(port, f"127.0.0.{2 + i // 2}") for i in range(4)]
    for reader, writer in held:
        writer.write(get("/x"))
        assert (await read_reply(reader)).status == 200
    reader, writer = await connect(port, "127.0.0.9")
    reply = await read_reply(reader)
    assert reply.status == 503
    assert caps.refused[("http", "total_cap")] == 1
    for _, w in (*held, (reader, writer)):
        w.close()


async def test_tls_connections_count_before_their_handshake(start: Start, tmp_path: object) -> None:
    """A TLS client that never finishes its handshake still holds one of its places."""
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    caps = ConnectionCaps(total=20, per_client=2)
    ca = CA.ensure(tmp_path)
    server = await start(caps=caps, ssl_context=server_context(ca, ["localhost"], state_dir=tmp_path / "tls"))
    silent = [await connect(port_of(server)) for _ in range(2)]
    for _ in range(50):
        if caps.held_by("127.0.0.1") == 2:
            break
        await asyncio.sleep(0.02)
    assert caps.held_by("127.0.0.1") == 2
    reader, writer = await connect(port_of(server))
    assert await asyncio.wait_for(closed(reader), TIMEOUT)  # refused before any handshake
    assert caps.refused[("https", "client_cap")] == 1
    for _, w in (*silent, (reader, writer)):
        w.close()


def test_caps_give_places_back_once_and_never_let_one_client_hold_more_than_half() -> None:
    caps = ConnectionCaps(total=10, per_client=100)
    assert caps.per_client == 5
    slots = [caps.admit("a", "http") for _ in range(5)]
    assert all(slots) and caps.admit("a", "http") is None
    assert caps.admit("b", "http") is not None
    slot = slots[0]
    assert slot is not None
    slot.release()
    slot.release()  # twice changes nothing
    assert caps.held_by("a") == 4 and caps.open == 5


async def test_out_of_descriptors_pauses_accepts_then_serves_again(start: Start) -> None:
    """EMFILE at accept (descriptors used elsewhere in the process) is counted and waited out,
    not spun on: the waiting client is served once accepting resumes."""
    import errno

    caps = ConnectionCaps(total=20, per_client=5)
    server = await start(caps=caps)
    real = server._sock
    failures = [OSError(errno.EMFILE, "Too many open files")]

    class Starved:
        def accept(self) -> tuple[object, object]:
            if failures:
                raise failures.pop()
            return real.accept()

        def fileno(self) -> int:
            return real.fileno()

        def close(self) -> None:
            real.close()

    server._sock = Starved()  # type: ignore[assignment]
    server.EMFILE_PAUSE = 0.1
    reader, writer = await connect(port_of(server))
    writer.write(get("/x"))
    assert (await read_reply(reader)).status == 200
    assert caps.refused[("http", "no_descriptors")] == 1
    writer.close()
