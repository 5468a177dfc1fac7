"""Roles and what each may do: the one table the admin API consults, and who is calling.

Permissions are named for what the API does, so a route states the one it needs
(``principal.require("lists.write")``) and this table alone decides who has it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

from proxy.console.errors import BadInput, Forbidden

PERMISSIONS: dict[str, str] = {
    "read": "see status, lists, logs, settings and the CA",
    "account.own": "change one's own password and end one's own sessions",
    "lists.write": "add, edit, remove, import approved/blocked list rules",
    "updates.run": "update patterns now and roll back",
    "settings.write": "change settings",
    "accounts.manage": "add and remove users, set roles and passwords, create and revoke API keys",
}

ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset(PERMISSIONS),
    "operator": frozenset({"read", "account.own", "lists.write", "updates.run"}),
    "viewer": frozenset({"read", "account.own"}),
}
"""Role -> permissions. ``admin`` has every permission; ``viewer`` may only look."""

Kind = Literal["key", "session"]


def may(role: str, permission: str) -> bool:
    """Whether ``role`` has ``permission``. An unknown role has none; an unknown permission is a
    programming error (a typo in a route would otherwise refuse, or allow, silently)."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")
    return permission in ROLES.get(role, frozenset())


def check_role(value: object, field: str = "role") -> str:
    """``value`` if it names a role, else BadInput naming ``field`` and the roles there are."""
    if not isinstance(value, str) or value not in ROLES:
        shown = repr(value)[:40]
        raise BadInput(field, f"{shown} is not a role; use {', '.join(ROLES)}")
    return value


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from: a user's browser session or a named API key.

    ``id`` is the key's id or the session's (public) id, never a secret. ``csrf`` is the
    session's CSRF token (None for keys, which a browser never sends on its own).
    """

    name: str
    role: str
    kind: Kind
    id: str
    csrf: str | None = None

    def may(self, permission: str) -> bool:
        return may(self.role, permission)

    def require(self, permission: str) -> None:
        """Raise Forbidden (403) unless this principal's role has ``permission``."""
        if not self.may(permission):
            raise Forbidden(f"the {self.role} role may not do this (needs {permission!r})")

    def csrf_ok(self, value: str | None) -> bool:
        """Whether ``value`` (the request's X-CSRF-Token) matches; always true for a key."""
        if self.csrf is None:
            return True
        return value is not None and hmac.compare_digest(value.encode(), self.csrf.encode())
