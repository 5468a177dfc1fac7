"""The admin API's accounts operations: users, API keys, sessions, one's own password.

Managing others needs ``accounts.manage`` (admins); changing one's own password needs
only ``account.own``. A new key's secret is in the answer once and never again, as with
``rampart admin key create``. The work is ``proxy.console.accounts.Accounts``'s (the
same checks as the CLI: the last admin cannot be removed, passwords have a minimum
length); scrypt runs off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from proxy.console.api import SESSION_COOKIE, Route, cookie, field, json_body
from proxy.errors import ProtocolError
from proxy.wire.http import Request

MAX_KEY_DAYS = 3650


class AccountOps:
    def __init__(self, accounts: Any) -> None:
        self.accounts = accounts

    def overview(self, request: Request, _: Any) -> dict[str, Any]:
        now = time.time()
        return {"users": [u.as_dict() for u in self.accounts.users()],
                "keys": [k.as_dict(now) for k in self.accounts.list_keys()],
                "sessions": [s.as_dict() for s in self.accounts.list_sessions()]}

    async def add_user(self, request: Request, _: Any) -> dict[str, Any]:
        doc = json_body(request, ("name", "role", "password"))
        name, role = field(doc, "name", str, limit=64), field(doc, "role", str, limit=16)
        password = field(doc, "password", str, limit=1024)
        user = await asyncio.to_thread(self.accounts.add_user, name, role, password)
        return {"user": user.as_dict()}

    def remove_user(self, request: Request, _: Any) -> dict[str, Any]:
        name = field(json_body(request, ("name",)), "name", str, limit=64)
        self.accounts.remove_user(name)
        return {"removed": name}

    def set_role(self, request: Request, _: Any) -> dict[str, Any]:
        doc = json_body(request, ("name", "role"))
        name, role = field(doc, "name", str, limit=64), field(doc, "role", str, limit=16)
        self.accounts.set_role(name, role)
        return {"name": name, "role": role}

    async def own_password(self, request: Request, who: Any) -> dict[str, Any]:
        if who.kind != "session":
            raise ProtocolError("forbidden", "an API key has no password to change", status=403)
        doc = json_body(request, ("password",))
        password = field(doc, "password", str, limit=1024)
        await asyncio.to_thread(self.accounts.set_password, who.name, password,
                                keep_session=cookie(request, SESSION_COOKIE))
        return {"changed": who.name}

    def create_key(self, request: Request, who: Any) -> dict[str, Any]:
        doc = json_body(request, ("name", "role"))
        name, role = field(doc, "name", str, limit=64), field(doc, "role", str, limit=16)
        days = doc.get("expires_days")
        if days is not None and (not isinstance(days, int) or isinstance(days, bool)
                                 or not 1 <= days <= MAX_KEY_DAYS):
            raise ProtocolError("bad_field", f"field 'expires_days' must be 1 to {MAX_KEY_DAYS}"
                                " days, or absent for a key that does not expire")
        key_id, secret = self.accounts.create_key(name, role, days, who.name)
        return {"id": key_id, "name": name, "role": role, "key": secret,
                "note": "the key is shown once: store it now"}

    def revoke_key(self, request: Request, _: Any) -> dict[str, Any]:
        which = field(json_body(request, ("key",)), "key", str, limit=128)
        info = self.accounts.revoke_key(which)
        return {"revoked": info.name, "id": info.id}

    def end_session(self, request: Request, _: Any) -> dict[str, Any]:
        which = field(json_body(request, ("id",)), "id", str, limit=128)
        if not self.accounts.end_session(which):
            raise ProtocolError("not_found", f"no session {which[:40]!r}", status=404)
        return {"ended": which}


def account_routes(ops: AccountOps) -> list[Route]:
    return [
        Route("GET", "/api/accounts", "accounts.manage", "Users, API keys and sessions",
              ops.overview),
        Route("POST", "/api/accounts/users", "accounts.manage", "Add a user", ops.add_user,
              {"name": "account name", "role": "admin, operator or viewer",
               "password": "at least 12 characters"}),
        Route("POST", "/api/accounts/users/remove", "accounts.manage",
              "Remove a user (never the last admin)", ops.remove_user, {"name": "account name"}),
        Route("POST", "/api/accounts/users/role", "accounts.manage", "Change a user's role",
              ops.set_role, {"name": "account name", "role": "admin, operator or viewer"}),
        Route("POST", "/api/accounts/password", "account.own", "Change one's own password",
              ops.own_password, {"password": "the new password, at least 12 characters"}),
        Route("POST", "/api/accounts/keys", "accounts.manage",
              "Create a named API key (its secret is answered once)", ops.create_key,
              {"name": "what the key is for", "role": "admin, operator or viewer",
               "expires_days": "optional: days until it expires"}),
        Route("POST", "/api/accounts/keys/revoke", "accounts.manage", "Revoke an API key",
              ops.revoke_key, {"key": "the key's name or id"}),
        Route("POST", "/api/accounts/sessions/end", "accounts.manage", "End a browser session",
              ops.end_session, {"id": "the session's id"}),
    ]
