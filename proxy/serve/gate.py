"""Who may ask the query door, and how often (docs/architecture.md, “Connections and limits”).

``ClientNetworks`` is a set of client networks: the query door's ``query_clients``
and the intercept door's ``allow_clients`` are both read with it. ``Gate.admits``
checks a client address against the configured networks (every client when none
are configured); ``Gate.take`` is a token bucket per client address: ``rate``
requests a second, bursts of up to ``burst``. It answers 0 when the request may go
ahead, else the seconds until it may (the door answers 429 with that as
``Retry-After``). Pure and clock-injected, so tests never sleep.

Shared by several appliances (``proxy.shared.rates``), a gate also counts what it let
through per client (``share``, then ``take_counts``) and is told what the others let
through (``deduct``); ``take`` stays local and synchronous either way.

``forwarded_client`` names the client behind a trusted proxy (``trusted_proxies``);
``loopback_health`` and ``rate_limited`` are the door's exemption and its 429.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from proxy.config import default
from proxy.errors import ProtocolError
from proxy.model import Network
from proxy.wire.http import Request, Response, error_response


@dataclass(frozen=True, slots=True)
class ClientNetworks:
    """Client networks (CIDR): the query door's ``query_clients``, the intercept door's
    ``allow_clients``. An IPv4-mapped IPv6 address counts as the IPv4 address it maps."""

    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, cidrs: Iterable[str]) -> ClientNetworks:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self.networks)


class Gate:
    def __init__(
        self,
        networks: Sequence[str] = (),
        *,
        rate: float = 0.0,
        burst: int = default("rate_burst"),
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 65536,
        proxies: Sequence[str] = (),
    ) -> None:
        """``proxies``: ``trusted_proxies``, whose requests name their client (``forwarded``)."""
        self.clients = ClientNetworks.parse(networks)
        self.proxies = ClientNetworks.parse(proxies)
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._max_clients = max_clients
        self._admitted: dict[str, bool] = {}
        self._buckets: dict[str, list[float]] = {}  # client -> [tokens, at]
        self._taken: dict[str, int] | None = None  # client -> requests let through (sharing)

    @property
    def limits_rate(self) -> bool:
        return self.rate > 0

    def admits(self, client: str) -> bool:
        if not self.clients.networks:
            return True
        known = self._admitted.get(client)
        if known is None:
            known = self.clients.allows(client)
            if len(self._admitted) >= self._max_clients:
                self._admitted.clear()
            self._admitted[client] = known
        return known

    def trusts(self, peer: str) -> bool:
        """``peer`` is a trusted proxy: its requests are judged by the client they name."""
        return bool(self.proxies.networks) and self.proxies.allows(peer)

    def take(self, client: str) -> float:
        """0 when ``client`` may make a request now (and it is counted), else seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self._max_clients:
                self._forget_idle(now)
            self._buckets[client] = [self.burst - 1.0, now]
            if self._taken is not None:
                self._taken[client] = self._taken.get(client, 0) + 1
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            if self._taken is not None:
                self._taken[client] = self._taken.get(client, 0) + 1
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    # ------------------------------------------------------------ shared with other appliances

    def share(self) -> None:
        """Count what ``take`` lets through, for ``take_counts``."""
        if self._taken is None:
            self._taken = {}

    def take_counts(self) -> dict[str, int]:
        """Requests let through per client since the last call."""
        if self._taken is None:
            return {}
        taken, self._taken = self._taken, {}
        return taken

    def deduct(self, client: str, n: float) -> None:
        """Take ``n`` requests the other appliances let ``client`` make from its bucket here."""
        if self.rate <= 0 or n <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self._max_clients:
                self._forget_idle(now)
            self._buckets[client] = [max(0.0, self.burst - n), now]
            return
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[0], bucket[1] = max(0.0, tokens - n), now

    def _forget_idle(self, now: float) -> None:
        """Drop clients whose bucket has refilled: they are where a new client would start."""
        full = self.burst / self.rate
        for client in [c for c, (_, at) in self._buckets.items() if now - at >= full]:
            del self._buckets[client]
        if len(self._buckets) >= self._max_clients:  # every client busy: start over
            self._buckets.clear()


def forwarded_client(headers: Sequence[tuple[bytes, bytes]], peer: str) -> str:
    """The client a trusted proxy names: the last address of the last X-Forwarded-For line.

    Only the last one is the proxy's own: anything before it came from the client and may
    be made up. A request without one, or with something that is not an address there,
    stays the proxy's (``peer``), so it is judged no better than the proxy itself.
    """
    value = None
    for name, v in headers:
        if len(name) == 15 and name.lower() == b"x-forwarded-for":
            value = v
    if value is None:
        return peer
    last = value.rsplit(b",", 1)[-1].strip()
    if len(last) > 45:  # the longest IPv6 text
        return peer
    try:
        return str(ipaddress.ip_address(last.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        return peer


def loopback_health(request: Request) -> bool:
    """``GET /healthz`` from this machine: answered whatever ``query_clients`` says, so a local
    health check (systemd, a load balancer's agent, the operator's curl) works under any
    client restriction. It says only that the process is alive."""
    if request.target.split(b"?", 1)[0] != b"/healthz":
        return False
    try:
        ip = ipaddress.ip_address(request.client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def rate_limited(rate: float, wait: float) -> Response:
    """The 429 a client over its rate gets, with the whole seconds to wait as Retry-After."""
    retry = max(1, math.ceil(wait))
    return error_response(ProtocolError(
        "rate_limited", f"over this client's rate of {rate:g} requests/s; retry in {retry} s",
        status=429, headers=(("Retry-After", str(retry)),),
    ))
