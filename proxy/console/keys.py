"""Named API keys for scripts and monitoring: ``Authorization: Bearer rpk_<id>_<secret>``.

A key has a name, a role and an optional expiry. Its secret is shown once, when it is
made; the store keeps only the SHA-256 of the whole key (a key is 256 random bits, so a
slow hash would add nothing). The ``rpk_`` prefix makes a leaked key easy to recognise
(secret scanners, logs) and the id finds its row without a scan. Last use is recorded at
most once a minute per key, so a monitoring script polling every second costs no write
per request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from proxy.console.errors import BadInput, Conflict, NotFound
from proxy.console.roles import Principal, check_role
from proxy.console.store import ConsoleStore, check_name, when

PREFIX = "rpk_"
MAX_EXPIRES_DAYS = 3650
TOUCH_EVERY = 60.0
_KEY = re.compile(r"rpk_([a-z0-9]{12})_[A-Za-z0-9_-]{43}")
_MAX_HEADER = 256


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What ``list_keys`` shows of a key: never its secret or digest."""

    id: str
    name: str
    role: str
    created: float
    created_by: str
    expires: float | None
    last_used: float | None

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now

    def as_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready, times in ISO-8601 UTC."""
        return {"id": self.id, "name": self.name, "role": self.role, "created": when(self.created),
                "created_by": self.created_by, "expires": when(self.expires),
                "last_used": when(self.last_used), "expired": self.expired(now)}


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def check_expires_days(value: object, field: str = "expires") -> int | None:
    """None (never expires) or a whole number of days from 1 to MAX_EXPIRES_DAYS."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EXPIRES_DAYS:
        raise BadInput(field, f"must be a whole number of days from 1 to {MAX_EXPIRES_DAYS}")
    return value


def create_key(store: ConsoleStore, name: str, role: str, expires_days: int | None,
               created_by: str) -> tuple[str, str]:
    """Make a key; returns ``(key_id, secret)``, the secret being the whole key to show once."""
    check_name(name, "name")
    check_role(role)
    days = check_expires_days(expires_days)
    key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    secret = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    now = store.now()
    expires = None if days is None else now + days * 86400.0
    with store.write() as cur:
        if cur.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
            raise Conflict(f"an API key named {name!r} exists; revoke it first or choose another name")
        cur.execute("INSERT INTO keys (id, name, role, digest, created, created_by, expires) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key_id, name, role, _digest(secret), now, created_by[:128], expires))
    return key_id, secret


def _info(row: tuple[Any, ...]) -> KeyInfo:
    kid, name, role, created, by, expires, used = row
    return KeyInfo(kid, name, role, float(created), by, None if expires is None else float(expires),
                   None if used is None else float(used))


_COLUMNS = "id, name, role, created, created_by, expires, last_used"


def list_keys(store: ConsoleStore) -> list[KeyInfo]:
    """Every key, expired ones included (they stay listed until revoked), by name."""
    return [_info(r) for r in store.read(f"SELECT {_COLUMNS} FROM keys ORDER BY name COLLATE NOCASE")]


def revoke_key(store: ConsoleStore, which: str) -> KeyInfo:
    """Delete the key named ``which`` (or with that id); NotFound if there is none."""
    with store.write() as cur:
        row = cur.execute(f"SELECT {_COLUMNS} FROM keys WHERE name = ? OR id = ? "
                          "ORDER BY name = ? DESC LIMIT 1", (which, which, which)).fetchone()
        if row is None:
            raise NotFound(f"no API key named {which[:64]!r}")
        cur.execute("DELETE FROM keys WHERE id = ?", (row[0],))
    return _info(row)


def authenticate_bearer(store: ConsoleStore, header_value: str | None) -> Principal | None:
    """The key's principal for an ``Authorization`` header value ``Bearer rpk_…``; None for a
    missing, malformed, unknown, revoked or expired key."""
    if not header_value or len(header_value) > _MAX_HEADER:
        return None
    scheme, _, key = header_value.strip().partition(" ")
    key = key.strip()
    m = _KEY.fullmatch(key)
    if scheme.lower() != "bearer" or m is None:
        return None
    rows = store.read("SELECT id, name, role, digest, expires, last_used FROM keys WHERE id = ?", (m[1],))
    if not rows:
        return None
    kid, name, role, digest, expires, used = rows[0]
    if not hmac.compare_digest(_digest(key), digest):
        return None
    now = store.now()
    if expires is not None and expires <= now:
        return None
    if used is None or now - used >= TOUCH_EVERY:
        with store.write() as cur:
            cur.execute("UPDATE keys SET last_used = ? WHERE id = ?", (now, kid))
    return Principal(name=name, role=role, kind="key", id=kid)
