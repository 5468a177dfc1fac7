"""The intercept door's share of the process's connection caps (``proxy.serve.conns``).

mitmproxy accepts the connection; ``client_connected`` then takes a place in
the same ``ConnectionCaps`` as the query door's connections, or refuses the
client (``client.error``: mitmproxy closes it at once, before reading a byte).
``client_disconnected`` gives the place back; mitmproxy calls it for refused
clients too.

mitmproxy bounds a connection only by ten minutes of inactivity, which every
byte restarts. So a client must also *begin* within ``head_timeout``: its first
request head (``requestheaders``, ``http_connect``), TLS ClientHello or raw TCP
stream (``tcp_start``) must have arrived by then, or the connection is cut,
counted (reason ``head_timeout``) and logged. Later requests on a kept-alive
connection are bounded by the caps and mitmproxy's own inactivity timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mitmproxy import connection, ctx, http, tcp, tls

from proxy.serve.conns import ConnectionCaps, Slot

logger = logging.getLogger(__name__)

DOOR = "intercept"


class Connections:
    def __init__(self, caps: ConnectionCaps, head_timeout: float) -> None:
        self.caps = caps  # the process's, shared with the query door
        self.head_timeout = head_timeout
        self._slots: dict[str, Slot] = {}  # client id -> its place
        self._due: dict[str, asyncio.TimerHandle] = {}  # client id -> its first-head deadline

    def client_connected(self, client: connection.Client) -> None:
        if client.error:
            return
        address = client_address(client)
        slot = self.caps.admit(address, DOOR)
        if slot is None:
            client.error = f"too many connections from {address}"
            return
        self._slots[client.id] = slot
        loop = asyncio.get_running_loop()
        self._due[client.id] = loop.call_later(self.head_timeout, self._silent, client)

    def client_disconnected(self, client: connection.Client) -> None:
        self._began(client)
        slot = self._slots.pop(client.id, None)
        if slot is not None:
            slot.release()

    # a client has begun: its first head, handshake or stream has arrived

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._began(flow.client_conn)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._began(flow.client_conn)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        self._began(data.context.client)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._began(flow.client_conn)

    def _began(self, client: connection.Client) -> None:
        if self._due:
            timer = self._due.pop(client.id, None)
            if timer is not None:
                timer.cancel()

    def _silent(self, client: connection.Client) -> None:
        self._due.pop(client.id, None)
        address = client_address(client)
        why = f"no request within head_timeout ({self.head_timeout:g} s)"
        self.caps.count(address, DOOR, "head_timeout", f"closing connections that sent {why}")
        _cut(client, why)


def client_address(client: connection.Client) -> str:
    return str(client.peername[0]) if client.peername else "?"


def connection_io(client: connection.Client, conn: connection.Connection) -> Any | None:
    """mitmproxy's I/O of ``conn`` (``client`` itself, or one of its server connections):
    what an addon closes a connection through, as mitmproxy has no hook for that."""
    proxyserver: Any = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver is not None else None
    return handler.transports.get(conn) if handler is not None else None


def _cut(client: connection.Client, reason: str) -> None:
    """End a client's connection the way mitmproxy's own inactivity timeout does."""
    io = connection_io(client, client)
    if io is not None and io.handler is not None:
        io.handler.cancel(reason)
