"""Property tests: whatever arrives from the network, the parsers answer a value or a
ProtocolError naming the problem — never another exception (which the door would turn into a 500).
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import protocol, urls
from proxy.errors import ProtocolError

LIMITS = protocol.Limits(max_batch=50, max_url=512)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
hexish = st.text(alphabet="0123456789abcdefABCDEFg \t", min_size=0, max_size=70)
file_items = st.lists(
    st.dictionaries(st.sampled_from(["sha256", "sha1", "md5", "crc"]), hexish | json_values,
                    min_size=0, max_size=2) | json_values,
    max_size=60,
)


def only_protocol_errors(parse, body: bytes) -> None:
    try:
        parse(body, LIMITS)
    except ProtocolError as e:
        assert 400 <= e.status < 500 and e.message


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
        return
    # what parsed is exactly what was sent, digests lower-cased, in order
    assert len(batch) == len(items)
    for item, name, hexed in zip(items, batch.names, batch.hexes):
        assert item == {name: item[name]} and item[name].lower() == hexed


@SETTINGS
@given(st.lists(st.text(max_size=120) | json_values, max_size=8), json_values)
def test_web_and_domain_requests_of_any_shape(values, policy) -> None:
    only_protocol_errors(protocol.parse_web_request,
                         json.dumps({"urls": values, "policy": policy}).encode())
    only_protocol_errors(protocol.parse_domain_request, json.dumps({"items": values}).encode())


@SETTINGS
@given(st.text(max_size=200))
def test_canonicalization_is_total_and_idempotent(text: str) -> None:
    try:
        canonical = urls.canonicalize(text)
    except urls.UrlError:
        return
    assert urls.canonicalize(canonical) == canonical
    assert 1 <= len(urls.expressions(canonical)) <= 30


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

    from proxy.server import HttpConnection, Response, ServerLimits

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
