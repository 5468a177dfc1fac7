"""The lists shared through a real redis-server: a write on one store reaches the other's
lists.sqlite; Redis down refuses a write and changes nothing; the first join seeds an
empty Redis, or follows a non-empty one and saves the local rules it would drop."""

from __future__ import annotations

import asyncio
import json
import stat

import pytest

from proxy.decide.lists import ListName, ListStore, classify
from proxy.shared.bus import Bus
from proxy.shared.link import Link
from proxy.shared.lists import ListsUnreachable, SharedLists
from tests.redis_server import RedisServer

BLOCKED, APPROVED = ListName.BLOCKED, ListName.APPROVED


def side(tmp_path, name: str, url: str, prefix: str):
    data = tmp_path / name
    data.mkdir(mode=0o700)
    store = ListStore.open(data)
    link = Link(url, prefix=prefix)
    shared = SharedLists(link, store, name, data)
    store.share(shared)
    return store, shared, link


def values(store: ListStore) -> set[tuple[str, str]]:
    return {(e.list.value, e.value) for e in store.entries()}


async def test_a_write_on_one_appliance_reaches_the_other(tmp_path, redis_server, prefix):
    a, sa, la = side(tmp_path, "a", redis_server.url, prefix)
    b, sb, lb = side(tmp_path, "b", redis_server.url, prefix)
    a.add(BLOCKED, [(None, "before.example")])
    await sa.catch_up()  # seeds nothing new: a's first write seeded Redis
    await sb.catch_up()
    assert values(b) == {("blocked", "before.example")}
    bus = Bus(lb)
    changes = asyncio.Event()

    async def changed() -> None:
        changes.set()

    sb.on_change = changed
    bus.subscribe(sb.channel, sb.on_message)
    tasks = [asyncio.create_task(bus.run()), asyncio.create_task(sb.follow())]
    await asyncio.wait_for(bus.connected.wait(), 5)
    await asyncio.to_thread(a.add, BLOCKED, [(None, "evil.example"), (None, "http://bad.example/x")])
    await asyncio.wait_for(changes.wait(), 5)
    assert values(b) == {("blocked", "before.example"), ("blocked", "evil.example"),
                         ("blocked", "bad.example/x")}
    changes.clear()
    await asyncio.to_thread(a.edit, None, "evil.example", to=APPROVED, note="fine after all")
    await asyncio.to_thread(a.remove, [(None, "before.example")])
    for _ in range(100):
        if values(b) == {("approved", "evil.example"), ("blocked", "bad.example/x")}:
            break
        await asyncio.sleep(0.05)
    assert values(b) == {("approved", "evil.example"), ("blocked", "bad.example/x")}
    assert b.get(*classify("evil.example")).note == "fine after all"
    # b's own trail says what it followed, and who made the change on a
    trail = [(x.action, x.value, x.origin) for x in b.audit(limit=20)]
    assert ("follow", "evil.example", "redis") in trail
    assert ("follow", "before.example", "redis") in trail  # the removal
    followed = [x for x in b.audit(limit=20) if x.action == "follow" and x.value == "bad.example/x"]
    assert followed and followed[0].detail["by"] == a.get(*classify("http://bad.example/x")).added_by
    for t in tasks:
        t.cancel()
    await la.close()
    await lb.close()


async def test_redis_down_refuses_the_write_and_changes_nothing(tmp_path, prefix):
    with RedisServer(tmp_path) as own:
        a, _, link = side(tmp_path, "a", own.url, prefix)
        a.add(BLOCKED, [(None, "kept.example")])
        own.stop()
        with pytest.raises(ListsUnreachable) as caught:
            a.add(BLOCKED, [(None, "never.example")])
        err = caught.value
        assert err.status == 503 and err.code == "redis_unavailable"
        assert f"127.0.0.1:{own.port}" in err.message and "nothing was changed" in err.message
        assert values(a) == {("blocked", "kept.example")}
        with pytest.raises(ListsUnreachable):
            a.remove([(None, "kept.example")])
        assert values(a) == {("blocked", "kept.example")}
        own.start()
        a.add(BLOCKED, [(None, "after.example")])  # Redis came back empty: seeded whole
        assert values(a) == {("blocked", "kept.example"), ("blocked", "after.example")}
        assert b"kept.example" in own.command("HKEYS", f"{prefix}lists:rules")
        await link.close()


