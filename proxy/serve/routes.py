"""The query door's routes: a request in, a response out (or an awaitable one when relaying).

Shared by every door that answers the protocol (the query door here, the
intercept door in ``addons``), so a product cannot tell them apart.

A request target is read as UTF-8 once percent-decoded: a path item
(``/v1/domain/<name>``, ``/v1/file/<hash>``) or a query parameter that decodes
to bytes that are not UTF-8 is a 400 naming it, never text with replacement
characters; a query string has at most ``MAX_QUERY_FIELDS`` parameters (more is
a 400), unknown ones are ignored and a repeated one counts once, first value.

The Safe Browsing v4 routes (``/v4/...``) are answered by a handler given as
``safe_browsing`` (``proxy.sb.api.SafeBrowsing.handle``, set by the door: this
package does not import ``proxy.sb``); while there is none they are a 404. Every
error on a ``/v4/`` path, the door's own included, is in the v4 form
(``{"error": {"code", "message", "status"}}``), the one its clients read.
"""

from __future__ import annotations

import json
import logging
import operator
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from proxy.decide.engine import Ask, Engine
from proxy.errors import ProtocolError
from proxy.model import InspectQuery, Policy, Service, Source
from proxy.wire import paths, protocol, replies
from proxy.wire.http import Handler, Request, Response

logger = logging.getLogger(__name__)

Render = Callable[[list[Any]], "bytes | Response"]
SafeBrowsingHandler = Callable[[str, str, dict[str, str], bytes, str], tuple[int, bytes, str]]
"""(method, path, query, body, content type) -> (status, body, content type); never raises."""
Serve = Callable[[Request, str, bytes], "Response | Awaitable[Response]"]
_source = operator.attrgetter("source")
_CHANGING = {Source.CACHE, Source.DEGRADED}  # answers whose TTL or content change over time
MAX_QUERY_FIELDS = 4
MAX_SB_QUERY_FIELDS = 8  # key, alt, $prettyPrint, fields, ...: what v4 clients send
_V4 = "/v4/"
_V4_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT",
              500: "INTERNAL"}


def parse_query(query: bytes, what: str, item: str = "", code: str = "bad_request",
                limit: int = MAX_QUERY_FIELDS) -> dict[str, str]:
    """A request target's query string: each parameter's first value, percent-decoded.

    At most ``limit`` parameters; names and values must be UTF-8 once
    decoded (raw bytes and escapes alike). ``what`` names the request in the errors;
    the parameter named ``item`` is the request's item: its error is ``code``, item 0.
    """
    try:
        pairs = parse_qsl(query.decode("latin-1"), max_num_fields=limit,
                          encoding="latin-1")  # one character per byte, decoded below
    except ValueError:
        raise ProtocolError(
            "bad_request", f"{what} takes at most {limit} query parameters; "
            f"this one has {query.count(b'&') + 1}") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        shown = name[:80].encode("latin-1").decode("utf-8", "backslashreplace")
        where = f"query parameter {shown!r} of {what}"
        name = _utf8(name, where, "bad_request")
        if name not in out:
            out[name] = (_utf8(value, where, code, 0) if name == item
                         else _utf8(value, where, "bad_request"))
    return out


def unquote_path(text: str, code: str) -> str:
    """A path item (``text`` as the target's bytes, one character each), percent-decoded."""
    if "%" not in text and text.isascii():
        return text
    return _utf8(unquote_to_bytes(text.encode("latin-1")).decode("latin-1"),
                 repr(text[:100]), code, 0)


def _utf8(chars: str, what: str, code: str, item: int | None = None) -> str:
    """``chars`` (one per byte) as the UTF-8 text they spell; a 400 ``code`` if they do not."""
    if chars.isascii():
        return chars
    try:
        return chars.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(
            code, f"{what} is not UTF-8 once percent-decoded ({e.reason} at byte {e.start})",
            item=item) from None


