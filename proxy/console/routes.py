"""The admin API's operations over one running App: sessions, status, lists, updates.

Each function takes the request and the authenticated caller (``Principal``, None for
the open routes) and returns JSON-able data; ``api_routes`` is the table the door
serves and the OpenAPI document describes. Permissions are those of
``proxy.console.accounts``: ``read`` for every role, ``lists.write`` and
``updates.run`` for operators and admins.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from proxy.console.api import JSON, SESSION_COOKIE, Route, answer, cookie, field, json_body
from proxy.console.log_routes import params_of
from proxy.decide import list_io
from proxy.decide.explain import explain_url
from proxy.decide.list_rules import Actor, EntryKind, ListName, parse_expiry
from proxy.decide.lists import KEEP
from proxy.errors import ConfigError, ProtocolError
from proxy.wire.http import Request, Response

MAX_VALUES = 1000
MAX_IMPORT_CHARS = 8 << 20
MAX_AUDIT = 10_000


def _entry_json(e: Any, now: float) -> dict[str, Any]:
    return {"list": e.list.value, "kind": e.kind.value, "value": e.value, "note": e.note,
            "created": e.created, "clients": [str(n) for n in e.clients],
            "expires": e.expires, "expired": e.expired(now), "added_by": e.added_by,
            "origin": e.origin}


def _kind(doc: dict[str, Any]) -> EntryKind | None:
    if doc.get("kind") in (None, ""):
        return None
    try:
        return EntryKind(field(doc, "kind", str, limit=16))
    except ValueError:
        kinds = ", ".join(k.value for k in EntryKind)
        raise ProtocolError("bad_field", f"field 'kind' must be one of {kinds}") from None


def _clients(doc: dict[str, Any]) -> list[str] | None:
    value = doc.get("clients")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 64 or not all(
            isinstance(c, str) and len(c) <= 64 for c in value):
        raise ProtocolError("bad_field", "field 'clients' must be a list of at most 64 networks")
    return value


def _actor(who: Any, request: Request) -> Actor:
    return Actor(who.name[:64], request.client[:64])


def _list_name(doc: dict[str, Any]) -> ListName:
    name = field(doc, "list", str, limit=16)
    try:
        return ListName(name)
    except ValueError:
        raise ProtocolError("bad_field", "field 'list' must be 'blocked' or 'approved'") from None


def _values(doc: dict[str, Any]) -> list[str]:
    values = doc.get("values")
    if (not isinstance(values, list) or not values or len(values) > MAX_VALUES
            or not all(isinstance(v, str) and 0 < len(v) <= 4096 for v in values)):
        raise ProtocolError("bad_field", f"field 'values' must be a list of 1 to {MAX_VALUES}"
                            " non-empty strings")
    return values


def cache_status(items: Any, entries: int) -> dict[str, Any]:
    """The answer cache: its size, and the share of cloud-worthy items it answered (items
    answered from the cache against those from the cache, the cloud or degraded)."""
    hits = sum(n for (_, src), n in items.items() if src == "cache")
    asked = hits + sum(n for (_, src), n in items.items() if src in ("cloud", "degraded"))
    return {"entries": entries, "hits": hits, "lookups": asked,
            "hit_ratio": round(hits / asked, 4) if asked else None}


def relay_status(stats: Any) -> dict[str, Any]:
    """Per cloud endpoint: upstream requests by outcome and latency (p50, p95, mean, ms)."""
    out: dict[str, Any] = {}
    for (endpoint, outcome), n in sorted(stats.relay_requests.items()):
        row = out.setdefault(endpoint, {"ok": 0, "errors": {}})
        if outcome == "ok":
            row["ok"] += n
        else:
            row["errors"][outcome] = n
    for endpoint, hist in stats.relay_latency.items():
        row = out.setdefault(endpoint, {"ok": 0, "errors": {}})
        ms = {"p50": hist.quantile(0.5), "p95": hist.quantile(0.95),
              "mean": hist.total / hist.count if hist.count else None}
        row["latency_ms"] = {k: None if v is None else round(v * 1000, 2) for k, v in ms.items()}
    return out


class Operations:
    """What the API does, on ``app`` (a ``proxy.serve.app.App``) and ``accounts``."""

    def __init__(self, app: Any, accounts: Any, *, secure_cookie: bool = True) -> None:
        self.app = app
        self.accounts = accounts
        self.secure_cookie = secure_cookie
        self.started = time.time()

    # ------------------------------------------------------------ sessions

    async def login(self, request: Request, _: Any) -> Response:
        doc = json_body(request, ("user", "password"))
        user = field(doc, "user", str, limit=64)
        password = field(doc, "password", str, limit=1024)
        # scrypt is slow on purpose: off the loop, so the doors keep answering meanwhile
        session = await asyncio.to_thread(self.accounts.login, user, password, request.client)
        flags = "; Secure" if self.secure_cookie else ""
        set_cookie = (f"{SESSION_COOKIE}={session.token}; Path=/; HttpOnly; SameSite=Strict{flags}")
        return answer({"user": session.user, "role": session.role, "csrf": session.csrf},
                      headers=(("Set-Cookie", set_cookie),))

    def logout(self, request: Request, _: Any) -> Response:
        token = cookie(request, SESSION_COOKIE)
        if token is not None:
            self.accounts.logout(token)
        gone = f"{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
        return answer({"logged_out": True}, headers=(("Set-Cookie", gone),))

    def whoami(self, request: Request, who: Any) -> dict[str, Any]:
        # a session's CSRF token, for a page reloaded in the same tab (readable by this
        # origin's scripts only: another site cannot read the answer)
        return {"user": who.name, "role": who.role, "kind": who.kind, "csrf": who.csrf}

    # ------------------------------------------------------------ status

    async def status(self, request: Request, _: Any) -> dict[str, Any]:
        """The appliance's readiness and counters; with query-door workers (``app.fleet``),
        every process's together, as its /readyz and /metrics give them."""
        fleet = self.app.fleet
        if fleet is None:
            body, stats, entries = self.app.readiness(), self.app.stats, len(self.app.cache)
        else:
            ready, counted = await asyncio.gather(fleet.readiness(), fleet.stats())
            body, (stats, gauges) = ready[1], counted
            entries = int(gauges.get("rampart_cache_entries", 0))
        body["items"] = {f"{s}/{src}": n for (s, src), n in sorted(stats.items.items())}
        body["cache"] = cache_status(stats.items, entries)
        body["relay"] = relay_status(stats)
        body["uptime_seconds"] = round(time.time() - self.started, 1)
        return dict(body)

    # ------------------------------------------------------------ lists

    def lists(self, request: Request, _: Any) -> dict[str, Any]:
        now = time.time()
        return {"entries": [_entry_json(e, now) for e in self.app.lists_store.entries()]}

    async def lists_add(self, request: Request, who: Any) -> dict[str, Any]:
        doc = json_body(request, ("list", "values"))
        name, values = _list_name(doc), _values(doc)
        note = field(doc, "note", str, limit=500) if "note" in doc else ""
        kind = _kind(doc)
        clients = _clients(doc)
        expires = None
        if doc.get("expires") not in (None, ""):
            expires = parse_expiry(field(doc, "expires", str, limit=64), time.time())
        messages = await self._edit(lambda: self.app.lists_store.add(
            name, [(kind, v) for v in values], note=note, clients=clients, expires=expires,
            actor=_actor(who, request)))
        return {"messages": messages}

    async def lists_edit(self, request: Request, who: Any) -> dict[str, Any]:
        """One rule's list, note, client networks or expiry; a field left out stays, an
        empty ``expires`` (or ``"never"``) makes the rule permanent."""
        doc = json_body(request, ("value",))
        value = field(doc, "value", str, limit=4096)
        to = _list_name(doc) if "list" in doc else None
        note = field(doc, "note", str, limit=500) if "note" in doc else None
        expires: Any = KEEP
        if "expires" in doc:
            raw = doc["expires"]
            if raw in (None, "", "never"):
                expires = None
            else:
                expires = parse_expiry(field(doc, "expires", str, limit=64), time.time())
        kind, clients = _kind(doc), _clients(doc)
        entry = await self._edit(lambda: self.app.lists_store.edit(
            kind, value, to=to, note=note, clients=clients, expires=expires,
            actor=_actor(who, request)))
        return {"entry": _entry_json(entry, time.time())}

    async def lists_remove(self, request: Request, who: Any) -> dict[str, Any]:
        doc = json_body(request, ("values",))
        values = _values(doc)
        name = _list_name(doc) if "list" in doc else None
        kind = _kind(doc)
        removed = await self._edit(lambda: self.app.lists_store.remove(
            [(kind, v) for v in values], name=name, actor=_actor(who, request)))
        return {"removed": removed}

    async def lists_import(self, request: Request, who: Any) -> dict[str, Any]:
        doc = json_body(request, ("format", "data"))
        fmt = field(doc, "format", str, limit=8)
        data = field(doc, "data", str, limit=MAX_IMPORT_CHARS).encode()
        default = _list_name(doc) if "list" in doc else None
        loaded = list_io.parse(data, "import", fmt, default_list=default, kind=_kind(doc),
                               now=time.time())
        result = await self._edit(lambda: self.app.lists_store.import_entries(
            loaded.entries, source="console", complete=loaded.complete,
            actor=_actor(who, request)))
        return {"added": result.added, "moved": result.moved, "updated": result.updated,
                "unchanged": result.unchanged, "message": result.message("the import")}

    def lists_export(self, request: Request, _: Any) -> Response:
        fmt = params_of(request).get("format", "csv")
        if fmt not in ("csv", "json"):
            raise ProtocolError("bad_field", "parameter 'format' must be csv or json")
        text = list_io.export(self.app.lists_store.entries(), fmt)
        kind = "text/csv; charset=utf-8" if fmt == "csv" else JSON
        return Response(200, text.encode(), kind, headers=(
            ("Content-Disposition", f'attachment; filename="rampart-lists.{fmt}"'),
            ("Cache-Control", "no-store")))

    def lists_test(self, request: Request, _: Any) -> dict[str, Any]:
        doc = json_body(request, ("url",))
        url = field(doc, "url", str, limit=4096)
        client = field(doc, "client", str, limit=64) if "client" in doc else None
        try:
            e = explain_url(url, self.app.engine.lists, self.app.engine.patterns, client)
        except (ConfigError, ValueError) as err:
            raise ProtocolError("bad_url", f"field 'url': {err}") from None
        return {"url": e.url, "canonical": e.canonical, "lines": e.lines(),
                "rules": [{"list": n, "kind": k, "value": v} for n, k, v in e.rules],
                "decision": None if e.decision is None else {
                    "rating": e.decision.rating.value, "source": e.decision.source.value,
                    "matched": e.decision.matched}}

    async def lists_audit(self, request: Request, _: Any) -> dict[str, Any]:
        """The lists' own trail (every change, from the console, the CLI or an import),
        newest first: ``?limit=`` (1 to 10000, default 100) and ``?value=`` (one rule's)."""
        params = params_of(request)
        raw = params.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_AUDIT:
            raise ProtocolError("bad_field", f"parameter 'limit' must be 1 to {MAX_AUDIT}")
        value = params.get("value") or None
        if value is not None and len(value) > 4096:
            raise ProtocolError("bad_field", "parameter 'value' is longer than 4096 characters")
        rows = await asyncio.to_thread(self.app.lists_store.audit, limit=int(raw), value=value)
        return {"entries": [{"at": a.at, "who": a.who, "origin": a.origin, "action": a.action,
                             "list": a.list, "kind": a.kind, "value": a.value, "detail": a.detail}
                            for a in rows]}

    async def _edit(self, change: Any) -> Any:
        """Change the lists, then serve the new ones at once (the poller would within 2 s);
        both off the event loop, since indexing many rules takes a while."""
        store = self.app.lists_store

        def work() -> Any:
            return change(), store.snapshot()

        result, snapshot = await asyncio.to_thread(work)
        self.app.engine.lists = snapshot
        return result

    # ------------------------------------------------------------ updates

    async def update_now(self, request: Request, _: Any) -> dict[str, Any]:
        updater = self.app.keeper.updater
        if updater is None:
            raise ProtocolError("no_update_source", "no update source configured"
                                " (update_source and update_key)", status=409)
        result = await updater.update_once()
        return dict(result.to_json())

    async def rollback(self, request: Request, _: Any) -> dict[str, Any]:
        store = self.app.keeper.store
        if store is None:
            raise ProtocolError("no_store", "this appliance serves a fixed pattern directory",
                                status=409)
        before = store.current_version()
        after = await asyncio.to_thread(store.rollback)
        await self.app.keeper.reload()
        return {"from": before, "to": after}


