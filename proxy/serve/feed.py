"""The query-door workers' answers, forwarded to the main process while someone captures.

``rampart capture`` and ``--capture FILE`` are served by the main process (the capture
addon observes its App), but with ``workers`` above 1 the query door's answers are made
in the workers. So the main process listens on ``DATA_DIR/run/feed.sock`` (0600) and
tells every worker connected there whether a capture is on (one byte, ``1`` or ``0``,
whenever that changes); while it is on, a worker sends each engine-path exchange as a
frame (4-byte length, then a JSON array, bytes as latin-1 text) and the main process
hands it to its capture, as if its own door had answered. While nobody captures, a
worker sends nothing and the query path pays nothing. A worker whose socket falls
behind drops flows (counted) rather than slow its answers; a frame that is too large or
does not parse ends that worker's feed (logged), and the worker connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.serve.intercept import engine_service
from proxy.wire.http import Request, Response

logger = logging.getLogger(__name__)

FEED = "feed"
MAX_FRAME = 32 << 20
"""The largest exchange forwarded (a request and an answer within the door's bounds)."""
MAX_BUFFERED = 4 << 20
"""A worker drops a flow rather than queue more than this for a slow main process."""
POLL_SECONDS = 0.25
RETRY_SECONDS = 1.0
_LEN = struct.Struct(">I")

Observer = Callable[[Request, Response, float], None]


def encode(request: Request, response: Response, seconds: float) -> bytes:
    """One exchange as a frame."""
    doc = [request.method, request.target.decode("latin-1"),
           [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers],
           request.body.decode("latin-1"), request.client, response.status, response.content_type,
           [list(h) for h in response.headers], response.body.decode("latin-1"), seconds]
    payload = json.dumps(doc, separators=(",", ":")).encode()
    return _LEN.pack(len(payload)) + payload


def decode(payload: bytes) -> tuple[Request, Response, float]:
    """A frame's exchange; ValueError naming what is wrong."""
    doc = json.loads(payload)
    if not isinstance(doc, list) or len(doc) != 10:
        raise ValueError("not an exchange")
    method, target, headers, body, client, status, ctype, rheaders, rbody, seconds = doc
    texts = (method, target, body, client, ctype, rbody)
    if not all(isinstance(t, str) for t in texts) or not isinstance(status, int) or not isinstance(
            seconds, int | float) or not _pairs(headers) or not _pairs(rheaders):
        raise ValueError("an exchange field has the wrong type")
    request = Request(method, target.encode("latin-1"),
                      [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
                      body.encode("latin-1"), client)
    response = Response(status, rbody.encode("latin-1"), ctype,
                        tuple((k, v) for k, v in rheaders))
    return request, response, float(seconds)


def _pairs(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value)


# ------------------------------------------------------------ the main process


class FeedServer:
    """Takes the workers' exchanges for ``sink`` while ``wanted()`` (a capture is on)."""

    def __init__(self, path: Path, sink: Observer, wanted: Callable[[], bool]) -> None:
        self.path = path
        self.sink = sink
        self.wanted = wanted
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._on = False

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._worker, path=str(self.path))
        os.chmod(self.path, 0o600)
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            on = bool(self.wanted())
            if on != self._on:
                self._on = on
                for writer in list(self._writers):
                    writer.write(b"1" if on else b"0")

    async def _worker(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        writer.write(b"1" if self._on else b"0")
        try:
            while True:
                head = await reader.readexactly(_LEN.size)
                (size,) = _LEN.unpack(head)
                if size > MAX_FRAME:
                    raise ValueError(f"a frame of {size} bytes is over {MAX_FRAME}")
                exchange = decode(await reader.readexactly(size))
                if self._on:
                    self.sink(*exchange)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker ended
        except ValueError as e:
            logger.warning("a worker's capture feed ended: %s", e)
        except Exception:
            logger.exception("a worker's capture feed failed")
        finally:
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# ------------------------------------------------------------ a worker


class FeedClient:
    """A worker's side: ``observe`` joins ``observers`` while the main process wants flows."""

    def __init__(self, path: Path, observers: list[Observer]) -> None:
        self.path = path
        self.observers = observers
        self.dropped = 0
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                reader, self._writer = await asyncio.open_unix_connection(str(self.path))
                while True:
                    state = await reader.read(64)
                    if not state:
                        break
                    self._switch(state[-1:] == b"1")
            except OSError:
                pass  # the main process is not listening (yet, or any more)
            finally:
                self._switch(False)
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
            await asyncio.sleep(RETRY_SECONDS)

    def _switch(self, on: bool) -> None:
        if on and self.observe not in self.observers:
            self.observers.append(self.observe)
        elif not on and self.observe in self.observers:
            self.observers.remove(self.observe)

    def observe(self, request: Request, response: Response, seconds: float) -> None:
        """The App observer while a capture is on: engine paths only, never blocking."""
        writer = self._writer
        if writer is None or engine_service(request.target.decode("latin-1")) is None:
            return
        if writer.transport.get_write_buffer_size() > MAX_BUFFERED:
            self.dropped += 1
            return
        frame = encode(request, response, seconds)
        if len(frame) - _LEN.size > MAX_FRAME:
            self.dropped += 1
            return
        writer.write(frame)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._switch(False)
