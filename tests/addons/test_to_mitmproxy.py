"""``to_mitmproxy``'s templates: each flow's response equals what ``http.Response.make``
builds, and is its own object (a change to one flow's response is not another's)."""

from __future__ import annotations

from mitmproxy import http

from addons.intercept import SOURCE_HEADER, to_mitmproxy
from proxy.wire.http import Response


def made(response: Response, source: str) -> http.Response:
    """What ``to_mitmproxy`` would give without its templates."""
    headers = [(b"Content-Type", response.content_type.encode())]
    headers += [(k.encode(), v.encode()) for k, v in response.headers]
    if source:
        headers.append((SOURCE_HEADER.encode(), source.encode()))
    return http.Response.make(response.status, response.body, headers)


def state(r: http.Response) -> dict[str, object]:
    s = r.get_state()
    del s["timestamp_start"], s["timestamp_end"]  # each make stamps its own time
    return s


def test_each_response_equals_make_s_and_is_its_own() -> None:
    answers = [Response(200, b'{"results":[]}'), Response(404, b'{"error":{}}'),
               Response(429, b"{}", headers=(("Retry-After", "1"),)),
               Response(200, b"x" * 5000)]  # large: not kept as a template
    for answer in answers:
        for source in ("pattern", "cloud,cache", ""):
            first, second = to_mitmproxy(answer, source), to_mitmproxy(answer, source)
            assert state(first) == state(second) == state(made(answer, source))
            assert first is not second and first.data is not second.data
            first.headers["X-Test"] = "one"  # what mitmproxy or an addon may do to a flow's
            first.http_version = "HTTP/1.0"
            first.timestamp_end = 1.0
            assert "X-Test" not in second.headers and second.http_version == "HTTP/1.1"
            assert state(to_mitmproxy(answer, source)) == state(made(answer, source))