class Routes:
    """Serves the routes of ``proxy.wire.paths`` (the one table of paths and methods: an
    unknown path is a 404, a method it does not list a 405 naming the allowed ones).
    ``ready`` supplies /readyz's body: a door that answers is ready (a stale pattern
    still answers, and says so in the body)."""

    def __init__(
        self,
        engine: Engine,
        limits: protocol.Limits,
        *,
        ready: Callable[[], dict[str, Any]],
        metrics: Callable[[], bytes],
        patterns: Handler | None = None,
        safe_browsing: Callable[[], SafeBrowsingHandler | None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.limits = limits
        self.ready = ready
        self.metrics = metrics
        self.patterns = patterns  # /v1/patterns/... and /v1/agent-pattern (proxy.serve.keeper)
        self.safe_browsing = safe_browsing  # the /v4/ routes' handler, read per request
        self.started = time.time()
        # GET target -> (service, sources, response) for answers that only the pattern and
        # the lists decided: valid while both are the very objects in _memo_of.
        self._memo: dict[bytes, tuple[Service, Counter[Any], Response]] = {}
        self._memo_of: tuple[object, object] = (None, None)
        self._local: tuple[Service, Counter[Any]] | None = None
        self._client: str | None = None  # the request's peer, for list rules scoped to networks
        self._serves = self._table()

    def __call__(self, request: Request) -> Response | Awaitable[Response]:
        self._client = request.client
        if request.method == "GET":
            engine = self.engine
            if self._memo_of[0] is not engine.patterns or self._memo_of[1] is not engine.lists:
                self._memo.clear()  # a new pattern or new lists: every memoised answer is void
                self._memo_of = (engine.patterns, engine.lists)
            # With rules scoped to client networks an answer depends on who asks.
            key = request.target + b" " + request.client.encode() if engine.lists.scoped else request.target
            memo = self._memo.get(key)
            if memo is not None:
                engine.stats.count_items(memo[0], memo[1])
                return memo[2]
            self._local = None
            result = self._route(request)
            if self._local is not None and isinstance(result, Response):
                if len(self._memo) >= 4096:
                    self._memo.clear()
                self._memo[key] = (*self._local, result)
            return result
        return self._route(request)

    def repeat(self, request: Request, response: Response
               ) -> tuple[Callable[[], bool], Service, Counter[Any]] | None:
        """For a GET answered from the memo: whether the answer still holds (the pattern
        and the lists are the very objects it was made from), and the service and item
        sources a memo hit counts (``App.repeat`` counts them); else None."""
        if request.method != "GET":
            return None
        engine = self.engine
        key = request.target + b" " + request.client.encode() if engine.lists.scoped else request.target
        memo = self._memo.get(key)
        if memo is None or memo[2] is not response:
            return None
        patterns, lists = self._memo_of

        def holds() -> bool:
            return engine.patterns is patterns and engine.lists is lists

        return holds, memo[0], memo[1]

    def _route(self, request: Request) -> Response | Awaitable[Response]:
        path, _, query = request.target.partition(b"?")
        p = path.decode("latin-1")
        if p.startswith(_V4):
            try:
                return self._route_path(request, p, query)
            except ProtocolError as e:  # the door's own errors, as v4 clients read them
                return v4_error(e.status, e.message, e.headers)
        return self._route_path(request, p, query)

    def _route_path(self, request: Request, p: str, query: bytes) -> Response | Awaitable[Response]:
        route = paths.route_of(p)
        serve = self._serves.get(route.path) if route is not None else None
        if route is None or serve is None:
            raise ProtocolError("not_found", f"no such path {p[:100]!r}", status=404)
        if request.method not in route.methods:
            allowed = route.methods
            raise ProtocolError(
                "method_not_allowed",
                f"{request.method} is not allowed here; use {' or '.join(allowed)}",
                status=405,
                headers=(("Allow", ", ".join(allowed)),),
            )
        return serve(request, p[len(route.path):] if route.prefix else "", query)

    def _table(self) -> dict[str, Serve]:
        """What serves each route of ``proxy.wire.paths``: its request, the item after a
        prefix route's path (still percent-encoded) and the query."""
        serves: dict[str, Serve] = {
            paths.FILE.path: lambda r, _, __: self._file(
                protocol.parse_file_request(r.body, self.limits)),
            paths.FILE_ONE.path: lambda _, item, __: self._file(
                protocol.FileBatch.of([protocol.parse_hash(unquote_path(item, "bad_hash"), item=0)])),
            paths.WEB.path: self._web_request,
            paths.DOMAIN.path: lambda r, _, __: self._domain(
                protocol.parse_domain_request(r.body, self.limits)),
            paths.DOMAIN_ONE.path: lambda _, item, __: self._domain(
                [protocol.parse_domain(unquote_path(item, "bad_domain"), 0)]),
            paths.INSPECT.path: lambda r, _, __: self._inspect(
                protocol.parse_inspect_request(r.body, self.limits)),
            paths.HEALTHZ.path: lambda _, __, ___: Response(200, b'{"status":"alive"}'),
            paths.READYZ.path: lambda _, __, ___: Response(
                200, json.dumps(self.ready(), sort_keys=True).encode()),
            paths.METRICS.path: lambda _, __, ___: Response(
                200, self.metrics(), content_type="text/plain; version=0.0.4"),
        }
        for route in paths.SAFE_BROWSING:
            serves[route.path] = self._safe_browsing
        patterns = self.patterns
        if patterns is not None:
            serves[paths.AGENT_PATTERN.path] = serves[paths.PATTERNS.path] = (
                lambda r, _, __: patterns(r))
        return serves

    def _safe_browsing(self, request: Request, _: str, query: bytes) -> Response:
        """A v4 request to the handler: the path, the query (``key=`` is the handler's to
        ignore), the body and its Content-Type; its answer as it gives it."""
        handler = self.safe_browsing()
        path = request.target.partition(b"?")[0].decode("latin-1")
        if handler is None:
            return v4_error(404, f"the Safe Browsing API is not served here ({path[:100]!r})")
        params = parse_query(query, f"{request.method} {path[:100]}", limit=MAX_SB_QUERY_FIELDS)
        content_type = (request.header(b"content-type") or b"").decode("latin-1")
        method = "GET" if request.method == "HEAD" else request.method
        try:
            status, body, kind = handler(method, path, params, request.body, content_type)
        except Exception:  # the handler's contract is to answer; a failure is logged, not raised
            logger.exception("the Safe Browsing handler failed on %s %s", method, path[:100])
            return v4_error(500, "internal error")
        return Response(status, body, content_type=kind)

    # ---------------------------------------------------------------- services

    def _answer(
        self, service: Service, answers: list[Any], ask: Ask, render: Render
    ) -> Response | Awaitable[Response]:
        if not ask:
            sources = Counter(map(_source, answers))
            self.engine.stats.count_items(service, sources)
            if not sources.keys() & _CHANGING:
                self._local = (service, sources)
            return _ok(render(answers))
        return self._later(service, answers, ask, render)

    async def _later(self, service: Service, answers: list[Any], ask: Ask, render: Render) -> Response:
        return _ok(render(await self.engine.finish(service, answers, ask)))

    def _file(self, batch: protocol.FileBatch) -> Response | Awaitable[Response]:
        version = self.engine.version
        answers, ask = self.engine.begin_files(batch, self._client)
        return self._answer(Service.FILE, answers, ask, lambda a: _file_response(version, batch, a))

    def _web_request(self, request: Request, _: str, query: bytes) -> Response | Awaitable[Response]:
        if request.method == "GET":
            return self._web_get(query)
        qs, policy = protocol.parse_web_request(request.body, self.limits)
        return self._web(qs, policy)

    def _web_get(self, query: bytes) -> Response | Awaitable[Response]:
        params = parse_query(query, "GET /v1/web", "url", "bad_url")
        found = params.get("url")
        if not found:
            raise ProtocolError("bad_request", "GET /v1/web needs ?url=…")
        policy = protocol.parse_policy(params["policy"]) if "policy" in params else None
        return self._web([protocol.parse_url(found, self.limits, 0)], policy)

    def _web(self, qs: list[Any], policy: Policy | None) -> Response | Awaitable[Response]:
        version = self.engine.version
        answers, ask = self.engine.begin_web(qs, self._client)
        return self._answer(
            Service.WEB, answers, ask, lambda a: replies.render_web(
                version, qs, a, policy, block_degraded=self.engine.block_degraded)
        )

    def _domain(self, qs: list[Any]) -> Response | Awaitable[Response]:
        version = self.engine.version
        answers, ask = self.engine.begin_domains(qs, self._client)
        return self._answer(
            Service.DOMAIN, answers, ask, lambda a: replies.render_domains(version, qs, a)
        )

    def _inspect(self, q: InspectQuery) -> Response | Awaitable[Response]:
        version = self.engine.version
        answers, ask = self.engine.begin_inspect(q, self._client)
        return self._answer(
            Service.INSPECT, answers, ask, lambda a: replies.render_inspect(version, q, a[0])
        )


def _ok(rendered: bytes | Response) -> Response:
    return rendered if isinstance(rendered, Response) else Response(200, rendered)


def _file_response(version: str, batch: protocol.FileBatch, answers: list[Any]) -> Response:
    """A file batch's answer, carrying its items by column for the query log (a one-item
    answer does not: the log reads those by their shape, memoised per body object, which
    a repeated GET hands out again)."""
    body, batch, tails = replies.render_file_parts(version, batch, answers)
    if len(tails) < 2:
        return Response(200, body)
    return Response(200, body, items=("file", batch.names, batch.hexes, tails))


def v4_error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """A Safe Browsing v4 error: ``{"error": {"code", "message", "status"}}``."""
    body = {"error": {"code": status, "message": message, "status": _V4_STATUS.get(status, "UNKNOWN")}}
    return Response(status, json.dumps(body).encode(), headers=headers)
