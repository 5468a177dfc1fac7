"""The link's state without a network: the password never shown, the backoff doubling to its
cap with jitter, calls skipped while it runs, listeners told of each change."""

from __future__ import annotations

import pytest

from proxy.shared.link import MAX_BACKOFF, Link, LinkDown, where_of


def test_where_never_holds_the_password():
    assert where_of("redis://:pw@10.0.0.5:6380/3") == "10.0.0.5:6380/3"
    assert where_of("rediss://user:pw@cache.example") == "cache.example:6379/0"
    assert where_of("unix:///run/redis.sock") == "/run/redis.sock"


async def test_backoff_doubles_to_its_cap_and_skips_calls_meanwhile():
    now = [0.0]
    link = Link("redis://127.0.0.1:1/0", clock=lambda: now[0])
    told: list[bool] = []
    link.on_change(told.append)
    waits = []
    for _ in range(12):
        link.failed("op", OSError("refused"))
        waits.append(link._next_try - now[0])
        assert not link.usable()
    assert waits[0] <= 0.1 and all(w <= MAX_BACKOFF for w in waits) and max(waits) >= MAX_BACKOFF / 2
    assert told == [False] and link.errors["op"] == 12
    with pytest.raises(LinkDown) as caught:
        await link.run("skipped", lambda r: r.ping())
    assert "127.0.0.1:1/0" in caught.value.message and caught.value.code == "redis_unavailable"
    assert link.errors["skipped"] == 0  # not tried: still backing off
    now[0] += MAX_BACKOFF
    assert link.usable()
    link._ok()
    assert told == [False, True] and link.status()["state"] == "up" and "last_error" not in link.status()
    await link.close()


def test_a_sync_call_that_fails_names_the_server():
    link = Link("redis://:secret@127.0.0.1:1/0", timeout=0.1)
    with pytest.raises(LinkDown) as caught:
        link.run_sync("lists_write", lambda r: r.ping())
    assert "127.0.0.1:1/0" in caught.value.message and "secret" not in caught.value.message
    assert link.up is False and link.status()["state"] == "down"
    link.close_sync()
