"""The cloud-answer cache the appliances share (docs/architecture.md, "Workers and shared state").

The engine's own ``AnswerCache`` stays in front; this is asked only for what it missed, just
before the relay would be (``Engine.relay_fill`` through ``proxy.decide.engine.SharedCache``).
A cloud result (the JSON ``Relay.ask_many`` returned) is kept under
``PREFIX answer:SERVICE:KEY`` for the TTL the cloud gave (SET PX), as ``EXPIRES\nJSON``
(EXPIRES: epoch milliseconds, so one MGET tells the TTL left without a PTTL per key;
appliances' clocks are assumed NTP-close, and the TTL left never exceeds what Redis
holds it for), and each batch of new
answers is published on ``PREFIX answers`` so the other appliances drop those keys from
their local caches (a newer answer then comes from Redis). Reads are one MGET within
``redis_timeout``, and the asks of every request that arrive in the same turn of the
loop go out as one MGET (a door with many connections
pays one round trip for all of them); writes are not awaited by the request.
Redis down, slow or holding something unreadable is a miss, never a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from proxy.model import Service
from proxy.shared.link import Link, LinkDown, run_later

logger = logging.getLogger(__name__)

MAX_VALUE = 64 * 1024  # bytes of one stored result; a larger value is not one of ours
MAX_TTL = 86_400  # seconds, as the local cache


class SharedAnswers:
    """``SharedCache`` over a Link; ``drop`` is the local cache's, called on others' news."""

    def __init__(self, link: Link, node: str, drop: Callable[[str], None]) -> None:
        self.link = link
        self.node = node  # this process's id, so it ignores its own invalidations
        self.channel = link.key("answers")
        self._drop = drop
        self.hits = 0
        self.misses = 0
        self.skipped = 0  # keys not asked because Redis was down
        self._tasks: set[Any] = set()
        self._waiting: list[tuple[list[str], asyncio.Future[list[Any] | None]]] = []

    def _key(self, service: Service, key: str) -> str:
        return f"{self.link.prefix}answer:{service.value}:{key}"

    async def get_many(
        self, service: Service, keys: Sequence[str]
    ) -> list[tuple[dict[str, Any], int] | None]:
        """Each key's stored cloud result and its whole seconds left, or None (a miss)."""
        if not keys:
            return []
        if not self.link.usable():
            self.skipped += len(keys)
            return [None] * len(keys)
        names = [self._key(service, k) for k in keys]
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[list[Any] | None] = loop.create_future()
        self._waiting.append((names, reply))
        if len(self._waiting) == 1:  # the first ask of this turn sends them all, next turn
            loop.call_soon(self._send)
        raw = await reply
        if raw is None:
            self.skipped += len(keys)
            return [None] * len(keys)
        now = time.time()
        out = [_read(value, now) for value in raw]
        found = sum(1 for o in out if o is not None)
        self.hits += found
        self.misses += len(keys) - found
        return out

    def _send(self) -> None:
        waiting, self._waiting = self._waiting, []
        run_later(self._fetch(waiting), self._tasks)

    async def _fetch(self, waiting: list[tuple[list[str], asyncio.Future[list[Any] | None]]]) -> None:
        """One MGET for every ask waiting; each gets its slice (None: Redis failed)."""
        names = [n for ns, _ in waiting for n in ns]

        async def call(r: Any) -> list[Any]:
            return list(await r.mget(names))

        raw: list[Any] | None = None
        try:
            raw = await self.link.run("answers_get", call)
        except LinkDown:
            pass
        finally:
            at = 0
            for ns, reply in waiting:
                if not reply.done():
                    reply.set_result(None if raw is None else raw[at:at + len(ns)])
                at += len(ns)

    def put_many(self, service: Service, items: Sequence[tuple[str, dict[str, Any], float]]) -> None:
        """Store cloud results with their TTLs and tell the others; not awaited by the caller."""
        if items and self.link.usable():
            run_later(self._put(service, list(items)), self._tasks)

    async def _put(self, service: Service, items: list[tuple[str, dict[str, Any], float]]) -> None:
        kept = []
        now = int(time.time() * 1000)
        for key, result, ttl in items:
            try:
                body = json.dumps(result, separators=(",", ":")).encode()
            except (TypeError, ValueError):  # not JSON: kept locally only
                continue
            px = int(min(ttl, MAX_TTL) * 1000)
            if len(body) <= MAX_VALUE and px > 0:
                kept.append((self._key(service, key), b"%d\n%s" % (now + px, body), px, key))
        if not kept:
            return
        news = "\n".join([self.node, *(k for *_, k in kept)]).encode()

        async def call(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for name, value, px, _ in kept:
                pipe.set(name, value, px=px)
            pipe.publish(self.channel, news)
            await pipe.execute()

        with contextlib.suppress(LinkDown):  # the answer was served; others ask the cloud
            await self.link.run("answers_put", call)

    def on_message(self, data: bytes) -> None:
        """Another appliance stored these keys: drop them here, the next ask reads Redis."""
        node, _, rest = data.decode("utf-8", "replace").partition("\n")
        if node == self.node or not rest:
            return
        for key in rest.split("\n"):
            self._drop(key)

    def samples(self) -> list[tuple[dict[str, str], float]]:
        return [({"result": "hit"}, float(self.hits)), ({"result": "miss"}, float(self.misses)),
                ({"result": "skipped"}, float(self.skipped))]


def _read(value: Any, now: float) -> tuple[dict[str, Any], int] | None:
    """A stored result and its whole seconds left, or None for a miss or anything not ours."""
    if not isinstance(value, bytes) or len(value) > MAX_VALUE + 24:
        return None
    expires, _, body = value.partition(b"\n")
    try:
        left = int(expires) / 1000 - now
        result = json.loads(body)
    except ValueError:
        return None
    if not isinstance(result, dict) or left <= 0:
        return None
    return result, max(1, int(min(left, MAX_TTL)))
