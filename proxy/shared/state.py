"""Everything one process shares through Redis, opened from its Config (``App`` wires it).

``SharedState.open`` gives None without ``redis`` in the config. Otherwise it opens the
link and puts the shared parts in place: the list store's writes go to Redis first
(``ListStore.share``), the engine asks the shared answer cache before the relay
(``attach``), a rate-limiting gate counts across appliances (``attach``, ``share_gate``),
and ``tasks`` are the loops to run: the bus, the list follower (in the process that owns
the lists: not in a query-door worker) and the rate flushes.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from proxy.config import Config
from proxy.decide.cache import AnswerCache
from proxy.decide.engine import Engine
from proxy.decide.lists import ListStore
from proxy.shared.answers import SharedAnswers
from proxy.shared.bus import Bus
from proxy.shared.link import Link
from proxy.shared.lists import SharedLists
from proxy.shared.rates import GateLike, SharedRates


class SharedState:
    def __init__(self, link: Link, answers: SharedAnswers, lists: SharedLists, follow_lists: bool) -> None:
        self.link = link
        self.answers = answers
        self.lists = lists
        self.follow_lists = follow_lists
        self.rates: list[SharedRates] = []
        self._cache: AnswerCache[Any] | None = None
        self._running = False
        self._late: list[asyncio.Future[None]] = []
        self.bus = Bus(link)
        self.bus.subscribe(answers.channel, answers.on_message)
        if follow_lists:
            self.bus.subscribe(lists.channel, lists.on_message)
        self.bus.on_connect(self._reconnected)

    @classmethod
    def open(cls, cfg: Config, store: ListStore, cache: AnswerCache[Any], *,
             follow_lists: bool = True) -> SharedState | None:
        if not cfg.redis:
            return None
        link = Link(cfg.redis, prefix=cfg.redis_prefix, timeout=cfg.redis_timeout)
        node = secrets.token_hex(8)  # this process, so it ignores its own news
        lists = SharedLists(link, store, node, Path(cfg.data_dir))
        store.share(lists)
        return cls(link, SharedAnswers(link, node, cache.drop), lists, follow_lists)

    def attach(self, engine: Engine, gate: GateLike | None) -> None:
        engine.shared = self.answers
        if gate is not None:
            self.share_gate(gate, "query")
        self._cache = engine.cache

    def share_gate(self, gate: GateLike, scope: str) -> SharedRates | None:
        """Count ``gate``'s per-client rate across appliances under ``scope`` (e.g. ``dns``)."""
        if gate.rate <= 0:
            return None
        rates = SharedRates(self.link, gate, scope)
        self.rates.append(rates)
        if self._running:  # shared after start (a door opened later): its loop starts here
            self._late.append(asyncio.ensure_future(rates.run()))
        return rates

    def tasks(self, lists_changed: Callable[[], Awaitable[None]]) -> list[Coroutine[Any, Any, None]]:
        """The loops to run until stop: call once, after ``attach`` and any ``share_gate``."""
        self.lists.on_change = lists_changed
        self._running = True
        out = [self.bus.run(), *(r.run() for r in self.rates)]
        if self.follow_lists:
            out.append(self.lists.follow())
        return out

    async def _reconnected(self) -> None:
        """Back on the channels after a gap: what was missed may have made local copies stale."""
        if self._cache is not None and self.link.errors:
            self._cache.clear()  # invalidations may have been missed; the shared cache holds them
        if self.follow_lists:
            self.lists.wake()

    def status(self) -> dict[str, Any]:
        """The /readyz ``redis`` section."""
        out = self.link.status()
        out["lists_version"] = self.lists.seen
        return out

    def samples(self) -> dict[str, tuple[str, str, Callable[[], Any]]]:
        """Metric name -> (kind, help, read) for /metrics."""
        return {
            "rampart_redis_up": ("gauge", "1 while the shared Redis answers, else 0",
                                 lambda: 1.0 if self.link.up else 0.0),
            "rampart_redis_errors": ("counter", "Redis calls that failed or timed out, by op",
                                     self.link.error_samples),
            "rampart_redis_cache": (
                "counter", "Shared cloud-answer cache lookups, by result (hit, miss; skipped:"
                " Redis was down)", self.answers.samples),
            "rampart_redis_lists_followed": (
                "counter", "Rules changed here to follow the shared lists", lambda: float(self.lists.synced)),
            "rampart_redis_rate_deducted": (
                "counter", "Requests other appliances let clients make, taken from the buckets here",
                lambda: float(sum(r.deducted for r in self.rates))),
        }

    async def close(self) -> None:
        for task in self._late:
            task.cancel()
        await self.link.close()
