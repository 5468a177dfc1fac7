"""A stopping worker drains its query door (``Listener.drain``): no new connection is taken, an
idle keep-alive connection is closed at once, and a request in flight is still answered,
with ``Connection: close``, before its connection closes. Raw bytes over loopback."""

from __future__ import annotations

import asyncio
import socket

from proxy.serve.server import ServerLimits, start_server
from proxy.wire.http import Request, Response

TIMEOUT = 5.0


def test_drain_answers_what_is_in_flight_and_closes_the_rest() -> None:
    async def scenario() -> None:
        release, entered = asyncio.Event(), asyncio.Event()

        async def slow() -> Response:
            entered.set()
            await release.wait()
            return Response(200, b'{"slow":true}')

        def handler(request: Request) -> Response | asyncio.Future[Response]:
            if request.target == b"/slow":
                return asyncio.ensure_future(slow())
            return Response(200, b'{"fast":true}')

        listener = await start_server(handler, "127.0.0.1", 0, limits=ServerLimits())
        port = listener.sockets[0].getsockname()[1]
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        idle_w.write(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(idle_r.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(idle_r.readexactly(len(b'{"fast":true}')), TIMEOUT)
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        busy_w.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(entered.wait(), TIMEOUT)
        assert len(listener.connections) == 2

        listener.drain()
        assert await asyncio.wait_for(idle_r.read(), TIMEOUT) == b""  # idle: closed at once
        with socket.socket() as s:  # no new connection is taken
            assert s.connect_ex(("127.0.0.1", port)) != 0
        release.set()
        answer = await asyncio.wait_for(busy_r.read(), TIMEOUT)  # answered, then closed
        assert answer.startswith(b"HTTP/1.1 200")
        assert b"connection: close" in answer.lower()
        assert answer.endswith(b'{"slow":true}')
        await listener.wait_closed()
        for w in (idle_w, busy_w):
            w.close()
        assert not listener.connections

    asyncio.run(scenario())
