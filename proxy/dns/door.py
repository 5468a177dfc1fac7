"""The DNS door's sockets: UDP and TCP on ``listen:dns_port``, in the App's event loop.

Every message, over either transport, goes through one path (``DnsDoor._answer``):
the client's network (``dns_clients``) and its rate (``dns_rate_limit`` and
``dns_rate_burst``, a ``proxy.serve.gate.Gate``) are checked first, then the
``Answerer`` (``proxy.dns.answers``) is asked. It answers a local name at once with
the response's bytes; only a name the cloud or an upstream zone must be asked about
comes back as an awaitable, and only then is a task made. At most ``max_pending`` such
answers wait at once: the next one is REFUSED (the client retries, or asks another
server) instead of queueing without bound behind a slow cloud.

What a client can make the door do is bounded: a UDP answer is never larger than the
query allows (512 bytes, or its EDNS(0) size; the Answerer sizes it and the door
checks); a TCP connection (RFC 7766: 2-byte length prefix, several messages, answers
possibly out of order) counts against the process's connection caps (door ``dns``),
holds at most ``max_inflight`` answers in progress before its reading pauses, is closed
after ``max_messages`` messages, after ``idle_timeout`` seconds with nothing asked, and
when a message begun is not complete ``read_timeout`` seconds after its first byte.
Nothing a client sends raises out of here: the door keeps answering.

Counted for ``/metrics``: ``rampart_dns_queries_total{zone,rcode,source}`` (the
Answerer's ``stats`` hook, ``DnsDoor.count``), ``rampart_dns_refused_total{reason}``
(client, rate, overload), ``rampart_dns_pending``. Each answer about a domain or an
address becomes a query-log row (the Answerer's ``log`` hook, ``DnsDoor.log``), read
as the log reads a ``/v1/domain`` answer.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from proxy.config import Config
from proxy.dns import wire
from proxy.errors import RampartError
from proxy.logs import entries
from proxy.logs.clients import ClientMask
from proxy.logs.hub import Logs, client_mask
from proxy.model import DomainQuery, WebAnswer
from proxy.serve import metrics
from proxy.serve.conns import ConnectionCaps, Slot
from proxy.serve.gate import Gate
from proxy.serve.listener import Listener, listening_socket

logger = logging.getLogger(__name__)

DOOR = "dns"
SERVFAIL, REFUSED = wire.SERVFAIL, wire.REFUSED
UDP_PLAIN = wire.UDP_PLAIN  # the most a UDP answer may be without EDNS(0) (RFC 1035 §4.2.1)
MAX_TCP = wire.TCP_MAX  # the most a TCP message may be (its 2-byte length)
GRACE = 1.0  # seconds past dns_timeout before the door gives up on an answer itself
MAX_PENDING = 4096  # answers waiting for the cloud or an upstream zone at once
MAX_INFLIGHT = 128  # answers in progress on one TCP connection before its reading pauses
MAX_MESSAGES = 65536  # messages on one TCP connection before it is closed
IDLE_TIMEOUT = 10.0  # RFC 7766 §6.2.3 suggests seconds, not minutes
REFUSALS = ("client", "rate", "overload")
MEMO = 4096

Result = bytes | None | Awaitable[bytes | None]


class Answering(Protocol):
    """What the door asks (``proxy.dns.answers.Answerer``)."""

    def answer(self, packet: bytes, client: str, transport: str) -> Result: ...


# ---------------------------------------------------------------- answers made here


def reply(packet: bytes, rcode: int, *, truncated: bool = False) -> bytes | None:
    """The door's own response to ``packet`` (``proxy.dns.wire``): REFUSED or SERVFAIL with
    its question echoed, or an empty answer with TC set; the error response a malformed
    one gets; None for what deserves none (no header, or itself a response)."""
    parsed = wire.parse(packet)
    if not isinstance(parsed, wire.Query):
        return parsed
    return wire.response(parsed, rcode, aa=False, limit=0 if truncated else wire.TCP_MAX)


def udp_limit(packet: bytes) -> int:
    """The largest UDP answer ``packet`` allows (its EDNS(0) size within bounds, else 512)."""
    parsed = wire.parse(packet)
    return parsed.limit("udp") if isinstance(parsed, wire.Query) else UDP_PLAIN


def _client(address: str) -> str:
    """An IPv4-mapped IPv6 peer (a dual-stack socket) as the IPv4 address it is."""
    return address[7:] if address.startswith("::ffff:") and "." in address else address


def _discard(pending: Awaitable[Any]) -> None:
    close = getattr(pending, "close", None) or getattr(pending, "cancel", None)
    if close is not None:
        close()


# ---------------------------------------------------------------- the door


class DnsDoor:
    def __init__(
        self,
        cfg: Config,
        answerer: Answering,
        *,
        port: int | None = None,
        caps: ConnectionCaps | None = None,
        stats: metrics.Stats | None = None,
        logs_of: Callable[[], Logs | None] = lambda: None,
        cfg_of: Callable[[], Config] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_pending: int = MAX_PENDING,
        max_inflight: int = MAX_INFLIGHT,
        max_messages: int = MAX_MESSAGES,
        idle_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> None:
        """``port``: where to listen (default ``cfg.dns_port``; 0: any port free for both UDP
        and TCP). ``logs_of``/``cfg_of`` are read per answer: the App's logs and config
        (``query_log``, ``log_clients``) change while it runs."""
        self.cfg = cfg
        self.answerer = answerer
        self.port = cfg.dns_port if port is None else port
        self.caps = caps
        self._logs_of = logs_of
        self._cfg_of = cfg_of or (lambda: cfg)
        self.gate = (Gate(cfg.dns_clients, rate=cfg.dns_rate_limit, burst=cfg.dns_rate_burst,
                          clock=clock) if cfg.dns_clients or cfg.dns_rate_limit else None)
        self.max_pending = max_pending
        self.max_inflight = max_inflight
        self.max_messages = max_messages
        self.idle_timeout = min(cfg.idle_timeout, IDLE_TIMEOUT) if idle_timeout is None else idle_timeout
        self.read_timeout = cfg.head_timeout if read_timeout is None else read_timeout
        self.deadline = cfg.dns_timeout + GRACE
        self.queries: Counter[tuple[str, str, str]] = Counter()  # (zone, rcode, source)
        self.refused: Counter[str] = Counter(dict.fromkeys(REFUSALS, 0))
        self.pending = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: set[_Stream] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: Listener | None = None
        self._mask: tuple[Config | None, ClientMask | None] = (None, None)
        self._rows: dict[tuple[str, WebAnswer], entries.Template | None] = {}
        self._last_error = float("-inf")
        if stats is not None:
            self._register(stats)

    # ------------------------------------------------------------ start / stop

    async def start(self) -> None:
        """Listen on UDP and TCP; a RampartError naming ``--dns-port`` if either port is taken."""
        loop = asyncio.get_running_loop()
        host = self.cfg.listen
        for attempt in range(20 if self.port == 0 else 1):
            udp = _bind(_udp_socket, host, self.port, "udp")
            port = udp.getsockname()[1]
            try:
                tcp = _bind(listening_socket, host, port, "tcp")
            except RampartError:
                udp.close()
                if self.port == 0 and attempt < 19:
                    continue  # that port was free for UDP only: try another
                raise
            break
        self.port = port
        self._udp, datagrams = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=udp)
        self._udp_closed = datagrams.closed
        self._tcp = Listener(tcp, lambda slot: _Stream(self, slot), door=DOOR, caps=self.caps,
                             ssl_context=None, handshake_timeout=self.read_timeout)
        logger.info("DNS door listening on %s:%d (udp, tcp)", host, port)

    async def stop(self) -> None:
        """Close both sockets and every connection; answers still waiting are dropped."""
        closed = []
        if self._udp is not None:
            self._udp.close()
            closed.append(self._udp_closed)
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        closed += [s.closed for s in self._streams]
        for stream in list(self._streams):
            stream.abort()
        await asyncio.gather(*self._tasks, *closed, return_exceptions=True)

    # ------------------------------------------------------------ one message

    def _answer(self, packet: bytes, client: str, transport: str) -> Result:
        """The answer to one message: refused by the gate, at once, or awaitable.

        The fast path: a local answer comes back as bytes and is sent by the caller in the
        same callback, with no task, future or closure made, because that is nearly every
        query and a task per datagram would cost more than the answer. Only an awaitable
        goes through ``_later``; the tests hold what both paths send equal."""
        gate = self.gate
        if gate is not None:
            if not gate.admits(client):
                return self._refuse(packet, "client")
            if gate.take(client):
                return self._refuse(packet, "rate")
        try:
            got = self.answerer.answer(packet, client, transport)
        except Exception:
            self._error("answering a DNS query failed")
            self.queries[("none", "SERVFAIL", "error")] += 1
            return reply(packet, SERVFAIL)
        if got is None or isinstance(got, bytes):
            return got
        if self.pending >= self.max_pending:
            _discard(got)
            return self._refuse(packet, "overload")
        return got

    def _refuse(self, packet: bytes, reason: str) -> bytes | None:
        self.refused[reason] += 1
        return wire.refused(packet)

    def _later(self, pending: Awaitable[bytes | None], packet: bytes,
               deliver: Callable[[bytes | None], None]) -> None:
        """Wait for an answer the cloud or an upstream zone must give, in a task of its own."""
        self.pending += 1
        task = asyncio.get_running_loop().create_task(self._wait(pending, packet, deliver))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait(self, pending: Awaitable[bytes | None], packet: bytes,
                    deliver: Callable[[bytes | None], None]) -> None:
        """The Answerer keeps to ``dns_timeout`` (SERVFAIL after); this bound holds the door
        to it even if it did not, so a pending slot is never held for good."""
        try:
            try:
                got = await asyncio.wait_for(pending, self.deadline)
            except TimeoutError:
                self.queries[("none", "SERVFAIL", "timeout")] += 1
                got = reply(packet, SERVFAIL)
            except Exception:
                self._error("answering a DNS query failed")
                self.queries[("none", "SERVFAIL", "error")] += 1
                got = reply(packet, SERVFAIL)
            deliver(got)
        finally:
            self.pending -= 1

    def _sized(self, got: bytes, packet: bytes) -> bytes | None:
        """``got`` if a UDP client may be sent it; else an empty TC answer (a bug upstream,
        logged: the client retries over TCP instead of being amplified at)."""
        if len(got) <= UDP_PLAIN or len(got) <= udp_limit(packet):
            return got
        self._error(f"a DNS answer of {len(got)} bytes was larger than its UDP query allows",
                    trace=False)
        return reply(packet, 0, truncated=True)

    def _error(self, message: str, *, trace: bool = True) -> None:
        """Log a failure at most once a minute (a flood of one bad shape must not flood the log)."""
        now = time.monotonic()
        if now - self._last_error >= 60.0:
            self._last_error = now
            logger.error(message, exc_info=trace)

    # ------------------------------------------------------------ the Answerer's hooks

    def count(self, zone: str, rcode: str, source: str) -> None:
        """The Answerer's ``stats`` hook: one answer, by zone, response code and source."""
        self.queries[(zone, rcode, source)] += 1

    def log(self, client: str, item: str | DomainQuery, answer: WebAnswer | None, rcode: str,
            seconds: float) -> None:
        """The Answerer's ``log`` hook: an answer about a domain or address becomes a
        query-log row like a ``/v1/domain`` answer's (service ``domain``), while
        ``query_log`` is on; answers without one (REFUSED, FORMERR, the apex) are only counted."""
        logs, cfg = self._logs_of(), self._cfg_of()
        if logs is None or answer is None or not cfg.query_log:
            return
        name = item.name if isinstance(item, DomainQuery) else item
        fixed = self._template(name, answer)
        if fixed is not None:
            head = (time.time(), self._mask_of(cfg)(client), round(seconds * 1e6) / 1000, 1)
            logs.writer.submit("query", head + fixed)

    def _template(self, name: str, answer: WebAnswer) -> entries.Template | None:
        """The row's fixed part, read by ``entries.template`` (the log's own reading of a
        ``/v1/domain`` result), remembered: the same names are asked again and again."""
        key = (name, answer)
        if key not in self._rows:
            result: dict[str, Any] = {"domain": name, "rating": answer.rating.value,
                                      "source": answer.source.value}
            if answer.matched is not None:
                result["matched"] = answer.matched
            if answer.category is not None:
                result["category"] = answer.category
            if len(self._rows) >= MEMO:
                self._rows.clear()
            self._rows[key] = entries.template("domain", result)
        return self._rows[key]

    def _mask_of(self, cfg: Config) -> ClientMask:
        """How clients are stored under ``cfg`` (made again when the settings change it)."""
        seen, mask = self._mask
        if mask is None or seen is not cfg:
            if mask is None or seen is None or (seen.log_clients, seen.log_client_networks) != (
                    cfg.log_clients, cfg.log_client_networks):
                mask = client_mask(cfg)
            self._mask = (cfg, mask)
        return mask

    def _register(self, stats: metrics.Stats) -> None:
        metrics.counter(
            stats, "rampart_dns_queries",
            "DNS queries answered, by zone (ip, domain; none: outside them or unreadable),"
            " response code and source (error, timeout: the door's own SERVFAIL)",
            lambda: [({"zone": z, "rcode": r, "source": s}, float(n))
                     for (z, r, s), n in sorted(self.queries.items())])
        metrics.counter(
            stats, "rampart_dns_refused",
            "DNS queries REFUSED before an answer, by reason (client: outside dns_clients; rate:"
            " over dns_rate_limit; overload: too many answers waiting for the cloud)",
            lambda: [({"reason": r}, float(n)) for r, n in sorted(self.refused.items())])
        metrics.gauge(stats, "rampart_dns_pending",
                      "DNS answers waiting for the cloud or an upstream zone", lambda: self.pending)


