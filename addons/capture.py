"""Capture: reputation flows written to mitmproxy flow files, flushed as they go.

Two sinks share one serialisation per flow (mitmproxy's own format, the bytes
``io.FlowWriter`` writes, so ``mitmdump -nr FILE`` and ``io.FlowReader`` read it):

- ``--capture FILE`` (optionally ``--capture-filter EXPR``, a mitmproxy filter
  expression): appended to for as long as the appliance runs;
- live subscribers: ``GET /v1/capture?host=PATTERN&service=file|web|domain|inspect``
  on the loopback-only capture port streams the matching flows until the client
  hangs up; ``rampart capture -w FILE`` is its client.

Captured: every intercept-door flow to an intercept host (answered or
forwarded) and every query-door request on an engine path (built into an
``HTTPFlow`` here). Each carries the engine's decision in ``metadata["rampart"]``.
A slow subscriber loses flows (counted, reported when it leaves); it never
slows the doors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode, urlsplit

from mitmproxy import connection, ctx, flowfilter, http
from mitmproxy.io import tnetstring

from addons.intercept import META, to_mitmproxy
from proxy.config import Config
from proxy.errors import ConfigError, ProtocolError, RampartError
from proxy.files import make_dirs, open_private
from proxy.model import Service
from proxy.serve.conns import ConnectionCaps
from proxy.serve.intercept import HostPatterns, decision_of, engine_service
from proxy.serve.routes import parse_query
from proxy.wire.http import Request, Response, error_response

logger = logging.getLogger(__name__)

SERVICES = tuple(s.value for s in Service)
QUEUE_FLOWS = 1000
MAX_HEAD = 8192
CONTENT_TYPE = "application/vnd.mitmproxy.flows"
MAX_FLOW_BYTES = 64 << 20


def parse_filter(expr: str) -> flowfilter.TFilter | None:
    """The ``capture_filter`` expression, compiled; ConfigError names the key when it is bad."""
    if not expr:
        return None
    try:
        return flowfilter.parse(expr)
    except ValueError:
        raise ConfigError(
            f"config key 'capture_filter': {expr!r} is not a mitmproxy filter expression"
        ) from None


@dataclass(frozen=True, slots=True)
class Selection:
    """What a live subscriber asked for: a host pattern and/or a service."""

    hosts: HostPatterns | None = None
    service: str | None = None

    @classmethod
    def from_query(cls, query: str) -> Selection:
        try:  # the query door's rules: at most 4 parameters, UTF-8 once percent-decoded
            params = parse_query(query.encode("latin-1", "replace"), "GET /v1/capture")
        except ProtocolError as e:
            raise ValueError(e.message) from None
        host = params.get("host", "")
        service = params.get("service") or None
        if service is not None and service not in SERVICES:
            raise ValueError(f"service must be one of {', '.join(SERVICES)}, not {service[:40]!r}")
        try:
            hosts = HostPatterns.parse([host]) if host else None
        except ValueError:
            raise ValueError(f"host must be a host name or *.domain, not {host[:100]!r}") from None
        return cls(hosts, service)

    def wants(self, flow: http.HTTPFlow) -> bool:
        meta = flow.metadata.get(META) or {}
        if self.service is not None and meta.get("service") != self.service:
            return False
        if self.hosts is not None:
            return (flow.client_conn.sni or flow.request.pretty_host) in self.hosts
        return True


@dataclass(eq=False)
class Subscriber:
    selection: Selection
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_FLOWS))
    sent: int = 0
    dropped: int = 0


def query_flow(request: Request, response: Response, seconds: float) -> http.HTTPFlow:
    """A query-door exchange as an ``HTTPFlow``, so the same tools read both doors' traffic."""
    end = time.time()
    start = end - seconds
    host_header = (request.header(b"host") or b"").decode("latin-1")[:255]
    host, _, port = host_header.rpartition(":") if host_header.count(":") == 1 else (host_header, "", "")
    client = connection.Client(
        peername=(request.client, 0), sockname=("0.0.0.0", 0), timestamp_start=start
    )
    client.timestamp_end = end
    server = connection.Server(address=None)
    flow = http.HTTPFlow(client, server)
    flow.request = http.Request(
        host or "rampart", int(port) if port.isdigit() else 80,
        request.method.encode(), b"http", b"", request.target, b"HTTP/1.1",
        tuple(request.headers), request.body, None, start, start,
    )
    found = decision_of(response)
    flow.response = to_mitmproxy(response, ",".join(found["sources"]))
    flow.response.timestamp_start = flow.response.timestamp_end = end
    flow.metadata[META] = {
        "action": "answered",
        "door": "query",
        "service": engine_service(request.target.decode("latin-1")),
        "status": response.status,
        "latency_ms": round(seconds * 1000, 3),
        **found,
    }
    return flow


