"""Both doors read a request target the same way: as the bytes the client sent.

The query door's server hands the routes the target's bytes; the intercept door gets
mitmproxy's flow, whose ``path`` is text decoded with surrogateescape. Re-encoding that
text as Latin-1 turned raw UTF-8 into other bytes (and other text into '?'), so the
two doors answered the same request differently.
"""

from __future__ import annotations

import json

import pytest
from mitmproxy.test import tflow

from addons.intercept import engine_request
from proxy.errors import ProtocolError
from proxy.serve.app import App
from proxy.wire.http import Request, Response, error_response


def answer(app: App, request: Request) -> tuple[int, dict[str, object]]:
    try:
        response = app.routes(request)
    except ProtocolError as e:
        response = error_response(e)
    assert isinstance(response, Response)
    return response.status, json.loads(response.body)


@pytest.mark.parametrize(
    "target",
    [b"/v1/domain/b\xc3\xbccher.example",  # raw UTF-8
     b"/v1/domain/\xe4\xb8\xad\xe6\x96\x87.example",  # raw UTF-8 outside Latin-1
     b"/v1/domain/\xff\xfe.example",  # raw bytes that are not UTF-8
     b"/v1/web?url=http://b\xc3\xbccher.example/"],
)
def test_the_intercept_door_answers_a_raw_target_as_the_query_door_does(
    app: App, target: bytes
) -> None:
    flow = tflow.tflow()
    flow.request.data.path = target
    assert engine_request(flow).target == target
    via_query_door = answer(app, Request("GET", target, [], b"", "127.0.0.1"))
    assert answer(app, engine_request(flow)) == via_query_door
