"""Tests for proxy.relay.http_client against real asyncio servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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
    TooLarge,
)
from proxy.relay.http_client import (
    HttpClient,
    Origin,
    _render_head,
    make_ssl_context,
    parse_origin,
)

# ---------------------------------------------------------------- a throwaway CA


@dataclass(frozen=True)
class Pki:
    ca_file: str
    cert_file: str
    key_file: str

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(directory: Path) -> Pki:
    """A CA and a server certificate for 127.0.0.1 only (no DNS names)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Rampart test CA"))
        .issuer_name(_name("Rampart test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "server.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pki(str(ca_file), str(cert_file), str(key_file))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# ---------------------------------------------------------------- a scriptable server


@dataclass
class Request:
    head: str
    body: bytes

    @property
    def request_line(self) -> str:
        return self.head.split("\r\n", 1)[0]

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


# A responder gets the request and its index on the connection, and returns the raw
# bytes to send (None: close without answering) and whether to close afterwards.
Responder = Callable[[Request, int], Awaitable[tuple[bytes | None, bool]]]


def ok(body: bytes = b"ok", *, close: bool = False) -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), conn.encode(), body)


async def echo(req: Request, index: int) -> tuple[bytes | None, bool]:
    return ok(req.request_line.encode() + b" " + req.body), False


