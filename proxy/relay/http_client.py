"""A small pooled asyncio HTTP/1.1 client: the relay's way to the cloud.

Only what the relay needs, with every bound explicit: keep-alive connections
pooled per origin (at most ``max_connections_per_host`` open per origin),
connect and read timeouts, an absolute deadline on an injected monotonic clock,
a cap on response head and body size. TLS is always verified: a certificate
problem is an error, never a fallback to plain text. Responses are parsed with
``httptools`` (llhttp).

A request that finds its pooled connection closed by the server (no byte of a
response came back) is retried once on a fresh connection. That is safe for
what Rampart sends upstream: reputation lookups, which change nothing.

Errors, all naming the host and the cause::

    RelayError                     (proxy.errors)
    └── HttpClientError
        ├── ConnectError           refused, unreachable, name not resolved
        ├── HttpTimeout
        │   ├── ConnectTimeout     no connection within connect_timeout
        │   ├── ReadTimeout        no response bytes within read_timeout
        │   └── DeadlineExceeded   the caller's absolute deadline passed
        ├── TlsError               certificate or handshake failure
        ├── ProtocolViolation      a response that is not valid HTTP/1.1
        ├── TooLarge               response head or body over its bound
        └── ConnectionLost         closed by the server mid-response
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import httptools

from proxy.config import default
from proxy.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    DeadlineExceeded,
    ProtocolViolation,
    ReadTimeout,
    RelayError,
    TlsError,
)
from proxy.relay.http_response import (
    Response,
    ResponseState,
    StaleConnection,
    check_bounds,
    complete_at_eof,
    response_of,
)

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

MiB = 1024 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 64 * MiB
_READ_CHUNK = 64 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_HEADER_VALUE = re.compile(r"[\r\n\x00]")
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


# ---------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, host, port and an optional base path prefix."""

    scheme: str
    host: str
    port: int
    base_path: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        """host:port as used in error messages and the Host header."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


@functools.lru_cache(maxsize=256)
def parse_origin(url: str) -> Origin:
    """Parse ``https://host[:port][/base]`` into an Origin; ValueError names the problem."""
    if len(url) > 2048:
        raise ValueError(f"URL too long ({len(url)} characters)")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"URL {url!r}: scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"URL {url!r}: no host")
    if parts.username or parts.password:
        raise ValueError(f"URL {url!r}: credentials in URLs are not supported")
    if parts.query or parts.fragment:
        raise ValueError(f"URL {url!r}: an origin takes no query or fragment")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as err:
        raise ValueError(f"URL {url!r}: bad port") from err
    return Origin(scheme, parts.hostname, port, parts.path.rstrip("/"))


def make_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system bundle, or ``ca_file`` when given."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# ---------------------------------------------------------------- connections


