"""The decision chain with injected parts: fake patterns, real lists snapshot, fake relay and clock."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from proxy.decide.cache import AnswerCache
from proxy.decide.engine import Engine
from proxy.decide.lists import Entry, EntryKind, ListName, ListSnapshot
from proxy.errors import RelayError
from proxy.model import Rating, Service, Source, Verdict
from proxy.patterns.pattern import FileHit, WebHit
from proxy.wire import protocol

LIMITS = protocol.Limits()
BAD = "aa" * 32
GOOD = "bb" * 32
UNKNOWN = "cc" * 32
EICAR = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


class FakePatterns:
    version = "2026112300"

    def __init__(self) -> None:
        self.files = {bytes.fromhex(EICAR): FileHit(Verdict.MALICIOUS, "EICAR-Test-File"),
                      bytes.fromhex(GOOD): FileHit(Verdict.MALICIOUS, "Pattern-Says-Bad")}

    def lookup_file(self, q):
        return self.files.get(q.digest)

    def lookup_joined(self, kind, raw):
        size = kind.size
        hits = [(j, self.files.get(raw[j * size:(j + 1) * size])) for j in range(len(raw) // size)]
        return [(h, [j]) for j, h in hits if h is not None]

    def lookup_url(self, exprs):
        for e in exprs:
            if e.startswith("bad.test/"):
                return e, WebHit(Rating.DANGEROUS, 95, "malware", "web-blocking")
        return None

    def lookup_domain(self, name):
        if name.endswith("sus.test"):
            return "sus.test", WebHit(Rating.SUSPICIOUS, 60, "spam", "domain-ip")
        return None

    def lookup_ip(self, ip):
        return None


class FakeRelay:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[Service, list[str]]] = []
        self.fail = fail

    async def ask_many(self, service, pairs):
        self.calls.append((service, [k for k, _ in pairs]))
        if self.fail:
            return [RelayError("cloud down") for _ in pairs]
        out: list[Any] = []
        for key, _ in pairs:
            if service is Service.FILE:
                out.append({"verdict": "suspicious" if UNKNOWN in key else "unknown", "ttl": 300})
            else:
                out.append({"rating": "safe", "score": 3, "ttl": 300})
        return out


class Stats:
    def __init__(self) -> None:
        self.items: Counter[tuple[str, str]] = Counter()

    def count_items(self, service, sources):
        for s, n in sources.items():
            self.items[(service.value, s.value)] += n

    def count_item(self, service, source):
        self.count_items(service, {source: 1})


def make(relay=None, entries=(), authoritative=False, now=None):
    clock = now or [0.0]
    cache = AnswerCache(100, clock=lambda: clock[0])
    stats = Stats()
    engine = Engine(patterns=FakePatterns(), lists=ListSnapshot(entries), cache=cache, relay=relay,
                    stats=stats, local_ttl=3600, retry_after=60, authoritative=authoritative)
    return engine, stats, clock


def entry(name: ListName, kind: EntryKind, value: str) -> Entry:
    return Entry(name, kind, value, "", 0.0)


def fq(*hexes):
    return [protocol.parse_hash(h) for h in hexes]


# The doors' path through the engine (proxy.serve.routes): begin_*, then finish what is left.


async def files(engine, qs):
    return await engine.finish(Service.FILE, *engine.begin_files(protocol.FileBatch.of(qs)))


async def web(engine, qs):
    return await engine.finish(Service.WEB, *engine.begin_web(qs))


async def domains(engine, qs):
    return await engine.finish(Service.DOMAIN, *engine.begin_domains(qs))


async def inspect(engine, q):
    return (await engine.finish(Service.INSPECT, *engine.begin_inspect(q)))[0]


async def test_chain_order_blocked_approved_pattern_cache_relay():
    relay = FakeRelay()
    engine, stats, _ = make(relay, [
        entry(ListName.BLOCKED, EntryKind.HASH, BAD),
        entry(ListName.APPROVED, EntryKind.HASH, GOOD),  # approved beats the pattern
    ])
    answers = await files(engine, fq(BAD, GOOD, EICAR, UNKNOWN))
    assert [a.source for a in answers] == [
        Source.BLOCKED_LIST, Source.APPROVED_LIST, Source.PATTERN, Source.CLOUD]
    assert answers[0].verdict is Verdict.MALICIOUS and answers[0].matched == BAD
    assert answers[1].verdict is Verdict.CLEAN
    assert answers[2].threat == "EICAR-Test-File"
    assert answers[3].verdict is Verdict.SUSPICIOUS
    assert relay.calls == [(Service.FILE, [UNKNOWN])]  # only the leftover is relayed
    again = await files(engine, fq(UNKNOWN))
    assert again[0].source is Source.CACHE and again[0].verdict is Verdict.SUSPICIOUS
    assert len(relay.calls) == 1
    assert stats.items[("file", "cache")] == 1 and stats.items[("file", "pattern")] == 1


async def test_cached_answers_expire_with_the_cloud_ttl():
    relay = FakeRelay()
    engine, _, clock = make(relay)
    await files(engine, fq(UNKNOWN))
    clock[0] = 299
    assert (await files(engine, fq(UNKNOWN)))[0].ttl == 1
    clock[0] = 301
    assert (await files(engine, fq(UNKNOWN)))[0].source is Source.CLOUD
    assert len(relay.calls) == 2


async def test_cloud_failure_degrades_only_unanswered_items():
    engine, stats, _ = make(FakeRelay(fail=True))
    answers = await files(engine, fq(EICAR, UNKNOWN))
    assert answers[0].source is Source.PATTERN
    assert answers[1].source is Source.DEGRADED and answers[1].verdict is Verdict.UNKNOWN
    assert answers[1].retry_after == 60
    assert stats.items[("file", "degraded")] == 1
    # A degraded answer is never cached: the next request asks again.
    assert (await files(engine, fq(UNKNOWN)))[0].source is Source.DEGRADED


async def test_no_relay_configured_means_local_unknown_and_authoritative_means_cloud():
    engine, _, _ = make(None)
    a = (await files(engine, fq(UNKNOWN)))[0]
    assert (a.verdict, a.source, a.ttl, a.retry_after) == (Verdict.UNKNOWN, Source.LOCAL, 3600, None)
    cloud, _, _ = make(None, authoritative=True)
    a = (await files(cloud, fq(UNKNOWN)))[0]
    assert (a.verdict, a.source) == (Verdict.UNKNOWN, Source.CLOUD)
    w = (await web(cloud, [protocol.parse_url("http://nowhere.test/", LIMITS)]))[0]
    assert (w.rating, w.source) == (Rating.UNTESTED, Source.CLOUD)


@pytest.mark.parametrize(
    ("url", "rules", "rating", "source"),
    [
        ("http://bad.test/x", [], Rating.DANGEROUS, Source.PATTERN),
        ("http://a.sus.test/", [], Rating.SUSPICIOUS, Source.PATTERN),
        ("http://bad.test/x", [(ListName.APPROVED, EntryKind.DOMAIN, "bad.test")], Rating.SAFE,
         Source.APPROVED_LIST),
        ("http://ok.test/a/b", [(ListName.BLOCKED, EntryKind.URL, "ok.test/a/")], Rating.DANGEROUS,
         Source.BLOCKED_LIST),
        ("http://ok.test/", [], Rating.SAFE, Source.CLOUD),
    ],
)
async def test_web_chain(url, rules, rating, source):
    engine, _, _ = make(FakeRelay(), [entry(*r) for r in rules])
    a = (await web(engine, [protocol.parse_url(url, LIMITS)]))[0]
    assert (a.rating, a.source) == (rating, source)


async def test_domain_chain_and_inspect_relay():
    relay = FakeRelay()
    engine, _, _ = make(relay, [entry(ListName.BLOCKED, EntryKind.DOMAIN, "evil.test")])
    qs = [protocol.parse_domain(x) for x in ("www.evil.test", "x.sus.test", "fine.test")]
    got = await domains(engine, qs)
    assert [a.source for a in got] == [Source.BLOCKED_LIST, Source.PATTERN, Source.CLOUD]
    q = protocol.parse_inspect_request(b'{"url": "http://fine.test/"}', LIMITS)
    first = await inspect(engine, q)
    second = await inspect(engine, q)
    assert (first.source, second.source) == (Source.CLOUD, Source.CACHE)


async def test_concurrent_requests_share_the_relay_and_keep_order():
    relay = FakeRelay()
    engine, _, _ = make(relay)
    results = await asyncio.gather(*(files(engine, fq(EICAR, UNKNOWN)) for _ in range(5)))
    for r in results:
        assert r[0].source is Source.PATTERN and r[1].source in (Source.CLOUD, Source.CACHE)
        assert r[1].verdict is Verdict.SUSPICIOUS
