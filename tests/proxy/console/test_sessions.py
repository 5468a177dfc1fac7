"""Browser sessions: login gives a cookie token and a CSRF token, the session ends after the
idle timeout or at logout, and a login beyond the cap evicts the least recently used."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import config
from proxy.console.accounts import Accounts
from proxy.console.sessions import csrf_for
from proxy.console.store import ConsoleStore

from .conftest import Clock

PASSWORD = "correct horse battery"


@pytest.fixture
def ann(accounts: Accounts) -> Accounts:
    accounts.add_user("ann", "operator", PASSWORD)
    return accounts


def test_login_gives_a_session_the_token_finds(ann: Accounts) -> None:
    s = ann.login("ann", PASSWORD, "192.0.2.1")
    assert s.token.startswith("rps_") and s.csrf == csrf_for(s.token) and s.csrf != s.token
    who = ann.session(s.token)
    assert who is not None
    assert (who.name, who.role, who.kind, who.id) == ("ann", "operator", "session", s.id)
    assert who.csrf_ok(s.csrf) and not who.csrf_ok("x")
    assert ann.session("rps_" + "A" * 43) is None
    assert ann.session(None) is None and ann.session("x" * 1000) is None


def test_the_token_is_stored_only_as_a_digest(ann: Accounts, data: Path) -> None:
    s = ann.login("ann", PASSWORD, "192.0.2.1")
    raw = b"".join(p.read_bytes() for p in data.glob("console.sqlite*"))
    assert s.token.encode() not in raw and s.token[4:].encode() not in raw and s.csrf.encode() not in raw


def test_a_session_ends_after_the_idle_timeout_and_use_keeps_it(ann: Accounts, clock: Clock) -> None:
    idle = config.default("session_idle_timeout")
    assert ann.idle_timeout == idle
    s = ann.login("ann", PASSWORD, "192.0.2.1")
    for _ in range(5):  # used now and then: lives well past one timeout
        clock.advance(idle * 0.6)
        assert ann.session(s.token) is not None
    clock.advance(idle)
    assert ann.session(s.token) is None
    assert ann.list_sessions() == []


def test_a_short_idle_timeout_from_the_config(data: Path, clock: Clock, cheap_scrypt: None) -> None:
    cfg = config.load(None, {"session_idle_timeout": 120.0, "console_sessions": 2, "login_attempts": 3})
    accounts = Accounts.open(data, cfg, now=clock)
    accounts.add_user("ann", "viewer", PASSWORD)
    assert (accounts.max_sessions, accounts.limiter.attempts) == (2, 3)
    s = accounts.login("ann", PASSWORD, "192.0.2.1")
    clock.advance(119)
    assert accounts.session(s.token) is not None
    clock.advance(120)
    assert accounts.session(s.token) is None
    accounts.close()


def test_the_cap_evicts_the_least_recently_used_never_refuses(data: Path, clock: Clock,
                                                               cheap_scrypt: None) -> None:
    accounts = Accounts(ConsoleStore.open(data, now=clock), sessions=3, now=clock)
    accounts.add_user("ann", "viewer", PASSWORD)
    made = []
    for i in (1, 2, 3):
        clock.advance(100)
        made.append(accounts.login("ann", PASSWORD, f"192.0.2.{i}"))
    first, second, third = made
    clock.advance(100)
    assert accounts.session(first.token) is not None  # first is used again: second is now the oldest
    fourth = accounts.login("ann", PASSWORD, "192.0.2.4")
    assert accounts.session(second.token) is None
    assert all(accounts.session(s.token) is not None for s in (first, third, fourth))
    assert len(accounts.list_sessions()) == 3
    accounts.close()


def test_logout_ends_the_session(ann: Accounts) -> None:
    s = ann.login("ann", PASSWORD, "192.0.2.1")
    other = ann.login("ann", PASSWORD, "192.0.2.2")
    assert ann.logout(s.token) is True
    assert ann.session(s.token) is None
    assert ann.logout(s.token) is False
    assert ann.session(other.token) is not None
    assert ann.end_session(other.id) is True and ann.session(other.token) is None


def test_a_role_change_applies_to_live_sessions_and_removal_ends_them(ann: Accounts) -> None:
    ann.ensure_first_admin()
    s = ann.login("ann", PASSWORD, "192.0.2.1")
    ann.set_role("ann", "viewer")
    who = ann.session(s.token)
    assert who is not None and who.role == "viewer"
    ann.remove_user("ann")
    assert ann.session(s.token) is None


def test_the_session_listing_shows_no_token(ann: Accounts) -> None:
    s = ann.login("ann", PASSWORD, "192.0.2.1")
    (info,) = ann.list_sessions("ann")
    shown = info.as_dict()
    assert shown["user"] == "ann" and shown["client"] == "192.0.2.1" and shown["id"] == s.id
    assert s.token not in repr(shown) and s.csrf not in repr(shown)
    assert ann.list_sessions("nobody") == []
