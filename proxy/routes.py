"""The query door's routes: a request in, a response out (or an awaitable one when relaying).

Shared by every door that answers the protocol (the query door here, the
intercept door in ``addons``), so a product cannot tell them apart.
"""

from __future__ import annotations

import json
import operator
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote

from proxy import protocol
from proxy.engine import Ask, Engine
from proxy.errors import ProtocolError
from proxy.model import InspectQuery, Policy, Service, Source
from proxy.server import Request, Response

Render = Callable[[list[Any]], bytes]
_source = operator.attrgetter("source")
_CHANGING = {Source.CACHE, Source.DEGRADED}  # answers whose TTL or content change over time


def _method(request: Request, *allowed: str) -> None:
    if request.method not in allowed:
        raise ProtocolError(
            "method_not_allowed",
            f"{request.method} is not allowed here; use {' or '.join(allowed)}",
            status=405,
            headers=(("Allow", ", ".join(allowed)),),
        )


class Routes:
    """Maps paths to engine calls. ``health`` supplies /readyz's body and status."""

    def __init__(
        self,
        engine: Engine,
        limits: protocol.Limits,
        *,
        ready: Callable[[], tuple[bool, dict[str, Any]]],
        metrics: Callable[[], bytes],
        patterns: Callable[[Request], Response | Awaitable[Response]] | None = None,
    ) -> None:
        self.engine = engine
        self.limits = limits
        self.ready = ready
        self.metrics = metrics
        self.patterns = patterns  # /v1/patterns/... and /v1/agent-pattern (proxy.keeper)
        self.started = time.time()
        # GET target -> (service, sources, response) for answers that only the pattern and
        # the lists decided: valid while both are the very objects in _memo_of.
        self._memo: dict[bytes, tuple[Service, Counter[Any], Response]] = {}
        self._memo_of: tuple[object, object] = (None, None)
        self._local: tuple[Service, Counter[Any]] | None = None

    def __call__(self, request: Request) -> Response | Awaitable[Response]:
        if request.method == "GET":
            engine = self.engine
            if self._memo_of[0] is not engine.patterns or self._memo_of[1] is not engine.lists:
                self._memo.clear()  # a new pattern or new lists: every memoised answer is void
                self._memo_of = (engine.patterns, engine.lists)
            memo = self._memo.get(request.target)
            if memo is not None:
                engine.stats.count_items(memo[0], memo[1])
                return memo[2]
            self._local = None
            result = self._route(request)
            if self._local is not None and isinstance(result, Response):
                if len(self._memo) >= 4096:
                    self._memo.clear()
                self._memo[request.target] = (*self._local, result)
            return result
        return self._route(request)

    def _route(self, request: Request) -> Response | Awaitable[Response]:
        target = request.target
        path, _, query = target.partition(b"?")
        p = path.decode("latin-1")
        if p == "/v1/file":
            _method(request, "POST")
            return self._file(protocol.parse_file_request(request.body, self.limits))
        if p.startswith("/v1/file/"):
            _method(request, "GET", "HEAD")
            digest = unquote(p[9:]) if "%" in p else p[9:]
            return self._file(protocol.FileBatch.of([protocol.parse_hash(digest, item=0)]))
        if p == "/v1/web":
            if request.method == "GET":
                return self._web_get(query)
            _method(request, "POST", "GET")
            qs, policy = protocol.parse_web_request(request.body, self.limits)
            return self._web(qs, policy)
        if p == "/v1/domain":
            _method(request, "POST")
            return self._domain(protocol.parse_domain_request(request.body, self.limits))
        if p.startswith("/v1/domain/"):
            _method(request, "GET", "HEAD")
            return self._domain([protocol.parse_domain(unquote(p[11:]), 0)])
        if p == "/v1/inspect":
            _method(request, "POST")
            return self._inspect(protocol.parse_inspect_request(request.body, self.limits))
        if p == "/healthz":
            _method(request, "GET", "HEAD")
            return Response(200, b'{"status":"alive"}')
        if p == "/readyz":
            _method(request, "GET", "HEAD")
            ok, body = self.ready()
            return Response(200 if ok else 503, json.dumps(body, sort_keys=True).encode())
        if p == "/metrics":
            _method(request, "GET", "HEAD")
            return Response(200, self.metrics(), content_type="text/plain; version=0.0.4")
        if self.patterns is not None and (p == "/v1/agent-pattern" or p.startswith("/v1/patterns/")):
            return self.patterns(request)
        raise ProtocolError("not_found", f"no such path {p[:100]!r}", status=404)

    # ---------------------------------------------------------------- services

    def _answer(
        self, service: Service, answers: list[Any], ask: Ask, render: Render
    ) -> Response | Awaitable[Response]:
        if not ask:
            sources = Counter(map(_source, answers))
            self.engine.stats.count_items(service, sources)
            if not sources.keys() & _CHANGING:
                self._local = (service, sources)
            return Response(200, render(answers))
        return self._later(service, answers, ask, render)

    async def _later(self, service: Service, answers: list[Any], ask: Ask, render: Render) -> Response:
        await self.engine.relay_fill(service, answers, ask)
        return Response(200, render(self.engine.count(service, answers)))

    def _file(self, batch: protocol.FileBatch) -> Response | Awaitable[Response]:
        version = self.engine.version
        answers, ask = self.engine.begin_files(batch)
        return self._answer(
            Service.FILE, answers, ask, lambda a: protocol.render_files(version, batch, a)
        )

    def _web_get(self, query: bytes) -> Response | Awaitable[Response]:
        params = parse_qs(query.decode("latin-1"), max_num_fields=4)
        found = params.get("url")
        if not found:
            raise ProtocolError("bad_request", "GET /v1/web needs ?url=…")
        policy = protocol.parse_policy(params["policy"][0]) if "policy" in params else None
        return self._web([protocol.parse_url(found[0], self.limits, 0)], policy)

    def _web(self, qs: list[Any], policy: Policy | None) -> Response | Awaitable[Response]:
        version = self.engine.version
        answers, ask = self.engine.begin_web(qs)
        return self._answer(
            Service.WEB, answers, ask, lambda a: protocol.render_web(version, qs, a, policy)
        )

    def _domain(self, qs: list[Any]) -> Response | Awaitable[Response]:
        version = self.engine.version
        answers, ask = self.engine.begin_domains(qs)
        return self._answer(
            Service.DOMAIN, answers, ask, lambda a: protocol.render_domains(version, qs, a)
        )

    def _inspect(self, q: InspectQuery) -> Response | Awaitable[Response]:
        version = self.engine.version
        answers, ask = self.engine.begin_inspect(q)
        return self._answer(
            Service.INSPECT, answers, ask, lambda a: protocol.render_inspect(version, q, a[0])
        )
