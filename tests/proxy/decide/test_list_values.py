"""proxy.decide.lists.classify refuses values that would be stored as rules matching nothing
(a hash with digits missing, a number, an IP range, a URL host no query can have),
with a hint; a given kind insists where the value is valid for it."""

from __future__ import annotations

import pytest

from proxy.decide.lists import EntryKind, classify
from proxy.errors import ListError

D, U = EntryKind.DOMAIN, EntryKind.URL
SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


@pytest.mark.parametrize(("value", "problem", "insist"), [
    (SHA256[:-1], "mistyped file hash: 63 hex digits", D),
    (SHA256[:20].upper(), "mistyped file hash: 20 hex digits", D),
    ("12345", "neither a host name", D),
    ("192.0.2", "neither a host name", D),
    ("256.1.1.1", "neither a host name", D),
])
def test_a_likely_slip_is_refused_unless_the_kind_is_given(
        value: str, problem: str, insist: EntryKind) -> None:
    with pytest.raises(ListError, match=problem) as info:
        classify(value)
    assert value in info.value.message and f"--kind {insist.value}" in info.value.message
    assert classify(value, insist)[0] is insist


@pytest.mark.parametrize("value", ["10.0.0.0/8", "2001:db8::/32", "[2001:db8::]/32"])
def test_an_ip_range_is_refused_naming_the_two_ways_out(value: str) -> None:
    with pytest.raises(ListError, match="is an IP range; lists hold single addresses") as info:
        classify(value)
    assert f"write a URL prefix with its scheme (http://{value})" in info.value.message
    assert classify("http://10.0.0.0/8") == (U, "10.0.0.0/8")


@pytest.mark.parametrize(("value", "expected"), [
    ("192.0.2.7", (D, "192.0.2.7")),
    ("192.0.2.7.", (D, "192.0.2.7")),
    ("deadbeef.example", (D, "deadbeef.example")),
    ("cafe", (D, "cafe")),  # short hex: a plausible name
    ("a1.b2.example/8", (U, "a1.b2.example/8")),
])
def test_ordinary_values_still_pass(value: str, expected: tuple[EntryKind, str]) -> None:
    assert classify(value) == expected


@pytest.mark.parametrize("kind", [None, U])
def test_a_url_prefix_whose_host_no_query_can_have_is_refused(kind: EntryKind | None) -> None:
    with pytest.raises(ListError, match="is not a host name"):
        classify("http://exa mple.test/x", kind)
