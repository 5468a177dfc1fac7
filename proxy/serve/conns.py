"""How many connections a process holds: per client address and in total
(docs/architecture.md, “Connections and limits”).

A door's connections are file descriptors. Without a bound, one host that opens
thousands of slow connections exhausts them and every door refuses every
client. ``ConnectionCaps`` is shared by all the doors of one process: a
connection is admitted only while its client holds fewer than ``per_client``
and the process fewer than ``total``, and ``total`` stays below the
descriptor limit by a reserve, so pattern files, SQLite, the relay and the
log always have descriptors left. A client at its cap is refused while every
other client is still served.

Refusals are counted per door and reason for ``/metrics`` and logged at most
once per client every ``log_every`` seconds, so a flood cannot flood the log.
Pure and clock-injected; the doors call ``admit`` on accept and ``Slot.release``
when the connection ends.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter
from collections.abc import Callable

logger = logging.getLogger(__name__)

MIN_RESERVE = 64  # descriptors kept for files, SQLite, the relay and the log
FD_CEILING = 1 << 20  # never ask for more than this when the hard limit is unlimited


def raise_fd_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:  # e.g. a container that forbids it
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, e)
    return FD_CEILING if soft == resource.RLIM_INFINITY else int(soft)


def total_for(fd_limit: int) -> int:
    """The most connections a process with ``fd_limit`` descriptors should hold."""
    reserve = max(MIN_RESERVE, fd_limit // 8)
    return max(1, fd_limit - reserve)


class Slot:
    """One admitted connection; ``release`` gives its place back (once, however often called)."""

    __slots__ = ("_caps", "client", "door")

    def __init__(self, caps: ConnectionCaps, client: str, door: str) -> None:
        self._caps: ConnectionCaps | None = caps
        self.client = client
        self.door = door

    def release(self) -> None:
        caps, self._caps = self._caps, None
        if caps is not None:
            caps._release(self)


class ConnectionCaps:
    def __init__(
        self,
        total: int,
        per_client: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        log_every: float = 10.0,
    ) -> None:
        self.total = max(1, total)
        # one client never holds more than half: the rest always has room
        self.per_client = max(1, min(per_client, self.total // 2 or 1))
        self.open = 0
        self.open_by_door: Counter[str] = Counter()
        self.refused: Counter[tuple[str, str]] = Counter()  # (door, reason)
        self._by_client: Counter[str] = Counter()
        self._clock = clock
        self._log_every = log_every
        self._logged: dict[tuple[str, str], float] = {}  # (client, reason) -> last logged

    def admit(self, client: str, door: str) -> Slot | None:
        """A slot for a new connection from ``client`` on ``door``, or None (counted, logged)."""
        held = self._by_client[client]
        if held >= self.per_client:
            self.count(client, door, "client_cap",
                       f"refusing its connections: {held} open (max_client_connections {self.per_client})")
            return None
        if self.open >= self.total:
            self.count(client, door, "total_cap",
                       f"refusing its connection: {self.open} open in all (max_connections {self.total})")
            return None
        self._by_client[client] = held + 1
        self.open += 1
        self.open_by_door[door] += 1
        return Slot(self, client, door)

    def held_by(self, client: str) -> int:
        return self._by_client[client]

    def _release(self, slot: Slot) -> None:
        self.open -= 1
        self.open_by_door[slot.door] -= 1
        left = self._by_client[slot.client] - 1
        if left > 0:
            self._by_client[slot.client] = left
        else:
            del self._by_client[slot.client]

    def count(self, client: str, door: str, reason: str, why: str) -> None:
        """Count a connection refused (or cut) for ``reason``; log it unless this client's
        were logged for that reason in the last ``log_every`` seconds."""
        self.refused[(door, reason)] += 1
        now, key = self._clock(), (client, reason)
        if now - self._logged.get(key, -self._log_every) >= self._log_every:
            if len(self._logged) >= 4096:
                self._logged.clear()
            self._logged[key] = now
            logger.warning("%s door, client %s: %s", door, client, why)
