"""The query door's HTTP/1.1 server: httptools parsing on an asyncio (uvloop) transport.

One ``HttpConnection`` per client: keep-alive, pipelined requests answered in
order, and every bound enforced while bytes arrive (request head, body size,
idle time, and the deadlines of a request's head and whole, from its first byte,
so a client cannot hold a connection by trickling bytes; connections themselves
are admitted by ``proxy.serve.listener``). A handler returns a ``Response``
directly when it can answer at once (the common, fully local case: no task, no
await) or an awaitable when it must wait for the relay. Handlers never see a
malformed request: the server answers those itself with a JSON error and closes the
connection. A client that half-closes (shuts its sending side) once its requests are
out still gets every answer, awaited ones included, then the close; over TLS asyncio
closes on the client's EOF regardless, so a TLS client must keep its side open until
answered.

A request repeated byte for byte on a keep-alive connection (a product asking the same
thing again, a health check) is answered again without parsing it, when the door's
``Repeat`` says the answer still holds (see ``HttpConnection._again_answered``).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httptools

from proxy.config import default
from proxy.errors import ProtocolError
from proxy.serve.conns import ConnectionCaps, Slot
from proxy.serve.gate import Gate, forwarded_client, loopback_health, rate_limited
from proxy.serve.listener import PLAIN_REFUSALS, Listener, listening_socket
from proxy.wire import http as wire
from proxy.wire.http import Handler, Request, Response, coding_refused, error_response, respond, settle

LINGER_SECONDS = 2.0  # how long a refused request's connection still drains the client's bytes

@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_header: int = default("max_header")
    max_body: int = default("max_body")
    idle_timeout: float = default("idle_timeout")  # between requests, and of a silent client
    max_pipeline: int = 64
    head_timeout: float = default("head_timeout")  # a request's head (and a TLS handshake)
    request_timeout: float = default("request_timeout")  # a whole request, head and body


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "_again",
        "_began",
        "_behind",
        "_body",
        "_body_size",
        "_busy",
        "_candidate",
        "_chunk",
        "_closing",
        "_deferred",
        "_draining",
        "_eof",
        "_error",
        "_gate",
        "_head_raw",
        "_head_size",
        "_headers",
        "_idle",
        "_in_head",
        "_in_message",
        "_last",
        "_live",
        "_observe",
        "_progress",
        "_queue",
        "_refused",
        "_repeat",
        "_slot",
        "_timer_at",
        "_url",
        "client",
        "handler",
        "limits",
        "loop",
        "parser",
        "transport",
    )

    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits,
        observe: Callable[[Request, Response, float], None] | None = None,
        gate: Gate | None = None,
        slot: Slot | None = None,
        live: set[HttpConnection] | None = None,
        repeat: wire.Repeat | None = None,
    ) -> None:
        """``live``: the door's open connections, which this one joins while open (for a drain);
        ``repeat``: how to answer a repeated request without parsing it (None: never)."""
        self.handler = handler
        self.limits = limits
        self._observe = observe
        self._gate = gate  # client networks and per-client rate; None when both are off
        self._slot = slot  # this connection's place in the process's ConnectionCaps
        self._refused = False
        self._behind = False
        self._live = live
        self._draining = False
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client = "?"
        self._queue: deque[tuple[Request, bool, float]] = deque()
        self._busy = False
        self._closing = False
        self._error: ProtocolError | None = None
        self._deferred: ProtocolError | None = None  # sent once the answers before it are
        self._eof = False  # the client half-closed: close once the answers being made are sent
        self._in_head = False
        self._in_message = False
        self._progress = False
        self._head_raw = 0
        self._last = self._began = self._timer_at = self.loop.time()
        self._idle: asyncio.TimerHandle | None = None
        self._again = repeat
        self._repeat: tuple[bytes, Request, Response, wire.Again] | None = None
        self._chunk: bytes | None = None  # the bytes being parsed, when they began a request
        self._candidate: tuple[bytes, Request, Response, wire.Again] | None = None
        self._reset()

    # ---------------------------------------------------------------- transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._live is not None:
            self._live.add(self)
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else "?"
        self._last = self.loop.time()
        self._schedule(self._last + self.limits.idle_timeout)
        # A refused client still gets its first request read and answered 403, then the close:
        # a clear answer rather than a reset.
        gate = self._gate
        # behind a trusted proxy (trusted_proxies) each request is judged by its own client
        self._behind = gate is not None and gate.trusts(self.client)
        self._refused = gate is not None and not self._behind and not gate.admits(self.client)

    def eof_received(self) -> bool:
        """The client shut its sending side (it may, once its requests are out): keep the
        connection open for the answers still being made, and close after the last one.

        Returning false, as asyncio's default does, closes the transport at once, which
        loses every answer that awaits something. A TLS transport closes regardless.
        """
        self._eof = True
        assert self.transport is not None
        return self._busy and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.transport = None
        if self._live is not None:
            self._live.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self._slot is not None:
            self._slot.release()

    # ---------------------------------------------------------------- deadlines

    def _schedule(self, at: float) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._timer_at = at
        self._idle = self.loop.call_at(at, self._check_idle)

    def _message_limit(self) -> float:
        """Seconds the request being received has from its first byte: for its head, then for
        the whole of it, so a client cannot hold a connection by trickling bytes."""
        return self.limits.head_timeout if self._in_head else self.limits.request_timeout

    def _message_deadline(self) -> float:
        return self._began + self._message_limit()

    def _check_idle(self) -> None:
        """The connection's one timer: idle between requests, and the deadline of a request."""
        self._idle = None
        if self.transport is None or self._closing:
            return
        now = self.loop.time()
        if self._in_message and now >= self._message_deadline():
            what = "request head" if self._in_head else "request"
            self._fail(ProtocolError(
                "request_timeout", f"{what} not received within {self._message_limit():g} s",
                status=408))
            return
        at = self._last + self.limits.idle_timeout
        if self._in_message:
            at = min(at, self._message_deadline())
        if at <= now:
            if not self._busy:
                self.transport.close()
                return
            at = now + min(1.0, self.limits.idle_timeout)  # answering: look again soon
        self._schedule(at)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._last = self.loop.time()
        repeat = self._repeat
        if repeat is not None and data == repeat[0] and self._again_answered(repeat):
            return
        self._progress = False
        self._chunk = data if self._again is not None and not self._in_message else None
        self._candidate = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(_upgrade_refused())
            return
        except httptools.HttpParserError as e:
            error = self._error or ProtocolError("bad_request", f"malformed HTTP request: {e}")
            self._fail(error)
            return
        if self._in_message:  # a request spans reads: hold it to its deadline
            if self._in_head and not self._progress:
                # httptools buffers a header name or value until it ends, so a head that never
                # ends is bounded here, by the bytes received since the message began.
                self._head_raw += len(data)
                if self._head_raw > 2 * self.limits.max_header:
                    self._fail(self._head_too_large())
                    return
            deadline = self._message_deadline()
            if deadline < self._timer_at:
                self._schedule(deadline)
        elif self._candidate is not None:  # these bytes were one whole request, answered at once
            self._repeat = self._candidate
        self._chunk = None

    def _again_answered(self, repeat: tuple[bytes, Request, Response, wire.Again]) -> bool:
        """Answer ``repeat``'s request again, unparsed, if nothing stands in the way; True
        when it was. The fast path of a repeated request, shaped so because parsing,
        routing, rendering and the per-request bookkeeping are most of what a memoised
        answer costs.

        It stands only between requests (nothing received of the next one, nothing being
        answered or queued, not draining), for bytes that were one whole keep-alive GET
        answered at once, for which ``repeat`` gave an ``Again`` whose check still holds;
        then the rate limit, ``Again``'s ``answered`` (what the handler and ``observe``
        count and record for an answer, made once for this one) and the write. Anything
        else goes the plain path, which parses the bytes as any others (tests hold both
        paths equal in what a client, the metrics and the logs see).
        """
        holds, answered = repeat[3]
        if self._busy or self._queue or self._in_message or self._draining or not holds():
            return False
        gate = self._gate
        if gate is not None and gate.limits_rate and gate.take(repeat[1].client) > 0:
            return False  # the plain path answers the 429 (a refused take counts nothing)
        answered()
        assert self.transport is not None
        self.transport.write(repeat[2].wire())
        return True

    # ---------------------------------------------------------------- parser callbacks

    def _reset(self) -> None:
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._head_size = 0
        self._body_size = 0

    def on_message_begin(self) -> None:
        self._candidate = None  # a second request in the same bytes: they are not one request
        self._reset()
        self._in_head = self._in_message = True
        self._began = self._last
        self._head_raw = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._progress = True
        if self.parser.should_upgrade():  # never hand the handler a request we will not honour
            self._error = _upgrade_refused()
            raise self._error

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_size += len(url)
        if self._head_size > self.limits.max_header:
            self._error = ProtocolError(
                "uri_too_long", f"request target is over {self.limits.max_header} bytes", status=414
            )
            raise self._error

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.limits.max_header:
            self._error = self._head_too_large()
            raise self._error
        if len(name) == 14 and name.lower() == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = -1
            if declared > self.limits.max_body:
                self._error = self._too_large()
                raise self._error
        elif len(name) in (16, 17):
            refused = coding_refused(name.lower(), value)
            if refused is not None:
                self._error = refused
                raise refused

    def _head_too_large(self) -> ProtocolError:
        return ProtocolError(
            "headers_too_large", f"request head is over {self.limits.max_header} bytes", status=431
        )

    def _too_large(self) -> ProtocolError:
        return ProtocolError(
            "body_too_large", f"request body is over {self.limits.max_body} bytes", status=413
        )

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.limits.max_body:
            self._error = self._too_large()
            raise self._error
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._progress = True
        self._in_message = False
        parser = self.parser
        request = Request(
            parser.get_method().decode("ascii", "replace"),
            b"".join(self._url),
            self._headers,
            b"".join(self._body),
            forwarded_client(self._headers, self.client) if self._behind else self.client,
        )
        keep_alive = parser.should_keep_alive()
        self._reset()
        if self._busy or self._queue:
            if len(self._queue) >= self.limits.max_pipeline:
                self._error = ProtocolError("too_many_requests", "too many pipelined requests", status=429)
                raise self._error
            self._queue.append((request, keep_alive, time.perf_counter()))
            return
        self._dispatch(request, keep_alive, time.perf_counter())

    # ---------------------------------------------------------------- answering

    def _dispatch(self, request: Request, keep_alive: bool, started: float) -> None:
        gate = self._gate
        if (self._refused or (self._behind and gate is not None and not gate.admits(request.client))
                ) and not loopback_health(request):
            refusal = ProtocolError(
                "forbidden", f"client {request.client} is not in this door's client networks",
                status=403,
            )
            self._send(request, error_response(refusal), self._behind and keep_alive, started)
            return
        if gate is not None and gate.limits_rate:
            wait = gate.take(request.client)
            if wait > 0:
                self._send(request, rate_limited(gate.rate, wait), keep_alive, started)
                return
        result = respond(self.handler, request)
        if isinstance(result, Response):
            chunk = self._chunk  # None unless there is a self._again
            if chunk is not None and keep_alive and request.method == "GET" and not self._queue:
                self._chunk = None  # only the chunk's first request (and it must be its only)
                assert self._again is not None
                again = self._again(request, result)
                if again is not None:
                    self._candidate = (chunk, request, result, again)
            self._send(request, result, keep_alive, started)
            return
        self._busy = True
        task = self.loop.create_task(settle(result, request.target))
        task.add_done_callback(lambda t: self._finished(t, request, keep_alive, started))

    def _finished(
        self, task: asyncio.Task[Response], request: Request, keep_alive: bool, started: float
    ) -> None:
        self._busy = False
        if task.cancelled():
            return
        self._send(request, task.result(), keep_alive, started)
        while self._queue and not self._busy and self._open():
            self._dispatch(*self._queue.popleft())
        if self._deferred is not None and not self._busy:
            self._write_error(self._deferred)
        if self._eof and not self._busy and self.transport is not None:
            self.transport.close()

    def _open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def drain(self) -> None:
        """The server is stopping: keep this connection alive no longer. Closed now when it
        is between requests, after the answers in progress (and those queued) otherwise."""
        self._draining = True
        if self.transport is not None and not (self._busy or self._in_message or self._queue):
            self._closing = True
            self.transport.close()

    def _send(self, request: Request, response: Response, keep_alive: bool, started: float) -> None:
        if self._draining and not self._queue:
            keep_alive = False  # answered with Connection: close, then closed
        if self._observe is not None:
            self._observe(request, response, time.perf_counter() - started)
        transport = self.transport
        if transport is None:
            return
        if request.method == "HEAD":  # the GET's head, Content-Length included, and no body
            transport.write(response.head(keep_alive))
        elif keep_alive:
            transport.write(response.wire())
        else:
            transport.write(response.head(False) + response.body)
        if not keep_alive:
            self._closing = True
            transport.close()

    def _fail(self, error: ProtocolError) -> None:
        """A request we cannot parse or will not read: answer it and close.

        Requests before it that are still being answered get their answers first, in order.
        """
        self._closing = True
        if self._busy:
            self._deferred = error
            return
        self._queue.clear()
        self._write_error(error)

    def _write_error(self, error: ProtocolError) -> None:
        self._deferred = None
        self._queue.clear()
        response = error_response(error)
        if self._observe is not None:
            self._observe(Request("?", b"", [], b"", self.client), response, 0.0)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(response.head(False) + response.body)
        if transport.can_write_eof():
            # A lingering close: send FIN but keep reading (and dropping) what the client is
            # still sending for a moment, so its unread bytes do not turn our answer into a
            # reset. The client's own close, or the timer, ends the connection.
            transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()


