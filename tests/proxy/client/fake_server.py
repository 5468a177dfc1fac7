"""A tiny scriptable HTTP/1.1 server on 127.0.0.1 for the client's transport tests.

It answers ``GET /healthz`` and any POST with JSON naming itself, keeps connections
alive, counts connections and requests, and can be switched to fail: ``close`` (drop
the connection without a byte), ``503``, ``429`` (with ``retry_after``), ``400`` (a
protocol error body), ``hang`` (never answer), ``garbage`` (200 with a non-JSON body).
``mode`` governs every path but /healthz, ``health`` governs /healthz.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field


@dataclass(eq=False)
class FakeServer:
    name: str
    mode: str = "ok"
    health: str = "ok"
    retry_after: str | None = None
    tls: ssl.SSLContext | None = None
    connections: int = 0
    requests: list[str] = field(default_factory=list)  # "METHOD PATH", in order
    heads: list[str] = field(default_factory=list)  # each request's head as sent
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def asked(self, path: str | None = None) -> int:
        """Requests other than /healthz (or to ``path``)."""
        return sum(1 for r in self.requests if (r.split(" ")[1] == path if path else "/healthz" not in r))

    async def start(self) -> FakeServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port or 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while await self._one(reader, writer):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        method, path, _ = head.split("\r\n", 1)[0].split(" ", 2)
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.requests.append(f"{method} {path}")
        self.heads.append(head)
        mode = self.health if path == "/healthz" else self.mode
        if mode == "close":
            return False
        if mode == "hang":
            await asyncio.sleep(3600)
        status, payload, extra = self._answer(mode, path, body)
        data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
        lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json",
                 f"Content-Length: {len(data)}", *extra]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        await writer.drain()
        return True

    def _answer(self, mode: str, path: str, body: bytes) -> tuple[int, object, list[str]]:
        if mode == "503":
            return 503, {"error": {"code": "too_many_connections", "message": "busy"}}, self._retry()
        if mode == "429":
            return 429, {"error": {"code": "rate_limited", "message": "slow down"}}, self._retry()
        if mode == "400":
            return 400, {"error": {"code": "bad_hash", "message": "hash '12' has 2 characters"}}, []
        if mode == "garbage":
            return 200, b"<html>captive portal</html>", []
        if path == "/healthz":
            return 200, {"status": "alive"}, []
        return 200, {"server": self.name, "path": path, "got": body.decode()}, []

    def _retry(self) -> list[str]:
        return [] if self.retry_after is None else [f"Retry-After: {self.retry_after}"]