class Capture:
    """The capture addon: ``response``/``error`` for the intercept door, ``observe`` for the query door."""

    def __init__(self, cfg: Config, caps: ConnectionCaps | None = None) -> None:
        self.caps = caps
        self.path = cfg.capture
        self.filter = parse_filter(cfg.capture_filter)
        self.port = cfg.capture_port
        self.file: IO[bytes] | None = None
        self.written = 0
        self.subscribers: set[Subscriber] = set()
        self.server: asyncio.Server | None = None
        self.bound_port = 0
        self.start_error: str | None = None  # not `error`: that name is a mitmproxy hook
        self.started = False
        self._observers: list[Callable[[Request, Response, float], None]] | None = None

    def attach(self, observers: list[Callable[[Request, Response, float], None]]) -> None:
        """Observe the query door's answers (its App's ``observers``) while capturing only:
        ``observe`` is in the list while a file or a subscriber takes flows, and costs a
        query nothing otherwise."""
        self._observers = observers
        self._follow()

    def _follow(self) -> None:
        """``observe`` in the observers exactly while ``active``."""
        observers = self._observers
        if observers is None:
            return
        if self.active and self.observe not in observers:
            observers.append(self.observe)
        elif not self.active and self.observe in observers:
            observers.remove(self.observe)

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        """Open the file and the capture port; RampartError with the reason if either fails."""
        if self.path is not None:
            try:
                make_dirs(self.path.parent)  # flows hold what products asked: private
                self.file = os.fdopen(open_private(self.path, os.O_WRONLY | os.O_APPEND), "ab")
            except OSError as e:
                raise RampartError(f"cannot open capture file {self.path.name!r}: {e.strerror}") from None
            self._follow()
            logger.info("capturing reputation flows to %s", self.path.name)
        if self.port:
            try:
                self.server = await asyncio.start_server(
                    self._serve, "127.0.0.1", self.port, limit=MAX_HEAD
                )
            except OSError as e:
                raise RampartError(
                    f"cannot listen on 127.0.0.1:{self.port} for the capture port: {e.strerror}"
                ) from None
            self.bound_port = self.server.sockets[0].getsockname()[1]

    async def running(self) -> None:
        try:
            await self.start()
            self.started = True
        except RampartError as e:
            self.start_error = e.message
            logger.error("cannot start: %s", e.message)
            ctx.master.shutdown()

    async def done(self) -> None:
        if self.server is not None:
            self.server.close()
        for sub in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(b"")  # tells the writer to finish
        if self.file is not None:
            self.file.close()
            self.file = None
            self._follow()

    # ------------------------------------------------------------ sources

    @property
    def active(self) -> bool:
        return self.file is not None or bool(self.subscribers)

    # mitmproxy looks a hook up on every event and skips a falsy one, so while nobody
    # captures, these hooks are None and cost a flow nothing.
    @property
    def response(self) -> Callable[[http.HTTPFlow], None] | None:
        return self._finished if self.active else None

    @property
    def error(self) -> Callable[[http.HTTPFlow], None] | None:
        return self._finished if self.active else None

    def _finished(self, flow: http.HTTPFlow) -> None:
        if META in flow.metadata:
            self.record(flow)

    def observe(self, request: Request, response: Response, seconds: float) -> None:
        """The query door's observer: its engine requests, captured only while someone listens."""
        if not self.active or engine_service(request.target.decode("latin-1")) is None:
            return
        self.record(query_flow(request, response, seconds))

    # ------------------------------------------------------------ sinks

    def record(self, flow: http.HTTPFlow) -> None:
        data: bytes | None = None
        if self.file is not None and (self.filter is None or self.filter(flow)):
            data = tnetstring.dumps(flow.get_state())
            try:
                self.file.write(data)
                self.file.flush()
                self.written += 1
            except OSError as e:
                logger.error("capture file write failed, capture stopped: %s", e.strerror)
                self.file.close()
                self.file = None
                self._follow()
        for sub in self.subscribers:
            if not sub.selection.wants(flow):
                continue
            if data is None:
                data = tnetstring.dumps(flow.get_state())
            try:
                sub.queue.put_nowait(data)
            except asyncio.QueueFull:
                sub.dropped += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A subscriber's connection, within the process's connection caps (loopback only,
        but a local user must not exhaust the appliance's descriptors through it either)."""
        peer = writer.get_extra_info("peername")
        slot = self.caps.admit(str(peer[0]) if peer else "?", "capture") if self.caps else None
        if self.caps is not None and slot is None:
            return await _close(writer)
        try:
            await self._subscribe(reader, writer, peer)
        finally:
            if slot is not None:
                slot.release()

    async def _subscribe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         peer: Any) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            selection = self._parse_head(head, peer[0] if peer else "?")
        except ValueError as e:
            response = error_response(ProtocolError("bad_request", str(e)))
            writer.write(response.head(False) + response.body)
            return await _close(writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            return await _close(writer)
        sub = Subscriber(selection)
        self.subscribers.add(sub)
        self._follow()
        logger.info("capture subscriber %s joined (host=%s service=%s)", peer, selection.hosts,
                    selection.service)
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nCache-Control: no-store\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        hangup = asyncio.ensure_future(reader.read(1))
        try:
            while True:
                get = asyncio.ensure_future(sub.queue.get())
                await asyncio.wait({get, hangup}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    break
                data = get.result()
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                sub.sent += 1
        except OSError:
            pass
        finally:
            self.subscribers.discard(sub)
            self._follow()
            hangup.cancel()
            logger.info("capture subscriber %s left: %d flows sent, %d dropped", peer, sub.sent,
                        sub.dropped)
            await _close(writer)

    @staticmethod
    def _parse_head(head: bytes, peer: str) -> Selection:
        if peer not in ("127.0.0.1", "::1"):
            raise ValueError("capture is for loopback clients only")
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "GET":
            raise ValueError("expected GET /v1/capture?host=…&service=…")
        path, _, query = parts[1].partition("?")
        if path != "/v1/capture":
            raise ValueError(f"no such path {path[:100]!r}; use /v1/capture")
        return Selection.from_query(query)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()


def split_flows(buffer: bytearray) -> list[bytes]:
    """Cut whole flows (top-level tnetstrings) off the front of ``buffer``; the rest stays.

    Used by ``rampart capture`` so the file it writes never ends in half a flow.
    Raises ValueError when the bytes are not a flow stream.
    """
    out: list[bytes] = []
    while True:
        colon = buffer.find(b":", 0, 13)
        if colon < 0:
            if len(buffer) >= 13 or (buffer and not buffer[:1].isdigit()):
                raise ValueError("not a mitmproxy flow stream")
            return out
        size_text = bytes(buffer[:colon])
        if not size_text.isdigit():
            raise ValueError("not a mitmproxy flow stream")
        end = colon + 1 + int(size_text) + 1
        if len(buffer) < end:
            return out
        if buffer[end - 1 : end] != b"}":
            raise ValueError("not a mitmproxy flow stream (a flow is a dictionary)")
        out.append(bytes(buffer[:end]))
        del buffer[:end]


# ---------------------------------------------------------------- the client (`rampart capture`)


def stream_capture(
    server: str,
    out: Path,
    *,
    host: str | None = None,
    service: str | None = None,
    count: int | None = None,
    say: Callable[[str], None] = print,
    timeout: float = 10.0,
) -> int:
    """Write the flows a running appliance streams to ``out`` until Ctrl-C, ``count`` flows,
    or the appliance stops; returns the number of flows written."""
    parts = urlsplit(server)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise RampartError(f"--server must be http://127.0.0.1:PORT, not {server!r}")
    query = urlencode({k: v for k, v in (("host", host), ("service", service)) if v})
    conn = HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", "/v1/capture" + (f"?{query}" if query else ""))
        resp = conn.getresponse()
    except OSError as e:
        raise RampartError(f"cannot reach the capture port at {server}: {e}") from None
    if resp.status != 200:
        try:
            message = json.loads(resp.read(65536))["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {resp.status}"
        raise RampartError(f"the appliance refused the capture: {message}")
    if conn.sock is not None:
        conn.sock.settimeout(None)  # flows come when products ask; wait as long as it takes
    written = 0
    buffer = bytearray()
    _stop_on_signals()
    try:
        with os.fdopen(open_private(out, os.O_WRONLY | os.O_TRUNC), "wb") as f:
            say(f"capturing to {out} from {server} (Ctrl-C to stop)")
            while count is None or written < count:
                chunk = resp.read1(65536)
                if not chunk:
                    say("the appliance closed the capture stream")
                    break
                buffer += chunk
                if len(buffer) > MAX_FLOW_BYTES:
                    raise RampartError("the capture stream sent a flow over 64 MiB; stopped")
                try:
                    flows = split_flows(buffer)
                except ValueError as e:
                    raise RampartError(f"the capture stream is broken: {e}") from None
                for data in flows[: None if count is None else count - written]:
                    f.write(data)
                    written += 1
                f.flush()
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()
    say(f"wrote {written} flow{'s' if written != 1 else ''} to {out}")
    return written


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM end the capture cleanly (even when started with SIGINT ignored)."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
