"""Per-client rate limits counted across the appliances sharing a Redis.

``Gate.take`` stays local and synchronous. Every ``INTERVAL`` (0.1 s) each appliance
flushes what its gate let through per client: one pipeline of ``INCRBY`` on
``PREFIX rate:SCOPE:CLIENT`` (with an expiry of twice the time a bucket takes to refill),
for those clients and for the ones that made a request here within that refill time
(``INCRBY 0``, to hear about them; kept here, so a flush costs what the active clients
do, not what every bucket does). The totals say what the others let through since this appliance's last
flush, and that is taken from its buckets (``Gate.deduct``). A client this appliance has
not counted before is charged what the counter holds beyond its own requests, at most a
burst. So across the fleet a client gets about ``rate`` requests a second, plus what the
other appliances let through within one interval before they hear of it. Redis down:
each gate limits alone, as without Redis. ``SCOPE`` keeps the query door's counts
(``query``) apart from another gate's (the DNS door's, ``dns``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from proxy.shared.link import Link, LinkDown

INTERVAL = 0.1  # seconds between flushes
MAX_CLIENTS = 10_000  # per flush
MAX_ACTIVE = 65_536  # clients remembered as active here (a gate keeps as many buckets)


class GateLike(Protocol):
    """What of ``proxy.serve.gate.Gate`` this uses (this package does not import proxy.serve)."""

    rate: float
    burst: int

    def share(self) -> None: ...
    def take_counts(self) -> dict[str, int]: ...
    def deduct(self, client: str, n: float) -> None: ...


class SharedRates:
    def __init__(self, link: Link, gate: GateLike, scope: str = "query",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.link = link
        self.gate = gate
        self.scope = scope
        self._clock = clock
        self._last: dict[str, tuple[int, float]] = {}  # client -> (total seen, when)
        self._active: dict[str, float] = {}  # client -> when it last made a request here
        self.refill = gate.burst / gate.rate if gate.rate > 0 else 1.0
        self.ttl = max(1, math.ceil(2 * self.refill))
        self.deducted = 0.0  # requests the others made, taken from the buckets here
        gate.share()

    def _key(self, client: str) -> str:
        return f"{self.link.prefix}rate:{self.scope}:{client}"

    async def run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            await self.flush()

    async def flush(self) -> None:
        counts = self.gate.take_counts()
        clients = self._clients(counts)
        if not clients or not self.link.usable():
            return
        ttl = self.ttl

        async def call(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for c in clients:
                pipe.incrby(self._key(c), counts.get(c, 0))
                pipe.expire(self._key(c), ttl)
            return list(await pipe.execute())

        try:
            results = await self.link.run("rates", call)
        except LinkDown:
            return  # these counts stay local: each gate limits alone meanwhile
        self._learn(clients, counts, results[::2])

    def _clients(self, counts: dict[str, int]) -> list[str]:
        """Who to flush: those counted now, then those active here within the refill time."""
        now, active = self._clock(), self._active
        if len(active) + len(counts) > MAX_ACTIVE:  # a flood of sources (UDP): start over
            active.clear()
        for client in counts:
            active[client] = now
        for client in [c for c, at in active.items() if now - at > self.refill]:
            del active[client]
        clients = list(counts)[:MAX_CLIENTS]
        if len(clients) < MAX_CLIENTS:
            clients += [c for c in active if c not in counts][:MAX_CLIENTS - len(clients)]
        return clients

    def _learn(self, clients: list[str], counts: dict[str, int], totals: list[Any]) -> None:
        now, forget = self._clock(), self.ttl
        for client, total in zip(clients, totals):
            if not isinstance(total, int):
                continue
            mine = counts.get(client, 0)
            last = self._last.get(client)
            if last is None or now - last[1] > forget or total < last[0] + mine:
                others = min(total - mine, self.gate.burst) if last is None else 0
            else:
                others = total - last[0] - mine
            self._last[client] = (total, now)
            if others > 0:
                self.gate.deduct(client, others)
                self.deducted += others
        if len(self._last) > 4 * MAX_CLIENTS:
            self._last = {c: v for c, v in self._last.items() if now - v[1] <= forget}
