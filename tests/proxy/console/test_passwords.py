"""Passwords as salted scrypt: a round trip, a wrong password, the parameters kept with the hash
(so raising them later still verifies old hashes and replaces them), and the length rules."""

from __future__ import annotations

import pytest

from proxy.console import passwords
from proxy.console.errors import BadInput


def test_a_password_verifies_and_a_wrong_one_does_not() -> None:
    stored = passwords.hash_password("correct horse battery")
    assert passwords.verify_password("correct horse battery", stored)
    assert not passwords.verify_password("correct horse batterY", stored)
    assert not passwords.verify_password("", stored)


def test_the_hash_records_scrypt_and_its_parameters_and_is_salted() -> None:
    a = passwords.hash_password("correct horse battery")
    b = passwords.hash_password("correct horse battery")
    assert a.startswith("scrypt$n=32768,r=8,p=1$")
    assert a != b  # salted
    assert "correct horse" not in a


def test_an_old_hash_with_other_parameters_still_verifies_and_needs_rehash() -> None:
    old = passwords.hash_password("correct horse battery", passwords.Cost(2**10, 8, 1))
    assert old.startswith("scrypt$n=1024,r=8,p=1$")
    assert passwords.verify_password("correct horse battery", old)
    assert passwords.needs_rehash(old)
    assert not passwords.needs_rehash(passwords.hash_password("correct horse battery"))


@pytest.mark.parametrize("stored", [
    "", "plain", "scrypt$n=32768,r=8,p=1$notbase64!$abc",
    "scrypt$n=1000,r=8,p=1$AAAA$AAAA",            # n not a power of 2
    "scrypt$n=1073741824,r=8,p=1$AAAA$AAAA",      # n beyond what a stored hash may ask
])
def test_a_malformed_stored_hash_never_verifies(stored: str) -> None:
    assert not passwords.verify_password("anything at all", stored)
    assert passwords.needs_rehash(stored)


def test_unknown_users_cost_a_verification_and_never_pass() -> None:
    assert passwords.verify_unknown("not a password of anyone") is False


@pytest.mark.parametrize(("value", "why"), [
    ("short", "at least 12"), ("x" * 1025, "at most 1024"), ("twelve chars\x00", "NUL"), (None, "text"),
])
def test_a_new_password_must_be_long_enough_and_bounded(value: object, why: str) -> None:
    with pytest.raises(BadInput) as e:
        passwords.check_new_password(value)
    assert e.value.field == "password" and why in e.value.message
    assert e.value.status == 400 and e.value.exit_code == 2
    assert passwords.check_new_password("twelve chars") == "twelve chars"
