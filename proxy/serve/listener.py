"""Accepting connections for the query door, within the process's connection caps.

``Listener`` owns a listening socket and does the accepts itself, so that every
connection passes ``proxy.serve.conns.ConnectionCaps`` before the loop reads a byte
or starts a TLS handshake for it; ``proxy.serve.server`` speaks HTTP on what it lets
through.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from proxy.errors import ProtocolError
from proxy.serve.conns import ConnectionCaps, Slot
from proxy.wire.http import error_response

logger = logging.getLogger(__name__)


class Listener:
    """A listening socket whose connections pass ``ConnectionCaps`` before anything is read.

    The loop's own ``create_server`` hands a protocol its peer only after a TLS
    handshake, and cannot refuse a connection before it holds a descriptor for
    as long as the client likes. Here each accepted socket is checked against
    the caps first (a refused one is answered at once and closed), and only then
    given to the loop, with the TLS handshake bounded by ``head_timeout``.
    Running out of descriptors anyway (another part of the process using them)
    pauses accepting for a moment instead of spinning.
    """

    ACCEPTS_PER_WAKEUP = 128
    EMFILE_PAUSE = 0.5

    def __init__(self, sock: socket.socket, factory: Callable[[Slot | None], asyncio.Protocol],
                 *, door: str, caps: ConnectionCaps | None, ssl_context: ssl.SSLContext | None,
                 handshake_timeout: float, refusal: Mapping[bool, bytes] | None = None) -> None:
        """``refusal``: what a refused connection is sent before its close, for a client at its
        own cap (True) or when the total is reached (False); None sends nothing."""
        self.sockets = [sock]
        self.door = door
        self._sock = sock
        self._factory = factory
        self._caps = caps
        self._ssl = ssl_context
        self._handshake_timeout = handshake_timeout
        self._refusal = refusal
        self._loop = asyncio.get_running_loop()
        self._pending: set[asyncio.Task[None]] = set()
        self._closed = False
        self.connections: set[Any] = set()
        """The open connections (``start_server`` fills it): what a drain closes."""
        self._loop.add_reader(sock.fileno(), self._accept)

    def use_ssl_context(self, context: ssl.SSLContext) -> None:
        """Handshake new connections with ``context`` (a CA rotated or imported meanwhile,
        ``certs.follow``); connections already accepted keep the one they began with."""
        self._ssl = context

    def _accept(self) -> None:
        for _ in range(self.ACCEPTS_PER_WAKEUP):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.error("%s door: out of file descriptors (%s); pausing accepts for %g s",
                                 self.door, e.strerror, self.EMFILE_PAUSE)
                    if self._caps is not None:
                        self._caps.refused[(self.door, "no_descriptors")] += 1
                    self._loop.remove_reader(self._sock.fileno())
                    self._loop.call_later(self.EMFILE_PAUSE, self._resume)
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the client went away before we took it
                logger.error("%s door: accept failed: %s", self.door, e)
                return
            self._admit(conn, str(addr[0]) if addr else "?")

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def _admit(self, conn: socket.socket, client: str) -> None:
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # already reset by the client
            conn.close()
            return
        caps = self._caps
        slot = caps.admit(client, self.door) if caps is not None else None
        if caps is not None and slot is None:
            at_own_cap = caps.held_by(client) >= caps.per_client
            _refuse(conn, self._refusal[at_own_cap] if self._refusal is not None else None)
            return
        task = self._loop.create_task(self._connect(conn, slot))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _connect(self, conn: socket.socket, slot: Slot | None) -> None:
        """Hand the socket to the loop, which owns (and closes) it from then on; the slot is
        the protocol's once it exists, and given back here if the connection never is."""
        handed = False
        try:
            if self._ssl is None:
                await self._loop.connect_accepted_socket(lambda: self._factory(slot), conn)
            else:
                await self._loop.connect_accepted_socket(
                    lambda: self._factory(slot), conn, ssl=self._ssl,
                    ssl_handshake_timeout=self._handshake_timeout)
            handed = True
        except OSError as e:  # the TLS handshake failed or timed out, or the client left
            logger.debug("%s door: connection not set up: %s", self.door, e)
        finally:
            if not handed and slot is not None:
                slot.release()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for task in self._pending:
            task.cancel()

    def drain(self) -> None:
        """Stop accepting, and close each open connection once it has answered what it was
        asked (``HttpConnection.drain``): a stopping worker finishes its requests in flight."""
        self.close()
        for conn in list(self.connections):
            conn.drain()

    async def wait_closed(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def _refuse(conn: socket.socket, answer: bytes | None) -> None:
    """Close a connection over the caps, with a one-shot answer when the door speaks plain
    HTTP (TLS would need a handshake, which is what the caps are there to spare)."""
    try:
        if answer is not None:
            conn.send(answer)
    except OSError:
        pass
    finally:
        conn.close()


def listening_socket(host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024
                     ) -> socket.socket:
    """A non-blocking listening TCP socket on ``host`` (empty: every address) and ``port``."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and not host:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def over_caps(client_cap: bool) -> bytes:
    """What a plain-HTTP connection over the connection caps is told before its close."""
    if client_cap:
        error = ProtocolError("too_many_connections",
                              "too many connections from this address; close some and retry",
                              status=429, headers=(("Retry-After", "1"),))
    else:
        error = ProtocolError("too_many_connections",
                              "the server has too many connections; retry shortly",
                              status=503, headers=(("Retry-After", "1"),))
    response = error_response(error)
    return response.head(False) + response.body


# made once: a flood of refused connections costs a send and a close each
PLAIN_REFUSALS = {True: over_caps(True), False: over_caps(False)}
"""What a plain-HTTP connection over the caps is told (client cap: True), for ``Listener``."""
