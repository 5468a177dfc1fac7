"""The DNS door's transports (``proxy.dns.door``): the UDP and TCP sockets and what is
sent on them without the Answerer (the door's own REFUSED, SERVFAIL and TC answers).

``Datagrams`` answers the datagrams of each loop wake-up together; ``Stream`` is one TCP
connection (RFC 7766): 2-byte length-prefixed messages, several per connection, answered
as they come and possibly out of order, its reading paused while ``max_inflight`` answers
are awaited or the client does not read its answers, closed after ``max_messages``, after
``idle_timeout`` with nothing asked, or when a message begun is not complete
``read_timeout`` after its first byte (counted as ``read_timeout`` on the connection caps).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy.dns import wire
from proxy.errors import RampartError
from proxy.serve.conns import Slot

if TYPE_CHECKING:
    from proxy.dns.door import DnsDoor

logger = logging.getLogger(__name__)

DOOR = "dns"
SERVFAIL, REFUSED = wire.SERVFAIL, wire.REFUSED
UDP_PLAIN = wire.UDP_PLAIN  # the most a UDP answer may be without EDNS(0) (RFC 1035 §4.2.1)
MAX_TCP = wire.TCP_MAX  # the most a TCP message may be (its 2-byte length)
MAX_BATCH = 256  # datagrams kept before they are answered, at most


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


def client_address(address: str) -> str:
    """An IPv4-mapped IPv6 peer (a dual-stack socket) as the IPv4 address it is."""
    return address[7:] if address.startswith("::ffff:") and "." in address else address


# ---------------------------------------------------------------- sockets


def bind(make: Callable[[str, int], socket.socket], host: str, port: int, kind: str) -> socket.socket:
    try:
        return make(host, port)
    except OSError as e:
        why = e.strerror or str(e)
        hint = "; choose another --dns-port (0 turns the DNS door off)" if e.errno in (
            errno.EADDRINUSE, errno.EACCES) else ""
        raise RampartError(
            f"cannot listen on {host}:{port} for the DNS door ({kind}): {why}{hint}") from None


def udp_socket(host: str, port: int) -> socket.socket:
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


class Datagrams(asyncio.DatagramProtocol):
    """The UDP socket's datagrams, answered a loop wake-up's worth at a time.

    Why batched: the loop reads every datagram waiting on the socket in one wake-up (one
    ``datagram_received`` each); they are kept, and answered and sent together in one
    callback once the reading is done (``_flush``). Answering one after another keeps the
    answer path warm in the CPU's caches, and the replies reach the client's socket in a
    group instead of waking it once per reply: bench/bench_dns.py measured the door's
    kernel time per query down by about a third and its queries/s up with it. A quiet door
    answers a lone datagram in the next callback, as before. What each datagram gets is
    unchanged (tests/proxy/dns/test_door.py asks bursts from many clients).
    """

    def __init__(self, door: DnsDoor) -> None:
        self.door = door
        self.transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._waiting: list[tuple[bytes, tuple[Any, ...]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._waiting.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        waiting = self._waiting
        waiting.append((data, addr))
        if len(waiting) == 1:
            self._loop.call_soon(self._flush)
        elif len(waiting) >= MAX_BATCH:  # bounded whatever the loop reads in one wake-up
            self._flush()

    def _flush(self) -> None:
        """Answer the datagrams read since the last flush; send what is answered at once."""
        batch, self._waiting = self._waiting, []
        door = self.door
        respond = door.respond
        for data, addr in batch:
            try:
                got = respond(data, client_address(addr[0]), "udp")
                if got is None:
                    continue
                if isinstance(got, bytes):
                    self._send(got, data, addr)
                else:
                    door.later(got, data, functools.partial(self._later, data, addr))
            except Exception:  # our own bug: never out of the loop's callback
                door.error("the DNS door failed on a datagram")

    def _later(self, packet: bytes, addr: tuple[Any, ...], got: bytes | None) -> None:
        self._send(got, packet, addr)

    def _send(self, got: bytes | None, packet: bytes, addr: tuple[Any, ...]) -> None:
        transport = self.transport
        if got is None or transport is None or transport.is_closing():
            return
        if len(got) > UDP_PLAIN:  # the common answer fits plain UDP: no parse to size it
            sized = self.door.sized(got, packet)
            if sized is None:
                return
            got = sized
        transport.sendto(got, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("DNS door (udp): %s", exc)  # e.g. an ICMP port unreachable from a client


class Stream(asyncio.Protocol):
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
        self.stalled = False  # writing: the client does not read what it is sent
        self.last = False  # no more messages will be read: close once answered
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = client_address(str(peer[0])) if peer else "?"
        self.door.streams.add(self)
        self._rearm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.door.streams.discard(self)
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
            self.door.error("the DNS door failed on a TCP connection")
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
        got = self.door.respond(message, self.client, "tcp")
        if isinstance(got, bytes):
            self._write(got, message)
        elif got is None:  # not a DNS message: this stream cannot be trusted to be in step
            self._finish()
        else:
            self.inflight += 1
            if self.inflight >= self.door.max_inflight:
                self._pause()
            self.door.later(got, message, lambda late: self._late(late, message))

    def _late(self, got: bytes | None, message: bytes) -> None:
        self.inflight -= 1
        if got is not None:
            self._write(got, message)
        self._resume()
        if self.last and not self.inflight and self.transport is not None:
            self.transport.close()
        self._rearm()

    def _write(self, got: bytes, message: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if len(got) > MAX_TCP:  # cannot be framed: a bug upstream
            self.door.error(f"a DNS answer of {len(got)} bytes cannot go over TCP", trace=False)
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
        """Read again unless something still holds it: answers in progress at the bound,
        a client not reading its answers, or the connection's last message read."""
        if (self.paused and not self.stalled and not self.last and self.inflight < self.door.max_inflight
                and self.transport is not None and not self.transport.is_closing()):
            self.paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading its questions
        self.stalled = True
        self._pause()

    def resume_writing(self) -> None:
        self.stalled = False
        self._resume()

    def _rearm(self) -> None:
        """The read timeout from a message's first byte while one is begun (more bytes do
        not extend it: a client sending one byte at a time is cut too); the idle timeout
        while nothing is asked or answered, closing or not (a close waits for the client
        to read its answers: one that never does is aborted then); no timer while answers
        are awaited (``DnsDoor.deadline`` bounds them)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is None or self.closed.done():
            return
        if self.buffer and not self.last:
            self.timer = self.loop.call_at(self.begun + self.door.read_timeout, self._cut)
        elif not self.inflight:
            self.timer = self.loop.call_later(self.door.idle_timeout, self._idle)

    def _cut(self) -> None:
        if self.door.caps is not None:
            self.door.caps.count(self.client, DOOR, "read_timeout",
                                 f"a DNS message not complete after {self.door.read_timeout:g} s")
        self.abort()

    def _idle(self) -> None:
        """Close; abort if answers are still unread (a close would wait for the client)."""
        if self.transport is not None:
            if self.transport.get_write_buffer_size():
                self.transport.abort()
            else:
                self.transport.close()
