"""One process's link to the Redis the appliances share: connections, bounds, up/down.

Every command goes through ``Link.run`` (asyncio, the request path and the followers) or
``Link.run_sync`` (list writes, from the CLI and the console's threads). Each is bounded:
``redis_timeout`` for the asyncio side, ``max(redis_timeout, WRITE_TIMEOUT)`` for a list
write, which may carry an import of many rules in one MULTI/EXEC. A failure marks the link
down with the error and since when; while it is down, calls fail at once (``LinkDown``)
without touching the network, so the appliance answers from its own state, until the
next try, which comes after an exponential, jittered backoff capped at ``MAX_BACKOFF``.
The first call after that is the probe: it succeeds (up again) or doubles the wait.

The URL may hold a password: only ``where`` (host:port/db, or the socket path) is ever
logged or shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from proxy.clock import utcnow
from proxy.errors import RampartError

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BACKOFF = 5.0  # seconds between tries at most while Redis is down
FIRST_BACKOFF = 0.1
WRITE_TIMEOUT = 5.0  # a list write (one MULTI/EXEC, maybe a large import) may take this long
MAX_CONNECTIONS = 64  # per process, asyncio side


class LinkDown(RampartError):
    """Redis could not be used for this call (down, slow, or refusing); answer locally."""

    status = 503
    code = "redis_unavailable"


def where_of(url: str) -> str:
    """``host:port/db`` (or the socket path) of a Redis URL: never its password."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path or "?"
        db = parts.path.strip("/") or "0"
        return f"{parts.hostname or '?'}:{parts.port or 6379}/{db}"
    except ValueError:
        return "?"


def _describe(e: BaseException) -> str:
    """The error in words, bounded, without the URL (redis-py errors name host and port only)."""
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    text = str(e) or type(e).__name__
    return text[:200]


class Link:
    """The process's Redis: an asyncio client, a sync one for list writes, and their state."""

    def __init__(self, url: str, *, prefix: str = "rampart:", timeout: float = 0.25,
                 clock: Callable[[], float] = time.monotonic, serving: bool = True) -> None:
        """``serving``: a server, which says in its log when Redis goes away and comes back (a
        command such as ``rampart lists add`` says so in its own error instead)."""
        self.url = url
        self.serving = serving
        self.where = where_of(url)
        self.prefix = prefix
        self.timeout = timeout
        self.write_timeout = max(timeout, WRITE_TIMEOUT)
        self._clock = clock
        self.aio: aredis.Redis = aredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=AsyncRetry(NoBackoff(), 0), max_connections=MAX_CONNECTIONS,
        )
        self._sync: redis.Redis | None = None
        self._bulk: aredis.Redis | None = None
        self.up: bool | None = None  # None: not tried yet
        self.last_error = ""
        self.since = utcnow()  # when ``up`` last changed
        self._failures = 0
        self._next_try = 0.0
        self.errors: Counter[str] = Counter()  # op -> failed calls (rampart_redis_errors_total)
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def sync(self) -> redis.Redis:
        """The blocking client (made on first use: a CLI that only reads never connects)."""
        if self._sync is None:
            self._sync = redis.Redis.from_url(
                self.url, socket_timeout=self.write_timeout, socket_connect_timeout=self.timeout * 4,
                retry=Retry(NoBackoff(), 0),
            )
        return self._sync

    @property
    def bulk(self) -> aredis.Redis:
        """An asyncio client for large reads (the whole shared lists): its socket may wait
        the write bound, where the request path's gives up after ``redis_timeout``."""
        if self._bulk is None:
            self._bulk = aredis.Redis.from_url(
                self.url, socket_timeout=self.write_timeout, socket_connect_timeout=self.timeout * 4,
                retry=AsyncRetry(NoBackoff(), 0), max_connections=4,
            )
        return self._bulk

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(up)`` whenever the link goes up or down (e.g. to catch up)."""
        self._listeners.append(listener)

    # ------------------------------------------------------------ state

    def usable(self) -> bool:
        """Whether a call may try the network now (up, or the backoff has run out)."""
        return self.up is not False or self._clock() >= self._next_try

    def _ok(self) -> None:
        self._failures = 0
        if self.up is not True:
            was = self.up
            self.up, self.since, self.last_error = True, utcnow(), ""
            if was is False:
                logger.warning("Redis at %s is reachable again", self.where)
            self._tell(True)

    def failed(self, op: str, e: BaseException) -> None:
        """Count a failed call and wait before the next try (jittered exponential backoff)."""
        self.errors[op] += 1
        self._failures += 1
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(self._failures - 1, 16))
        self._next_try = self._clock() + delay * random.uniform(0.5, 1.0)
        self.last_error = _describe(e)
        if self.up is not False:
            self.up, self.since = False, utcnow()
            if self.serving:
                logger.warning("Redis at %s is unreachable (%s); answering from local state",
                               self.where, self.last_error)
            self._tell(False)

    def _tell(self, up: bool) -> None:
        for listener in self._listeners:
            try:
                listener(up)
            except Exception:
                logger.exception("a Redis state listener failed")

    def down_error(self) -> LinkDown:
        return LinkDown(f"Redis at {self.where}: {self.last_error or 'not reachable'}")

    # ------------------------------------------------------------ calls

    async def run(self, op: str, call: Callable[[aredis.Redis], Awaitable[T]],
                  timeout: float | None = None) -> T:
        """``call(client)`` within ``redis_timeout``; LinkDown on any failure or while down.
        A longer ``timeout`` (a bulk read) runs on the ``bulk`` client."""
        if not self.usable():
            raise self.down_error()
        client = self.aio if timeout is None or timeout <= self.timeout else self.bulk
        try:
            result = await asyncio.wait_for(call(client), timeout or self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.failed(op, e)
            raise self.down_error() from None
        self._ok()
        return result

    def run_sync(self, op: str, call: Callable[[redis.Redis], T]) -> T:
        """``call(sync client)`` within the write bound; LinkDown on any failure. A write is
        tried even while the link is down: the administrator is told what Redis says now."""
        try:
            result = call(self.sync)
        except Exception as e:
            self.failed(op, e)
            raise self.down_error() from None
        self._ok()
        return result

    async def ping(self) -> bool:
        try:
            await self.run("ping", lambda r: r.ping())
        except LinkDown:
            return False
        return True

    async def wait_usable(self) -> None:
        """Sleep until the backoff lets the next try happen (at once when up)."""
        while not self.usable():
            await asyncio.sleep(max(0.01, self._next_try - self._clock()))

    # ------------------------------------------------------------ reports

    def status(self) -> dict[str, Any]:
        """The /readyz ``redis`` section: where (no password), up/down, the last error, since."""
        state = "up" if self.up else "down" if self.up is False else "connecting"
        out: dict[str, Any] = {"url": self.where, "state": state, "since": self.since.isoformat()}
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    def error_samples(self) -> list[tuple[dict[str, str], float]]:
        return [({"op": op}, float(n)) for op, n in sorted(self.errors.items())]

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection: nothing to tell
            await self.aio.aclose()
            if self._bulk is not None:
                await self._bulk.aclose()
        self.close_sync()

    def close_sync(self) -> None:
        if self._sync is not None:
            with contextlib.suppress(Exception):
                self._sync.close()
            self._sync = None


def run_later(coro: Awaitable[Any], tasks: set[asyncio.Task[Any]]) -> None:
    """Start ``coro`` as a task the caller does not await, kept alive until it ends."""
    task = asyncio.ensure_future(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
