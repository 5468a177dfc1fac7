"""How much of a client's address the query log keeps: ``log_clients`` for every client,
``log_client_networks`` for some.

Modes: ``full`` (the address), ``truncated`` (its IPv4 /24 or IPv6 /48 network,
``192.0.2.0/24``: enough to find a site's traffic, not a person) and ``none`` (nothing).
``log_client_networks`` entries are ``NETWORK=MODE`` (``10.20.0.0/16=none``: that
network's clients are never stored); the most specific network holding the client
decides, ``log_clients`` otherwise. An address that does not parse is kept only under
``full``.

``ClientMask`` runs in the log writer's thread for every row, so a client's stored form
is remembered (bounded); with no per-network entries ``full`` and ``none`` need no
lookup at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from proxy.config import LOG_CLIENTS, network_modes
from proxy.logs.store import clip
from proxy.wire.ip_hosts import peer_address

MEMO = 4096  # clients remembered; a larger set starts again (a memo, not a cache to tune)


class ClientMask:
    def __init__(self, mode: str, networks: Iterable[str] = ()) -> None:
        if mode not in LOG_CLIENTS:
            raise ValueError(f"log_clients must be one of {', '.join(LOG_CLIENTS)}, not {mode!r}")
        self.mode = mode
        # most specific first: the first network holding a client decides
        self.networks = sorted(network_modes(networks), key=lambda nm: -nm[0].prefixlen)
        self._memo: dict[str, str] = {}

    def mode_for(self, client: str) -> str:
        """The mode ``client``'s address is stored under."""
        if self.networks:
            ip = peer_address(client)
            if ip is not None:
                for network, mode in self.networks:
                    if ip.version == network.version and ip in network:
                        return mode
        return self.mode

    def __call__(self, client: str) -> str:
        if not self.networks:
            if self.mode == "full":
                return clip(client, 100)
            if self.mode == "none":
                return ""
        found = self._memo.get(client)
        if found is None:
            mode = self.mode_for(client)
            found = clip(client, 100) if mode == "full" else "" if mode == "none" else truncate(client)
            if len(self._memo) >= MEMO:
                self._memo.clear()
            self._memo[client] = found
        return found


def truncate(client: str) -> str:
    """``client``'s IPv4 /24 or IPv6 /48 network ("" for an address that does not parse)."""
    ip = peer_address(client)
    if ip is None:
        return ""
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