def api_routes(ops: Operations, openapi: Any) -> list[Route]:
    """The admin API, in the order the OpenAPI document lists it."""
    return [
        Route("POST", "/api/login", None, "Log in: a session cookie and its CSRF token",
              ops.login, {"user": "account name", "password": "its password"}),
        Route("POST", "/api/logout", "read", "End this session", ops.logout),
        Route("GET", "/api/session", "read", "Who is calling, and with which role", ops.whoami),
        Route("GET", "/api/status", "read",
              "Doors, pattern versions and ages, cloud endpoints, cache, certificates, counters",
              ops.status),
        Route("GET", "/api/lists", "read", "Every approved and blocked rule", ops.lists),
        Route("POST", "/api/lists", "lists.write", "Add values to a list", ops.lists_add,
              {"list": "blocked or approved",
               "values": "hashes, domains, URL prefixes, keywords or regexes",
               "kind": "optional: hash, domain, url, keyword or regex (else told by form)",
               "clients": "optional: client networks the rules apply to",
               "expires": "optional: a duration (7d) or an ISO time", "note": "optional, one line"}),
        Route("POST", "/api/lists/edit", "lists.write",
              "Change one rule's list, note, client networks or expiry (what is left out stays)",
              ops.lists_edit,
              {"value": "the rule's value", "kind": "optional: its kind, when the form is ambiguous",
               "list": "optional: move it to blocked or approved",
               "note": "optional: the new note",
               "clients": "optional: the new client networks ([] for every client)",
               "expires": "optional: a duration (7d), an ISO time, or never"}),
        Route("POST", "/api/lists/remove", "lists.write", "Remove values from the lists",
              ops.lists_remove, {"values": "the values", "list": "optional: only this list"}),
        Route("POST", "/api/lists/test", "read",
              "Which rule or pattern entry decides a URL for a client, and why", ops.lists_test,
              {"url": "the URL", "client": "optional: the client's address"}),
        Route("POST", "/api/lists/import", "lists.write",
              "Import rules (CSV, JSON or a plain list); one bad row and nothing changes",
              ops.lists_import, {"format": "csv, json or plain", "data": "the file's text",
                                 "list": "for plain lists: blocked or approved",
                                 "kind": "optional: the values' kind"}),
        Route("GET", "/api/lists/export", "read", "Every rule as CSV or JSON (?format=)",
              ops.lists_export),
        Route("GET", "/api/lists/audit", "read",
              "The lists' change trail, newest first (?limit=, ?value= for one rule)",
              ops.lists_audit),
        Route("POST", "/api/updates/now", "updates.run", "Take an update from the source now",
              ops.update_now),
        Route("POST", "/api/updates/rollback", "updates.run",
              "Go back to the version installed before the current one", ops.rollback),
        Route("GET", "/api/openapi.json", None, "This document", openapi),
    ]
