"""Which rule decides (proxy/decide/list_match.py docstring), as tables: blocked beats approved
beats the pattern, scoped rules apply only to their clients, expired rules never match, and
within a list the most specific rule is the one reported. The indexed snapshot is held equal
to checking every rule by hand, for plain snapshots (the fast path) and scoped/expiring ones."""

from __future__ import annotations

import ipaddress
import random
import re

import pytest

from proxy.decide.cache import AnswerCache
from proxy.decide.engine import Engine
from proxy.decide.list_match import ListSnapshot, client_ip
from proxy.decide.list_rules import Entry, EntryKind, ListName, classify, parse_clients
from proxy.model import Rating, Source
from proxy.wire import protocol, urls
from proxy.wire.urls import canonicalize
from tests.proxy.decide.test_engine import FakePatterns, Stats

B, A = ListName.BLOCKED, ListName.APPROVED
H, D, U, K, R = (EntryKind.HASH, EntryKind.DOMAIN, EntryKind.URL, EntryKind.KEYWORD, EntryKind.REGEX)
NOW = 1_800_000_000.0


def rule(name: ListName, kind: EntryKind, value: str, clients: tuple[str, ...] = (),
         expires: float | None = None) -> Entry:
    kind, value = classify(value, kind)
    return Entry(name, kind, value, clients=parse_clients(clients), expires=expires)


def snapshot(*entries: Entry, clock: list[float] | None = None) -> ListSnapshot:
    at = clock or [NOW]
    return ListSnapshot(entries, clock=lambda: at[0])


# ---------------------------------------------------------------- blocked beats approved


ACROSS = [rule(A, U, "www.evil.example/safe/"), rule(B, D, "evil.example"),
          rule(A, D, "good.example"), rule(B, K, "casino"),
          rule(A, K, "download"), rule(B, R, r"\.exe$"),
          rule(A, U, "ok.example/"), rule(B, U, "ok.example/malware/")]


@pytest.mark.parametrize(("url", "expected"), [
    ("http://www.evil.example/safe/page", (B, "evil.example")),  # a longer approved prefix loses
    ("http://casino.good.example/", (B, "casino")),  # a blocked keyword beats an approved domain
    ("http://good.example/download/setup.exe", (B, r"\.exe$")),  # a blocked regex beats both
    ("http://good.example/download/readme.txt", (A, "good.example")),
    ("http://ok.example/malware/x.exe", (B, "ok.example/malware/")),
    ("http://ok.example/index.html", (A, "ok.example/")),
    ("http://elsewhere.example/", None),
])
def test_any_blocked_rule_beats_every_approved_rule(url: str, expected: object) -> None:
    assert snapshot(*ACROSS).match_url(canonicalize(url)) == expected


# ---------------------------------------------------------------- within a list


WITHIN = [rule(B, D, "example.test"), rule(B, D, "shop.example.test"), rule(B, U, "shop.example.test/"),
          rule(B, U, "shop.example.test/cart/"), rule(B, K, "cart"), rule(B, K, "cart/pay"),
          rule(B, R, "pay"), rule(B, R, "p[a]y"), rule(A, K, "public")]


@pytest.mark.parametrize(("url", "reported"), [
    ("http://shop.example.test/cart/pay", "shop.example.test/cart/"),  # the longest URL prefix
    ("http://shop.example.test/list", "shop.example.test/"),
    ("http://www.shop.example.test/cart/pay", "shop.example.test"),  # then the longest domain
    ("http://a.example.test/", "example.test"),
    ("http://other.test/cart/pay", "cart/pay"),  # then the longest keyword
    ("http://other.test/cart", "cart"),
    ("http://other.test/repay", "p[a]y"),  # then the longest regex
    ("http://other.test/public", (A, "public")),
])
def test_within_a_list_the_most_specific_rule_is_reported(url: str, reported: object) -> None:
    want = reported if isinstance(reported, tuple) else (B, reported)
    assert snapshot(*WITHIN).match_url(canonicalize(url)) == want


def test_every_matching_rule_is_listed_most_specific_first() -> None:
    found = snapshot(*WITHIN).url_entries(canonicalize("http://shop.example.test/cart/pay"))
    assert [e.value for e in found] == ["shop.example.test/cart/", "shop.example.test/", "shop.example.test",
                                       "example.test", "cart/pay", "cart", "p[a]y", "pay"]


# ---------------------------------------------------------------- scope


SCOPED = [rule(B, D, "games.example", clients=("10.0.0.0/8", "2001:db8::/32")),
          rule(A, D, "games.example.org"), rule(B, D, "play.games.example.org", clients=("192.168.0.0/16",)),
          rule(A, H, "ab" * 32, clients=("10.1.0.0/16",)), rule(B, H, "cd" * 32),
          rule(B, K, "torrent", clients=("10.2.3.4",))]


