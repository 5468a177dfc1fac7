"""AnswerCache.get_views in bulk, and get_view for one key, held equal to the key-by-key
reading over generated histories: the same views, the same least-recently-used order, the
same hit and miss counts."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.decide.cache import AnswerCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def view(value: str, left: int) -> tuple[str, int]:
    return (value, left)


keys = st.sampled_from([f"k{i}" for i in range(12)])
steps = st.lists(st.one_of(
    st.tuples(st.just("put"), keys, st.one_of(st.floats(-1, 30, allow_nan=False), st.integers(1, 5))),
    st.tuples(st.just("tick"), st.one_of(st.floats(0, 8, allow_nan=False),
                                         st.sampled_from([1.0, 0.5, 0.9995, 0.0005, 0.001]))),
    st.tuples(st.just("get"), st.lists(keys, max_size=15)),
), max_size=40)


def state(cache: AnswerCache[Any]) -> tuple[list[str], int, int]:
    return list(cache._data), cache.hits, cache.misses


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(1, 8))
def test_bulk_and_one_key_views_equal_key_by_key(history: list[tuple[Any, ...]], size: int) -> None:
    clocks = Clock(), Clock(), Clock()
    bulk, one, plain = (AnswerCache[Any](size, clock=clock) for clock in clocks)
    for n, step in enumerate(history):
        if step[0] == "put":
            for cache in (bulk, one, plain):
                cache.put(step[1], f"v{n}", step[2])
        elif step[0] == "tick":
            for clock in clocks:
                clock.now += step[1]
        else:
            got = bulk.get_views(step[1], view)
            assert [one.get_view(key, view) for key in step[1]] == got
            assert got == plain._views_one_by_one(step[1], view, clocks[2].now)
        assert state(bulk) == state(one) == state(plain)


def test_a_view_is_made_once_per_entry_and_second() -> None:
    clock = Clock()
    cache: AnswerCache[Any] = AnswerCache(10, clock=clock)
    cache.put("a", "x", 10)
    made: list[int] = []

    def counting(value: str, left: int) -> tuple[str, int]:
        made.append(left)
        return (value, left)

    first = cache.get_views(["a", "b", "a"], counting)
    assert first == [("x", 10), None, ("x", 10)] and first[0] is first[2]
    assert cache.get_views(["a"], counting)[0] is first[0]
    clock.now += 1.5
    assert cache.get_views(["a"], counting) == [("x", 8)]
    assert made[-1] == 8 and (cache.hits, cache.misses) == (4, 1)
