"""What the relay sends upstream and through what: the ``Transport`` seam and its
production ``HttpTransport`` (an ``HttpClient`` with verified TLS), the observer seam,
a batch's request (its path and body from ``proxy.wire.paths``) and the check of the
cloud's answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from proxy.errors import ConfigError, RelayError, UpstreamStatus
from proxy.model import Service
from proxy.relay.http_client import HttpClient, make_ssl_context
from proxy.wire import paths, replies

JsonObject = dict[str, Any]

HEADERS: Mapping[str, str] = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "rampart-relay/1",
}


class Transport(Protocol):
    """One upstream exchange; raises RelayError (or anything) on failure."""

    async def request(
        self,
        endpoint: str,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        deadline: float,
    ) -> tuple[int, bytes]: ...


class RelayObserver(Protocol):
    """Told about every upstream attempt (for metrics; later the planned console's live view)."""

    def on_upstream(
        self, endpoint: str, service: Service, items: int, seconds: float, error: RelayError | None
    ) -> None:
        """``error`` is None for a usable answer; its ``kind`` labels the outcome."""


class HttpTransport:
    """The production Transport: an ``HttpClient`` (status and body only)."""

    def __init__(self, client: HttpClient) -> None:
        self.client = client

    async def request(
        self,
        endpoint: str,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        deadline: float,
    ) -> tuple[int, bytes]:
        response = await self.client.request(endpoint, method, path, body, headers, deadline=deadline)
        return response.status, response.body

    async def close(self) -> None:
        await self.client.close()


def default_client(ca_file: str | None, max_concurrent: int, connect_timeout: float,
            read_timeout: float, clock: Callable[[], float]) -> HttpClient:
    """The default transport's client: verified TLS (``ca_file`` or the system bundle)."""
    try:
        ssl_context = make_ssl_context(ca_file)
    except (OSError, ValueError) as err:
        raise ConfigError(f"relay CA file {ca_file!r} cannot be used: {err}") from None
    return HttpClient(ssl_context=ssl_context, max_connections_per_host=max_concurrent,
                      connect_timeout=connect_timeout, read_timeout=read_timeout, clock=clock)


def encode(item: object) -> bytes:
    """An item's JSON encoding; bytes are taken as already-encoded JSON (an INSPECT body)."""
    if isinstance(item, bytes):
        return item
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()


def render_request(service: Service, items: Sequence[bytes]) -> tuple[str, bytes]:
    """The upstream path and JSON body for a batch of one service's encoded items."""
    route = paths.relayed(service)
    if not route.items:  # the item is the whole body
        (item,) = items
        return route.path, item
    return route.path, b'{"%s":[%s]}' % (route.items.encode(), b",".join(items))


def check_answer(status: int, raw: bytes, count: int) -> list[JsonObject]:
    """An upstream answer's results: status 200 and a body ``replies.parse_results`` takes.
    ``UpstreamStatus`` or ``BadAnswer`` names what was wrong."""
    if status != 200:
        raise UpstreamStatus(f"HTTP status {status}")
    return replies.parse_results(raw, count)
