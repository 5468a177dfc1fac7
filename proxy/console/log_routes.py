"""The admin API's logs: search (filters, text or regular expression, paging) and export
(CSV or JSON), over ``proxy.logs`` of the running App. Both need ``read``.

Parameters come in the query string, as ``proxy.logs.search.Search.from_params`` reads
them (``log``, ``since``, ``until``, ``text``, ``regex``, ``limit``, ``offset``,
``cursor`` and the log's filters); a bad one is a 400 naming it. An export is at most
``proxy.logs.export.MAX_EXPORT_ROWS`` rows, made off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qsl

from proxy.console.api import Route
from proxy.errors import ProtocolError
from proxy.logs.export import export
from proxy.logs.search import Search, search
from proxy.wire.http import Request, Response

MAX_PARAMS = 24
MAX_QUERY_BYTES = 8192
KINDS = {"csv": "text/csv; charset=utf-8", "json": "application/json"}


def params_of(request: Request) -> dict[str, str]:
    """The query string's parameters (first value each); 400 when it is too long or not text."""
    query = request.target.partition(b"?")[2]
    if len(query) > MAX_QUERY_BYTES:
        raise ProtocolError("bad_request", f"query string over {MAX_QUERY_BYTES} bytes")
    try:
        pairs = parse_qsl(query.decode("utf-8"), max_num_fields=MAX_PARAMS, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("bad_request", f"the query string must be UTF-8 with at most"
                            f" {MAX_PARAMS} parameters") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        out.setdefault(name, value)
    return out


class LogOps:
    def __init__(self, app: Any) -> None:
        self.app = app

    def _logs(self) -> Any:
        logs = getattr(self.app, "logs", None)
        if logs is None:
            raise ProtocolError("no_logs", "the logs are not open yet", status=503)
        return logs

    async def search(self, request: Request, _: Any) -> dict[str, Any]:
        logs = self._logs()
        query = Search.from_params(params_of(request))
        page = await asyncio.to_thread(search, logs.store, query)
        return dict(page.to_json())

    async def export(self, request: Request, _: Any) -> Response:
        logs = self._logs()
        params = params_of(request)
        fmt = params.pop("format", "csv")
        if fmt not in KINDS:
            raise ProtocolError("bad_field", "parameter 'format' must be csv or json")
        query = Search.from_params(params)
        body = await asyncio.to_thread(lambda: b"".join(export(logs.store, query, fmt)))
        name = f"rampart-{query.log}-log.{fmt}"
        return Response(200, body, KINDS[fmt], headers=(
            ("Content-Disposition", f'attachment; filename="{name}"'),
            ("Cache-Control", "no-store")))


    async def top(self, request: Request, _: Any) -> dict[str, Any]:
        """The most blocked items and threats of the last ``hours`` (default 24, at most a week),
        for the dashboard; one indexed range scan of the query log."""
        logs = self._logs()
        raw = params_of(request).get("hours", "24")
        if not raw.isdigit() or not 1 <= int(raw) <= 168:
            raise ProtocolError("bad_field", "parameter 'hours' must be 1 to 168")
        since = time.time() - int(raw) * 3600

        def read() -> dict[str, Any]:
            conn = logs.store.connect()
            try:
                def top_of(column: str) -> list[list[Any]]:
                    rows = conn.execute(
                        f"SELECT {column}, SUM(count) AS n FROM query WHERE t >= ? AND blocked = 1"
                        f" AND {column} != '' GROUP BY {column} ORDER BY n DESC LIMIT ?",
                        (since, TOP)).fetchall()
                    return [[value, n] for value, n in rows]
                return {"hours": int(raw), "items": top_of("item"), "threats": top_of("threat"),
                        "sources": top_of("source")}
            finally:
                conn.close()

        return await asyncio.to_thread(read)


TOP = 10


def log_routes(ops: LogOps) -> list[Route]:
    return [
        Route("GET", "/api/logs", "read",
              "Search a log (query, blocked, updates, relay, audit): filters, text or regex,"
              " newest first, paged", ops.search),
        Route("GET", "/api/logs/export", "read", "Export a log's matching rows as CSV or JSON",
              ops.export),
        Route("GET", "/api/logs/top", "read",
              "The most blocked items, threats and sources of the last hours (?hours=24)", ops.top),
    ]