async def start_dns(cfg: Config, app: Any, *, answerer: Answering | None = None,
                    port: int | None = None) -> DnsDoor:
    """The DNS door of a started ``App`` (its engine, caps, stats, logs and live config),
    listening; the caller starts it only when ``cfg.dns_port`` is set."""
    door = DnsDoor(cfg, _NoAnswerer(), port=port, caps=app.caps, stats=app.stats,
                   logs_of=lambda: app.logs, cfg_of=lambda: app.cfg)
    if answerer is None:
        from proxy.dns.answers import Answerer

        answerer = Answerer(lambda: app.engine, cfg, stats=door.count, log=door.log)
    door.answerer = answerer
    await door.start()
    return door


class _NoAnswerer:
    def answer(self, packet: bytes, client: str, transport: str) -> Result:
        return None


# ---------------------------------------------------------------- sockets


def _bind(make: Callable[[str, int], socket.socket], host: str, port: int, kind: str) -> socket.socket:
    try:
        return make(host, port)
    except OSError as e:
        why = e.strerror or str(e)
        hint = "; choose another --dns-port (0 turns the DNS door off)" if e.errno in (
            errno.EADDRINUSE, errno.EACCES) else ""
        raise RampartError(
            f"cannot listen on {host}:{port} for the DNS door ({kind}): {why}{hint}") from None


