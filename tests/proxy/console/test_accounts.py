"""Users in DATA_DIR/console.sqlite: the first admin made once, roles, the last admin kept,
passwords checked and upgraded, and the file private whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from proxy.console import passwords
from proxy.console.accounts import Accounts, check_password, ensure_first_admin
from proxy.console.errors import BadCredentials, BadInput, Conflict, NotFound, TooManyAttempts
from proxy.console.store import FILENAME, ConsoleStore

from .conftest import CHEAP, Clock

PASSWORD = "correct horse battery"


def test_the_first_admin_is_made_once_with_a_password_that_logs_in(accounts: Accounts) -> None:
    password = accounts.ensure_first_admin()
    assert password is not None and len(password) >= passwords.MIN_LENGTH
    assert accounts.ensure_first_admin() is None
    assert [(u.name, u.role) for u in accounts.users()] == [("admin", "admin")]
    assert accounts.login("admin", password, "127.0.0.1").role == "admin"


def test_a_second_store_on_the_same_directory_sees_the_admin(data: Path, clock: Clock,
                                                             cheap_scrypt: None) -> None:
    with ConsoleStore.open(data, now=clock) as a, ConsoleStore.open(data, now=clock) as b:
        assert ensure_first_admin(a) is not None
        assert ensure_first_admin(b) is None


def test_the_database_and_its_side_files_are_0600_under_a_loose_umask(data: Path, clock: Clock,
                                                                      cheap_scrypt: None) -> None:
    old = os.umask(0)
    try:
        with ConsoleStore.open(data, now=clock) as store:
            ensure_first_admin(store)
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()
                     if p.name.startswith(FILENAME)}
    finally:
        os.umask(old)
    assert {FILENAME, FILENAME + "-wal"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600)


def test_users_are_added_listed_with_roles_and_removed(accounts: Accounts) -> None:
    accounts.ensure_first_admin()
    accounts.add_user("ops", "operator", PASSWORD)
    accounts.add_user("mon", "viewer", PASSWORD)
    assert [(u.name, u.role) for u in accounts.users()] == [("admin", "admin"), ("mon", "viewer"),
                                                            ("ops", "operator")]
    with pytest.raises(Conflict):
        accounts.add_user("OPS", "viewer", PASSWORD)  # names are case-insensitive
    accounts.remove_user("mon")
    with pytest.raises(NotFound):
        accounts.remove_user("mon")
    assert "password" not in accounts.users()[0].as_dict()


@pytest.mark.parametrize(("name", "role", "password", "field"), [
    ("", "viewer", PASSWORD, "name"),
    ("bad name", "viewer", PASSWORD, "name"),
    ("x" * 65, "viewer", PASSWORD, "name"),
    ("ann", "root", PASSWORD, "role"),
    ("ann", "viewer", "short", "password"),
])
def test_bad_user_input_is_400_naming_the_field(accounts: Accounts, name: str, role: str,
                                                password: str, field: str) -> None:
    with pytest.raises(BadInput) as e:
        accounts.add_user(name, role, password)
    assert e.value.field == field and e.value.status == 400
    assert accounts.users() == []


def test_the_last_admin_can_be_neither_removed_nor_demoted(accounts: Accounts) -> None:
    accounts.ensure_first_admin()
    with pytest.raises(Conflict, match="last admin"):
        accounts.remove_user("admin")
    with pytest.raises(Conflict, match="last admin"):
        accounts.set_role("admin", "viewer")
    accounts.add_user("ann", "operator", PASSWORD)
    accounts.set_role("ann", "admin")
    accounts.set_role("admin", "viewer")
    accounts.remove_user("admin")
    assert [(u.name, u.role) for u in accounts.users()] == [("ann", "admin")]


def test_a_new_password_replaces_the_old_and_ends_the_users_sessions(accounts: Accounts) -> None:
    accounts.add_user("ann", "admin", PASSWORD)
    here = accounts.login("ann", PASSWORD, "192.0.2.1")
    there = accounts.login("ann", PASSWORD, "192.0.2.2")
    accounts.set_password("ann", "another long password", keep_session=here.id)
    assert accounts.session(here.token) is not None
    assert accounts.session(there.token) is None
    with pytest.raises(BadCredentials):
        accounts.login("ann", PASSWORD, "192.0.2.1")
    accounts.login("ann", "another long password", "192.0.2.1")
    with pytest.raises(NotFound):
        accounts.set_password("nobody", "another long password")


def test_unknown_user_and_wrong_password_get_the_same_401(accounts: Accounts) -> None:
    accounts.add_user("ann", "admin", PASSWORD)
    with pytest.raises(BadCredentials) as unknown:
        accounts.login("bob", PASSWORD, "192.0.2.1")
    with pytest.raises(BadCredentials) as wrong:
        accounts.login("ann", "not her password", "192.0.2.1")
    assert unknown.value.message == wrong.value.message
    assert unknown.value.status == 401 and unknown.value.code == "unauthorized"


def test_failed_logins_are_logged_with_client_and_user_never_the_password(
        accounts: Accounts, caplog: pytest.LogCaptureFixture) -> None:
    accounts.add_user("ann", "admin", PASSWORD)
    with caplog.at_level(logging.WARNING, logger="proxy.console"), pytest.raises(BadCredentials):
        accounts.login("ann", "hunter2hunter2", "192.0.2.9")
    text = caplog.text
    assert "failed console login" in text and "'ann'" in text and "192.0.2.9" in text
    assert "hunter2" not in text


def test_logins_are_limited_per_client_then_allowed_after_the_minute(accounts: Accounts,
                                                                      clock: Clock) -> None:
    accounts.add_user("ann", "admin", PASSWORD)
    attempts = accounts.limiter.attempts
    assert attempts == 5  # login_attempts' default
    for _ in range(attempts):
        with pytest.raises(BadCredentials):
            accounts.login("ann", "wrong password!", "192.0.2.9")
    with pytest.raises(TooManyAttempts) as e:
        accounts.login("ann", PASSWORD, "192.0.2.9")  # even the right password waits
    assert e.value.status == 429 and e.value.retry_after == 60
    accounts.login("ann", PASSWORD, "192.0.2.10")
    clock.advance(60)
    accounts.login("ann", PASSWORD, "192.0.2.9")


@pytest.mark.parametrize(("user", "password", "field"), [
    ("", PASSWORD, "user"), (None, PASSWORD, "user"), ("ann", "", "password"),
    ("ann", "x" * 5000, "password"), ("a" * 5000, PASSWORD, "user"),
])
def test_bad_login_input_is_400_naming_the_field(accounts: Accounts, user: object, password: object,
                                                 field: str) -> None:
    with pytest.raises(BadInput) as e:
        accounts.login(user, password, "192.0.2.1")
    assert e.value.field == field


def test_a_weaker_stored_hash_is_replaced_at_login(data: Path, clock: Clock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "CURRENT", CHEAP)
    with ConsoleStore.open(data, now=clock) as store:
        Accounts(store, now=clock).add_user("ann", "admin", PASSWORD)
        monkeypatch.setattr(passwords, "CURRENT", passwords.Cost(2**5, 8, 1))
        assert check_password(store, "ann", PASSWORD) is not None
        (stored,) = store.read("SELECT password FROM users")[0]
    assert stored.startswith("scrypt$n=32,r=8,p=1$")
    assert passwords.verify_password(PASSWORD, stored)
