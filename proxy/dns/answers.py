"""The DNS door's answers: one raw query in, one response out, from the same engine as the
query door (docs/architecture.md, "The decision chain").

:meth:`Answerer.answer` returns bytes synchronously when the lists, the pattern or the cache
answer (no coroutine, no task: the common case stays cheap), and an awaitable only when the
cloud (or the upstream DNSBL zone, ``dns_upstream_zone``) must be asked, within
``dns_timeout``.

What a query gets:

- listed (blocked list, or a dangerous, highly suspicious or suspicious rating): ``A`` with
  its code (:class:`~proxy.dns.zones.Codes`), ``TXT`` with the reason and a lookup URL,
  ``ANY`` the A alone (minimal, RFC 8482); other types NOERROR with no records;
- not listed, approved, safe, untested, or a name in a zone that names nothing: NXDOMAIN;
- a configured cloud or upstream that did not answer in time: SERVFAIL (the client retries);
- the apex: SOA and NS; outside the zones, other classes, zone transfers: REFUSED.

Every answer in a zone is authoritative (AA), none offers recursion (RA clear). Positive
TTLs are the answer's TTL; negative answers carry the zone's SOA with that TTL as its
minimum (RFC 2308). Nothing here raises on any input: an internal error is logged and
answered SERVFAIL, so the door keeps answering.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.config import Config
from proxy.decide.engine import Ask, Engine
from proxy.dns import wire
from proxy.dns.lane import make_lane
from proxy.dns.memo import AnswerMemo, Kept
from proxy.dns.upstream import Upstream
from proxy.dns.wire import Query, Record
from proxy.dns.zones import TEST_CODE, TEST_REASON, Asked, Codes, Kind, Zones, lookup_base, reason
from proxy.model import Service, Source, WebAnswer

logger = logging.getLogger(__name__)

StatsHook = Callable[[str, str, str], None]  # (zone "ip"/"domain"/"none", rcode name, source)
# (client, item, answer, rcode, seconds[, matched: for the lane's answers, whose own is ""])
LogHook = Callable[..., None]
Reply = bytes | None | Awaitable[bytes | None]
Outcome = tuple[int, list[Record], list[Record]]  # rcode, answer, authority

MAX_TTL = (1 << 31) - 1
REFUSED_TYPES = frozenset({251, 252, 253, 254})  # IXFR, AXFR, MAILB, MAILA: no transfers here
FORMERR_TYPES = frozenset({wire.OPT, 249, 250})  # OPT, TKEY, TSIG are never questions
SOA_TIMERS = (3600, 600, 86400)  # refresh, retry, expire: no secondaries are expected
_A_OWNER = b"\xc0\x0c\x00\x01"  # the query name (a pointer to offset 12), type A
_HOSTMASTER = b"\x0ahostmaster"
_A_OR_ANY = (wire.A_IN, wire.ANY_IN)
_MAX_NAME = wire.MAX_NAME


def _ignore(*_: Any) -> None:
    return None


def _ttl(ttl: int | None, fallback: int) -> int:
    return min(max(fallback if ttl is None else ttl, 0), MAX_TTL)


def _serial(version: str) -> int:
    """The SOA serial: the pattern version (YYYYMMDDHH fits 32 bits), so it moves on swaps."""
    return int(version) if version.isdigit() and int(version) < 1 << 32 else 1


class Answerer:
    """Answers the DNS door's queries from ``engine_of()``, read per query (pattern swaps
    replace the App's engine)."""

    def __init__(
        self, engine_of: Callable[[], Engine], cfg: Config, *,
        stats: StatsHook | None = None, log: LogHook | None = None,
    ) -> None:
        self._engine_of = engine_of
        self.zones = Zones(cfg.dns_ip_zone, cfg.dns_domain_zone)
        self.codes = Codes(cfg.dns_codes)
        self.base = lookup_base(cfg)
        self.timeout = cfg.dns_timeout
        self.upstream = (
            Upstream(cfg.dns_upstream_zone, cfg.dns_upstream_server, cfg.dns_timeout)
            if cfg.dns_upstream_zone else None
        )
        self._stats: StatsHook = stats or _ignore
        self._log: LogHook = log or _ignore
        self.memo = AnswerMemo()
        # what the last synchronous answer was (zone, rcode, source, item, answer): set by
        # _send and _logged while answer() runs, read by it to keep the answer in the memo
        self._sent: tuple[str, str, str, str, WebAnswer | None] | None = None
        self.fast = True  # the fast lanes (_fast, and the compiled one) on; tests turn them off to compare
        self.compiled = True  # the compiled lane (proxy.dns.lane) on; tests turn it off to compare
        self._soa_parts: dict[tuple[str, int], tuple[bytes, bytes]] = {}
        self._a_bodies: dict[tuple[int, bytes], bytes] = {}
        self._lane: tuple[Any, Any, Any, Any] = (None, None, None, None)  # engine, patterns, lists, lane

    def answer(self, packet: bytes, client: str, transport: str) -> Reply:
        """The response to ``packet`` (sized for ``transport``), None for none, or an awaitable:
        from the compiled lane (``proxy.dns.lane``) when it takes the query, else from the
        memo (``proxy.dns.memo``) for a question asked before, else ``_fast`` or ``_plain``."""
        engine = self._engine_of()
        if self.fast and self.compiled:  # first: it answers as cheaply as the memo replays
            lane = self._lane
            if lane[0] is not engine or lane[1] is not engine.patterns or lane[2] is not engine.lists:
                lane = self._lane_of(engine)
            if lane[3] is not None:
                started = time.perf_counter()
                got = lane[3].answer(packet, client)
                if got is not None:
                    reply: Reply
                    reply, zone, rcode, source, item, answer, matched = got
                    engine.count_one(Service.DOMAIN, answer)
                    self._stats(zone, rcode, source)
                    self._log(client, item, answer, rcode, time.perf_counter() - started, matched)
                    return reply
        kept = self.memo.get(packet, transport, client, engine)
        if kept is not None:
            return self._replay(packet, kept, client, engine)
        self._sent = None
        reply = self._fast(packet, client, transport, engine) if self.fast else None
        if reply is None:
            reply = self._plain(packet, client, transport)
        if isinstance(reply, bytes) and self._sent is not None:
            self.memo.put(packet, transport, client, engine, reply, Kept(reply[2:], *self._sent))
        return reply

    def _lane_of(self, engine: Engine) -> tuple[Any, Any, Any, Any]:
        """The compiled lane (``proxy.dns.lane``) for this engine, its pattern and its lists,
        made when one of them changed (None inside without the compiled module)."""
        ttl = _ttl(engine.local_ttl, 0)
        lane = make_lane(engine, self.zones, self.codes, upstream=self.upstream is not None,
                         soa_parts=self._soa_parts_of, ttl=ttl)
        self._lane = (engine, engine.patterns, engine.lists, lane)
        return self._lane

    def _replay(self, packet: bytes, kept: Kept, client: str, engine: Engine) -> bytes:
        """A memo hit, counted and logged as the plain path counts and logs it."""
        started = time.perf_counter()
        self._stats(kept.zone, kept.rcode, kept.source)
        if kept.answer is not None:
            engine.count_one(Service.DOMAIN, kept.answer)
        if kept.item:
            self._log(client, kept.item, kept.answer, kept.rcode, time.perf_counter() - started)
        return packet[:2] + kept.tail

    def _fast(self, packet: bytes, client: str, transport: str, engine: Engine) -> Reply | None:
        """An A (or ANY) question about an item, in the common shape, answered in one pass;
        None for any other query, which :meth:`_plain` then reads completely.

        Why it is shaped so: a busy mail server asks distinct names, so the memo rarely
        helps, and the plain path's layers (a Query, an Asked, lists of Records, the reason
        text an A does not carry) cost more than the lookup itself. Here the zone is
        found in the lower-cased packet (length octets are below "A") by ``Zones.fast_wire``
        with the item it names, the engine asked for one item (``begin_domain_one``,
        ``count_one``) and the response joined from the question as sent and fixed pieces
        (the A record; the SOA's parts per version and TTL). No size check is needed: an A
        answer or an NXDOMAIN with its SOA is at most 329 bytes, under 512. Counting,
        logging and the memo see what the plain path gives them; a name the cloud or the
        upstream zone must answer goes on to the plain path's awaitables.
        tests/proxy/dns/test_fast.py holds the two paths' bytes, counts and logs equal.
        """
        n = len(packet)
        if n < 17 or packet[2] & 0xF8 or packet[4:10] != wire.ONE_QUESTION or packet[10] or n > 512:
            return None  # a response, another opcode, other counts; over 512: not the common shape
        found = self.zones.fast_wire(packet.lower())
        if found is None:
            return None
        zone, apex, qend, item = found
        if qend - 17 >= _MAX_NAME or packet[qend - 4:qend] not in _A_OR_ANY:
            return None  # the name's octets, root included, past 255; another type or class
        tail = wire.opt_echo(packet, qend)
        if tail is None:
            return None
        started = time.perf_counter()
        if self.upstream is not None:
            answer = engine.domain_local_one(item, client)
            if answer is None:
                return self._plain(packet, client, transport)  # its upstream path, read again
        else:
            answer, ask = engine.begin_domain_one(item, client)
            if answer is None:
                return self._ask(packet, engine, ask, client, transport, started)
        engine.count_one(Service.DOMAIN, answer)
        source = answer.source
        if source is Source.DEGRADED:
            rcode, flags, counts, body = "SERVFAIL", wire.QR | wire.SERVFAIL, (0, 0), b""
        else:
            ttl = answer.ttl
            ttl = min(max(engine.local_ttl if ttl is None else ttl, 0), MAX_TTL)  # _ttl, inline
            code = self.codes.code(answer)
            if code is not None:
                rcode, flags, counts = "NOERROR", wire.QR | wire.AA, (1, 0)
                body = self._a_bodies.get((ttl, code)) or self._a_body(ttl, code)
            else:
                rcode, flags, counts = "NXDOMAIN", wire.QR | wire.AA | wire.NXDOMAIN, (0, 1)
                body = self._soa_bytes(engine.version, ttl, (0xC000 | apex).to_bytes(2))
        flags |= (packet[2] & 1) << 8 | (packet[3] & 0x10)  # the query's RD and CD, echoed
        head = wire.COUNTS.pack(flags, 1, *counts, 1 if tail else 0)
        value = source._value_  # the member's own attribute: .value is a Python-level property
        self._stats(zone.kind, rcode, value)
        self._log(client, item.item, answer, rcode, time.perf_counter() - started)
        self._sent = (zone.kind, rcode, value, item.item, answer)
        return packet[:2] + head + packet[12:qend] + body + tail

    def _a_body(self, ttl: int, code: bytes) -> bytes:
        """The listed answer's A record (owner: the query name), kept per TTL and code."""
        if len(self._a_bodies) >= 64:
            self._a_bodies.clear()
        body = self._a_bodies[(ttl, code)] = _A_OWNER + wire.RR_FIXED.pack(wire.IN, ttl, 4) + code
        return body

    def _soa_bytes(self, version: str, ttl: int, apex: bytes) -> bytes:
        """The negative answer's SOA record (``_soa``) from parts kept per version and TTL."""
        parts = self._soa_parts.get((version, ttl)) or self._soa_parts_of(version, ttl)
        return apex + parts[0] + apex + _HOSTMASTER + apex + parts[1]

    def _soa_parts_of(self, version: str, ttl: int) -> tuple[bytes, bytes]:
        """The SOA record's fixed part and its timers, for a version and TTL (kept)."""
        if len(self._soa_parts) >= 64:
            self._soa_parts.clear()
        fixed = struct.pack("!HHIH", wire.SOA, wire.IN, ttl, 35)  # 2 + 11 + 2 + 20 octets of rdata
        timers = struct.pack("!5I", _serial(version), *SOA_TIMERS, ttl)
        parts = self._soa_parts[(version, ttl)] = (fixed, timers)
        return parts

    def _ask(self, packet: bytes, engine: Engine, ask: Ask, client: str, transport: str,
             started: float) -> Reply:
        """The fast lane's name the cloud must answer: the plain path's relayed answer."""
        q = wire.parse(packet)
        assert isinstance(q, Query)
        return self._relayed(q, self.zones.classify(q.labels), engine, [None], ask, client,
                             transport, started)

    def _plain(self, packet: bytes, client: str, transport: str) -> Reply:
        try:
            parsed = wire.parse(packet)
        except Exception:  # a bug, not the packet: still no exception out of the door
            logger.exception("DNS query unreadable")
            return None
        if not isinstance(parsed, Query):
            if parsed is not None:
                self._stats("none", wire.RCODE_NAMES.get(wire.rcode_of(parsed), "other"), "none")
            return parsed
        try:
            return self._answer(parsed, client, transport, time.perf_counter())
        except Exception:
            logger.exception("DNS answer failed")
            return wire.response(parsed, wire.SERVFAIL, aa=False, limit=parsed.limit(transport))

    def _answer(self, q: Query, client: str, transport: str, started: float) -> Reply:
        asked = self.zones.classify(q.labels)
        if q.qtype in FORMERR_TYPES:
            return self._send(q, asked, transport, (wire.FORMERR, [], []), "none")
        if asked.kind is Kind.OUTSIDE or q.qclass not in (wire.IN, wire.ANY) or q.qtype in REFUSED_TYPES:
            return self._send(q, asked, transport, (wire.REFUSED, [], []), "none")
        engine = self._engine_of()
        if asked.kind is not Kind.ITEM:
            return self._send(q, asked, transport, self._zone_answer(q, asked, engine), "zone")
        return self._item(q, asked, engine, client, transport, started)

    # ------------------------------------------------------------ sending and counting

    def _send(self, q: Query, asked: Asked, transport: str, outcome: Outcome, source: str) -> bytes:
        rcode, answer, authority = outcome
        aa = rcode in (wire.NOERROR, wire.NXDOMAIN) and asked.zone is not None
        zone = asked.zone.kind if asked.zone else "none"
        self._stats(zone, wire.RCODE_NAMES[rcode], source)
        self._sent = (zone, wire.RCODE_NAMES[rcode], source, "", None)  # for the memo
        return wire.response(q, rcode, answer, authority, aa=aa, limit=q.limit(transport))

    def _logged(
        self, q: Query, asked: Asked, transport: str, outcome: Outcome, source: str,
        client: str, answer: WebAnswer | None, started: float,
    ) -> bytes:
        out = self._send(q, asked, transport, outcome, source)
        item = asked.query.item if asked.query is not None else ""
        self._log(client, item, answer, wire.RCODE_NAMES[outcome[0]], time.perf_counter() - started)
        if self._sent is not None:
            self._sent = (*self._sent[:3], item, answer)
        return out

    # ------------------------------------------------------------ the zone's own names

    def _soa(self, q: Query, skip: int, engine: Engine, minimum: int) -> Record:
        apex = wire.pointer(q, skip)  # the apex names itself as its primary server
        rdata = apex + b"\x0ahostmaster" + apex + struct.pack(
            "!5I", _serial(engine.version), *SOA_TIMERS, minimum)
        return Record(skip, wire.SOA, minimum, rdata)

    def _negative(self, q: Query, asked: Asked, engine: Engine, rcode: int, ttl: int) -> Outcome:
        return rcode, [], [self._soa(q, asked.skip, engine, ttl)]

    def _zone_answer(self, q: Query, asked: Asked, engine: Engine) -> Outcome:
        ttl = _ttl(engine.local_ttl, 0)
        if asked.kind is Kind.APEX:
            if q.qtype in (wire.SOA, wire.ANY):
                return wire.NOERROR, [self._soa(q, 0, engine, ttl)], []
            if q.qtype == wire.NS:
                return wire.NOERROR, [Record(0, wire.NS, ttl, wire.pointer(q, 0))], []
            return self._negative(q, asked, engine, wire.NOERROR, ttl)
        if asked.kind is Kind.TEST_LISTED:
            return self._listed(q, asked, engine, TEST_CODE, TEST_REASON, ttl)
        return self._negative(q, asked, engine, wire.NXDOMAIN, ttl)  # test unlisted, malformed

    def _listed(self, q: Query, asked: Asked, engine: Engine, code: bytes, text: str, ttl: int) -> Outcome:
        if q.qtype in (wire.A, wire.ANY):
            return wire.NOERROR, [Record(0, wire.A, ttl, code)], []
        if q.qtype == wire.TXT:
            return wire.NOERROR, [Record(0, wire.TXT, ttl, wire.txt_rdata(text))], []
        return self._negative(q, asked, engine, wire.NOERROR, ttl)

    # ------------------------------------------------------------ items: the engine

    def _verdict(self, q: Query, asked: Asked, engine: Engine, answer: WebAnswer) -> Outcome:
        if answer.source is Source.DEGRADED:
            return wire.SERVFAIL, [], []
        ttl = _ttl(answer.ttl, engine.local_ttl)
        code = self.codes.code(answer)
        if code is None:
            return self._negative(q, asked, engine, wire.NXDOMAIN, ttl)
        assert asked.query is not None
        return self._listed(q, asked, engine, code, reason(answer, asked.query.item, self.base), ttl)

    def _item(
        self, q: Query, asked: Asked, engine: Engine, client: str, transport: str, started: float
    ) -> Reply:
        assert asked.query is not None
        if self.upstream is not None:
            local = engine.domain_local_one(asked.query, client)
            if local is None:
                return self._upstream(q, asked, engine, client, transport, started)
            answers: list[Any] = [local]
        else:
            answers, ask = engine.begin_domains([asked.query], client)
            if ask:
                return self._relayed(q, asked, engine, answers, ask, client, transport, started)
        engine.count(Service.DOMAIN, answers)
        return self._engine_reply(q, asked, engine, answers[0], client, transport, started)

    def _engine_reply(
        self, q: Query, asked: Asked, engine: Engine, answer: WebAnswer, client: str,
        transport: str, started: float,
    ) -> bytes:
        outcome = self._verdict(q, asked, engine, answer)
        return self._logged(q, asked, transport, outcome, answer.source.value, client, answer, started)

    async def _relayed(
        self, q: Query, asked: Asked, engine: Engine, answers: list[Any], ask: Ask, client: str,
        transport: str, started: float,
    ) -> bytes:
        """The cloud asked, within ``dns_timeout``; then SERVFAIL (degraded)."""
        try:
            async with asyncio.timeout(self.timeout):
                done = await engine.finish(Service.DOMAIN, answers, ask)
            return self._engine_reply(q, asked, engine, done[0], client, transport, started)
        except TimeoutError:
            pass
        except Exception:
            logger.exception("DNS answer failed while asking the cloud")
        return self._logged(q, asked, transport, (wire.SERVFAIL, [], []), Source.DEGRADED.value,
                            client, None, started)

    async def _upstream(
        self, q: Query, asked: Asked, engine: Engine, client: str, transport: str, started: float
    ) -> bytes:
        """Nothing here knew the name: the upstream DNSBL zone's answer, as it gave it."""
        assert self.upstream is not None
        try:
            rcode, records = await self.upstream.ask(q.labels[:asked.skip], q.qtype)
        except Exception:
            logger.exception("DNS answer failed while asking the upstream zone")
            rcode, records = wire.SERVFAIL, []
        ttl = _ttl(engine.local_ttl, 0)
        outcome: Outcome = (rcode, [Record(0, t, min(r_ttl, MAX_TTL), rd) for t, r_ttl, rd in records], [])
        if rcode == wire.NXDOMAIN or (rcode == wire.NOERROR and not records):
            outcome = self._negative(q, asked, engine, rcode, ttl)
        return self._logged(q, asked, transport, outcome, "upstream", client, None, started)