@pytest.mark.parametrize(("name", "client", "expected"), [
    ("x.games.example", "10.1.2.3", (B, "games.example")),
    ("x.games.example", "::ffff:10.1.2.3", (B, "games.example")),  # IPv4-mapped counts as IPv4
    ("x.games.example", "2001:db8::5", (B, "games.example")),
    ("x.games.example", "192.0.2.1", None),
    ("x.games.example", None, None),  # an unknown client gets unscoped rules only
    ("x.games.example", "not an address", None),
    ("play.games.example.org", "192.168.4.4", (B, "play.games.example.org")),
    ("play.games.example.org", "10.1.2.3", (A, "games.example.org")),
])
def test_a_scoped_rule_applies_only_to_its_clients(name: str, client: str | None, expected: object) -> None:
    assert snapshot(*SCOPED).match_domain(name, client) == expected


def test_scoped_hash_and_keyword_rules() -> None:
    s = snapshot(*SCOPED)
    assert s.scoped
    assert s.match_hexes(["ab" * 32, "cd" * 32], "10.1.9.9") == {"ab" * 32: (A, "ab" * 32),
                                                                 "cd" * 32: (B, "cd" * 32)}
    assert s.match_hexes(["ab" * 32], "10.2.0.1") == {}
    url = canonicalize("http://files.example/torrent/x")
    assert s.match_url(url, "10.2.3.4") == (B, "torrent")
    assert s.match_url(url, "10.2.3.5") is None


# ---------------------------------------------------------------- expiry


def test_an_expired_rule_never_matches_and_one_expiring_later_does_until_then() -> None:
    clock = [NOW]
    s = snapshot(rule(B, D, "old.example", expires=NOW - 1), rule(B, D, "soon.example", expires=NOW + 60),
                 rule(A, D, "example"), clock=clock)
    assert s.match_domain("old.example") is None
    assert len(s) == 2 and s.expires_next == NOW + 60
    assert s.match_domain("a.soon.example") == (B, "soon.example")
    clock[0] = NOW + 60  # the snapshot is not rebuilt: the rule still stops at its time
    assert s.match_domain("a.soon.example") is None
    assert s.url_matches(canonicalize("http://soon.example/"))[0][1] == "expired"


# ---------------------------------------------------------------- lists beat the pattern (engine)


def engine(*entries: Entry) -> Engine:
    return Engine(patterns=FakePatterns(), lists=snapshot(*entries), cache=AnswerCache(10), relay=None,
                  stats=Stats())


@pytest.mark.parametrize(("entries", "client", "source", "rating"), [
    ((), None, Source.PATTERN, Rating.DANGEROUS),
    ((rule(A, D, "bad.test"),), None, Source.APPROVED_LIST, Rating.SAFE),
    ((rule(A, K, "bad.test/page"), rule(B, R, "nothing-here")), None, Source.APPROVED_LIST, Rating.SAFE),
    ((rule(A, D, "bad.test", clients=("10.0.0.0/8",)),), "10.0.0.1", Source.APPROVED_LIST, Rating.SAFE),
    ((rule(A, D, "bad.test", clients=("10.0.0.0/8",)),), "192.0.2.1", Source.PATTERN, Rating.DANGEROUS),
    ((rule(A, D, "bad.test"), rule(B, K, "page")), None, Source.BLOCKED_LIST, Rating.DANGEROUS),
    ((rule(A, D, "bad.test", expires=NOW - 5),), None, Source.PATTERN, Rating.DANGEROUS),
])
def test_both_lists_beat_the_pattern(entries: tuple[Entry, ...], client: str | None, source: Source,
                                     rating: Rating) -> None:
    q = protocol.parse_url("http://bad.test/page", protocol.Limits())
    answer = engine(*entries).web_local_one(q, client)
    assert answer is not None and (answer.source, answer.rating) == (source, rating)


def test_the_engine_passes_the_client_for_files_domains_and_web() -> None:
    e = engine(rule(B, H, "ee" * 32, clients=("10.0.0.0/8",)), rule(B, D, "x.test", clients=("10.0.0.0/8",)))
    batch = protocol.FileBatch.of([protocol.parse_hash("ee" * 32)])
    assert e.files_local(batch, "10.9.9.9")[0] is not None
    assert e.files_local(batch, "11.0.0.1")[0] is None
    assert e.files_local(batch)[0] is None
    d = protocol.parse_domain("a.x.test", 0)
    assert e.domain_local_one(d, "10.0.0.2") is not None and e.domain_local_one(d) is None


