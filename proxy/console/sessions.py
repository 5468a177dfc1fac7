"""Browser sessions: a token for an ``HttpOnly; Secure; SameSite=Strict`` cookie and a CSRF token.

The store keeps the SHA-256 of each token, never the token. The CSRF token is derived
from the session token (an HMAC-like SHA-256 of it under a fixed label), so the door can
give it to the page again after a reload without storing a second secret; only someone
holding the cookie's value can compute it.

A session ends after ``idle_timeout`` seconds without use, on logout, when its user is
removed or their password changes, or when a login finds ``cap`` sessions: then the
least recently used ones are evicted (a new login always succeeds; there are no "seats").
Use is recorded at most every ``touch_every`` seconds (a tenth of the idle timeout, at
most a minute), so a page polling every second does not write every second.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from proxy.console.roles import Principal
from proxy.console.store import ConsoleStore, when

TOKEN_PREFIX = "rps_"
COOKIE = "rampart_session"
"""The cookie's name; set it ``HttpOnly; Secure; SameSite=Strict; Path=/``."""
CSRF_HEADER = "X-CSRF-Token"
"""The header a page sends its CSRF token in on every request that changes something."""
_MAX_TOKEN = 128


@dataclass(frozen=True, slots=True)
class Session:
    """A new session, as ``login`` gives it: ``token`` goes in the cookie, ``csrf`` to the page."""

    token: str
    csrf: str
    id: str
    user: str
    role: str
    idle_timeout: float


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as an admin sees it in a listing: no token."""

    id: str
    user: str
    client: str
    created: float
    last_seen: float

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "client": self.client,
                "created": when(self.created), "last_seen": when(self.last_seen)}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def csrf_for(token: str) -> str:
    """The CSRF token of the session whose cookie holds ``token``."""
    return hashlib.sha256(b"rampart csrf\x00" + token.encode("utf-8")).hexdigest()


def touch_every(idle_timeout: float) -> float:
    return min(60.0, idle_timeout / 10)


def start(store: ConsoleStore, user: str, role: str, client: str, *, cap: int,
          idle_timeout: float) -> Session:
    """A new session for ``user``, evicting expired sessions and then, beyond ``cap - 1``,
    the least recently used."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    sid = secrets.token_hex(8)
    now = store.now()
    with store.write() as cur:
        cur.execute("DELETE FROM sessions WHERE last_seen <= ?", (now - idle_timeout,))
        (count,) = cur.execute("SELECT COUNT(*) FROM sessions").fetchone()
        if count >= cap:
            cur.execute("DELETE FROM sessions WHERE id IN (SELECT id FROM sessions "
                        "ORDER BY last_seen, created LIMIT ?)", (count - cap + 1,))
        cur.execute("INSERT INTO sessions (id, digest, user, client, created, last_seen) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (sid, _digest(token), user, client[:80], now, now))
    return Session(token, csrf_for(token), sid, user, role, idle_timeout)


def find(store: ConsoleStore, token: str | None, *, idle_timeout: float) -> Principal | None:
    """The principal of a live session, its use recorded; None for an unknown or idle one."""
    if not token or len(token) > _MAX_TOKEN or not token.startswith(TOKEN_PREFIX):
        return None
    rows = store.read("SELECT s.id, s.last_seen, u.name, u.role FROM sessions s "
                      "JOIN users u ON u.name = s.user WHERE s.digest = ?", (_digest(token),))
    if not rows:
        return None
    sid, last_seen, name, role = rows[0]
    now = store.now()
    if last_seen <= now - idle_timeout:
        with store.write() as cur:
            cur.execute("DELETE FROM sessions WHERE id = ?", (sid,))
        return None
    if now - last_seen >= touch_every(idle_timeout):
        with store.write() as cur:
            cur.execute("UPDATE sessions SET last_seen = ? WHERE id = ?", (now, sid))
    return Principal(name=name, role=role, kind="session", id=sid, csrf=csrf_for(token))


def end(store: ConsoleStore, token: str | None) -> bool:
    """End the session whose cookie holds ``token``; whether there was one."""
    if not token or len(token) > _MAX_TOKEN:
        return False
    with store.write() as cur:
        return cur.execute("DELETE FROM sessions WHERE digest = ?", (_digest(token),)).rowcount > 0


def end_by_id(store: ConsoleStore, sid: str) -> bool:
    """End a session by its public id (an admin's "log this browser out"); whether there was one."""
    with store.write() as cur:
        return cur.execute("DELETE FROM sessions WHERE id = ?", (sid[:32],)).rowcount > 0


def listing(store: ConsoleStore, *, idle_timeout: float, user: str | None = None) -> list[SessionInfo]:
    """The live sessions (of ``user``, or everyone's), most recently used first."""
    cutoff = store.now() - idle_timeout
    sql = "SELECT id, user, client, created, last_seen FROM sessions WHERE last_seen > ?"
    args: tuple[Any, ...] = (cutoff,)
    if user is not None:
        sql += " AND user = ?"
        args = (cutoff, user)
    rows = store.read(sql + " ORDER BY last_seen DESC", args)
    return [SessionInfo(i, u, c, float(cr), float(ls)) for i, u, c, cr, ls in rows]
