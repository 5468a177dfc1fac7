"""Property tests: whatever arrives from the network, the parsers answer a value or a
ProtocolError naming the problem — never another exception (which the door would turn into a 500).

The route tests send every path the query door serves any method, any query string (any
number of parameters, arbitrary percent-escapes, any Unicode including lone surrogates) and
any body, and assert that no answer is a 5xx and that every JSON answer is valid Unicode.
To search harder than CI does, set ``RAMPART_FUZZ_EXAMPLES`` (e.g. 20000): every test here
then runs that many examples.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Awaitable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.errors import ProtocolError, UrlError
from proxy.serve.app import App
from proxy.updates import repo
from proxy.wire import paths, protocol, replies, urls
from proxy.wire.http import Request, Response, error_response
from tests.conftest import opened_app

LIMITS = protocol.Limits(max_batch=50, max_url=512)
_EXAMPLES = int(os.environ.get("RAMPART_FUZZ_EXAMPLES", "0"))


def examples(n: int) -> settings:
    return settings(max_examples=_EXAMPLES or n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


SETTINGS = examples(300)

# Any Unicode, lone surrogates included: JSON can carry them ("\ud800"), UTF-8 cannot. Plain
# text of any code point seldom holds one, so text of surrogates and URL punctuation joins it.
_LONE_AND_PUNCTUATION = ["\ud800", "\udbff", "\udc00", "\udcff", "\udfff", *"a.:/%-@[]\u00fc"]


def any_text(max_size: int) -> st.SearchStrategy[str]:
    return (st.text(st.characters(codec=None, exclude_categories=()), max_size=max_size)
            | st.text(st.sampled_from(_LONE_AND_PUNCTUATION), max_size=max_size))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text(80),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(any_text(10),
                                                                inner, max_size=4),
    max_leaves=20,
)

hexish = st.text(alphabet="0123456789abcdefABCDEFg \t", min_size=0, max_size=70)
file_items = st.lists(
    st.dictionaries(st.sampled_from(["sha256", "sha1", "md5", "crc"]), hexish | json_values,
                    min_size=0, max_size=2) | json_values,
    max_size=60,
)


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(doc: Any) -> bool:
    """No lone surrogate anywhere in a decoded JSON document (what strict clients refuse)."""
    if isinstance(doc, str):
        return _SURROGATE.search(doc) is None
    if isinstance(doc, dict):
        return all(valid_unicode(k) and valid_unicode(v) for k, v in doc.items())
    if isinstance(doc, list):
        return all(valid_unicode(v) for v in doc)
    return True


def assert_client_error(e: ProtocolError) -> None:
    assert 400 <= e.status < 500 and e.message
    assert valid_unicode(json.loads(replies.render_error(e)))


def only_protocol_errors(parse, body: bytes) -> Any:
    try:
        return parse(body, LIMITS)
    except ProtocolError as e:
        assert_client_error(e)
        return None


@SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes_to_any_parser(body: bytes) -> None:
    for parse in (protocol.parse_file_request, protocol.parse_web_request,
                  protocol.parse_domain_request, protocol.parse_inspect_request):
        only_protocol_errors(parse, body)


@SETTINGS
@given(file_items)
def test_file_requests_of_any_shape(items) -> None:
    body = json.dumps({"items": items}).encode()
    try:
        batch = protocol.parse_file_request(body, LIMITS)
    except ProtocolError as e:
        assert e.status in (400, 413)
        assert_client_error(e)
        return
    # what parsed is exactly what was sent, digests lower-cased, in order
    assert len(batch) == len(items)
    for item, name, hexed in zip(items, batch.names, batch.hexes):
        assert item == {name: item[name]} and item[name].lower() == hexed


# URLs worth trying: any text, and scheme://host/path built from tricky pieces.
escapes = st.binary(max_size=8).map(lambda b: "".join(f"%{c:02x}" for c in b))
host_texts = st.one_of(
    any_text(20), escapes,
    st.lists(st.sampled_from(["a", "xn--", "0x7f", "1", ".", "..", "-", "_", "%", "%2e", "%25",
                              "\u00fc", "\u3002", "\ud800", "\udcff", "[", "]", ":", "@", " ",
                              "::1", "%ff", "%ED%A0%80", "%C3%BC", "*", "!"]), max_size=8).map("".join),
)
url_texts = st.one_of(
    any_text(120),
    st.tuples(st.sampled_from(["http://", "https://", "", "ftp://", "HTTP://", "http:", "//"]),
              host_texts, st.sampled_from(["", "/", "/a/../b", "/%ff", "?q=%ED%A0%80", "#f"]),
              any_text(10)).map("".join),
)


@SETTINGS
@given(st.lists(url_texts | json_values, max_size=8), json_values)
def test_web_and_domain_requests_of_any_shape(values, policy) -> None:
    web = only_protocol_errors(protocol.parse_web_request,
                               json.dumps({"urls": values, "policy": policy}).encode())
    for q in web[0] if web else ():  # one rule: an accepted host is a host name
        assert q.canonical.isascii() and "%" not in q.host
    domains = only_protocol_errors(protocol.parse_domain_request,
                                   json.dumps({"items": values}).encode())
    for d in domains or ():
        assert d.name.isascii()


@examples(150)
@given(url_texts | json_values, st.dictionaries(any_text(10), json_values,
                                                max_size=4), st.booleans())
def test_inspect_requests_of_any_shape_are_relayable_once_accepted(url, extra, ascii_only) -> None:
    doc = {**extra, "url": url}
    raw = json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    q = only_protocol_errors(protocol.parse_inspect_request, raw)
    if q is not None:  # the relay sends the document as UTF-8
        json.dumps(json.loads(q.body), ensure_ascii=False).encode("utf-8")


@SETTINGS
@given(any_text(200) | url_texts)
def test_canonicalization_is_total_and_idempotent(text: str) -> None:
    try:
        canonical = urls.canonicalize(text)
    except UrlError:
        return
    assert urls.canonicalize(canonical) == canonical
    assert 1 <= len(urls.expressions(canonical)) <= 30


# ---------------------------------------------------------------- every route, any request

# Every path the query door routes (proxy.serve.routes and proxy.serve.keeper), and some it does not.
ROUTES = [
    "/v1/file", "/v1/file/", "/v1/web", "/v1/domain", "/v1/domain/", "/v1/inspect", "/healthz",
    "/readyz", "/metrics", "/v1/agent-pattern", "/v1/patterns/", f"/v1/patterns/{repo.MANIFEST}",
    f"/v1/patterns/{repo.SIGNATURE}", "/v1/patterns/full/", "/v1/patterns/diffs/", "/", "/v1/",
    "/v4/threatLists", "/v4/threatListUpdates:fetch", "/v4/fullHashes:find", "/v4/threatMatches:find", "/v4/",
]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "get"]


def test_the_route_list_covers_every_path_the_routes_serve() -> None:
    served = {route.path for route in paths.ROUTES}  # the one table the routes serve
    assert {"/v1/file", "/v1/file/", "/v1/agent-pattern"} <= served <= set(ROUTES)


def _escaped(text: str) -> str:
    """Any text as a client would percent-encode it (lone surrogates as their 3 bytes)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


