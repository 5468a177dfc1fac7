"""ListSnapshot's URL path as the engine calls it: with the host it parsed already, the
answer is the one the snapshot finds cutting the URL itself (domains, parents, IPs,
IPv6, URL prefixes, keywords and regexes; plain and scoped snapshots)."""

from __future__ import annotations

import random

import pytest

from proxy.decide.list_match import ListSnapshot
from proxy.decide.list_rules import Entry, EntryKind, ListName, classify, parse_clients
from proxy.wire.urls import canonicalize, host_of

B, A = ListName.BLOCKED, ListName.APPROVED
D, U, K, R = EntryKind.DOMAIN, EntryKind.URL, EntryKind.KEYWORD, EntryKind.REGEX


def rule(name: ListName, kind: EntryKind, value: str, clients: tuple[str, ...] = ()) -> Entry:
    kind, value = classify(value, kind)
    return Entry(name, kind, value, clients=parse_clients(clients))


RULES = [rule(B, D, "evil.test"), rule(A, D, "www.evil.test"), rule(B, D, "192.0.2.7"),
         rule(B, D, "2001:db8::1"), rule(A, U, "[2001:db8::1]/ok/"), rule(A, U, "shop.test/cart"),
         rule(B, U, "a.b.shop.test/x"), rule(B, D, "b.shop.test"), rule(B, K, "casino"),
         rule(A, R, r"\.pdf$"), rule(B, D, "localhost"), rule(B, D, "corp.test", ("10.0.0.0/8",))]

HOSTS = ["evil.test", "www.evil.test", "a.www.evil.test", "192.0.2.7", "192.0.2.8", "[2001:db8::1]",
         "[2001:db8::2]", "shop.test", "a.b.shop.test", "x.a.b.shop.test", "b.shop.test", "localhost",
         "x.localhost", "corp.test", "in.corp.test", "nothing.example", "test"]
PATHS = ["", "ok/", "ok/a", "cart", "cart/1", "x", "x/casino", "doc.pdf", "CASINO.html", "y"]


@pytest.mark.parametrize("scoped", [False, True], ids=["plain", "scoped"])
def test_the_engines_host_gives_the_same_answer(scoped: bool) -> None:
    snap = ListSnapshot(RULES if scoped else RULES[:-1])
    rng = random.Random(3)
    decided = 0
    for _ in range(600):
        url = canonicalize(f"http://{rng.choice(HOSTS)}/{rng.choice(PATHS)}")
        client = rng.choice([None, "10.1.2.3", "198.51.100.1"])
        got = snap.match_url(url, client, host_of(url))
        assert got == snap.match_url(url, client), url
        decided += got is not None
    assert decided > 300


def test_parents_with_two_labels_or_more_match_and_ip_addresses_have_none() -> None:
    snap = ListSnapshot([rule(B, D, "shop.test"), rule(A, D, "2.7"), rule(B, D, "test")])
    assert snap.match_url(canonicalize("http://a.b.shop.test/"), host="a.b.shop.test") == (B, "shop.test")
    assert snap.match_url(canonicalize("http://192.0.2.7/"), host="192.0.2.7") is None
    assert snap.match_url(canonicalize("http://other.test/"), host="other.test") is None  # one label
    assert snap.match_url(canonicalize("http://test/"), host="test") == (B, "test")


def test_urls_asked_again_are_remembered_per_snapshot_but_decided_per_client_and_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.decide import list_match
    monkeypatch.setattr(list_match, "MEMO_URLS", 4)
    clock = [1_800_000_000.0]
    entries = [rule(B, K, "casino", ("10.0.0.0/8",)), rule(A, D, "shop.test"),
               Entry(A, U, "shop.test/sale", expires=clock[0] + 10)]
    snap = ListSnapshot(entries, clock=lambda: clock[0])
    url = canonicalize("http://shop.test/sale/casino")
    assert snap.match_url(url, "10.1.1.1") == (B, "casino")
    assert snap.match_url(url, "198.51.100.1") == (A, "shop.test/sale")  # the memo holds rules, not answers
    clock[0] += 60  # the URL prefix rule expires
    assert snap.match_url(url, "198.51.100.1") == (A, "shop.test")
    assert snap.match_url(url, "10.1.1.1") == (B, "casino")
    for i in range(10):
        assert snap.match_url(canonicalize(f"http://{i}.shop.test/"), None) == (A, "shop.test")
        assert len(snap._memo) <= 4
    long = canonicalize("http://shop.test/" + "a" * list_match.MEMO_URL_LENGTH)
    assert snap.match_url(long) == (A, "shop.test") and long not in snap._memo
