"""A rule's fields as people type them (proxy/decide/list_rules.py): keywords and regular
expressions, client networks, expiry as a duration or a time, and one-line texts."""

from __future__ import annotations

import pytest

from proxy.decide.list_rules import (
    Actor,
    Entry,
    EntryKind,
    ListName,
    classify,
    iso_time,
    parse_clients,
    parse_expiry,
)
from proxy.errors import ListError

K, R = EntryKind.KEYWORD, EntryKind.REGEX
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(("value", "kind", "expected"), [
    ("Casino", K, "casino"),
    ("  Login.PHP ", K, "login.php"),
    ("bücher", K, "b%c3%bccher"),  # escaped as canonical URLs are, matched whatever the case
    ("100%", K, "100%25"),
    (r"^https?://[^/]*\.bet/", R, r"^https?://[^/]*\.bet/"),
    ("(?i)PAYPAL.*login", R, "(?i)PAYPAL.*login"),
])
def test_keywords_and_regexes(value: str, kind: EntryKind, expected: str) -> None:
    assert classify(value, kind) == (kind, expected)


@pytest.mark.parametrize(("value", "kind", "problem"), [
    ("ab", K, "shorter than 3 characters"),
    ("two words", K, "holds no spaces"),
    ("(a)\\1", R, "invalid escape sequence"),
    ("a(?!b)", R, "invalid perl operator"),
    ("[unclosed", R, "missing ]"),
    ("x?", R, "matches the empty text"),
])
def test_bad_keywords_and_regexes_are_refused_naming_them(value: str, kind: EntryKind, problem: str) -> None:
    with pytest.raises(ListError, match=problem) as info:
        classify(value, kind)
    assert repr(value.strip()) in info.value.message


def test_keywords_and_regexes_are_never_guessed() -> None:
    assert classify("casino")[0] is EntryKind.DOMAIN


@pytest.mark.parametrize(("texts", "shown"), [
    (["10.0.0.0/8"], ["10.0.0.0/8"]),
    (["192.0.2.7", " 10.0.0.0/8 ", "10.0.0.0/8"], ["10.0.0.0/8", "192.0.2.7/32"]),  # sorted, once each
    (["2001:db8::/32", "::1"], ["::1/128", "2001:db8::/32"]),
    ([], []),
])
def test_client_networks(texts: list[str], shown: list[str]) -> None:
    assert [str(n) for n in parse_clients(texts)] == shown


@pytest.mark.parametrize(("text", "problem"), [
    ("10.0.0.1/8", "has host bits set; did you mean 10.0.0.0/8?"),
    ("10.0.0.0/33", "is not an IP address or CIDR network"),
    ("lan", "is not an IP address or CIDR network"),
])
def test_bad_client_networks(text: str, problem: str) -> None:
    with pytest.raises(ListError, match=problem):
        parse_clients([text])


@pytest.mark.parametrize(("text", "expected"), [
    ("30m", NOW + 1800), ("12h", NOW + 43200), ("7d", NOW + 7 * 86400), ("2w", NOW + 14 * 86400),
    ("90s", NOW + 90), ("2027-02-01T00:00:00Z", 1_801_440_000.0),
    ("2027-02-01T01:00:00+01:00", 1_801_440_000.0),
    ("2027-02-01", 1_801_440_000.0),  # no zone: UTC
])
def test_expiry_as_a_duration_or_a_time(text: str, expected: float) -> None:
    assert parse_expiry(text, NOW) == expected


@pytest.mark.parametrize(("text", "problem"), [
    ("soon", "neither a duration"), ("7 days", "neither a duration"), ("0d", "neither a duration"),
    ("2020-01-01T00:00:00Z", "already past"), ("99999w", "more than 100 years"),
    ("2400-01-01", "more than 100 years"),
])
def test_bad_expiries(text: str, problem: str) -> None:
    with pytest.raises(ListError, match=problem):
        parse_expiry(text, NOW)


def test_an_import_may_carry_an_expiry_already_past() -> None:
    assert parse_expiry("2020-01-01T00:00:00Z", NOW, past_ok=True) == 1_577_836_800.0


def test_an_entry_knows_whether_it_expired_and_whom_it_applies_to() -> None:
    import ipaddress

    e = Entry(ListName.BLOCKED, EntryKind.DOMAIN, "x.example", clients=parse_clients(["10.0.0.0/8"]),
              expires=NOW)
    assert e.expired(NOW) and not e.expired(NOW - 1)
    assert e.applies_to(ipaddress.ip_address("10.2.3.4")) and not e.applies_to(ipaddress.ip_address("::1"))
    assert not e.applies_to(None) and Entry(ListName.BLOCKED, EntryKind.DOMAIN, "y").applies_to(None)
    assert iso_time(NOW) == "2027-01-15T08:00:00Z"


def test_an_actor_is_one_bounded_line() -> None:
    with pytest.raises(ListError, match="who must be one line"):
        Actor("a\nb", "cli")
    with pytest.raises(ListError, match="origin longer than 128"):
        Actor("a", "x" * 200)
