"""Named API keys: made with a role and an optional expiry, shown once, stored as a digest,
accepted as `Authorization: Bearer KEY` until they expire or are revoked."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from proxy.console.accounts import Accounts
from proxy.console.errors import BadInput, Conflict, NotFound

from .conftest import Clock


def test_a_new_key_authenticates_as_its_name_and_role(accounts: Accounts) -> None:
    key_id, secret = accounts.create_key("grafana", "viewer", None, "admin")
    assert secret.startswith(f"rpk_{key_id}_")
    who = accounts.authenticate_bearer(f"Bearer {secret}")
    assert who is not None
    assert (who.name, who.role, who.kind, who.id, who.csrf) == ("grafana", "viewer", "key", key_id, None)
    assert accounts.authenticate_bearer(f"bearer  {secret} ") is not None  # scheme case, spaces


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Basic dXNlcjpwYXNz", "Bearer rpk_", "Bearer " + "x" * 300,
])
def test_anything_but_a_known_key_is_refused(accounts: Accounts, header: str | None) -> None:
    accounts.create_key("grafana", "viewer", None, "admin")
    assert accounts.authenticate_bearer(header) is None


def test_a_key_with_a_right_id_and_a_wrong_secret_is_refused(accounts: Accounts) -> None:
    _, secret = accounts.create_key("grafana", "viewer", None, "admin")
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert accounts.authenticate_bearer(f"Bearer {forged}") is None


def test_only_the_digest_is_stored(accounts: Accounts, data: Path) -> None:
    _, secret = accounts.create_key("grafana", "viewer", None, "admin")
    raw = (data / "console.sqlite").read_bytes() + b"".join(
        p.read_bytes() for p in data.glob("console.sqlite-wal"))
    assert secret.encode() not in raw and secret.split("_", 2)[2].encode() not in raw
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in raw


def test_a_key_expires_after_its_days(accounts: Accounts, clock: Clock) -> None:
    _, secret = accounts.create_key("ci", "operator", 2, "admin")
    clock.advance(2 * 86400 - 1)
    assert accounts.authenticate_bearer(f"Bearer {secret}") is not None
    clock.advance(1)
    assert accounts.authenticate_bearer(f"Bearer {secret}") is None
    (info,) = accounts.list_keys()
    assert info.as_dict(clock())["expired"] is True


def test_a_revoked_key_stops_working_by_name_or_id(accounts: Accounts) -> None:
    a_id, a = accounts.create_key("a", "viewer", None, "admin")
    _, b = accounts.create_key("b", "viewer", None, "admin")
    assert accounts.revoke_key("a").id == a_id
    assert accounts.revoke_key(accounts.list_keys()[0].id).name == "b"
    assert accounts.authenticate_bearer(f"Bearer {a}") is None
    assert accounts.authenticate_bearer(f"Bearer {b}") is None
    with pytest.raises(NotFound) as e:
        accounts.revoke_key("a")
    assert e.value.status == 404


def test_the_listing_never_shows_a_secret_and_records_last_use(accounts: Accounts, clock: Clock) -> None:
    key_id, secret = accounts.create_key("grafana", "viewer", 30, "admin")
    (before,) = accounts.list_keys()
    assert before.last_used is None
    clock.advance(5)
    accounts.authenticate_bearer(f"Bearer {secret}")
    (info,) = accounts.list_keys()
    shown = info.as_dict(clock())
    assert shown["name"] == "grafana" and shown["id"] == key_id and shown["created_by"] == "admin"
    assert shown["last_used"] is not None and shown["expires"] is not None
    assert secret not in repr(shown) and secret.split("_", 2)[2] not in repr(shown)
    assert info.last_used == clock()
    clock.advance(5)  # within a minute: not written again
    accounts.authenticate_bearer(f"Bearer {secret}")
    assert accounts.list_keys()[0].last_used == clock() - 5


@pytest.mark.parametrize(("name", "role", "days", "field"), [
    ("bad name", "viewer", None, "name"), ("ok", "god", None, "role"),
    ("ok", "viewer", 0, "expires"), ("ok", "viewer", 100000, "expires"), ("ok", "viewer", True, "expires"),
])
def test_bad_key_input_is_400_naming_the_field(accounts: Accounts, name: str, role: str,
                                               days: int | None, field: str) -> None:
    with pytest.raises(BadInput) as e:
        accounts.create_key(name, role, days, "admin")
    assert e.value.field == field
    assert accounts.list_keys() == []


def test_a_key_name_is_used_once(accounts: Accounts) -> None:
    accounts.create_key("grafana", "viewer", None, "admin")
    with pytest.raises(Conflict) as e:
        accounts.create_key("Grafana", "admin", None, "admin")
    assert e.value.status == 409