# ---------------------------------------------------------------- fast path == every rule by hand


def by_hand(entries: list[Entry], canonical: str, client: str | None,
            now: float) -> tuple[ListName, str] | None:
    """The module docstring's precedence, rule by rule with no index."""
    host = urls.host_of(canonical)
    name = host.strip("[]")
    ip = client_ip(client)

    def text_matches(e: Entry) -> bool:
        if e.kind is D:
            is_ip = urls.parse_ip(name) is not None
            return name == e.value or (not is_ip and "." in e.value and name.endswith("." + e.value))
        if e.kind is U:
            return urls.strip_scheme(canonical).startswith(e.value)
        if e.kind is K:
            return e.value in canonical.lower()
        if e.kind is R:
            return re.search(e.value, canonical) is not None
        return False

    rank = {U: 0, D: 1, K: 2, R: 3}
    hits = [e for e in entries if text_matches(e) and not e.expired(now) and e.applies_to(ip)]
    for wanted in (B, A):
        mine = [e for e in hits if e.list is wanted]
        if mine:
            best = min(mine, key=lambda e: (rank[e.kind], -len(e.value), e.value))
            return best.list, best.value
    return None


def random_rules(rng: random.Random, scoped: bool) -> list[Entry]:
    words = ["alpha", "beta", "gamma", "delta", "shop", "cart", "pay", "img"]
    out: dict[tuple[EntryKind, str], Entry] = {}
    for _ in range(120):
        kind = rng.choice([D, D, U, U, K, R])
        host = ".".join(rng.sample(words, rng.randint(1, 3))) + ".test"
        value = {D: host, U: f"{host}/{rng.choice(words)}", K: rng.choice(words) + rng.choice(["", "/", "."]),
                 R: rng.choice([r"\.exe$", rf"^http://{rng.choice(words)}\.", rf"/{rng.choice(words)}/\w+",
                                r"[0-9]{3}"])}[kind]
        clients = tuple(rng.sample(["10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24", "2001:db8::/32"],
                                   rng.randint(0, 2))) if scoped and rng.random() < 0.4 else ()
        expires = rng.choice([None, NOW - 10, NOW + 10]) if scoped else None
        e = rule(rng.choice([A, B]), kind, value, clients, expires)
        out[(e.kind, e.value)] = e
    return list(out.values())


@pytest.mark.parametrize("scoped", [False, True], ids=["plain", "scoped-and-expiring"])
def test_the_indexed_snapshot_equals_checking_every_rule(scoped: bool) -> None:
    rng = random.Random(20261201 + scoped)
    words = ["alpha", "beta", "gamma", "delta", "shop", "cart", "pay", "img", "x"]
    seen: set[object] = set()
    for _ in range(20):
        entries = random_rules(rng, scoped)
        s = snapshot(*entries)
        assert s.scoped is (scoped and any(e.clients for e in entries))
        for _ in range(60):
            host = ".".join(rng.sample(words, rng.randint(1, 4))) + ".test"
            near = rng.choice(entries)
            if near.kind in (D, U) and rng.random() < 0.5:  # a rule's host, or a subdomain of it
                host = rng.choice(["", "www.", "a.b."]) + urls.host_of(near.value)
            path = "/".join(rng.sample(words, rng.randint(0, 3)))
            url = canonicalize(f"http://{host}/{path}{rng.choice(['', '.exe', '/123', '?q=pay'])}")
            client = rng.choice([None, "10.1.2.3", "10.9.9.9", "192.0.2.5", "2001:db8::1", "198.51.100.1"])
            got = s.match_url(url, client)
            assert got == by_hand(entries, url, client, NOW), (url, client)
            kinds = {e.value: e.kind for e in entries}
            seen.add(None if got is None else (got[0], kinds[got[1]]))
    missing = ({None} | {(n, k) for n in (A, B) for k in (D, U, K, R)}) - seen
    assert not missing  # every kind decided some


def test_ip_rules_match_that_address_only() -> None:
    s = snapshot(rule(B, D, "192.0.2.7"), rule(B, D, "2001:db8::1"), rule(A, U, "[2001:db8::1]/ok"))
    assert s.match_url(canonicalize("http://192.0.2.7/x")) == (B, "192.0.2.7")
    assert s.match_url(canonicalize("http://192.0.2.8/x")) is None
    assert s.match_url(canonicalize("http://[2001:db8::1]/ok/x")) == (B, "2001:db8::1")
    assert ipaddress.ip_address("2001:db8::1") == client_ip("[2001:db8::1]")
