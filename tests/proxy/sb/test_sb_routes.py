"""The /v4/ routes of the query door, called directly on an App (no listeners), with a
recording handler in the ``safe_browsing`` slot: what the door hands the handler, what it
hands back, the v4-style errors of the door's own refusals, and the metrics' route labels."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.errors import ProtocolError
from proxy.serve.app import App
from proxy.serve.intercept import engine_service
from proxy.wire.http import Request, Response, error_response

V4_PATHS = ["/v4/threatLists", "/v4/threatListUpdates:fetch", "/v4/fullHashes:find",
            "/v4/threatMatches:find"]


class Recorder:
    def __init__(self, answer: tuple[int, bytes, str] = (200, b"{}", "application/json")) -> None:
        self.calls: list[tuple[str, str, dict[str, str], bytes, str]] = []
        self.answer = answer

    def __call__(self, method: str, path: str, query: dict[str, str], body: bytes,
                 content_type: str) -> tuple[int, bytes, str]:
        self.calls.append((method, path, query, body, content_type))
        return self.answer


def call(app: App, method: str, target: str, body: bytes = b"",
         headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    result = app.routes(Request(method, target.encode(), headers or [], body, "127.0.0.1"))
    assert isinstance(result, Response)
    return result


def v4_error(response: Response) -> dict[str, Any]:
    error = json.loads(response.body)["error"]
    assert set(error) == {"code", "message", "status"} and error["code"] == response.status
    return dict(error)


@pytest.mark.parametrize("path", V4_PATHS)
def test_without_a_handler_every_v4_path_is_a_v4_404(app: App, path: str) -> None:
    method = "GET" if path == "/v4/threatLists" else "POST"
    r = call(app, method, path + "?key=x", b"{}")
    assert r.status == 404
    assert v4_error(r)["status"] == "NOT_FOUND"


def test_the_handler_gets_method_path_query_body_and_content_type(app: App) -> None:
    rec = Recorder((200, b"\x08\x01", "application/x-protobuf"))
    app.safe_browsing = rec
    r = call(app, "POST", "/v4/fullHashes:find?key=abc&alt=proto&%24prettyPrint=false", b"\x0a\x00",
             [(b"Content-Type", b"application/x-protobuf")])
    assert (r.status, r.body, r.content_type) == (200, b"\x08\x01", "application/x-protobuf")
    assert rec.calls == [("POST", "/v4/fullHashes:find",
                          {"key": "abc", "alt": "proto", "$prettyPrint": "false"},
                          b"\x0a\x00", "application/x-protobuf")]


def test_head_asks_the_handler_as_a_get_and_every_path_reaches_it(app: App) -> None:
    rec = Recorder()
    app.safe_browsing = rec
    call(app, "HEAD", "/v4/threatLists")
    for path in V4_PATHS[1:]:
        call(app, "POST", path, b"{}", [(b"content-type", b"application/json")])
    assert [(c[0], c[1]) for c in rec.calls] == [("GET", "/v4/threatLists")] + [
        ("POST", p) for p in V4_PATHS[1:]]


def test_the_handlers_own_400_is_passed_through(app: App) -> None:
    body = b'{"error":{"code":400,"message":"unknown list FOO","status":"INVALID_ARGUMENT"}}'
    app.safe_browsing = Recorder((400, body, "application/json"))
    r = call(app, "POST", "/v4/threatListUpdates:fetch", b"{}")
    assert (r.status, r.body) == (400, body)


def test_a_wrong_method_unknown_v4_path_and_bad_query_are_v4_errors(app: App) -> None:
    app.safe_browsing = rec = Recorder()
    r = call(app, "GET", "/v4/fullHashes:find")
    assert r.status == 405 and ("Allow", "POST") in r.headers
    assert "POST" in v4_error(r)["message"]
    r = call(app, "POST", "/v4/encodedUpdates/abc")
    assert r.status == 404 and v4_error(r)["status"] == "NOT_FOUND"
    r = call(app, "POST", "/v4/fullHashes:find?" + "&".join(f"p{i}=1" for i in range(20)), b"{}")
    assert r.status == 400 and v4_error(r)["status"] == "INVALID_ARGUMENT"
    r = call(app, "POST", "/v4/fullHashes:find?key=%ff", b"{}")
    assert r.status == 400 and "UTF-8" in v4_error(r)["message"]
    assert rec.calls == []


def test_a_handler_that_raises_is_a_v4_500_not_an_exception(app: App) -> None:
    def broken(*_: Any) -> tuple[int, bytes, str]:
        raise RuntimeError("bug")

    app.safe_browsing = broken
    r = call(app, "POST", "/v4/fullHashes:find", b"{}")
    assert r.status == 500 and v4_error(r)["status"] == "INTERNAL"


def test_v1_errors_keep_their_own_form(app: App) -> None:
    app.safe_browsing = Recorder()
    with pytest.raises(ProtocolError) as caught:  # the v1 way: the server renders it
        app.routes(Request("GET", b"/v1/nothing", [], b"", "127.0.0.1"))
    assert "status" not in json.loads(error_response(caught.value).body)["error"]


def test_v4_paths_ask_no_engine_service_so_the_intercept_door_forwards_them() -> None:
    assert all(engine_service(p + "?key=x") is None for p in V4_PATHS)


def test_metrics_count_v4_requests_by_route(app: App) -> None:
    app.safe_browsing = Recorder()
    request = Request("POST", b"/v4/fullHashes:find?key=k", [], b"{}", "127.0.0.1")
    response = call(app, "POST", "/v4/fullHashes:find?key=k", b"{}")
    app._observe(request, response, 0.001)
    text = app._metrics().decode()
    assert 'rampart_http_requests_total{path="/v4/fullHashes:find",status="200"} 1.0' in text
