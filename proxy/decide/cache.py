"""The answer cache: earlier cloud answers, positive and negative, each for its TTL.

Bounded in entries (least recently used goes first) and in time (each entry
expires when the TTL the cloud gave runs out). The clock is injected so tests
never sleep.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from itertools import compress, repeat
from operator import is_not, itemgetter, le
from typing import Any, Generic, TypeVar

from proxy.config import default

V = TypeVar("V")
# An entry is [expires, value, view, view_left, fresh_until]: the view ``get_views`` last made,
# the whole seconds left it shows, and the clock time before which it still shows them (the
# clock only goes forward). _ABSENT stands for a key not held; it is never changed.
_ABSENT: list[Any] = [math.inf, None, None, 0, math.inf]
_view, _fresh_until = itemgetter(2), itemgetter(4)
FRESH_MARGIN = 0.001  # seconds


def _refresh(entry: list[Any], left: float, make_view: Callable[[Any, int], Any]) -> None:
    """Remake an entry's view if the whole seconds it has ``left`` (at least 1) changed."""
    whole = int(left) or 1
    if entry[3] != whole:
        entry[2] = make_view(entry[1], whole)
        entry[3] = whole
        # the same whole second is left until ``whole`` is (one is left until it expires);
        # a millisecond's margin keeps the float comparisons on the safe side
        entry[4] = entry[0] - (whole if whole > 1 else 0) - FRESH_MARGIN


class AnswerCache(Generic[V]):
    def __init__(
        self,
        max_entries: int = default("cache_size"),
        *,
        max_ttl: float = 86_400,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self._clock = clock
        # key -> [expires, value, view, view_left, fresh_until] (see _ABSENT)
        self._data: OrderedDict[str, list[Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> tuple[V, int] | None:
        """The value and its remaining whole seconds, or None when absent or expired."""
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires, value = entry[0], entry[1]
        left = expires - self._clock()
        if left <= 0:
            del self._data[key]
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value, max(1, int(left))

    def get_views(self, keys: Sequence[str], make_view: Callable[[V, int], V]) -> list[V | None]:
        """For each key, ``make_view(value, seconds_left)``, made at most once per entry and second.

        The engine serves cached answers as ``source: cache`` with the TTL left; this
        keeps that view with the entry instead of rebuilding it for every request.
        A batch asks for up to 1,000 keys at once, so each step is one builtin mapped
        over them all; Python code runs only for the few entries whose view is no longer
        current (``fresh_until`` passed: another whole second left, or new). A batch
        meeting an expired entry takes ``_views_one_by_one``; tests hold the two equal.
        """
        now = self._clock()
        data = self._data
        entries = list(map(data.get, keys, repeat(_ABSENT)))
        fresh = list(map(_fresh_until, entries))
        if fresh and min(fresh) <= now:
            for entry in compress(entries, map(le, fresh, repeat(now))):
                left = entry[0] - now
                if left <= 0:
                    return self._views_one_by_one(keys, make_view, now)
                _refresh(entry, left, make_view)
        found = list(map(is_not, entries, repeat(_ABSENT)))
        hits = sum(found)
        # most recently used, in the order asked
        deque(map(data.move_to_end, keys if hits == len(keys) else compress(keys, found)), maxlen=0)
        self.hits += hits
        self.misses += len(keys) - hits
        return list(map(_view, entries))

    def get_view(self, key: str, make_view: Callable[[V, int], V]) -> V | None:
        """``get_views`` for one key (the DNS door asks one name a query), with a miss
        answered by one dict probe: the batch form's maps cost more than the lookup."""
        if key not in self._data:
            self.misses += 1
            return None
        return self.get_views([key], make_view)[0]

    def _views_one_by_one(self, keys: Sequence[str], make_view: Callable[[V, int], V],
                          now: float) -> list[V | None]:
        """``get_views`` key by key, dropping the expired entries it meets."""
        data = self._data
        out: list[V | None] = []
        append = out.append
        hits = 0
        for key in keys:
            entry = data.get(key)
            if entry is None:
                append(None)
                continue
            left = entry[0] - now
            if left <= 0:
                del data[key]
                append(None)
                continue
            data.move_to_end(key)
            _refresh(entry, left, make_view)
            append(entry[2])
            hits += 1
        self.hits += hits
        self.misses += len(keys) - hits
        return out

    def put(self, key: str, value: V, ttl: float) -> None:
        """Keep ``value`` for ``ttl`` seconds (at most ``max_ttl``).

        A TTL that is not positive means "do not cache": it also drops what was
        kept under ``key`` before, so a stale answer cannot outlive a newer one.
        """
        if not ttl > 0 or self.max_entries == 0:  # also refuses NaN
            self._data.pop(key, None)
            return
        self._data[key] = [self._clock() + min(ttl, self.max_ttl), value, None, -1, -math.inf]
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def drop(self, key: str) -> None:
        """Forget ``key`` (another appliance stored a newer answer for it in the shared cache)."""
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()
