"""The DNS door: UDP and TCP on ``listen:dns_port``, in the App's event loop (its sockets
are ``proxy.dns.transports``).

Every message, over either transport, goes through one path (``DnsDoor.respond``):
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
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from proxy.config import Config
from proxy.dns import wire
from proxy.dns.transports import (
    DOOR,
    SERVFAIL,
    UDP_PLAIN,
    Datagrams,
    Stream,
    bind,
    reply,
    udp_limit,
    udp_socket,
)
from proxy.errors import RampartError
from proxy.logs import entries
from proxy.logs.clients import ClientMask
from proxy.logs.hub import Logs, client_mask
from proxy.logs.store import clip
from proxy.model import DomainQuery, WebAnswer
from proxy.serve import metrics
from proxy.serve.conns import ConnectionCaps
from proxy.serve.gate import Gate
from proxy.serve.listener import Listener, listening_socket

logger = logging.getLogger(__name__)

GRACE = 1.0  # seconds past dns_timeout before the door gives up on an answer itself
MAX_PENDING = 4096  # answers waiting for the cloud or an upstream zone at once
MAX_INFLIGHT = 128  # answers in progress on one TCP connection before its reading pauses
MAX_MESSAGES = 65536  # messages on one TCP connection before it is closed
IDLE_TIMEOUT = 10.0  # RFC 7766 §6.2.3 suggests seconds, not minutes
REFUSALS = ("client", "rate", "overload")
MEMO = 4096
MAX_GROUPS = 4096  # query-log rows held for the second at most (then written at once)

Result = bytes | None | Awaitable[bytes | None]


class Answering(Protocol):
    """What the door asks (``proxy.dns.answers.Answerer``)."""

    def answer(self, packet: bytes, client: str, transport: str) -> Result: ...


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
        self.streams: set[Stream] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: Listener | None = None
        self._mask: tuple[Config | None, ClientMask | None] = (None, None)
        self._shapes: dict[tuple[Any, Any, str | None], entries.Template] = {}
        # the rows of this second (log), by client, item and answer: [t, client as stored,
        # count, seconds summed, shape, item, matched]; written by flush_log
        self._groups: dict[tuple[Any, ...], list[Any]] = {}
        self._second_ends = float("-inf")
        self._flush_timer: asyncio.TimerHandle | None = None
        self._wall: Callable[[], float] = time.time
        self._last_error = float("-inf")
        if stats is not None:
            self._register(stats)

    # ------------------------------------------------------------ start / stop

    async def start(self) -> None:
        """Listen on UDP and TCP; a RampartError naming ``--dns-port`` if either port is taken."""
        loop = asyncio.get_running_loop()
        host = self.cfg.listen
        for attempt in range(20 if self.port == 0 else 1):
            udp = bind(udp_socket, host, self.port, "udp")
            port = udp.getsockname()[1]
            try:
                tcp = bind(listening_socket, host, port, "tcp")
            except RampartError:
                udp.close()
                if self.port == 0 and attempt < 19:
                    continue  # that port was free for UDP only: try another
                raise
            break
        self.port = port
        self._udp, datagrams = await loop.create_datagram_endpoint(lambda: Datagrams(self), sock=udp)
        self._udp_closed = datagrams.closed
        self._tcp = Listener(tcp, lambda slot: Stream(self, slot), door=DOOR, caps=self.caps,
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
        closed += [s.closed for s in self.streams]
        for stream in list(self.streams):
            stream.abort()
        await asyncio.gather(*self._tasks, *closed, return_exceptions=True)
        self.flush_log()

    # ------------------------------------------------------------ one message

    def respond(self, packet: bytes, client: str, transport: str) -> Result:
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
            self.error("answering a DNS query failed")
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

    def later(self, pending: Awaitable[bytes | None], packet: bytes,
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
                self.error("answering a DNS query failed")
                self.queries[("none", "SERVFAIL", "error")] += 1
                got = reply(packet, SERVFAIL)
            deliver(got)
        finally:
            self.pending -= 1

    def sized(self, got: bytes, packet: bytes) -> bytes | None:
        """``got`` if a UDP client may be sent it; else an empty TC answer (a bug upstream,
        logged: the client retries over TCP instead of being amplified at)."""
        if len(got) <= UDP_PLAIN or len(got) <= udp_limit(packet):
            return got
        self.error(f"a DNS answer of {len(got)} bytes was larger than its UDP query allows",
                    trace=False)
        return reply(packet, 0, truncated=True)

    def error(self, message: str, *, trace: bool = True) -> None:
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
            seconds: float, matched: str | None = None) -> None:
        """The Answerer's ``log`` hook: an answer about a domain or address becomes a
        query-log row like a ``/v1/domain`` answer's (service ``domain``), while
        ``query_log`` and ``dns_query_log`` are on; answers without one (REFUSED, FORMERR,
        the apex) are only counted.

        Rows are held until their second ends (``flush_log``, by a timer, or when the next
        second's first answer comes): the same answer to the same client within a second is
        one row with a count and the mean latency, as the query door's identical answers
        are (``proxy.logs.entries``). A mail server asks about its regular senders again and
        again; each such query then costs a dict lookup, not a row written. ``matched``, when
        given, stands for the answer's own (the compiled lane's answers are made once per
        kind of answer, with none)."""
        if answer is None:
            return
        logs = self._logs_of()
        if logs is None:
            return
        cfg = self._cfg_of()
        if not (cfg.query_log and cfg.dns_query_log):
            return
        name = item.name if isinstance(item, DomainQuery) else item
        now = self._wall()
        if not self._second_ends - 1.0 <= now < self._second_ends:  # another second (or the clock stepped)
            self.flush_log()
            self._second_ends = float(int(now) + 1)
        if matched is None:
            matched = answer.matched
        key = (client, name, answer.rating, answer.source, answer.category, matched)
        groups = self._groups
        group = groups.get(key)
        if group is not None:  # the same answer to the same client in this second: counted
            group[2] += 1
            group[3] += seconds
            return
        if not groups:
            self._flush_at_second_end(now)
        elif len(groups) >= MAX_GROUPS:
            self.flush_log()
            groups = self._groups
            self._flush_at_second_end(now)
        s = self._shapes.get((answer.rating, answer.source, answer.category)) or self._shape(answer)
        mask = self._mask[1] if self._mask[0] is cfg else None
        groups[key] = [now, (mask or self._mask_of(cfg))(client), 1, seconds, s,
                       clip(name, entries.MAX_ITEM), clip(matched, entries.MAX_TEXT)]

    def flush_log(self) -> None:
        """Hand the rows held for this second to the log writer: one per client, item and
        answer, with how many times it was given and their mean latency."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        groups, self._groups = self._groups, {}
        logs = self._logs_of() if groups else None
        if logs is None:
            return
        submit = logs.writer.submit
        for t, client, n, seconds, s, name, matched in groups.values():
            submit("query", (t, client, round(seconds / n * 1e6) / 1000, n, s[0], name, s[2], s[3],
                             s[4], s[5], matched, s[7], s[8]))

    def _flush_at_second_end(self, now: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop (a test): flush_log is called by hand
            return
        self._flush_timer = loop.call_later(max(0.0, self._second_ends - now) + 0.001, self.flush_log)

    def _shape(self, answer: WebAnswer) -> entries.Template:
        """The row's fixed part, read by ``entries.template`` (the log's own reading of a
        ``/v1/domain`` result) once per rating, source and category: for a domain result only
        its item and matched entry (positions 1 and 6, clipped in ``log``) differ between
        names, and every query names another (tests/proxy/dns/test_fast.py holds the rows
        equal to ``entries.template``'s)."""
        key = (answer.rating, answer.source, answer.category)
        shape = self._shapes.get(key)
        if shape is None:
            result: dict[str, Any] = {"domain": "", "rating": answer.rating.value,
                                      "source": answer.source.value, "matched": ""}
            if answer.category is not None:
                result["category"] = answer.category
            made = entries.template("domain", result)
            assert made is not None  # a dict always makes one
            if len(self._shapes) >= MEMO:
                self._shapes.clear()
            shape = self._shapes[key] = made
        return shape

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
    shared = getattr(app, "shared", None)  # --redis: its rate limit counted across appliances
    if shared is not None and door.gate is not None:
        shared.share_gate(door.gate, "dns")
    await door.start()
    return door


class _NoAnswerer:
    def answer(self, packet: bytes, client: str, transport: str) -> Result:
        return None
