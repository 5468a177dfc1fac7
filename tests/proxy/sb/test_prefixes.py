"""The threat lists as v4 clients keep them: which entries are listed, prefixes that stay
unique, the checksum clients verify, Rice-Golomb data as Chromium decodes it, and a diff a
client applies to reach the new list."""

from __future__ import annotations

import hashlib
import itertools
import random
import time

import pytest

from proxy.decide.list_rules import EntryKind, ListName
from proxy.model import Rating
from proxy.sb import prefixes as px
from proxy.serve.app import App
from proxy.wire import urls


def h(expression: str) -> bytes:
    return hashlib.sha256(expression.encode()).digest()


def test_ratings_and_categories_map_to_the_documented_threat_lists() -> None:
    assert px.threat_type(Rating.DANGEROUS, "malware") == "MALWARE"
    assert px.threat_type(Rating.DANGEROUS, None) == "MALWARE"
    assert px.threat_type(Rating.DANGEROUS, "phishing") == "SOCIAL_ENGINEERING"
    assert px.threat_type(Rating.HIGHLY_SUSPICIOUS, "unwanted") == "UNWANTED_SOFTWARE"
    assert px.threat_type(Rating.HIGHLY_SUSPICIOUS, "adware") == "UNWANTED_SOFTWARE"
    for rating in (Rating.SUSPICIOUS, Rating.SAFE, Rating.UNTESTED):
        assert px.threat_type(rating, "malware") is None


def test_the_sample_pattern_s_listed_urls_are_in_their_lists(app: App) -> None:
    s = px.PrefixCache().current(app.engine)
    base = "testsafebrowsing.appspot.com/s/"
    assert urls.digest(base + "malware.html") in s.lists["MALWARE"].hashes
    assert urls.digest(base + "phishing.html") in s.lists["SOCIAL_ENGINEERING"].hashes
    assert urls.digest(base + "unwanted.html") in s.lists["UNWANTED_SOFTWARE"].hashes
    every = [x for lst in s.lists.values() for x in lst.hashes]
    assert urls.digest("testsafebrowsing.appspot.com/") not in every  # rated safe
    assert urls.digest("downloads.example.test/free/") not in every  # suspicious


def test_blocked_domain_and_url_rules_join_malware_and_a_new_set_is_made_once(app: App) -> None:
    cache = px.PrefixCache()
    before = cache.current(app.engine)
    assert cache.current(app.engine) is before  # shared, not per request
    app.lists_store.add(ListName.BLOCKED, [(EntryKind.DOMAIN, "bad.example.test"),
                                           (EntryKind.URL, "shop.example.test/cart/")])
    app.lists_store.add(ListName.APPROVED, [(EntryKind.DOMAIN, "good.example.test")])
    app.lists_store.add(ListName.BLOCKED, [(EntryKind.DOMAIN, "lab.example.test")],
                        clients=["10.0.0.0/8"])
    app.engine.lists = app.lists_store.snapshot()
    assert cache.current(app.engine) is before  # the new set is built in a thread meanwhile
    deadline = time.monotonic() + 30
    while cache.current(app.engine) is before and time.monotonic() < deadline:
        time.sleep(0.01)
    after = cache.current(app.engine)
    assert after.state != before.state
    assert cache.current(app.engine, wait=True) is after
    malware = after.lists["MALWARE"].hashes
    assert h("bad.example.test/") in malware and h("shop.example.test/cart/") in malware
    assert h("good.example.test/") not in malware  # approved
    assert h("lab.example.test/") not in malware  # only for some clients
    assert cache.find(before.state) is before and cache.find(after.state) is after
    assert cache.find(b"made-up") is None


def test_prefixes_are_four_bytes_and_longer_only_where_two_hashes_share_them() -> None:
    a = bytes.fromhex("aabbccdd") + b"\x01" * 28
    b = bytes.fromhex("aabbccdd01") + b"\x02" * 27
    c = bytes.fromhex("11223344") + b"\x00" * 28
    lst = px.ThreatList.of("MALWARE", [a, b, c, a])
    assert lst.prefixes == [c[:4], a[:6], b[:6]]
    assert lst.checksum == hashlib.sha256(c[:4] + a[:6] + b[:6]).digest()
    assert lst.full_hashes(a[:4]) == [a, b] and lst.full_hashes(a[:6]) == [a]
    assert lst.full_hashes(b"\x00\x00\x00\x00") == []


