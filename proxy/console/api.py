"""The admin API under ``/api/`` on the console door: one route table, authenticated and
authorised in one place.

Every route names the permission it needs (``proxy.console.accounts.may``); a request
carries either an API key (``Authorization: Bearer KEY``) or a browser session cookie,
and a session's unsafe request (anything but GET) must also carry its CSRF token in
``X-CSRF-Token``, so another site cannot make a logged-in browser change anything.
No credentials is 401, a role without the permission 403, bad input 400 naming the
field, an unknown path 404, a known path with another method 405; nothing a client
sends is a 5xx. The OpenAPI document (``GET /api/openapi.json``) is made from the same
table (``proxy.console.openapi``), so it cannot drift from the routes.

The work behind a route is the appliance's own: the App's readiness (status), its
list store (lists), its keeper (updates); this module only speaks HTTP for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any

from proxy.errors import ProtocolError, RampartError
from proxy.wire.http import Request, Response

logger = logging.getLogger(__name__)

SESSION_COOKIE = "rampart_session"
CSRF_HEADER = b"x-csrf-token"
MAX_JSON_BYTES = 1 << 20
JSON = "application/json"

Result = Any  # what a route returns: a JSON-able value, or a Response as it is


@dataclass(frozen=True)
class Route:
    """One API operation: what it needs and what it does (for the OpenAPI document too)."""

    method: str
    path: str
    permission: str | None  # None: open to anyone who reaches the door (login, openapi)
    summary: str
    call: Callable[..., Result | Awaitable[Result]]
    body: dict[str, str] | None = None  # field -> description, for POST bodies


def json_body(request: Request, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's JSON object, with every ``required`` field present; 400 naming what is wrong."""
    if len(request.body) > MAX_JSON_BYTES:
        raise ProtocolError("too_large", f"body over {MAX_JSON_BYTES} bytes", status=413)
    try:
        doc = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("bad_json", "the body is not JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError("bad_json", "the body must be a JSON object")
    for name in required:
        if name not in doc:
            raise ProtocolError("missing_field", f"field {name!r} is required")
    return doc


def field(doc: dict[str, Any], name: str, kind: type, *, limit: int = 4096) -> Any:
    """``doc[name]`` of type ``kind`` (strings at most ``limit`` characters); 400 naming it."""
    value = doc.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError("bad_field", f"field {name!r} must be a {kind.__name__}")
    if isinstance(value, str) and len(value) > limit:
        raise ProtocolError("bad_field", f"field {name!r} is longer than {limit} characters")
    return value


def cookie(request: Request, name: str) -> str | None:
    raw = request.header(b"cookie")
    if raw is None or len(raw) > 8192:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw.decode("latin-1"))
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def answer(value: Result, status: int = 200,
           headers: tuple[tuple[str, str], ...] = ()) -> Response:
    if isinstance(value, Response):
        return value
    body = json.dumps(value, sort_keys=True, default=str).encode()
    return Response(status, body, JSON, headers=(("Cache-Control", "no-store"), *headers))


