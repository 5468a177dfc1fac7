"""Users with roles and passwords, the first admin, and ``Accounts``: everything the console
door asks about credentials, in one object.

There is always an admin: the first start creates user ``admin`` with a random password
(``ensure_first_admin``, shown once in the serve banner), and removing or demoting the
last admin is refused (409), so nobody locks the appliance out of its own console
(``rampart admin passwd`` on the machine remains the way back in).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy import config as config_mod
from proxy.console import keys, passwords, sessions
from proxy.console.errors import BadCredentials, BadInput, Conflict, NotFound
from proxy.console.keys import KeyInfo
from proxy.console.limiter import LoginLimiter
from proxy.console.roles import Principal, check_role
from proxy.console.sessions import Session, SessionInfo
from proxy.console.store import NAME, ConsoleStore, check_name, when

logger = logging.getLogger(__name__)

FIRST_ADMIN = "admin"
_MAX_LOGIN_FIELD = passwords.MAX_LENGTH


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    created: float
    changed: float
    """When the password was last set."""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "created": when(self.created),
                "password_changed": when(self.changed)}


def list_users(store: ConsoleStore) -> list[User]:
    rows = store.read("SELECT name, role, created, changed FROM users ORDER BY name COLLATE NOCASE")
    return [User(n, r, float(c), float(ch)) for n, r, c, ch in rows]


def get_user(store: ConsoleStore, name: str) -> User:
    rows = store.read("SELECT name, role, created, changed FROM users WHERE name = ?", (name,))
    if not rows:
        raise NotFound(f"no user named {name[:64]!r}")
    n, r, c, ch = rows[0]
    return User(n, r, float(c), float(ch))


def add_user(store: ConsoleStore, name: str, role: str, password: str) -> User:
    """A new user; Conflict when the name (in any case) is taken."""
    check_name(name, "name")
    check_role(role)
    encoded = passwords.hash_password(passwords.check_new_password(password))
    now = store.now()
    with store.write() as cur:
        if cur.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            raise Conflict(f"a user named {name!r} exists")
        cur.execute("INSERT INTO users (name, role, password, created, changed) VALUES (?, ?, ?, ?, ?)",
                    (name, role, encoded, now, now))
    return User(name, role, now, now)


def _other_admins(cur: Any, name: str) -> int:
    (n,) = cur.execute("SELECT COUNT(*) FROM users WHERE role = 'admin' AND name != ?", (name,)).fetchone()
    return int(n)


def remove_user(store: ConsoleStore, name: str) -> None:
    """Remove a user and end their sessions; refused for the last admin."""
    with store.write() as cur:
        row = cur.execute("SELECT name, role FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no user named {name[:64]!r}")
        if row[1] == "admin" and _other_admins(cur, row[0]) == 0:
            raise Conflict(f"{row[0]!r} is the last admin; make another user admin first")
        cur.execute("DELETE FROM sessions WHERE user = ?", (row[0],))
        cur.execute("DELETE FROM users WHERE name = ?", (row[0],))


def set_role(store: ConsoleStore, name: str, role: str) -> None:
    """Change a user's role (their sessions take it at once); the last admin keeps theirs."""
    check_role(role)
    with store.write() as cur:
        row = cur.execute("SELECT name, role FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no user named {name[:64]!r}")
        if row[1] == "admin" and role != "admin" and _other_admins(cur, row[0]) == 0:
            raise Conflict(f"{row[0]!r} is the last admin; make another user admin first")
        cur.execute("UPDATE users SET role = ? WHERE name = ?", (role, row[0]))


def set_password(store: ConsoleStore, name: str, password: str, *, keep_session: str | None = None) -> None:
    """Set a user's password and end their sessions (but the one with id ``keep_session``, the
    browser that changed it): whoever knew the old password is logged out."""
    encoded = passwords.hash_password(passwords.check_new_password(password))
    with store.write() as cur:
        row = cur.execute("SELECT name FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no user named {name[:64]!r}")
        cur.execute("UPDATE users SET password = ?, changed = ? WHERE name = ?",
                    (encoded, store.now(), row[0]))
        cur.execute("DELETE FROM sessions WHERE user = ? AND id != ?", (row[0], keep_session or ""))


def ensure_first_admin(store: ConsoleStore) -> str | None:
    """When no admin exists, make user ``admin`` (or reset it, as admin) with a random password
    and return that password, to be shown once; None when an admin exists. One transaction, so a
    server and a CLI starting together make one admin."""
    password = secrets.token_urlsafe(15)
    encoded = passwords.hash_password(password)
    now = store.now()
    with store.write() as cur:
        if cur.execute("SELECT 1 FROM users WHERE role = 'admin' LIMIT 1").fetchone():
            return None
        cur.execute("INSERT INTO users (name, role, password, created, changed) VALUES (?, 'admin', ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET role = 'admin', password = excluded.password, "
                    "changed = excluded.changed", (FIRST_ADMIN, encoded, now, now))
    logger.warning("created console user %r with a new password (shown once)", FIRST_ADMIN)
    return password


