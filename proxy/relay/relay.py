"""The relay: asks the cloud what the appliance cannot answer itself (docs/architecture.md, “The relay”).

Concurrent unknown items of one service are gathered for ``batch_window``
seconds into one upstream request of at most ``max_batch`` items; identical
items in flight (same service and key) are asked once and every waiter gets the
same answer. The cloud answers one result per item in request order, so results
are matched back by position.

Endpoints are tried in priority order within one total deadline. Each has a
circuit breaker: ``breaker_failures`` consecutive failures open it, it is
skipped while open, after ``breaker_cooldown`` seconds one trial request is let
through (half-open), and a success closes it. When no endpoint gives a usable
answer every waiter gets ``RelayUnavailable`` (a ``RelayError``), which the
engine turns into ``degraded`` results.

I/O goes through the ``Transport`` protocol (``proxy.relay.upstream``; default: the pooled, verifying
``HttpClient``) and time through ``clock``, so tests inject both. Logs name
endpoints, services and item counts, never item contents.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from proxy.config import default
from proxy.errors import ConfigError, RelayError, RelayUnavailable
from proxy.model import Service
from proxy.relay.breaker import Endpoint
from proxy.relay.http_client import parse_origin
from proxy.relay.upstream import (
    HEADERS,
    HttpTransport,
    JsonObject,
    RelayObserver,
    Transport,
    check_answer,
    default_client,
    encode,
    render_request,
)
from proxy.wire import paths

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- batching


@dataclass(frozen=True, slots=True)
class _Failure:
    message: str
    retry_after: float


_Outcome = JsonObject | _Failure


@dataclass(slots=True, eq=False)
class _Batch:
    service: Service
    keys: list[str] = field(default_factory=list)
    items: list[bytes] = field(default_factory=list)  # each item's JSON encoding
    futures: list[asyncio.Future[_Outcome]] = field(default_factory=list)
    timer: asyncio.Handle | None = None


class Relay:
    """Relays unanswered items to the cloud endpoints, batched and de-duplicated.

    endpoints: base URLs in priority order, e.g. ``https://cloud.example:9443``.
    transport: the upstream I/O (default: HttpClient verifying TLS against ca_file,
        or the system bundle when ca_file is None).
    connect_timeout, read_timeout: per connection and per read (default transport).
    total_timeout: seconds from flushing a batch to giving up on every endpoint.
    batch_window: seconds to gather concurrent items before asking (0: same loop turn).
    max_batch: most items in one upstream request; a full batch is sent at once.
    max_concurrent: upstream requests in flight at once.
    breaker_failures: consecutive failures that open an endpoint's circuit.
    breaker_cooldown: seconds an open circuit waits before one trial request.
    clock: monotonic clock for deadlines and breakers.
    observer: told about every upstream attempt.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        transport: Transport | None = None,
        ca_file: str | None = None,
        connect_timeout: float = default("connect_timeout"),
        read_timeout: float = default("read_timeout"),
        total_timeout: float = default("total_timeout"),
        batch_window: float = default("batch_window"),
        max_batch: int = default("max_batch"),
        max_concurrent: int = default("max_relay_concurrency"),
        breaker_failures: int = default("breaker_failures"),
        breaker_cooldown: float = default("breaker_cooldown"),
        clock: Callable[[], float] = time.monotonic,
        observer: RelayObserver | None = None,
    ) -> None:
        if not endpoints:
            raise ConfigError("relay: at least one cloud endpoint is needed")
        _require(total_timeout > 0, "total_timeout must be positive")
        _require(batch_window >= 0, "batch_window must not be negative")
        _require(max_batch >= 1, "max_batch must be at least 1")
        _require(max_concurrent >= 1, "max_concurrent must be at least 1")
        _require(breaker_failures >= 1, "breaker_failures must be at least 1")
        _require(breaker_cooldown >= 0, "breaker_cooldown must not be negative")
        self._endpoints = _endpoints(endpoints, breaker_failures, breaker_cooldown)
        self._owned_transport: HttpTransport | None = None
        if transport is None:
            transport = self._owned_transport = HttpTransport(default_client(
                ca_file, max_concurrent, connect_timeout, read_timeout, clock))
        self._transport: Transport = transport
        self._total_timeout = total_timeout
        self._batch_window = batch_window
        self._running: dict[Service, int] = {}  # upstream requests in flight, per service
        self._max_batch = max_batch
        self._clock = clock
        self._observer = observer
        self._slots = asyncio.Semaphore(max_concurrent)
        self._pending: dict[Service, _Batch] = {}
        self._inflight: dict[tuple[Service, str], asyncio.Future[_Outcome]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -------------------------------------------------------- public API

    async def ask(self, service: Service, key: str, item: object) -> JsonObject:
        """The cloud's result object for one item; raises RelayError when none is usable.

        ``key`` identifies identical items (``sha256:<hex>``, a canonical URL, a
        request digest). ``item`` is the JSON value sent upstream; for INSPECT it is
        the whole request object, or its JSON encoding as bytes, sent as the body.
        """
        return _unwrap(await asyncio.shield(self._enqueue(service, key, item)))

    async def ask_many(
        self, service: Service, pairs: Sequence[tuple[str, object]]
    ) -> list[JsonObject | RelayError]:
        """Ask for many items at once; per-item results or errors, in order."""
        futures = [self._enqueue(service, key, item) for key, item in pairs]
        out: list[JsonObject | RelayError] = []
        for future in futures:
            try:
                out.append(_unwrap(await asyncio.shield(future)))
            except RelayError as err:
                out.append(err)
        return out

    def status(self) -> list[dict[str, object]]:
        """Per-endpoint health, for /readyz (and the planned console)."""
        now = self._clock()
        return [
            {
                "url": e.url,
                "priority": e.priority,
                "state": e.reported_state(now).value,
                "consecutive_failures": e.consecutive_failures,
                "last_error": e.last_error,
                "requests": e.requests,
                "failures": e.failures,
                "retry_in": round(e.wait_time(now), 3),
            }
            for e in self._endpoints
        ]

    @property
    def available(self) -> bool:
        """True when at least one endpoint would take a request now."""
        now = self._clock()
        return any(e.wait_time(now) == 0.0 for e in self._endpoints)

    async def close(self) -> None:
        """Fail everything pending, stop upstream requests, close the default transport."""
        self._closed = True
        for batch in self._pending.values():
            if batch.timer is not None:
                batch.timer.cancel()
            _settle(batch.futures, _Failure("relay is closed", 0.0))
        self._pending.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owned_transport is not None:
            await self._owned_transport.close()

    # -------------------------------------------------------- gathering

    def _enqueue(self, service: Service, key: str, item: object) -> asyncio.Future[_Outcome]:
        if self._closed:
            raise RelayError("relay is closed")
        future = self._inflight.get((service, key))
        if future is not None:
            return future
        encoded = encode(item)  # a value that is not JSON fails its caller, not the batch
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._inflight[(service, key)] = future
        if not paths.relayed(service).items:  # INSPECT: one request per item
            self._launch(_Batch(service, [key], [encoded], [future]))
            return future
        batch = self._pending.get(service)
        if batch is None:
            batch = self._pending[service] = _Batch(service)
            if self._batch_window > 0 and self._running.get(service):
                # Upstream is busy with this service: gather for a while.
                batch.timer = loop.call_later(self._batch_window, self._flush, batch)
            else:
                # Nothing in flight: ask now (still gathering what this loop turn brings).
                batch.timer = loop.call_soon(self._flush, batch)
        batch.keys.append(key)
        batch.items.append(encoded)
        batch.futures.append(future)
        if len(batch.keys) >= self._max_batch:
            self._flush(batch)
        return future

    def _flush(self, batch: _Batch) -> None:
        if self._pending.get(batch.service) is not batch:
            return  # already flushed (full) or the relay closed
        del self._pending[batch.service]
        if batch.timer is not None:
            batch.timer.cancel()
        self._launch(batch)

    def _launch(self, batch: _Batch) -> None:
        service = batch.service
        self._running[service] = self._running.get(service, 0) + 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._running[service] -= 1

        task.add_done_callback(done)

    async def _run(self, batch: _Batch) -> None:
        deadline = self._clock() + self._total_timeout
        try:
            results = await self._ask_upstream(batch.service, batch.items, deadline)
        except RelayUnavailable as err:
            _settle(batch.futures, _Failure(err.message, err.retry_after))
        except asyncio.CancelledError:
            _settle(batch.futures, _Failure("relay is closed", 0.0))
            raise
        except Exception as err:  # a bug must not leave waiters hanging forever
            logger.exception("relay batch of %d %s items failed", len(batch.keys), batch.service.value)
            _settle(batch.futures, _Failure(f"relay failed: {err!r}", 0.0))
        else:
            for future, result in zip(batch.futures, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            _settle(batch.futures, _Failure("relay gave no answer", 0.0))
            for key, future in zip(batch.keys, batch.futures, strict=True):
                if self._inflight.get((batch.service, key)) is future:
                    del self._inflight[(batch.service, key)]

    # -------------------------------------------------------- upstream

    async def _ask_upstream(self, service: Service, items: list[bytes], deadline: float) -> list[JsonObject]:
        path, body = render_request(service, items)
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock())):
                await self._slots.acquire()
        except TimeoutError:
            raise RelayUnavailable(
                f"deadline passed waiting for one of the upstream request slots "
                f"({len(items)} {service.value} items)"
            ) from None
        try:
            return await self._try_endpoints(service, path, body, len(items), deadline)
        finally:
            self._slots.release()

    async def _try_endpoints(
        self, service: Service, path: str, body: bytes, count: int, deadline: float
    ) -> list[JsonObject]:
        problems: list[str] = []
        for endpoint in self._endpoints:
            now = self._clock()
            if now >= deadline:
                problems.append("deadline passed")
                break
            if not endpoint.allow(now):
                problems.append(f"{endpoint.host}: circuit open")
                continue
            endpoint.requests += 1
            try:
                results = await self._attempt(endpoint, service, path, body, count, deadline)
            except _AttemptFailed as failure:
                problems.append(f"{endpoint.host}: {failure}")
                continue
            except BaseException:
                endpoint.abandon()
                raise
            return results
        now = self._clock()
        retry_after = min(e.wait_time(now) for e in self._endpoints)
        raise RelayUnavailable(
            f"no cloud endpoint answered {count} {service.value} items: " + "; ".join(problems),
            retry_after=math.ceil(retry_after),
        )

    async def _attempt(
        self,
        endpoint: Endpoint,
        service: Service,
        path: str,
        body: bytes,
        count: int,
        deadline: float,
    ) -> list[JsonObject]:
        started = self._clock()
        try:
            async with asyncio.timeout(max(0.0, deadline - started)):
                status, raw = await self._transport.request(
                    endpoint.url, "POST", path, body, HEADERS, deadline
                )
            results = check_answer(status, raw, count)
        except RelayError as err:
            error = err
        except TimeoutError:
            error = RelayError("deadline passed", kind="timeout")
        except Exception as err:  # a transport's own exception: still this endpoint failing
            error = RelayError(f"transport error: {err!r}")
        else:
            endpoint.succeed()
            self._observe(endpoint, service, count, self._clock() - started, None)
            return results
        endpoint.fail(self._clock(), error.message)
        self._observe(endpoint, service, count, self._clock() - started, error)
        logger.warning("relay to %s failed for %d %s items: %s", endpoint.host, count, service.value,
                       error.message)
        raise _AttemptFailed(error.message)

    def _observe(
        self, endpoint: Endpoint, service: Service, items: int, seconds: float, error: RelayError | None
    ) -> None:
        if self._observer is None:
            return
        try:
            self._observer.on_upstream(endpoint.url, service, items, seconds, error)
        except Exception:
            logger.exception("relay observer failed")


class _AttemptFailed(Exception):
    """One endpoint's failure; the message says what went wrong."""


# ---------------------------------------------------------------- pure helpers


def _endpoints(urls: Sequence[str], failures: int, cooldown: float) -> list[Endpoint]:
    """The configured endpoints, in priority order; ConfigError for a bad or repeated one."""
    out: list[Endpoint] = []
    for priority, url in enumerate(urls, start=1):
        try:
            origin = parse_origin(url)
        except ValueError as err:
            raise ConfigError(f"relay endpoint {priority}: {err}") from None
        if any(e.url == url for e in out):
            raise ConfigError(f"relay endpoint {url!r} is listed twice")
        out.append(Endpoint(url, origin.authority, priority, failures, cooldown))
    return out


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"relay: {message}")


def _unwrap(outcome: _Outcome) -> JsonObject:
    if isinstance(outcome, _Failure):
        raise RelayUnavailable(outcome.message, retry_after=outcome.retry_after)
    return dict(outcome)  # each waiter its own top-level copy


def _settle(futures: Sequence[asyncio.Future[_Outcome]], failure: _Failure) -> None:
    for future in futures:
        if not future.done():
            future.set_result(failure)
