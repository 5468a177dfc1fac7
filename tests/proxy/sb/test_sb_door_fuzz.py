"""Any request to a /v4/ path of the query door, with the real Safe Browsing handler in its
slot (as addons.query_door sets it), is answered 200 or a 4xx in the v4 error form, never a
5xx or an exception: clients back off for 15 minutes to a day after a 5xx."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import ProtocolError
from proxy.sb.api import SafeBrowsing
from proxy.serve.app import App
from proxy.wire.http import Request, Response, error_response
from tests.conftest import opened_app

PATHS = ["/v4/threatLists", "/v4/threatListUpdates:fetch", "/v4/fullHashes:find",
         "/v4/threatMatches:find", "/v4/", "/v4/threatLists/x", "/v4/encodedUpdates/abc"]
LISTS = ["MALWARE", "SOCIAL_ENGINEERING", "UNWANTED_SOFTWARE", "THREAT_TYPE_UNSPECIFIED", "X", 3, None]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    with opened_app(tmp_path_factory.mktemp("sbfuzz")) as app:
        app.safe_browsing = SafeBrowsing(lambda: app.engine, app.cfg).handle
        yield app


def answer(app: App, method: str, target: bytes, body: bytes, content_type: bytes | None) -> Response:
    headers = [] if content_type is None else [(b"Content-Type", content_type)]
    try:
        result = app.routes(Request(method, target, headers, body, "127.0.0.1"))
    except ProtocolError as e:  # only the door's v1 errors may be raised; none on /v4/
        pytest.fail(f"a /v4/ request raised {e!r}")
        return error_response(e)
    assert isinstance(result, Response)
    return result


def check(r: Response) -> None:
    assert r.status < 500, (r.status, r.body[:300])
    if r.status != 200:
        error = json.loads(r.body)["error"]
        assert error["code"] == r.status and error["status"] and error["message"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
b64 = st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=10)
list_request = st.fixed_dictionaries({
    "threatType": st.sampled_from(LISTS), "platformType": st.sampled_from(["ANY_PLATFORM", "LINUX", 7]),
    "threatEntryType": st.sampled_from(["URL", "IP_RANGE", None]), "state": b64,
    "constraints": st.fixed_dictionaries({
        "supportedCompressions": st.lists(st.sampled_from(["RAW", "RICE", "X", 5]), max_size=3),
        "maxUpdateEntries": st.integers(-5, 2**40), "maxDatabaseEntries": st.integers(-5, 2**40)}),
})
threat_info = st.fixed_dictionaries({
    "threatTypes": st.lists(st.sampled_from(LISTS), max_size=3),
    "platformTypes": st.lists(st.sampled_from(["ANY_PLATFORM", "WINDOWS", "NOPE"]), max_size=2),
    "threatEntryTypes": st.lists(st.sampled_from(["URL", "EXECUTABLE", "Q"]), max_size=2),
    "threatEntries": st.lists(st.fixed_dictionaries({}, optional={"hash": b64, "url": st.text(max_size=40)}),
                              max_size=5),
})
shaped = st.one_of(
    st.builds(lambda r, extra: {"client": {"clientId": "f"}, "listUpdateRequests": r, **extra},
              st.lists(list_request, max_size=4),
              st.dictionaries(st.text(max_size=6), json_values, max_size=2)),
    st.builds(lambda t, s: {"client": {"clientId": "f"}, "clientStates": s, "threatInfo": t},
              threat_info, st.lists(b64, max_size=3)),
    st.builds(lambda t: {"client": {}, "threatInfo": t}, threat_info),
)
bodies = st.one_of(st.binary(max_size=120), json_values.map(lambda v: json.dumps(v).encode()),
                   shaped.map(lambda v: json.dumps(v).encode()))
queries = st.sampled_from(["", "?key=k", "?alt=proto", "?alt=json&key=x", "?alt=xml", "?alt=%ff",
                           "?" + "&".join(f"a{i}=1" for i in range(12)), "?$prettyPrint=false&alt=proto"])
content_types = st.sampled_from([None, b"application/json", b"application/x-protobuf", b"text/plain",
                                 b"application/json; charset=utf-8", b"\xff"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE"]), st.sampled_from(PATHS), queries,
       bodies, content_types)
def test_no_v4_request_is_a_5xx(app: App, method: str, path: str, query: str, body: bytes,
                                content_type: bytes | None) -> None:
    check(answer(app, method, (path + query).encode(), body, content_type))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(PATHS[1:4]), shaped, st.sampled_from(["", "?alt=proto"]))
def test_no_shaped_v4_body_is_a_5xx(app: App, path: str, doc: dict[str, Any], query: str) -> None:
    check(answer(app, "POST", (path + query).encode(), json.dumps(doc).encode(), b"application/json"))