def check_password(store: ConsoleStore, name: str, password: str) -> User | None:
    """The user if ``password`` is theirs, else None, spending the same work for a name that
    does not exist. A hash weaker than the current parameters is replaced."""
    rows = store.read("SELECT name, role, password, created, changed FROM users WHERE name = ?", (name,)) \
        if NAME.fullmatch(name) else []
    if not rows:
        passwords.verify_unknown(password)
        return None
    n, role, encoded, created, changed = rows[0]
    if not passwords.verify_password(password, encoded):
        return None
    if passwords.needs_rehash(encoded):
        with store.write() as cur:
            cur.execute("UPDATE users SET password = ? WHERE name = ? AND password = ?",
                        (passwords.hash_password(password), n, encoded))
    return User(n, role, float(created), float(changed))


def _login_field(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadInput(field, "required")
    if len(value) > _MAX_LOGIN_FIELD:
        raise BadInput(field, f"too long: at most {_MAX_LOGIN_FIELD} characters")
    return value


def _shown(name: str) -> str:
    return repr(name[:64])


class Accounts:
    """The console's credentials over one ``ConsoleStore``, with the session settings and the
    login limiter of this process. ``now`` is the wall clock of stored times and the limiter's."""

    def __init__(self, store: ConsoleStore, *, sessions: int | None = None,
                 idle_timeout: float | None = None, login_attempts: int | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.max_sessions = sessions if sessions is not None else config_mod.default("console_sessions")
        self.idle_timeout = (idle_timeout if idle_timeout is not None
                             else float(config_mod.default("session_idle_timeout")))
        attempts = login_attempts if login_attempts is not None else config_mod.default("login_attempts")
        self.limiter = LoginLimiter(attempts, clock=now)

    @classmethod
    def open(cls, data_dir: Path, cfg: config_mod.Config | None = None, *,
             now: Callable[[], float] = time.time) -> Accounts:
        """The accounts of ``data_dir``, with ``cfg``'s console_sessions, session_idle_timeout and
        login_attempts (defaults without one)."""
        store = ConsoleStore.open(data_dir, now=now)
        if cfg is None:
            return cls(store, now=now)
        return cls(store, sessions=cfg.console_sessions, idle_timeout=cfg.session_idle_timeout,
                   login_attempts=cfg.login_attempts, now=now)

    def close(self) -> None:
        self.store.close()

    # -- browser sessions

    def login(self, user: object, password: object, client: str) -> Session:
        """A new session for ``user`` if ``password`` is theirs. TooManyAttempts (429) while
        ``client`` must wait; BadCredentials (401) for a wrong name or password, logged."""
        name, secret = _login_field(user, "user"), _login_field(password, "password")
        self.limiter.check(client)
        found = check_password(self.store, name, secret)
        if found is None:
            self.limiter.failed(client)
            logger.warning("failed console login for user %s from %s", _shown(name), client[:80])
            raise BadCredentials()
        self.limiter.succeeded(client)
        logger.info("console login of %s from %s", _shown(found.name), client[:80])
        return sessions.start(self.store, found.name, found.role, client, cap=self.max_sessions,
                              idle_timeout=self.idle_timeout)

    def session(self, token: str | None) -> Principal | None:
        """The principal of the session cookie ``token``; None for none, unknown or idle."""
        return sessions.find(self.store, token, idle_timeout=self.idle_timeout)

    def logout(self, token: str | None) -> bool:
        return sessions.end(self.store, token)

    def list_sessions(self, user: str | None = None) -> list[SessionInfo]:
        return sessions.listing(self.store, idle_timeout=self.idle_timeout, user=user)

    def end_session(self, session_id: str) -> bool:
        return sessions.end_by_id(self.store, session_id)

    # -- API keys

    def authenticate_bearer(self, header_value: str | None) -> Principal | None:
        return keys.authenticate_bearer(self.store, header_value)

    def create_key(self, name: str, role: str, expires_days: int | None, created_by: str) -> tuple[str, str]:
        return keys.create_key(self.store, name, role, expires_days, created_by)

    def list_keys(self) -> list[KeyInfo]:
        return keys.list_keys(self.store)

    def revoke_key(self, which: str) -> KeyInfo:
        return keys.revoke_key(self.store, which)

    # -- users

    def users(self) -> list[User]:
        return list_users(self.store)

    def add_user(self, name: str, role: str, password: str) -> User:
        return add_user(self.store, name, role, password)

    def remove_user(self, name: str) -> None:
        remove_user(self.store, name)

    def set_role(self, name: str, role: str) -> None:
        set_role(self.store, name, role)

    def set_password(self, name: str, password: str, *, keep_session: str | None = None) -> None:
        set_password(self.store, name, password, keep_session=keep_session)

    def ensure_first_admin(self) -> str | None:
        return ensure_first_admin(self.store)
