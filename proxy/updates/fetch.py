"""Fetching from an update source: the ``Fetcher`` the updater downloads through, and the
real one over HTTP(S) (``HttpFetcher``: the relay's pooled, verifying client). Tests give
the updater a Fetcher reading a folder instead."""

from __future__ import annotations

from typing import Protocol

from proxy.errors import FetchError, HttpTimeout, PatternError, RelayError, TooLarge


class Fetcher(Protocol):
    """Downloads a path relative to the update source, whole, by ``deadline`` (monotonic)."""

    async def get(self, path: str, *, max_bytes: int, deadline: float) -> bytes: ...


class HttpFetcher:
    """The real Fetcher: one pooled, verifying ``HttpClient`` to the update source."""

    def __init__(self, source_url: str, *, ca_file: str | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, max_bytes: int = 1 << 31) -> None:
        from proxy.relay.http_client import HttpClient, make_ssl_context, parse_origin

        try:
            parse_origin(source_url.rstrip("/"))
        except ValueError as e:
            raise PatternError(f"update source: {e}") from None
        self.source_url = source_url.rstrip("/")
        self.client = HttpClient(
            ssl_context=make_ssl_context(ca_file), max_connections_per_host=4,
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            max_response_bytes=max_bytes,
        )

    async def get(self, path: str, *, max_bytes: int, deadline: float) -> bytes:

        try:
            resp = await self.client.request(self.source_url, "GET", "/" + path, deadline=deadline)
        except HttpTimeout as e:
            raise FetchError(f"{path}: {e.message}", reason="timeout") from None
        except TooLarge as e:
            raise FetchError(f"{path}: {e.message}", reason="too_large") from None
        except RelayError as e:
            raise FetchError(f"{path}: {e.message}") from None
        if resp.status == 404:
            raise FetchError(f"{path}: not found at the update source", missing=True)
        if resp.status != 200:
            raise FetchError(f"{path}: update source answered HTTP {resp.status}")
        if len(resp.body) > max_bytes:
            raise FetchError(f"{path}: {len(resp.body)} bytes, more than the {max_bytes} expected",
                             reason="too_large")
        return resp.body

    async def close(self) -> None:
        await self.client.close()


