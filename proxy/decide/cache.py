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
from operator import is_not, itemgetter, ne, sub
from typing import Any, Generic, TypeVar

from proxy.config import default

V = TypeVar("V")
# An entry is [expires, value, view, view_left]; _ABSENT stands for a key not held (never changed).
_ABSENT: list[Any] = [math.inf, None, None, 0]
_expires, _view, _view_left = itemgetter(0), itemgetter(2), itemgetter(3)


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
        # key -> [expires, value, view, view_left]: the view is what ``get_views`` last made
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
        over them all (no Python code per key but for a view to remake); a batch that
        meets an expired entry takes ``_views_one_by_one``, which tests hold equal.
        """
        now = self._clock()
        data = self._data
        entries = list(map(data.get, keys, repeat(_ABSENT)))
        found = list(map(is_not, entries, repeat(_ABSENT)))
        live = list(compress(entries, found))
        if live and min(map(_expires, live)) <= now:
            return self._views_one_by_one(keys, make_view, now)
        deque(map(data.move_to_end, compress(keys, found)), maxlen=0)  # most recently used, in order
        wholes = list(map(max, map(int, map(sub, map(_expires, live), repeat(now))), repeat(1)))
        for entry, whole in compress(zip(live, wholes), map(ne, map(_view_left, live), wholes)):
            entry[2] = make_view(entry[1], whole)
            entry[3] = whole
        self.hits += len(live)
        self.misses += len(keys) - len(live)
        return list(map(_view, entries))

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
            whole = int(left) or 1
            if entry[3] != whole:
                entry[2] = make_view(entry[1], whole)
                entry[3] = whole
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
        self._data[key] = [self._clock() + min(ttl, self.max_ttl), value, None, -1]
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def drop(self, key: str) -> None:
        """Forget ``key`` (another appliance stored a newer answer for it in the shared cache)."""
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()