def _udp_socket(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if family == socket.AF_INET6 and not host:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, door: DnsDoor) -> None:
        self.door = door
        self.transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        door = self.door
        try:
            got = door._answer(data, _client(str(addr[0])), "udp")
            if got is None:
                return
            if isinstance(got, bytes):
                self._send(got, data, addr)
            else:
                door._later(got, data, lambda late: self._send(late, data, addr))
        except Exception:  # our own bug: never out of the loop's callback
            door._error("the DNS door failed on a datagram")

    def _send(self, got: bytes | None, packet: bytes, addr: tuple[Any, ...]) -> None:
        transport = self.transport
        if got is None or transport is None or transport.is_closing():
            return
        sized = self.door._sized(got, packet)
        if sized is not None:
            transport.sendto(sized, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("DNS door (udp): %s", exc)  # e.g. an ICMP port unreachable from a client


class _Stream(asyncio.Protocol):
    """One TCP connection: length-prefixed messages, answered as they come (in any order)."""

    def __init__(self, door: DnsDoor, slot: Slot | None) -> None:
        self.door = door
        self.slot = slot
        self.transport: asyncio.Transport | None = None
        self.client = "?"
        self.buffer = bytearray()
        self.begun = 0.0  # when the first byte of the message in the buffer came
        self.messages = 0
        self.inflight = 0
        self.paused = False  # reading, for back-pressure
        self.last = False  # no more messages will be read: close once answered
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = _client(str(peer[0])) if peer else "?"
        self.door._streams.add(self)
        self._rearm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.door._streams.discard(self)
        if self.slot is not None:
            self.slot.release()
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception:  # our own bug: close this connection, keep the door
            self.door._error("the DNS door failed on a TCP connection")
            self.abort()

    def _received(self, data: bytes) -> None:
        buffer = self.buffer
        if not buffer:
            self.begun = self.loop.time()
        buffer += data
        while len(buffer) >= 2 and not self.last:
            size = int.from_bytes(buffer[:2])
            if len(buffer) < 2 + size:
                break
            message = bytes(buffer[2:2 + size])
            del buffer[:2 + size]
            if buffer:
                self.begun = self.loop.time()
            self.messages += 1
            self._one(message)
            if self.messages >= self.door.max_messages and not self.last:
                self._finish()
        self._rearm()

    def _one(self, message: bytes) -> None:
        got = self.door._answer(message, self.client, "tcp")
        if isinstance(got, bytes):
            self._write(got, message)
        elif got is None:  # not a DNS message: this stream cannot be trusted to be in step
            self._finish()
        else:
            self.inflight += 1
            if self.inflight >= self.door.max_inflight:
                self._pause()
            self.door._later(got, message, lambda late: self._late(late, message))

    def _late(self, got: bytes | None, message: bytes) -> None:
        self.inflight -= 1
        if got is not None:
            self._write(got, message)
        if self.inflight < self.door.max_inflight and not self.last:
            self._resume()
        if self.last and not self.inflight and self.transport is not None:
            self.transport.close()
        else:
            self._rearm()

    def _write(self, got: bytes, message: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if len(got) > MAX_TCP:  # cannot be framed: a bug upstream
            self.door._error(f"a DNS answer of {len(got)} bytes cannot go over TCP", trace=False)
            got = reply(message, SERVFAIL) or b""
        if got:
            transport.write(len(got).to_bytes(2) + got)

    def _finish(self) -> None:
        """Read no more; close once what was asked is answered."""
        self.last = True
        self._pause()
        self.buffer.clear()
        if not self.inflight and self.transport is not None:
            self.transport.close()

    def _pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading its questions
        self._pause()

    def resume_writing(self) -> None:
        if self.inflight < self.door.max_inflight and not self.last:
            self._resume()

    def _rearm(self) -> None:
        """The read timeout from a message's first byte while one is begun (more bytes do
        not extend it: a client sending one byte at a time is cut too); the idle timeout
        while nothing is asked or answered; no timer while answers are awaited."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.last or self.transport is None or self.transport.is_closing():
            return
        if self.buffer:
            self.timer = self.loop.call_at(self.begun + self.door.read_timeout, self._cut)
        elif not self.inflight:
            self.timer = self.loop.call_later(self.door.idle_timeout, self._idle)

    def _cut(self) -> None:
        if self.door.caps is not None:
            self.door.caps.count(self.client, DOOR, "read_timeout",
                                 f"a DNS message not complete after {self.door.read_timeout:g} s")
        self.abort()

    def _idle(self) -> None:
        if self.transport is not None:
            self.transport.close()