def test_rice_data_is_what_chromium_decodes() -> None:
    # Chromium's v4_rice_unittest vectors: (parameter, deltas, encoded data)
    vectors = [
        (2, [15, 9], b"\xf7\x02"),
        (28, [1777762129, 2093280223, 924369848],
         b"\xbf\xa8\x3f\xfb\xfc\xfb\x5e\x27\xe6\xc3\x1d\xc6\x38"),
        (28, [62763050, 1046523781, 192522171, 1800511020, 4442775, 582142548],
         b"\x54\x60\x7b\xe7\x0a\x5f\xc1\xdc\xee\x69\xde\xfe\x58\x3c\xa3\xd6\xa5\xf2\x10\x8c"
         b"\x4a\x59\x56\x00"),
    ]
    for k, deltas, data in vectors:
        values = [7, *itertools.accumulate(deltas, initial=7)][1:]
        first, param, count, encoded = px.rice_encode(values, k)
        assert (first, param, count, encoded) == (7, k, len(deltas), data)
        assert px.rice_decode(first, param, count, encoded) == values


def test_rice_round_trips_big_and_small_sets() -> None:
    rng = random.Random(14)
    for n in (1, 2, 50, 20_000):
        values = sorted(rng.sample(range(2**32), n))
        first, k, count, data = px.rice_encode(values)
        assert 2 <= k <= 28 and count == n - 1
        assert px.rice_decode(first, k, count, data) == values
    assert px.rice_decode(*px.rice_encode([0, 2**20 + 3], 2)) == [0, 2**20 + 3]  # long unary run
    assert px.rice_decode(*px.rice_encode([0, 2**32 - 1])) == [0, 2**32 - 1]
    with pytest.raises(ValueError):
        px.rice_decode(0, 2, 3, b"\x00")


def test_a_client_applying_the_diff_reaches_the_new_list_and_its_checksum() -> None:
    rng = random.Random(4)
    old_hashes = [rng.randbytes(32) for _ in range(300)]
    twin = old_hashes[0][:4] + rng.randbytes(28)  # makes old_hashes[0]'s prefix longer
    new_hashes = old_hashes[50:] + [rng.randbytes(32) for _ in range(40)] + [twin, old_hashes[0]]
    old, new = px.ThreatList.of("MALWARE", old_hashes), px.ThreatList.of("MALWARE", new_hashes)
    d = px.diff(old, new)
    assert d.removals == sorted(d.removals)
    kept = [p for i, p in enumerate(old.prefixes) if i not in set(d.removals)]
    assert sorted(kept + d.additions) == new.prefixes
    assert px.checksum(kept + d.additions) == new.checksum
    assert old_hashes[0][:4] in [old.prefixes[i] for i in d.removals]


def test_full_hashes_are_found_by_any_prefix_even_ending_in_zero_bytes() -> None:
    x = bytes.fromhex("aabbccdd") + b"\x00" * 28
    y = bytes.fromhex("aabbccdd") + b"\x00" * 27 + b"\x01"
    z = bytes.fromhex("aabbccde") + b"\x00" * 28
    lst = px.ThreatList.of("MALWARE", [z, y, x])
    assert lst.hashes == [x, y, z] and len(lst) == 3
    assert lst.full_hashes(x[:4]) == [x, y]
    assert lst.full_hashes(x) == [x] and lst.full_hashes(y) == [y]
    assert lst.full_hashes(x[:31]) == [x, y]
    assert lst.full_hashes(bytes.fromhex("aabbccdc")) == []
    assert lst.full_hashes(b"\xff" * 4) == []
    empty = px.ThreatList.of("MALWARE", [])
    assert empty.full_hashes(b"\x00" * 4) == [] and empty.prefixes == []
    assert empty.checksum == hashlib.sha256(b"").digest()
