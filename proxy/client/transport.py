"""The client's way to its servers: the ``Transport`` I/O seam, its production
``HttpTransport`` and ``ask``, which tries the servers with failover within one deadline.

``HttpTransport`` is the appliance relay's ``HttpClient``: keep-alive connections
pooled per server, bounded responses, and TLS that always verifies (against
``ca_file`` when given, else the system's bundle); it cannot be turned off.

``ask`` tries ``ServerPool.plan(location)`` in order; every attempt gets the time left
before the one deadline. A server that cannot be reached, breaks TLS, times out, answers
5xx, 408 or 429 (its ``Retry-After`` is its cool-down), redirects (3xx), or gives a body ``check``
refuses, is marked failed and the next one is tried. Any other 4xx raises ClientError
with the server's message: the request is bad, and another server would say the same.
When none answered, NoServer lists every server and why, and the location decision is
forgotten so the next ask probes again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

from proxy.client.errors import ClientError, NoServer
from proxy.client.servers import HEALTH_PATH, Location, Server, ServerPool
from proxy.errors import HttpClientError, RelayError
from proxy.relay.http_client import DEFAULT_MAX_RESPONSE_BYTES, HttpClient, make_ssl_context

T = TypeVar("T")

HEADERS: Mapping[str, str] = {"Accept": "application/json", "User-Agent": "rampart-client/1"}
FAILOVER_STATUSES = frozenset({408, 429})
MAX_MESSAGE = 300


class Transport(Protocol):
    """One exchange with one server by ``deadline`` (on the pool's clock): status, headers
    (names lower-cased), body. Raises RelayError (proxy.errors) or OSError when there is
    no HTTP answer, ValueError for a request that cannot be sent."""

    async def request(self, server_url: str, method: str, path: str, body: bytes,
                      headers: Mapping[str, str], deadline: float,
                      ) -> tuple[int, Mapping[str, str], bytes]: ...


class HttpTransport:
    """The production Transport on ``HttpClient``; give it the pool's clock.

    timeout: seconds of silence allowed per read (and to connect, unless connect_timeout).
    """

    def __init__(self, ca_file: str | Path | None = None, *, timeout: float = 5.0,
                 connect_timeout: float | None = None, max_connections_per_host: int = 4,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        try:
            context = make_ssl_context(None if ca_file is None else str(ca_file))
        except (OSError, ValueError) as err:
            raise ClientError(f"CA file {str(ca_file)!r} cannot be used: {err}") from None
        if not 0 < timeout <= 300 or not 0 < (connect_timeout or timeout) <= 300:
            raise ClientError(f"timeout {timeout!r}: want seconds above 0, at most 300")
        self.client = HttpClient(ssl_context=context, max_connections_per_host=max_connections_per_host,
                                 connect_timeout=connect_timeout or timeout, read_timeout=timeout,
                                 max_response_bytes=max_response_bytes, clock=clock)

    async def request(self, server_url: str, method: str, path: str, body: bytes,
                      headers: Mapping[str, str], deadline: float) -> tuple[int, Mapping[str, str], bytes]:
        given = {name.lower() for name in headers}
        sent = {**{k: v for k, v in HEADERS.items() if k.lower() not in given}, **headers}
        response = await self.client.request(server_url, method, path, body, sent, deadline=deadline)
        return response.status, response.headers, response.body

    @property
    def connections_opened(self) -> int:
        return self.client.connections_opened

    async def close(self) -> None:
        await self.client.close()


class Answer(NamedTuple):
    server: Server
    status: int
    headers: Mapping[str, str]
    body: bytes


async def ask(transport: Transport, pool: ServerPool, location: Location | None, method: str,
              path: str, body: bytes, headers: Mapping[str, str] | None, deadline: float, *,
              check: Callable[[bytes], object] | None = None,
              accept: Collection[int] = ()) -> Answer:
    """The first usable answer from the servers for ``location`` by ``deadline`` (pool.clock).

    With ``location`` None, ask decides it (``pool.locate``, kept ``location_ttl``) and,
    when every server failed, probes again at once in case the client moved.

    ``check`` may refuse a 2xx body by raising ValueError (e.g. BadAnswer): next server.
    ``accept``: other statuses that are answers too (304 to a conditional GET, 404 where
    "none here" is an answer), returned like a 2xx.
    Raises ClientError for a request a server refused, NoServer when none answered.
    """
    loc = location or await pool.locate(transport, deadline=deadline)
    tried: dict[Server, str] = {}
    request = (method, path, body, headers or {}, frozenset(accept))
    answer = await _try_each(transport, pool, pool.plan(loc), tried, request, deadline, check)
    if answer is None and location is None and pool.clock() < deadline:
        again = await pool.locate(transport, force=True, deadline=deadline)  # moved?
        if again != loc:
            loc = again
            answer = await _try_each(transport, pool, [s for s in pool.plan(loc) if s not in tried],
                                     tried, request, deadline, check)
    if answer is not None:
        return answer
    pool.forget_location()
    raise NoServer(_no_server_message(pool, loc, tried, f"{method} {path[:100]}"))


_Request = tuple[str, str, bytes, Mapping[str, str], frozenset[int]]


async def _try_each(transport: Transport, pool: ServerPool, servers: list[Server], tried: dict[Server, str],
                    request: _Request, deadline: float,
                    check: Callable[[bytes], object] | None) -> Answer | None:
    for server in servers:
        if pool.clock() >= deadline:
            tried[server] = "not tried: the deadline passed"
            continue
        outcome = await _attempt(transport, pool, server, request, deadline, check)
        if isinstance(outcome, Answer):
            return outcome
        tried[server] = outcome
    return None


async def _attempt(transport: Transport, pool: ServerPool, server: Server, request: _Request,
                   deadline: float, check: Callable[[bytes], object] | None) -> Answer | str:
    """One server: its Answer, or why it failed (already marked); ClientError for a refusal."""
    method, path, body, headers, accept = request
    if server.zone == "external" and not server.tls:
        reason = "refused: an external server must be https; nothing was sent"
        pool.failed(server, reason)
        return reason
    try:
        status, got_headers, got = await transport.request(server.url, method, path, body, headers, deadline)
    except HttpClientError as err:
        return _failed(pool, server, f"{err.kind}: {err.cause}")
    except RelayError as err:
        return _failed(pool, server, f"{err.kind}: {err.message}")
    except ValueError as err:  # the request itself cannot be sent (a bad path or header)
        raise ClientError(f"cannot send {method} {path[:100]!r}: {err}") from None
    except (OSError, TimeoutError) as err:
        return _failed(pool, server, f"connect: {err or type(err).__name__}")
    if 200 <= status < 300 or status in accept:
        return _accepted(pool, Answer(server, status, got_headers, got), check)
    reason = f"HTTP {status}{server_message(got)}"
    if status >= 500 or status in FAILOVER_STATUSES or status < 400:
        return _failed(pool, server, reason, retry_after(got_headers) if status in (429, 503) else None)
    pool.succeeded(server)  # it answered: it is up, the request is at fault
    raise ClientError(f"{server.url} refused {method} {path[:100]}: {reason}")


def _accepted(pool: ServerPool, answer: Answer, check: Callable[[bytes], object] | None) -> Answer | str:
    if check is not None:
        try:
            check(answer.body)
        except ValueError as err:
            return _failed(pool, answer.server, f"bad answer: {str(err)[:MAX_MESSAGE]}")
    pool.succeeded(answer.server)
    return answer


def _failed(pool: ServerPool, server: Server, reason: str, retry: float | None = None) -> str:
    pool.failed(server, reason, retry_after=retry)
    return reason


def _no_server_message(pool: ServerPool, location: Location, tried: dict[Server, str], what: str) -> str:
    where = f"{location} ({pool.location_reason})"
    if not tried:
        zones = "external" if location == "outside" else "internal or external"
        return f"no server to ask for {what}: the client is {where} and no {zones} server is configured"
    lines = "; ".join(f"{s.url}: {reason}" for s, reason in tried.items())
    return f"no server answered {what} (the client is {where}): {lines}"


async def probe(transport: Transport, servers: list[Server], deadline: float,
                timeout: float) -> tuple[Server | None, list[str]]:
    """ServerPool.locate's probe: every server's /healthz asked at once, the first to answer
    200, and why each of the others did not."""
    tasks = {asyncio.ensure_future(_probe_one(transport, s, deadline)): s for s in servers}
    reasons: dict[Server, str] = {s: "no answer in time" for s in servers}
    winner: Server | None = None
    pending = set(tasks)
    try:
        async with asyncio.timeout(timeout):
            while pending and winner is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.result()
                    if error is None:
                        winner = winner or tasks[task]
                    else:
                        reasons[tasks[task]] = error
    except TimeoutError:
        pass
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return winner, [f"{s.url}: {reasons[s]}" for s in servers if s is not winner]


async def _probe_one(transport: Transport, server: Server, deadline: float) -> str | None:
    try:
        status, _, _ = await transport.request(server.url, "GET", HEALTH_PATH, b"", {}, deadline)
    except RelayError as err:
        return f"{err.kind}: {getattr(err, 'cause', err.message)}"
    except (OSError, TimeoutError) as err:
        return f"connect: {err}"
    return None if status == 200 else f"HTTP {status}"


def server_message(body: bytes) -> str:
    """`` code: message`` from a protocol error body (bounded, printable), or ``""``."""
    try:
        error = json.loads(body[:65536]).get("error") if body[:1] == b"{" else None
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        return ""
    parts = [str(error.get(k)) for k in ("code", "message") if isinstance(error.get(k), str | int)]
    text = ": ".join(parts)[:MAX_MESSAGE]
    return f" {''.join(c if c.isprintable() else '?' for c in text)}" if text else ""


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in whole seconds (an HTTP date is not used); None when absent or bad."""
    raw = headers.get("retry-after", "").strip()
    if raw.isascii() and raw.isdigit() and len(raw) <= 9:
        return float(raw)
    return None


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size`` (the server's batch limit), in order."""
    if size < 1:
        raise ClientError(f"batch size {size}: want at least 1")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
