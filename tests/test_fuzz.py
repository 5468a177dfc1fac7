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