async def test_first_join_seeds_an_empty_redis_or_follows_a_full_one(tmp_path, redis_server, prefix):
    a_dir = tmp_path / "a"
    a_dir.mkdir(mode=0o700)
    with ListStore.open(a_dir) as plain:  # rules from before Redis
        plain.add(BLOCKED, [(None, "a-only.example")])
    b_dir = tmp_path / "b"
    b_dir.mkdir(mode=0o700)
    with ListStore.open(b_dir) as plain:
        plain.add(APPROVED, [(None, "b-only.example")])
    link_a, link_b = Link(redis_server.url, prefix=prefix), Link(redis_server.url, prefix=prefix)
    a = ListStore.open(a_dir)
    sa = SharedLists(link_a, a, "a", a_dir)
    a.share(sa)
    await sa.catch_up()  # empty Redis: seeded from a
    assert sa.seen == 1
    b = ListStore.open(b_dir)
    sb = SharedLists(link_b, b, "b", b_dir)
    b.share(sb)
    await sb.catch_up()  # full Redis wins; b's own rule is saved first
    assert values(b) == {("blocked", "a-only.example")}
    saved = list(b_dir.glob("lists-before-redis-*.json"))
    assert len(saved) == 1 and stat.S_IMODE(saved[0].stat().st_mode) == 0o600
    rules = json.loads(saved[0].read_text())["rules"]
    assert [r["value"] for r in rules] == ["b-only.example"]
    assert list(a_dir.glob("lists-before-redis-*.json")) == []
    await link_a.close()
    await link_b.close()


async def test_malformed_shared_rules_are_skipped(tmp_path, redis_server, prefix):
    a, sa, la = side(tmp_path, "a", redis_server.url, prefix)
    a.add(BLOCKED, [(None, "good.example")])
    redis_server.command("HSET", f"{prefix}lists:rules", "domain\tbad..x", '["blocked"]')
    redis_server.command("HSET", f"{prefix}lists:rules", "hash\tzz", "not json")
    redis_server.command("INCR", f"{prefix}lists:version")
    await sa.catch_up()
    assert values(a) == {("blocked", "good.example")}
    await la.close()


async def test_a_follower_reads_only_what_changed_within_its_epoch(tmp_path, redis_server, prefix,
                                                                   monkeypatch):
    import proxy.shared.lists as shared_lists

    a, _, la = side(tmp_path, "a", redis_server.url, prefix)
    b, sb, lb = side(tmp_path, "b", redis_server.url, prefix)
    a.add(BLOCKED, [(None, f"d{i}.example") for i in range(50)])
    await sb.catch_up()
    assert sb.reads == {"whole": 1, "changes": 0} and len(b.entries()) == 50
    a.add(APPROVED, [(None, "d3.example")])
    a.remove([(None, "d4.example")])
    await sb.catch_up()
    assert sb.reads == {"whole": 1, "changes": 1}
    assert ("approved", "d3.example") in values(b) and ("blocked", "d4.example") not in values(b)
    assert len(b.entries()) == 49
    await sb.catch_up()  # nothing new: nothing read
    assert sb.reads == {"whole": 1, "changes": 1}

    monkeypatch.setattr(shared_lists, "MAX_CHANGED", 10)  # the change log trimmed past b's version
    for i in range(12):
        a.add(BLOCKED, [(None, f"more{i}.example")])
    await sb.catch_up()
    assert sb.reads == {"whole": 2, "changes": 1} and values(b) == values(a)

    redis_server.command("DEL", f"{prefix}lists:rules", f"{prefix}lists:version",
                         f"{prefix}lists:epoch", f"{prefix}lists:changed")  # Redis lost its data
    a.add(BLOCKED, [(None, "after-loss.example")])  # seeds a new epoch from a
    await sb.catch_up()
    assert sb.reads["whole"] == 3 and values(b) == values(a)
    await la.close()
    await lb.close()


def test_a_large_catch_up_is_one_summary_row_in_the_trail(tmp_path) -> None:
    """Following thousands of rules at once (a first join) must not flood the trail."""
    donor = ListStore.open(tmp_path / "donor")
    donor.add(BLOCKED, [(None, f"d{i}.example") for i in range(150)])
    shared = {(e.kind, e.value): e for e in donor.entries()}
    (tmp_path / "here").mkdir(mode=0o700)
    here = ListStore.open(tmp_path / "here")
    assert here.follow(shared) == 150
    rows = [x for x in here.audit(limit=10) if x.action == "follow"]
    assert len(rows) == 1 and rows[0].detail == {"changed": 150, "removed": 0}
    donor.close()
    here.close()