@dataclass(slots=True, eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    reused: bool = False

    def alive(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


@dataclass(slots=True, eq=False)
class _Pool:
    slots: asyncio.Semaphore
    idle: list[_Connection] = field(default_factory=list)


# ---------------------------------------------------------------- the client


class HttpClient:
    """Pooled HTTP/1.1 client; one per process, shared by every relayed request.

    ssl_context: verifying context for https origins (default: system bundle).
    max_connections_per_host: open connections per origin (busy ones wait).
    connect_timeout: seconds for TCP connect plus TLS handshake.
    read_timeout: seconds of silence allowed while sending or awaiting response bytes.
    max_response_bytes: largest response body accepted (TooLarge beyond it).
    idle_timeout: pooled connections idle longer than this are closed, not reused.
    clock: the monotonic clock that ``deadline`` arguments refer to.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections_per_host: int = 32,
        connect_timeout: float = default("connect_timeout"),
        read_timeout: float = default("read_timeout"),
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        idle_timeout: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ssl_context is None:
            ssl_context = make_ssl_context()
        if ssl_context.verify_mode != ssl.CERT_REQUIRED or not ssl_context.check_hostname:
            raise ConfigError("upstream TLS must verify certificates and host names")
        if max_connections_per_host < 1:
            raise ConfigError("max_connections_per_host must be at least 1")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigError("connect_timeout and read_timeout must be positive")
        if max_response_bytes < 1:
            raise ConfigError("max_response_bytes must be positive")
        self._ssl = ssl_context
        self._max_conns = max_connections_per_host
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_body = max_response_bytes
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._pools: dict[Origin, _Pool] = {}
        self._busy: set[_Connection] = set()
        self._closed = False
        self.connections_opened = 0  # for status pages and tests

    async def request(
        self,
        url_or_origin: str,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        deadline: float,
    ) -> Response:
        """Send one request and read the whole response, by ``deadline`` (on ``clock``)."""
        if self._closed:
            raise RelayError("HTTP client is closed")
        origin = parse_origin(url_or_origin)
        head = _render_head(origin, method, origin.base_path + path, body, headers or {})
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(asyncio.Semaphore(self._max_conns))
        await self._acquire_slot(origin, pool, deadline)
        try:
            conn = self._take_idle(pool)
            if conn is None:
                conn = await self._connect(origin, deadline)
            try:
                return await self._exchange(origin, pool, conn, head, body, deadline)
            except StaleConnection:
                logger.debug("stale pooled connection to %s; retrying once", origin.authority)
                conn = await self._connect(origin, deadline)
                return await self._exchange(origin, pool, conn, head, body, deadline)
        finally:
            pool.slots.release()

    async def close(self) -> None:
        """Close every connection; later requests raise RelayError."""
        self._closed = True
        conns = [c for p in self._pools.values() for c in p.idle] + list(self._busy)
        for pool in self._pools.values():
            pool.idle.clear()
        for conn in conns:
            conn.close()
        await asyncio.sleep(0)  # let transports closed just before finish closing their sockets
        for conn in conns:
            try:
                async with asyncio.timeout(1.0):
                    await conn.writer.wait_closed()
            except (OSError, ssl.SSLError, TimeoutError):
                pass  # closing anyway; the peer's manners do not matter

    # -------------------------------------------------------- internals

    def _remaining(self, origin: Origin, deadline: float) -> float:
        left = deadline - self._clock()
        if left <= 0:
            raise DeadlineExceeded(origin.authority, "deadline passed")
        return left

    async def _acquire_slot(self, origin: Origin, pool: _Pool, deadline: float) -> None:
        left = self._remaining(origin, deadline)
        try:
            async with asyncio.timeout(left):
                await pool.slots.acquire()
        except TimeoutError:
            cause = f"deadline passed waiting for one of {self._max_conns} connections"
            raise DeadlineExceeded(origin.authority, cause) from None

    def _take_idle(self, pool: _Pool) -> _Connection | None:
        now = self._clock()
        while pool.idle:
            conn = pool.idle.pop()  # most recently used first: least likely closed
            if conn.alive() and now - conn.idle_since <= self._idle_timeout:
                conn.reused = True
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, deadline: float) -> _Connection:
        left = self._remaining(origin, deadline)
        timeout = min(self._connect_timeout, left)
        host = origin.authority
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    origin.host,
                    origin.port,
                    ssl=self._ssl if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                    limit=_READ_CHUNK,
                )
        except TimeoutError:
            if timeout < self._connect_timeout:
                raise DeadlineExceeded(host, "deadline passed while connecting") from None
            raise ConnectTimeout(host, f"no connection within {timeout:g}s") from None
        except ssl.SSLCertVerificationError as err:
            raise TlsError(host, f"certificate not trusted: {err.verify_message}") from None
        except ssl.SSLError as err:
            raise TlsError(host, f"TLS handshake failed: {err.reason or err}") from None
        except OSError as err:
            raise ConnectError(host, f"cannot connect: {err.strerror or err}") from None
        self.connections_opened += 1
        return _Connection(reader, writer)

    async def _exchange(
        self,
        origin: Origin,
        pool: _Pool,
        conn: _Connection,
        head: bytes,
        body: bytes,
        deadline: float,
    ) -> Response:
        self._busy.add(conn)
        reusable = False
        try:
            response, reusable = await self._send_and_read(origin, conn, head, body, deadline)
            return response
        finally:
            self._busy.discard(conn)
            if reusable and not self._closed:
                conn.idle_since = self._clock()
                conn.reused = False
                pool.idle.append(conn)
            else:
                conn.close()

    async def _send_and_read(
        self, origin: Origin, conn: _Connection, head: bytes, body: bytes, deadline: float
    ) -> tuple[Response, bool]:
        host = origin.authority
        state = ResponseState()
        received = 0
        try:
            if len(body) < 65536:
                conn.writer.write(head + body)  # one segment for the usual small request
            else:
                conn.writer.writelines((head, body))
            await self._timed(origin, conn.writer.drain(), deadline, "sending the request")
            while not state.done:
                chunk = await self._timed(
                    origin, conn.reader.read(_READ_CHUNK), deadline, "awaiting the response"
                )
                if not chunk:
                    if complete_at_eof(state, host, received, conn.reused):
                        return response_of(state), False
                    continue  # unreachable: complete_at_eof raises otherwise
                received += len(chunk)
                try:
                    state.parser.feed_data(chunk)
                except httptools.HttpParserUpgrade:
                    raise ProtocolViolation(host, "unexpected protocol upgrade") from None
                except httptools.HttpParserError as err:
                    if not state.done:
                        raise ProtocolViolation(host, f"malformed response: {err}") from None
                    state.extra = True
                check_bounds(state, host, received, self._max_body)
        except (ConnectionResetError, BrokenPipeError) as err:
            if received == 0 and conn.reused:
                raise StaleConnection(host, "pooled connection was closed") from None
            raise ConnectionLost(host, f"connection lost: {err}") from None
        except ssl.SSLError as err:
            raise TlsError(host, f"TLS error: {err.reason or err}") from None
        except OSError as err:
            raise ConnectionLost(host, f"connection error: {err.strerror or err}") from None
        keep = state.keep_alive and not state.extra
        return response_of(state), keep

    async def _timed(self, origin: Origin, aw: Awaitable[_T], deadline: float, doing: str) -> _T:
        left = self._remaining(origin, deadline)
        timeout = min(self._read_timeout, left)
        try:
            async with asyncio.timeout(timeout):
                return await aw
        except TimeoutError:
            if timeout < self._read_timeout:
                raise DeadlineExceeded(origin.authority, f"deadline passed {doing}") from None
            raise ReadTimeout(origin.authority, f"no progress for {timeout:g}s {doing}") from None


def _render_head(origin: Origin, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    if not _TOKEN.match(method):
        raise ValueError(f"bad HTTP method {method!r}")
    if not path.startswith("/") or any(c in path for c in " \r\n\x00"):
        raise ValueError(f"bad request path {path[:100]!r}")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {origin.authority}"]
    if body or method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(body)}")
    for name, value in headers.items():
        if not _TOKEN.match(name) or _BAD_HEADER_VALUE.search(value):
            raise ValueError(f"bad request header {name[:100]!r}")
        if name.lower() not in _RESERVED_HEADERS:
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