def _upgrade_refused() -> ProtocolError:
    return ProtocolError("bad_request", "protocol upgrades are not supported")


async def start_server(
    handler: Handler,
    host: str,
    port: int,
    *,
    limits: ServerLimits,
    ssl_context: ssl.SSLContext | None = None,
    observe: Callable[[Request, Response, float], None] | None = None,
    reuse_port: bool = False,
    gate: Gate | None = None,
    caps: ConnectionCaps | None = None,
    door: str | None = None,
    repeat: wire.Repeat | None = None,
) -> Listener:
    """Serve ``handler`` on ``host:port``; ``caps`` bounds connections per client and in all;
    ``reuse_port``: beside other processes' sockets on the same port (SO_REUSEPORT, the
    query-door workers), the kernel spreading connections among them; ``repeat``: see
    ``HttpConnection``."""
    sock = listening_socket(host, port, reuse_port=reuse_port)
    live: set[HttpConnection] = set()
    listener = Listener(
        sock, lambda slot: HttpConnection(handler, limits, observe, gate, slot, live, repeat),
        door=door or ("https" if ssl_context is not None else "http"), caps=caps,
        ssl_context=ssl_context, handshake_timeout=limits.head_timeout,
        refusal=PLAIN_REFUSALS if ssl_context is None else None,
    )
    listener.connections = live
    return listener
