"""The DNS door's answer memo: the same question, asked again while the lists and the
pattern are the same, gets the same response bytes without being read or answered again.

Why: mail servers ask the same few addresses and names over and over (every message from
a sender's address asks it again), and a local answer costs some 40 µs of parsing,
classifying, looking up and rendering where replaying one costs a dictionary lookup.
The key is the query's bytes after its ID (flags, question exactly as sent, EDNS
record), the transport (it bounds the size) and, when some list rule is scoped to client
networks, the client; the value is the response after its ID. Only answers that cannot
change while the engine's patterns and lists are the same objects are kept (sources
pattern, lists, local, the zone's own names and refusals; never cache, cloud, degraded
or upstream, whose TTLs or answers move), and the memo empties itself when the engine's
patterns or lists object changes, and when a rule's expiry passes. A hit still counts
and logs the answer as the plain path does (tests/proxy/dns/test_memo.py holds the two
equal).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

from proxy.model import WebAnswer

SIZE = 65_536  # answers kept; beyond, the memo starts again (most traffic is a few names); 0: off
_INF = float("inf")
STEADY = frozenset({"pattern", "blocked-list", "approved-list", "local", "zone", "none"})


class Kept(NamedTuple):
    """One answer kept (a tuple: made for every answer the memo may replay, where a frozen
    dataclass's ``__init__`` costs several times as much)."""

    tail: bytes  # the response without its ID
    zone: str
    rcode: str
    source: str
    item: str  # what the query log names ("" when the answer is not about an item)
    answer: WebAnswer | None  # the engine's answer, counted again on a hit


class AnswerMemo:
    def __init__(self, size: int = SIZE, clock: Callable[[], float] = time.time) -> None:
        self.size, self.clock = size, clock
        self._kept: dict[tuple[bytes, str, str | None], Kept] = {}
        self._patterns: Any = None
        self._lists: Any = None
        self._until = _INF
        self.hits = 0

    def _key(self, packet: bytes, transport: str, client: str, lists: Any) -> tuple[bytes, str, str | None]:
        return packet[2:], transport, client if getattr(lists, "scoped", True) else None

    def get(self, packet: bytes, transport: str, client: str, engine: Any) -> Kept | None:
        if engine.patterns is not self._patterns or engine.lists is not self._lists or (
                self._until != _INF and self.clock() >= self._until):
            self._kept.clear()
            self._patterns, self._lists = engine.patterns, engine.lists
            expires = getattr(engine.lists, "expires_next", None)
            self._until = _INF if expires is None else float(expires)
            return None
        kept = self._kept.get(self._key(packet, transport, client, engine.lists))
        if kept is not None:
            self.hits += 1
        return kept

    def put(self, packet: bytes, transport: str, client: str, engine: Any, response: bytes,
            kept: Kept) -> None:
        if (self.size == 0 or kept.source not in STEADY or engine.lists is not self._lists
                or len(packet) < 12):
            return
        if len(self._kept) >= self.size:
            self._kept.clear()
        self._kept[self._key(packet, transport, client, engine.lists)] = kept