target_pieces = st.one_of(
    escapes, any_text(20).map(_escaped), url_texts.map(_escaped),
    st.sampled_from(["%", "%2", "%zz", "%25", "%2525ff", "..", "/", "//", "%00", "%2F", "+", "=",
                     "&", ";", "a" * 64, "ab" * 16, "full/smart-scan/2026120109/x", "x.diff"]),
    st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),  # raw bytes
)
queries = st.lists(
    st.tuples(st.sampled_from(["url", "policy", "from", "x"]), url_texts.map(_escaped))
    | st.tuples(st.sampled_from(["url", "policy", "from", "x"]) | target_pieces, target_pieces),
    max_size=12,
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
bodies = st.one_of(
    st.binary(max_size=200),
    st.tuples(st.sampled_from(["urls", "items", "url", "content", "policy"]),
              st.lists(url_texts | json_values, max_size=4) | url_texts | json_values,
              st.dictionaries(any_text(8), json_values, max_size=3),
              st.booleans())
    .map(lambda t: json.dumps({**t[2], t[0]: t[1]}, ensure_ascii=t[3]).encode("utf-8", "surrogatepass")),
)
# What each POST service reads, filled with anything: the parsers' deeper paths.
_KEYS = {"/v1/file": "items", "/v1/web": "urls", "/v1/domain": "items", "/v1/inspect": "url"}
shaped_bodies = st.tuples(
    st.sampled_from(sorted(_KEYS)),
    st.lists(url_texts | file_items | json_values, min_size=1, max_size=6),
    st.dictionaries(st.sampled_from(["policy", "content", "x"]), json_values | any_text(20), max_size=2),
    st.booleans(),
)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    with opened_app(tmp_path_factory.mktemp("fuzz")) as opened:
        yield opened


async def _settle(result: Awaitable[Response]) -> Response:
    try:
        return await result
    except ProtocolError as e:
        return error_response(e)


def answer(app: App, request: Request) -> Response:
    """What the door answers, with any exception but a ProtocolError left to fail the test."""
    try:
        result = app.routes(request)
    except ProtocolError as e:
        assert_client_error(e)
        return error_response(e)
    if isinstance(result, Response):
        return result
    return asyncio.run(_settle(result))


def assert_not_a_5xx(app: App, method: str, target: str, body: bytes = b"",
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    raw = target.encode("utf-8", "surrogateescape")  # raw bytes pieces as they were sent
    response = answer(app, Request(method, raw, headers or [], body, "127.0.0.1"))
    ready = target.startswith("/readyz") and response.status == 503  # not ready: by design
    assert response.status < 500 or ready, (response.status, response.body[:300])
    if response.content_type == "application/json" and response.body:
        assert valid_unicode(json.loads(response.body.decode("utf-8")))


@examples(300)
@given(st.sampled_from(METHODS) | st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=8),
       st.sampled_from(ROUTES), st.just("") | st.lists(target_pieces, max_size=4).map("".join),
       st.none() | queries, bodies,
       st.lists(st.tuples(st.sampled_from([b"if-none-match", b"content-type", b"x"]),
                          st.binary(max_size=40)), max_size=2))
def test_no_request_to_any_route_is_a_5xx(app: App, method: str, route: str, rest: str,
                                         query: str | None, body: bytes,
                                         headers: list[tuple[bytes, bytes]]) -> None:
    target = route + rest + ("" if query is None else "?" + query)
    assert_not_a_5xx(app, method, target, body, headers)


@examples(300)
@given(st.sampled_from(["GET", "HEAD"]),
       st.sampled_from(["/v1/web", "/v1/agent-pattern", "/v1/domain/", "/v1/file/", "/v1/patterns/"]),
       st.just("") | target_pieces | host_texts.map(_escaped), queries,
       st.none() | st.binary(max_size=70))
# what the probe of issue 7 found, kept as seeds
@example("GET", "/v1/web", "", "a=1&b=2&c=3&d=4&e=5&url=http://x.test/", None)
@example("GET", "/v1/agent-pattern", "", "a=1&b=2&c=3&d=4&e=5", None)
@example("GET", "/v1/web", "", "url=http://%ED%A0%80.example/", None)
@example("GET", "/v1/domain/", "%ED%A0%80.example", "", None)
def test_no_get_with_any_item_or_query_is_a_5xx(app: App, method: str, route: str, item: str,
                                               query: str, etag: bytes | None) -> None:
    headers = [] if etag is None else [(b"If-None-Match", etag)]
    assert_not_a_5xx(app, method, f"{route}{item}?{query}", headers=headers)


@examples(200)
@given(shaped_bodies)
@example(("/v1/web", ["http://\ud800.example/"], {}, True))
@example(("/v1/inspect", ["http://a.test/"], {"x": "\ud800"}, True))
@example(("/v1/inspect", ["http://\ud800.example/"], {}, False))
def test_no_post_with_any_body_is_a_5xx(app: App, shaped: tuple[str, list[Any], dict[str, Any], bool]
                                        ) -> None:
    route, values, extra, ascii_only = shaped
    doc = {**extra, _KEYS[route]: values[0] if route == "/v1/inspect" else values}
    body = json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert_not_a_5xx(app, "POST", route, body)


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed or not data, "wrote after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


request_lines = st.sampled_from([
    b"GET /v1/file/abc HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST /v1/file HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
])


@settings(max_examples=200, deadline=None)
@given(st.lists(request_lines | st.binary(max_size=80), max_size=6), st.integers(1, 40))
def test_the_http_server_survives_any_byte_stream(pieces, cut) -> None:
    import asyncio

    from proxy.serve.server import HttpConnection, ServerLimits

    async def run() -> None:
        conn = HttpConnection(lambda r: Response(200, b"{}"), ServerLimits(max_header=256, max_body=64))
        transport = _Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        stream = b"".join(pieces)
        for i in range(0, len(stream), cut):
            conn.data_received(stream[i:i + cut])
        conn.connection_lost(None)
        text = bytes(transport.out)
        # whatever was answered is whole HTTP/1.1 responses
        assert text == b"" or text.startswith(b"HTTP/1.1 ")

    asyncio.run(run())