@dataclass
class Server:
    respond: Responder
    ssl_context: ssl.SSLContext | None = None
    accepted: int = 0
    requests: list[Request] = field(default_factory=list)
    active: int = 0
    peak_active: int = 0
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> Server:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        for writer in self.writers:
            try:
                async with asyncio.timeout(0.5):
                    await writer.wait_closed()
            except (OSError, TimeoutError, ssl.SSLError):
                pass  # a test peer that hung up first

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        index = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                req = Request(head.decode("latin-1"), b"")
                length = int(req.header("content-length") or 0)
                req.body = await reader.readexactly(length)
                self.requests.append(req)
                self.active += 1
                self.peak_active = max(self.peak_active, self.active)
                try:
                    data, close = await self.respond(req, index)
                finally:
                    self.active -= 1
                index += 1
                if data is None:
                    return
                writer.write(data)
                try:
                    await writer.drain()
                except ConnectionError:
                    return  # the client gave up on this response
                if close:
                    return
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(respond: Responder = echo, ssl_context: ssl.SSLContext | None = None) -> Server:
        server = await Server(respond, ssl_context).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    c = HttpClient(connect_timeout=2.0, read_timeout=2.0)
    yield c
    await c.close()


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://cloud.example:9443", Origin("https", "cloud.example", 9443)),
        ("https://cloud.example", Origin("https", "cloud.example", 443)),
        ("http://127.0.0.1:8080/", Origin("http", "127.0.0.1", 8080)),
        ("HTTPS://Cloud.Example/base/", Origin("https", "cloud.example", 443, "/base")),
        ("https://[::1]:9443", Origin("https", "::1", 9443)),
    ],
)
def test_parse_origin(url: str, expected: Origin) -> None:
    assert parse_origin(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://cloud.example", "scheme"),
        ("cloud.example:9443", "scheme"),
        ("https://", "no host"),
        ("https://user:pw@cloud.example", "credentials"),
        ("https://cloud.example:99999", "bad port"),
        ("https://cloud.example/?q=1", "query"),
    ],
)
def test_parse_origin_rejects(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_origin(url)


@pytest.mark.parametrize(
    ("origin", "host_header"),
    [
        (Origin("https", "cloud.example", 443), "cloud.example"),
        (Origin("https", "cloud.example", 9443), "cloud.example:9443"),
        (Origin("http", "::1", 8080), "[::1]:8080"),
    ],
)
def test_authority_is_host_header(origin: Origin, host_header: str) -> None:
    head = _render_head(origin, "POST", "/v1/file", b"{}", {})
    assert f"\r\nHost: {host_header}\r\n".encode() in head


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/v1/file", {"X-Evil": "a\r\nInjected: yes"}),
        ("POST", "/v1/file", {"Bad Name": "x"}),
        ("POST", "/v1/file HTTP/1.1\r\nX: y", {}),
        ("POST", "v1/file", {}),
        ("PO ST", "/v1/file", {}),
    ],
)
def test_render_head_refuses_injection(method: str, path: str, headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        _render_head(Origin("http", "h", 80), method, path, b"", headers)


def test_caller_cannot_override_framing_headers() -> None:
    head = _render_head(
        Origin("http", "h", 80), "POST", "/x", b"abc", {"Content-Length": "999", "Host": "evil"}
    )
    assert head.count(b"Content-Length") == 1 and b"Content-Length: 3" in head
    assert b"evil" not in head


def test_unverified_context_is_refused() -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises(ConfigError, match="verify"):
        HttpClient(ssl_context=ctx)


# ---------------------------------------------------------------- keep-alive and pooling


async def test_keepalive_reuses_one_connection(serve, client: HttpClient) -> None:
    server = await serve()
    for i in range(5):
        resp = await client.request(
            server.url,
            "POST",
            "/v1/file",
            b"n%d" % i,
            {"Content-Type": "application/json"},
            deadline=soon(),
        )
        assert resp.status == 200
        assert resp.body == b"POST /v1/file HTTP/1.1 n%d" % i
        assert resp.headers["content-length"] == str(len(resp.body))
    assert server.accepted == 1
    assert client.connections_opened == 1
    assert server.requests[0].header("host") == f"127.0.0.1:{server.port}"
    assert server.requests[0].header("content-type") == "application/json"


async def test_base_path_is_prefixed(serve, client: HttpClient) -> None:
    server = await serve()
    resp = await client.request(server.url + "/cloud/", "POST", "/v1/web", b"", deadline=soon())
    assert resp.body.startswith(b"POST /cloud/v1/web ")


async def test_concurrent_requests_bounded_per_host(serve) -> None:
    async def slow(req: Request, index: int) -> tuple[bytes | None, bool]:
        await asyncio.sleep(0.02)
        return ok(), False

    server = await serve(slow)
    client = HttpClient(max_connections_per_host=2, connect_timeout=2, read_timeout=2)
    try:
        results = await asyncio.gather(
            *(client.request(server.url, "GET", "/", deadline=soon()) for _ in range(8))
        )
    finally:
        await client.close()
    assert [r.status for r in results] == [200] * 8
    assert server.accepted == 2
    assert server.peak_active == 2


async def test_connection_close_response_not_reused(serve, client: HttpClient) -> None:
    async def closing(req: Request, index: int) -> tuple[bytes | None, bool]:
        return ok(close=True), True

    server = await serve(closing)
    for _ in range(3):
        assert (await client.request(server.url, "GET", "/", deadline=soon())).body == b"ok"
    assert server.accepted == 3


async def test_body_delimited_by_close(serve, client: HttpClient) -> None:
    async def eof_body(req: Request, index: int) -> tuple[bytes | None, bool]:
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 100_000, True

    server = await serve(eof_body)
    resp = await client.request(server.url, "GET", "/", deadline=soon())
    assert resp.body == b"x" * 100_000


async def test_chunked_body(serve, client: HttpClient) -> None:
    async def chunked(req: Request, index: int) -> tuple[bytes | None, bool]:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", False

    server = await serve(chunked)
    for _ in range(2):
        assert (await client.request(server.url, "GET", "/", deadline=soon())).body == b"abcde"
    assert server.accepted == 1


async def test_interim_100_continue_is_skipped(serve, client: HttpClient) -> None:
    async def cont(req: Request, index: int) -> tuple[bytes | None, bool]:
        return b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"), False

    server = await serve(cont)
    resp = await client.request(server.url, "POST", "/", b"x", deadline=soon())
    assert (resp.status, resp.body) == (200, b"final")


# ---------------------------------------------------------------- stale connections


async def test_server_closed_idle_connection_is_replaced(serve, client: HttpClient) -> None:
    async def answer_then_close(req: Request, index: int) -> tuple[bytes | None, bool]:
        return ok(), True  # keep-alive advertised, but the server hangs up after answering

    server = await serve(answer_then_close)
    await client.request(server.url, "GET", "/", deadline=soon())
    await asyncio.sleep(0.01)  # the server's FIN arrives while the connection sits idle
    assert (await client.request(server.url, "GET", "/", deadline=soon())).status == 200
    assert server.accepted == 2


async def test_stale_pooled_connection_retried_once(serve, client: HttpClient) -> None:
    async def drop_second(req: Request, index: int) -> tuple[bytes | None, bool]:
        if index == 1:
            return None, True  # closes as the reused connection's request arrives
        return ok(b"answer %d" % index), False

    server = await serve(drop_second)
    await client.request(server.url, "POST", "/v1/file", b"a", deadline=soon())
    resp = await client.request(server.url, "POST", "/v1/file", b"b", deadline=soon())
    assert resp.body == b"answer 0"  # first request on the fresh connection
    assert server.accepted == 2
    assert [r.body for r in server.requests] == [b"a", b"b", b"b"]


async def test_fresh_connection_closed_without_answer_is_not_retried(serve, client: HttpClient) -> None:
    async def hang_up(req: Request, index: int) -> tuple[bytes | None, bool]:
        return None, True

    server = await serve(hang_up)
    with pytest.raises(ConnectionLost, match=f"127.0.0.1:{server.port}"):
        await client.request(server.url, "POST", "/v1/file", b"a", deadline=soon())
    assert server.accepted == 1


async def test_truncated_body_is_connection_lost(serve, client: HttpClient) -> None:
    async def truncated(req: Request, index: int) -> tuple[bytes | None, bool]:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True

    server = await serve(truncated)
    with pytest.raises(ConnectionLost, match="before the end"):
        await client.request(server.url, "GET", "/", deadline=soon())


# ---------------------------------------------------------------- bounds and errors


async def test_read_timeout(serve) -> None:
    async def silent(req: Request, index: int) -> tuple[bytes | None, bool]:
        await asyncio.sleep(10)
        return ok(), False

    server = await serve(silent)
    client = HttpClient(connect_timeout=1, read_timeout=0.05)
    try:
        started = time.monotonic()
        with pytest.raises(ReadTimeout, match="no progress"):
            await client.request(server.url, "GET", "/", deadline=soon())
        assert time.monotonic() - started < 1.0
    finally:
        await client.close()


async def test_deadline_shorter_than_read_timeout(serve, client: HttpClient) -> None:
    async def silent(req: Request, index: int) -> tuple[bytes | None, bool]:
        await asyncio.sleep(10)
        return ok(), False

    server = await serve(silent)
    with pytest.raises(DeadlineExceeded):
        await client.request(server.url, "GET", "/", deadline=soon(0.05))


async def test_deadline_already_passed_sends_nothing(serve, client: HttpClient) -> None:
    server = await serve()
    with pytest.raises(DeadlineExceeded):
        await client.request(server.url, "GET", "/", deadline=time.monotonic() - 1)
    assert server.accepted == 0


async def test_deadline_uses_injected_clock(serve) -> None:
    server = await serve()
    client = HttpClient(clock=lambda: 1000.0)
    try:
        with pytest.raises(DeadlineExceeded):
            await client.request(server.url, "GET", "/", deadline=999.0)
        resp = await client.request(server.url, "GET", "/", deadline=1001.0)
        assert resp.status == 200
    finally:
        await client.close()


async def test_tls_handshake_stall_is_connect_timeout(pki: Pki) -> None:
    stalled: list[asyncio.StreamWriter] = []

    async def never_handshake(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        stalled.append(w)
        await asyncio.sleep(10)

    plain = await asyncio.start_server(never_handshake, "127.0.0.1", 0)
    port = plain.sockets[0].getsockname()[1]
    client = HttpClient(ssl_context=make_ssl_context(pki.ca_file), connect_timeout=0.05, read_timeout=1)
    try:
        with pytest.raises(ConnectTimeout, match=f"127.0.0.1:{port}"):
            await client.request(f"https://127.0.0.1:{port}", "GET", "/", deadline=soon())
    finally:
        await client.close()
        plain.close()
        for w in stalled:
            w.close()
        await asyncio.sleep(0)


async def test_connection_refused(client: HttpClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
        await client.request(f"http://127.0.0.1:{port}", "GET", "/", deadline=soon())


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"200\r\n"
        + b"x" * 512
        + b"\r\n"
        + b"600\r\n"
        + b"y" * 1536
        + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"z" * 2000,
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 70_000 + b"\r\n\r\n",
    ],
    ids=["content-length", "chunked", "until-close", "huge-head"],
)
async def test_oversized_response_refused(serve, response: bytes) -> None:
    async def big(req: Request, index: int) -> tuple[bytes | None, bool]:
        return response, True

    server = await serve(big)
    client = HttpClient(max_response_bytes=1024)
    try:
        with pytest.raises(TooLarge, match="over"):
            await client.request(server.url, "GET", "/", deadline=soon())
    finally:
        await client.close()


async def test_limit_is_inclusive(serve) -> None:
    async def exact(req: Request, index: int) -> tuple[bytes | None, bool]:
        return ok(b"x" * 1024), False

    server = await serve(exact)
    client = HttpClient(max_response_bytes=1024)
    try:
        assert len((await client.request(server.url, "GET", "/", deadline=soon())).body) == 1024
    finally:
        await client.close()


async def test_malformed_response(serve, client: HttpClient) -> None:
    async def garbage(req: Request, index: int) -> tuple[bytes | None, bool]:
        return b"SMTP ready\r\n\r\n", True

    server = await serve(garbage)
    with pytest.raises(ProtocolViolation, match="malformed"):
        await client.request(server.url, "GET", "/", deadline=soon())


async def test_closed_client_refuses(serve) -> None:
    server = await serve()
    client = HttpClient()
    await client.request(server.url, "GET", "/", deadline=soon())
    await client.close()
    with pytest.raises(RelayError, match="closed"):
        await client.request(server.url, "GET", "/", deadline=soon())


# ---------------------------------------------------------------- TLS


async def test_tls_with_trusted_ca(serve, pki: Pki) -> None:
    server = await serve(echo, pki.server_context())
    client = HttpClient(ssl_context=make_ssl_context(pki.ca_file))
    try:
        for _ in range(3):
            resp = await client.request(server.url, "POST", "/v1/file", b"{}", deadline=soon())
            assert resp.body == b"POST /v1/file HTTP/1.1 {}"
    finally:
        await client.close()
    assert server.accepted == 1


async def test_tls_untrusted_certificate_fails(serve, pki: Pki) -> None:
    server = await serve(echo, pki.server_context())
    client = HttpClient(ssl_context=make_ssl_context(None))  # system bundle only
    try:
        with pytest.raises(TlsError, match="certificate not trusted"):
            await client.request(server.url, "POST", "/v1/file", b"{}", deadline=soon())
    finally:
        await client.close()
    assert server.requests == []


async def test_tls_host_name_mismatch_fails(serve, pki: Pki) -> None:
    server = await serve(echo, pki.server_context())
    client = HttpClient(ssl_context=make_ssl_context(pki.ca_file))
    try:
        with pytest.raises(TlsError, match="localhost"):
            # the certificate names 127.0.0.1 only
            await client.request(f"https://localhost:{server.port}", "GET", "/", deadline=soon())
    finally:
        await client.close()
    assert server.requests == []


async def test_https_never_falls_back_to_plain(pki: Pki) -> None:
    seen: list[bytes] = []

    async def plain_http(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append(await r.read(100))  # a plain server answers a TLS hello with a 400
        w.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await w.drain()
        w.close()

    plain = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    port = plain.sockets[0].getsockname()[1]
    client = HttpClient(ssl_context=make_ssl_context(pki.ca_file))
    try:
        with pytest.raises(TlsError, match=f"127.0.0.1:{port}: TLS handshake failed"):
            await client.request(f"https://127.0.0.1:{port}", "GET", "/", deadline=soon())
    finally:
        await client.close()
        plain.close()
    assert seen and seen[0][:1] == b"\x16"  # only a TLS handshake record was ever sent