class Api:
    """Dispatch ``/api/*`` requests to ``routes`` once the caller may make them.

    ``accounts`` authenticates (``authenticate_bearer``, ``session``: a
    ``proxy.console.roles.Principal``, which authorises with ``may`` and checks the
    session's CSRF token with ``csrf_ok``); see ``proxy.console.accounts``.
    """

    def __init__(self, routes: list[Route], accounts: Any,
                 audit: Callable[..., None] | None = None) -> None:
        self.accounts = accounts
        self.routes = routes
        self.audit = audit  # (actor, action, detail, client, *, ok): every change and login
        self._by_path: dict[str, dict[str, Route]] = {}
        for r in routes:
            self._by_path.setdefault(r.path, {})[r.method] = r

    def __call__(self, request: Request) -> Response | Awaitable[Response]:
        path = request.target.split(b"?", 1)[0].decode("latin-1")
        methods = self._by_path.get(path)
        if methods is None:
            raise ProtocolError("not_found", f"no API operation at {path[:200]}", status=404)
        route = methods.get(request.method)
        if route is None:
            allowed = ", ".join(sorted(methods))
            raise ProtocolError("method_not_allowed", f"{path} takes {allowed}", status=405,
                                headers=(("Allow", allowed),))
        principal = None
        if route.permission is not None:
            principal = self.authorise(request, route.permission)
        try:
            result = route.call(request, principal)
        except RampartError as e:
            self._audit(route, request, principal, False)
            raise _as_protocol(e) from None
        if asyncio.iscoroutine(result):
            return self._settle(result, route, request, principal)
        self._audit(route, request, principal, True)
        return answer(result)

    async def _settle(self, pending: Awaitable[Result], route: Route, request: Request,
                      principal: Any) -> Response:
        try:
            done = answer(await pending)
        except RampartError as e:
            self._audit(route, request, principal, False)
            if isinstance(e, ProtocolError):
                raise
            raise _as_protocol(e) from None
        self._audit(route, request, principal, True)
        return done

    def _audit(self, route: Route, request: Request, principal: Any, ok: bool) -> None:
        """Record a change or a login in the admin audit: who, what (the operation and its
        fields, secrets left out), from where, and whether it was done. Reads are not."""
        changes = route.method != "GET" and route.permission not in (None, "read")
        if self.audit is None or not (changes or route.path in ("/api/login", "/api/logout")):
            return
        actor = principal.name if principal is not None else _login_name(request)
        action = route.path.removeprefix("/api/").replace("/", ".")
        try:
            self.audit(actor, action, _detail(request), request.client, ok=ok)
        except Exception:  # the audit must not turn a done change into an error
            logger.exception("could not write the audit entry for %s", action)


    def authorise(self, request: Request, permission: str) -> Any:
        """The caller, once it proved who it is and may ``permission``; else 401 or 403."""
        principal = None
        bearer = request.header(b"authorization")
        if bearer is not None:
            principal = self.accounts.authenticate_bearer(bearer.decode("latin-1"))
        else:
            token = cookie(request, SESSION_COOKIE)
            if token is not None:
                principal = self.accounts.session(token)
                if principal is not None and request.method != "GET":
                    sent = request.header(CSRF_HEADER)
                    if not principal.csrf_ok(None if sent is None else sent.decode("latin-1")):
                        raise ProtocolError("csrf", "missing or wrong X-CSRF-Token for this"
                                            " session", status=403)
        if principal is None:
            raise ProtocolError("unauthorized", "log in, or send Authorization: Bearer KEY",
                                status=401, headers=(("WWW-Authenticate", 'Bearer realm="rampart"'),))
        if not principal.may(permission):
            raise ProtocolError("forbidden", f"role {principal.role!r} may not {permission}",
                                status=403)
        return principal


def _as_protocol(e: RampartError) -> ProtocolError:
    """An error from the work behind a route as the client's answer (its own status, or 400;
    503 stays: a list write the shared Redis could not take, ``redis_unavailable``)."""
    given = getattr(e, "status", 500)
    status = given if 400 <= given < 500 or given == 503 else 400
    headers = tuple(getattr(e, "headers", ()))  # e.g. Retry-After on 429
    code = e.code if e.code != "internal" else "bad_request"
    return ProtocolError(code, e.message, status=status, headers=headers)


SECRET_FIELDS = ("password", "key", "token", "secret")


def _detail(request: Request) -> str:
    """The request's JSON fields for the audit, at most 500 characters, secrets masked."""
    try:
        doc = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    shown = {k: ("***" if any(s in str(k).lower() for s in SECRET_FIELDS) else v)
             for k, v in doc.items()}
    return json.dumps(shown, sort_keys=True, default=str)[:500]


def _login_name(request: Request) -> str:
    try:
        name = json.loads(request.body or b"{}").get("user", "")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return "?"
    return name[:64] if isinstance(name, str) else "?"
