"""The role -> permission table and Principal checks the API relies on."""

from __future__ import annotations

import pytest

from proxy.console.errors import BadInput, Forbidden
from proxy.console.roles import PERMISSIONS, ROLES, Principal, check_role, may

TABLE = {
    #                  admin  operator viewer
    "read":            (True, True, True),
    "account.own":     (True, True, True),
    "lists.write":     (True, True, False),
    "updates.run":     (True, True, False),
    "settings.write":  (True, False, False),
    "accounts.manage": (True, False, False),
}


@pytest.mark.parametrize("permission", sorted(TABLE))
def test_each_role_has_exactly_the_permissions_of_the_table(permission: str) -> None:
    assert tuple(may(role, permission) for role in ("admin", "operator", "viewer")) == TABLE[permission]


def test_the_table_covers_every_permission_and_role() -> None:
    assert set(TABLE) == set(PERMISSIONS)
    assert set(ROLES) == {"admin", "operator", "viewer"}


def test_an_unknown_role_may_do_nothing_and_an_unknown_permission_is_a_bug() -> None:
    assert not may("root", "read")
    with pytest.raises(ValueError, match="unknown permission"):
        may("admin", "lists.wrte")


def test_check_role_names_the_field_and_the_roles() -> None:
    assert check_role("viewer") == "viewer"
    with pytest.raises(BadInput) as e:
        check_role("superuser")
    assert e.value.field == "role" and "admin, operator, viewer" in e.value.message


def test_a_principal_without_the_permission_is_forbidden_403() -> None:
    viewer = Principal(name="mon", role="viewer", kind="key", id="k1")
    viewer.require("read")
    with pytest.raises(Forbidden) as e:
        viewer.require("lists.write")
    assert e.value.status == 403 and e.value.code == "forbidden" and "lists.write" in e.value.message


def test_csrf_is_checked_for_sessions_and_not_needed_for_keys() -> None:
    browser = Principal(name="ann", role="admin", kind="session", id="s1", csrf="abc123")
    assert browser.csrf_ok("abc123")
    assert not browser.csrf_ok("abc124") and not browser.csrf_ok(None)
    assert Principal(name="k", role="admin", kind="key", id="k1").csrf_ok(None)
