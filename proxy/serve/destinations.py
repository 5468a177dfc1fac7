"""Where the intercept door may connect: never back into the appliance itself.

A product allowed to use the intercept door must not reach the appliance's own
services through it: the capture stream (loopback only, so it trusts loopback),
the query door (whose ``query_clients`` would see the appliance as the client),
or any other local server. Products talk to the cloud, never to this machine.
So a destination is refused when an address it reaches is

- loopback, link-local, unspecified (``0.0.0.0/8``, ``::``), multicast or broadcast;
- an address of this machine (any interface, the listen address);

unless an administrator allows it (``intercept_allow_destinations``: a host
name, an address or a network, each with an optional port). The configured
cloud endpoints are allowed as they are named (host and port): the appliance
connects to them itself. The appliance's own ports (its doors, the capture
port) stay refused on its own addresses unless an entry names the port: a
network entry opens local test servers, not the appliance's doors.

Addresses are read the way the resolver reads them (``2130706433``, ``0x7f.1``,
``::ffff:127.0.0.1``, ``[::1]``); a name is resolved as the connect will
resolve it, and one refused address among its answers refuses it. What is
checked before the connect only gives a clear answer early: the caller checks
the peer it actually reached too (a name may resolve differently at connect).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from proxy.config import PORT_KEYS, Config
from proxy.model import Address, Allowed, literal

_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host on this network": reaches us
_BROADCAST = ipaddress.ip_address("255.255.255.255")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d, never a real peer
_DEFAULT_PORTS = {"http": 80, "https": 443}
RESOLVED_TTL = 5.0  # seconds a name's verdict is kept (the peer connected to is checked anyway)


def this_machine(ip: Address) -> bool:
    """Whether ``ip`` is an address of this machine: binding to it succeeds only then.

    Asked at each check, so an address added after start (DHCP, a new
    interface) counts at once; a list read at start would miss it.
    """
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((str(ip), 0))
    except OSError:
        return False
    return True


async def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to, by the resolver asyncio's connect uses."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ip for ip in (literal(str(info[4][0])) for info in infos) if ip is not None]


def special(ip: Address) -> str | None:
    """Why ``ip`` is never a destination for products (loopback, …), or None."""
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK):
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast or ip == _BROADCAST:
        return "multicast or broadcast"
    if ip.version == 6 and ip in _IPV4_COMPATIBLE:
        return "an IPv4-compatible IPv6 address"
    return None


def cloud_endpoints(urls: Iterable[str]) -> list[Allowed]:
    """The configured cloud endpoints as allowed destinations, exactly as they are named."""
    out = []
    for url in urls:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 443)
        if parts.hostname:
            out.append(Allowed.parse(f"[{parts.hostname}]:{port}" if ":" in parts.hostname
                                     else f"{parts.hostname}:{port}"))
    return out


class Destinations:
    """The rule: ``refusal`` says why a destination is refused, None when it may be reached."""

    def __init__(self, allowed: Iterable[Allowed], own_ports: Iterable[int], listen: str = "",
                 is_local: Callable[[Address], bool] = this_machine) -> None:
        self.allowed = tuple(allowed)
        self.own_ports = frozenset(p for p in own_ports if p)
        self.listen = literal(listen) if listen else None
        self.is_local = is_local
        self.lookup: Callable[[str, int], Awaitable[list[Address]]] = resolve
        self._resolved: dict[tuple[str, int], tuple[float, str | None]] = {}
        self._local: dict[Address, tuple[float, bool]] = {}  # ip -> (until, is_local)

    @classmethod
    def from_config(cls, cfg: Config) -> Destinations:
        allowed = [Allowed.parse(e) for e in cfg.intercept_allow_destinations]
        ports = [getattr(cfg, key) for key in PORT_KEYS]  # the appliance's own
        return cls(allowed + cloud_endpoints(cfg.cloud), ports, cfg.listen)

    def named(self, host: str, port: int) -> bool:
        """Allowed by name (an entry or a cloud endpoint): not checked further, even resolved."""
        h = host.lower().rstrip(".")
        return any(a.names(h, port) for a in self.allowed)

    def refusal(self, host: str, port: int, addresses: Iterable[Address]) -> str | None:
        """Why ``host:port`` is refused given the addresses it reaches, or None."""
        if self.named(host, port):
            return None
        for ip in addresses:
            why = self._why(ip, port)
            if why is not None:
                shown = str(ip) if str(ip) == host.strip("[]") else f"{host} ({ip})"
                return f"{shown} is {why}"
        return None

    def check(self, host: str, port: int) -> str | Awaitable[str | None] | None:
        """``refusal`` for a destination as a client names it; an awaitable when a name is to be
        resolved first, as the connect will (the verdict is kept for RESOLVED_TTL seconds)."""
        if self.named(host, port):
            return None
        ip = literal(host)
        if ip is not None:
            return self.refusal(host, port, (ip,))
        memo = self._resolved.get((host, port))
        if memo is not None and memo[0] > time.monotonic():
            return memo[1]
        return self._resolve(host, port)

    async def _resolve(self, host: str, port: int) -> str | None:
        try:
            ips = await self.lookup(host, port)
        except (OSError, UnicodeError):
            return None  # the connect fails the same way, and says so
        why = self.refusal(host, port, ips)
        if len(self._resolved) >= 4096:
            self._resolved.clear()
        self._resolved[(host, port)] = (time.monotonic() + RESOLVED_TTL, why)
        return why

    def _is_local(self, ip: Address) -> bool:
        """``is_local``, kept RESOLVED_TTL seconds: a flow asks it up to three times (request,
        connect, connected), and a bind is a syscall pair each."""
        now = time.monotonic()
        memo = self._local.get(ip)
        if memo is not None and memo[0] > now:
            return memo[1]
        local = self.is_local(ip)
        if len(self._local) >= 4096:
            self._local.clear()
        self._local[ip] = (now + RESOLVED_TTL, local)
        return local

    def _why(self, ip: Address, port: int) -> str | None:
        why = special(ip)
        ours = why == "loopback" or why == "unspecified"
        if why is None and (ip == self.listen or self._is_local(ip)):
            why, ours = "an address of this appliance", True
        if why is None:
            return None
        own_port = ours and port in self.own_ports
        if any(a.covers(ip, port, own_port=own_port) for a in self.allowed):
            return None
        return f"{why} and {port} is one of the appliance's ports" if own_port else why
