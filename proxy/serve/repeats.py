"""What a repeated query-door answer counts, gathered per event-loop turn.

The server answers a request repeated byte for byte without parsing it
(``proxy.serve.server.HttpConnection._again_answered``); what the plain path would have
done for it besides the write (the routes' memo hit counting items, ``App._observe``
counting the request and its latency, the observers: the query log, a capture) is
``Repeats.again``'s. Per request that is one addition: the answers sent again for one
(answer, client) are added up, on every connection alike, and applied once per loop
turn (``loop.call_soon``), with every metric key worked out once. A product asking the
same thing over 64 connections costs one application per turn, not 64.

So the metrics and the logs see a repeated answer a loop turn after it was sent, never
later: the turn it is written in ends, then ``flush`` runs before any other callback of
the next turn (``App.stop`` flushes too). The counts are the plain path's exactly
(tests/proxy/serve/test_server_repeat.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from proxy.serve.metrics import Stats, item_key
from proxy.wire.http import Again, Request, Response

Observer = Callable[[Request, Response, float], None]
MEMO = 4096  # (answer, client) pairs kept


class Repeats:
    """The ``Again`` of each repeated (answer, client), and the counts pending."""

    def __init__(self, stats: Stats, observers: list[Observer],
                 counted: Callable[[], Callable[..., None] | None]) -> None:
        """``counted()``: the observer among ``observers`` that takes a ``count`` of
        identical answers in one call (the query log's ``LogWriter.observe``), if any;
        every other observer is called once per answer."""
        self.stats = stats
        self.observers = observers
        self.counted = counted
        self._kept: dict[tuple[int, str], tuple[Response, _Repeated]] = {}
        self._pending: list[_Repeated] = []

    def again(self, request: Request, response: Response, holds: Callable[[], bool],
              service: Any, sources: Mapping[Any, int], label: str) -> Again:
        """The ``Again`` of ``response`` to ``request``'s client (shared by every connection
        of that client asking for it); ``label``: its route's metric label."""
        key = (id(response), request.client)
        kept = self._kept.get(key)
        if kept is not None and kept[0] is response:
            return kept[1].holds, kept[1].answered
        repeated = _Repeated(self, request, response, holds,
                             [(item_key(service, source), n) for source, n in sources.items()],
                             (label, response.status))
        if len(self._kept) >= MEMO:
            self._kept.clear()
        self._kept[key] = (response, repeated)
        return repeated.holds, repeated.answered

    def _due(self, repeated: _Repeated) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(repeated)

    def flush(self) -> None:
        """Apply every count pending (the next loop turn does it; ``App.stop`` too)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        stats, counted = self.stats, self.counted()
        items, requests, latency = stats.items, stats.requests, stats.request_latency
        for repeated in pending:
            n, repeated.pending = repeated.pending, 0
            for key, k in repeated.counts:
                items[key] += k * n
            requests[repeated.request_key] += n
            latency.counts[0] += n  # n observations of 0 s (nothing was made): the first bucket
            latency.count += n
            request, response = repeated.request, repeated.response
            for observer in self.observers:
                if counted is not None and observer == counted:
                    counted(request, response, 0.0, n)
                else:
                    for _ in range(n):
                        observer(request, response, 0.0)


class _Repeated:
    """One (answer, client): its check, its metric keys and the answers not yet counted."""

    __slots__ = ("counts", "holds", "owner", "pending", "request", "request_key", "response")

    def __init__(self, owner: Repeats, request: Request, response: Response,
                 holds: Callable[[], bool], counts: list[tuple[tuple[str, str], int]],
                 request_key: tuple[str, int]) -> None:
        self.owner = owner
        self.request = request
        self.response = response
        self.holds = holds
        self.counts = counts
        self.request_key = request_key
        self.pending = 0

    def answered(self) -> None:
        """One more answer sent: counted at the end of this loop turn."""
        self.pending += 1
        if self.pending == 1:
            self.owner._due(self)
