"""The answer cache: TTL expiry on an injected clock, LRU bound, counters."""

from __future__ import annotations

import pytest

from proxy.decide.cache import AnswerCache


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_get_before_put_is_a_miss(clock: Clock) -> None:
    cache: AnswerCache[str] = AnswerCache(10, clock=clock)
    assert cache.get("k") is None
    assert (cache.hits, cache.misses) == (0, 1)


@pytest.mark.parametrize(
    "ttl, elapsed, expected",
    [
        (60, 0, ("v", 60)),
        (60, 0.4, ("v", 59)),
        (60, 30, ("v", 30)),
        (60, 59, ("v", 1)),
        (60, 59.5, ("v", 1)),  # less than a second left still reports 1, never 0
        (60, 60, None),
        (60, 61, None),
        (60, 10_000, None),
        (0.5, 0.25, ("v", 1)),
        (0.5, 0.5, None),
    ],
)
def test_ttl_expiry_and_remaining_seconds(
    clock: Clock, ttl: float, elapsed: float, expected: tuple[str, int] | None
) -> None:
    cache: AnswerCache[str] = AnswerCache(10, clock=clock)
    cache.put("k", "v", ttl)
    clock.now += elapsed
    assert cache.get("k") == expected


def test_expired_entry_is_removed_and_counted_as_miss(clock: Clock) -> None:
    cache: AnswerCache[str] = AnswerCache(10, clock=clock)
    cache.put("k", "v", 10)
    clock.now += 10
    assert cache.get("k") is None
    assert len(cache) == 0
    assert (cache.hits, cache.misses) == (0, 1)


@pytest.mark.parametrize(
    "max_ttl, ttl, still_there_after, gone_after",
    [
        (100, 3600, 99, 100),  # capped
        (100, 50, 49, 50),  # under the cap: its own TTL
        (86_400, 7 * 86_400, 86_399, 86_400),
    ],
)
def test_max_ttl_caps_the_lifetime(
    clock: Clock, max_ttl: float, ttl: float, still_there_after: float, gone_after: float
) -> None:
    cache: AnswerCache[str] = AnswerCache(10, max_ttl=max_ttl, clock=clock)
    cache.put("k", "v", ttl)
    assert cache.get("k") == ("v", min(ttl, max_ttl))
    clock.now += still_there_after
    assert cache.get("k") is not None
    clock.now += gone_after - still_there_after
    assert cache.get("k") is None


@pytest.mark.parametrize("ttl", [0, -1, -3600, 0.0, float("nan")])
def test_non_positive_ttl_is_not_stored(clock: Clock, ttl: float) -> None:
    cache: AnswerCache[str] = AnswerCache(10, clock=clock)
    cache.put("k", "v", ttl)
    assert len(cache) == 0
    assert cache.get("k") is None


@pytest.mark.parametrize("ttl", [0, -1])
def test_do_not_cache_answer_drops_the_older_one(clock: Clock, ttl: float) -> None:
    cache: AnswerCache[str] = AnswerCache(10, clock=clock)
    cache.put("k", "malicious", 3600)
    cache.put("k", "clean", ttl)
    assert cache.get("k") is None


def test_put_replaces_value_and_restarts_ttl(clock: Clock) -> None:
    cache: AnswerCache[str] = AnswerCache(10, clock=clock)
    cache.put("k", "old", 10)
    clock.now += 8
    cache.put("k", "new", 10)
    clock.now += 8
    assert cache.get("k") == ("new", 2)
    assert len(cache) == 1


def test_lru_eviction_at_max_entries(clock: Clock) -> None:
    cache: AnswerCache[int] = AnswerCache(3, clock=clock)
    for i, key in enumerate("abc"):
        cache.put(key, i, 60)
    assert cache.get("a") == (0, 60)  # "a" is now the most recently used
    cache.put("d", 3, 60)  # evicts "b", the least recently used
    assert len(cache) == 3
    assert cache.get("b") is None
    assert [cache.get(k) for k in "acd"] == [(0, 60), (2, 60), (3, 60)]


def test_put_of_existing_key_refreshes_recency(clock: Clock) -> None:
    cache: AnswerCache[int] = AnswerCache(2, clock=clock)
    cache.put("a", 1, 60)
    cache.put("b", 2, 60)
    cache.put("a", 10, 60)
    cache.put("c", 3, 60)  # evicts "b", not "a"
    assert cache.get("b") is None
    assert cache.get("a") == (10, 60)


@pytest.mark.parametrize("max_entries, puts, kept", [(1, 5, 1), (5, 5, 5), (5, 12, 5), (100, 12, 12)])
def test_size_never_exceeds_max_entries(clock: Clock, max_entries: int, puts: int, kept: int) -> None:
    cache: AnswerCache[int] = AnswerCache(max_entries, clock=clock)
    for i in range(puts):
        cache.put(str(i), i, 60)
    assert len(cache) == kept
    # the newest are the ones kept
    assert all(cache.get(str(i)) == (i, 60) for i in range(puts - kept, puts))


def test_zero_max_entries_keeps_nothing(clock: Clock) -> None:
    cache: AnswerCache[int] = AnswerCache(0, clock=clock)
    cache.put("a", 1, 60)
    assert len(cache) == 0 and cache.get("a") is None


def test_negative_max_entries_refused() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        AnswerCache(-1)


def test_hits_and_misses_counted(clock: Clock) -> None:
    cache: AnswerCache[str] = AnswerCache(10, clock=clock)
    cache.put("a", "x", 10)
    results = [cache.get(k) for k in ("a", "a", "b", "a", "c")]
    assert results == [("x", 10), ("x", 10), None, ("x", 10), None]
    assert (cache.hits, cache.misses) == (3, 2)


def test_clear(clock: Clock) -> None:
    cache: AnswerCache[str] = AnswerCache(10, clock=clock)
    cache.put("a", "x", 10)
    cache.put("b", "y", 10)
    cache.clear()
    assert len(cache) == 0
    assert cache.get("a") is None and cache.get("b") is None


def test_default_clock_is_real_time() -> None:
    cache: AnswerCache[str] = AnswerCache(10)
    cache.put("a", "x", 3600)
    assert cache.get("a") in (("x", 3599), ("x", 3600))
