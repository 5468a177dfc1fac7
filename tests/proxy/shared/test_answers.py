"""The shared cloud-answer cache against a real redis-server: one appliance's cloud answer is
another's cache hit, with the TTL left; a Redis that is down is a miss, never a failure."""

from __future__ import annotations

import asyncio

from proxy.decide.cache import AnswerCache
from proxy.decide.engine import Engine
from proxy.decide.lists import ListSnapshot
from proxy.model import Service, Source, Verdict
from proxy.shared.answers import SharedAnswers
from proxy.shared.bus import Bus
from proxy.shared.link import Link
from proxy.wire import protocol
from tests.proxy.decide.test_engine import UNKNOWN, FakePatterns, FakeRelay, Stats


def appliance(url: str, prefix: str, node: str, timeout: float = 0.25):
    link = Link(url, prefix=prefix, timeout=timeout)
    cache: AnswerCache = AnswerCache(100)
    relay = FakeRelay()
    shared = SharedAnswers(link, node, cache.drop)
    engine = Engine(patterns=FakePatterns(), lists=ListSnapshot([]), cache=cache, relay=relay,
                    stats=Stats(), local_ttl=3600, retry_after=60, shared=shared)
    return engine, relay, shared, link


async def ask(engine: Engine, *hexes: str):
    batch = protocol.FileBatch.of([protocol.parse_hash(h) for h in hexes])
    return await engine.finish(Service.FILE, *engine.begin_files(batch))


async def settled(shared: SharedAnswers) -> None:
    while shared._tasks:
        await asyncio.sleep(0.01)


async def test_an_answer_fetched_by_one_appliance_is_a_cache_hit_on_another(redis_server, prefix):
    a, relay_a, shared_a, link_a = appliance(redis_server.url, prefix, "a")
    b, relay_b, shared_b, link_b = appliance(redis_server.url, prefix, "b")
    first = await ask(a, UNKNOWN)
    assert first[0].source is Source.CLOUD and first[0].verdict is Verdict.SUSPICIOUS
    await settled(shared_a)
    got = await ask(b, UNKNOWN)
    assert got[0].source is Source.CACHE and got[0].verdict is Verdict.SUSPICIOUS
    assert 290 <= got[0].ttl <= 300  # the TTL the cloud gave, less what has passed
    assert relay_b.calls == [] and len(relay_a.calls) == 1
    assert (await ask(b, UNKNOWN))[0].source is Source.CACHE  # now from b's local cache
    assert shared_b.hits == 1
    await link_a.close()
    await link_b.close()


async def test_news_from_another_appliance_drops_the_key_from_the_local_cache(redis_server, prefix):
    a, _, shared_a, link_a = appliance(redis_server.url, prefix, "a")
    b, _, shared_b, link_b = appliance(redis_server.url, prefix, "b")
    bus = Bus(link_b)
    bus.subscribe(shared_b.channel, shared_b.on_message)
    task = asyncio.create_task(bus.run())
    await asyncio.wait_for(bus.connected.wait(), 5)
    b.cache.put(UNKNOWN, "stale", 300)
    await ask(a, UNKNOWN)
    await settled(shared_a)
    for _ in range(200):
        if b.cache.get(UNKNOWN) is None:
            break
        await asyncio.sleep(0.01)
    assert b.cache.get(UNKNOWN) is None
    a.cache.put("x" * 64, "mine", 300)
    shared_a.on_message(b"a\n" + b"x" * 64)  # its own news: kept
    assert a.cache.get("x" * 64) is not None
    task.cancel()
    await link_a.close()
    await link_b.close()


async def test_redis_down_means_the_cloud_is_asked_and_nothing_fails(redis_server, prefix, tmp_path):
    from tests.redis_server import RedisServer

    with RedisServer(tmp_path) as own:
        a, _, shared, link = appliance(own.url, prefix, "a")
        own.stop()
        got = await ask(a, UNKNOWN, "dd" * 32)
        assert [x.source for x in got] == [Source.CLOUD, Source.CLOUD]
        assert link.up is False and link.errors["answers_get"] == 1
        status = link.status()
        assert status["state"] == "down" and status["last_error"]
        # while the backoff runs, Redis is not even tried
        await ask(a, "ee" * 32)
        assert link.errors["answers_get"] == 1 and shared.skipped >= 1
        own.start()
        await link.wait_usable()
        await ask(a, "ff" * 32)
        assert link.up is True and link.status()["state"] == "up"
        await link.close()


async def test_garbage_in_redis_is_a_miss(redis_server, prefix):
    a, relay, _, link = appliance(redis_server.url, prefix, "a")
    redis_server.command("SET", f"{prefix}answer:file:{UNKNOWN}", "not json", "PX", "100000")
    got = await ask(a, UNKNOWN)
    assert got[0].source is Source.CLOUD and len(relay.calls) == 1
    later = "99999999999999\n"
    for i, stored in enumerate([later + '{"verdict": 7}', later + "[1]", "1\n" + '{"verdict": "clean"}',
                                "soon\n{}"]):
        digest = f"{i:02d}" * 32
        redis_server.command("SET", f"{prefix}answer:file:{digest}", stored, "PX", "100000")
        got = await ask(a, digest)
        assert got[0].source is Source.CLOUD, stored  # unusable or expired: the cloud is asked
    await link.close()


def test_the_password_is_never_shown():
    link = Link("redis://:s3cret@127.0.0.1:6390/2")
    assert link.where == "127.0.0.1:6390/2"
    assert "s3cret" not in str(link.status()) and "s3cret" not in str(link.down_error())


async def test_a_hung_redis_costs_at_most_its_timeout_and_fails_nothing(prefix, tmp_path):
    from tests.redis_server import RedisServer

    with RedisServer(tmp_path) as own:
        a, _, _, link = appliance(own.url, prefix, "a", timeout=0.2)
        assert (await ask(a, UNKNOWN))[0].source is Source.CLOUD  # connected, stored
        own.pause()
        try:
            got = await asyncio.wait_for(ask(a, "dd" * 32), 5)  # bounded by redis_timeout, not hung
            assert got[0].source is Source.CLOUD and link.status()["last_error"] == "timed out"
            assert link.up is False
        finally:
            own.resume()
        await link.close()
