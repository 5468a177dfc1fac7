"""The log writer: a thread that drains a bounded queue into SQLite, off the request path.

``observe`` (one call per answered request, on the event loop) and ``submit`` (a ready
row for any log) never block and never raise: each is a length check and a deque
append. ``observe`` first holds each answer back as a running group: the same answer
(body object) to the same client in the same second only adds to its count, so a
product asking the same thing in a loop costs the request path a comparison and the
writer one entry, not one per query (the group is queued when a different answer comes,
or taken by the writer when it wakes; a lock guards that hand-over). A full queue
(``capacity`` entries, ``log_queue``, or ``MAX_QUEUED_BYTES`` of answers held) drops
the entry and counts its answers (``dropped``); the query itself was answered already.

The thread wakes every ``interval`` seconds (at once when the queue is half full, so a
busy door never fills it between two wakes), takes up to ``batch``
entries at a time, turns answers into rows (``entries.Answers``; the same answer to the
same client within a second is one row with a ``count``) and writes each batch in one
transaction, a few multi-row INSERTs (``store.insert_many``). A batch the database
refuses (locked past its busy timeout, a full disk) is logged once a minute and counted
as lost, never retried into a growing backlog.
Retention (``log_retention_days``, ``log_max_rows``) runs in the same thread every
``retention_every`` seconds, in bounded chunks. ``stop`` writes what is queued, then
ends the thread.
"""

from __future__ import annotations

import collections
import logging
import operator
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from proxy.config import default
from proxy.logs.clients import ClientMask
from proxy.logs.entries import Answers, Logged
from proxy.logs.store import COLUMNS, LogStore
from proxy.wire.http import Request, Response

logger = logging.getLogger(__name__)

MAX_QUEUED_BYTES = 64 << 20  # bytes of large answers held by queued entries, at most
SMALL = 4096  # an answer this size or smaller is not weighed (a count of them is bounded)
BATCH = 5000  # entries per transaction
INTERVAL = 0.2  # seconds between drains
RETENTION_EVERY = 60.0  # seconds between retention passes
CLIENTS: str = default("log_clients")
_BODY = operator.itemgetter(3)  # of a queued answer


class LogWriter:
    def __init__(self, store: LogStore, *, capacity: int = default("log_queue"),
                 clients: str | ClientMask = CLIENTS, days: int = default("log_retention_days"),
                 max_rows: int = default("log_max_rows"), batch: int = BATCH,
                 interval: float = INTERVAL, retention_every: float = RETENTION_EVERY,
                 clock: Callable[[], float] = time.time,
                 tick: Callable[[], None] | None = None) -> None:
        self.store = store
        self.capacity = capacity
        self.days = days
        self.max_rows = max_rows
        self.batch = batch
        self.interval = interval
        self.retention_every = retention_every
        self.clock = clock
        self.tick = tick  # called in the thread before each drain (to follow other state)
        self._answers = Answers(clients)
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._bytes_in = 0  # answer bytes queued (only the observing thread adds)
        self._bytes_out = 0  # and taken (only the writer thread adds)
        self._dropped_answers = 0  # only the observing thread adds
        self._dropped_rows = 0
        self._lost = 0  # entries in batches the database refused
        self._count_lock = threading.Lock()
        # the running group of identical answers: [t, client, target, body, seconds summed,
        # count, end of its second]; only observe adds to it, under _held_lock (the writer
        # takes it)
        self._held: list[Any] | None = None
        self._held_lock = threading.Lock()
        self.written = 0  # rows
        self.retention_passes = 0
        self._wake = threading.Event()  # set to stop, or when the queue is half full
        self._stopping = False
        self._half = max(1, capacity // 2)
        self._thread: threading.Thread | None = None
        self._last_error = 0.0

    # ------------------------------------------------------------ the request side

    def observe(self, request: Request, response: Response, seconds: float,
                count: int = 1) -> None:
        """Count one answered request, or ``count`` identical ones taking ``seconds`` each
        (call it from one thread: the event loop). Kept to a comparison when it repeats the
        answer held (see the module's docstring), and a hand-over (a length check and an
        append) when not: it runs for every query."""
        try:
            if response.status != 200:
                return
            body: Any = response.body if response.items is None else Logged(response.body, response.items)
            client = request.client
            now = self.clock()
            lock = self._held_lock
            lock.acquire()  # not ``with``: half the cost, and nothing below raises but a bug
            try:
                held = self._held
                if held is not None and held[3] is body and now < held[6] and held[1] == client:
                    held[4] += seconds * count
                    held[5] += count
                    return
                # [6]: where its second ends (a clock stepping back joins the group held)
                self._held = [now, client, request.target, body, seconds * count, count,
                              float(int(now) + 1)]
                if held is not None:
                    self._hand_over(held)
            finally:
                lock.release()
        except Exception:  # never into the request
            self._dropped_answers += count

    def _hand_over(self, group: list[Any]) -> None:
        """Queue a group of identical answers (under ``_held_lock``), or drop and count it."""
        queue = self._queue
        n = len(queue)
        if n >= self.capacity:
            self._dropped_answers += group[5]
            return
        size = len(group[3])
        if size > SMALL:  # only large answers are weighed: small ones are bounded by count
            if self._bytes_in - self._bytes_out + size > MAX_QUEUED_BYTES:
                self._dropped_answers += group[5]
                return
            self._bytes_in += size
        queue.append(tuple(group[:6]))  # a tuple of plain values: the collector lets it be
        if n + 1 == self._half:  # a busy door fills the queue within an interval: wake now
            self._wake.set()

    def submit(self, table: str, row: tuple[Any, ...]) -> bool:
        """Queue a ready row for ``table`` (``store.COLUMNS``); False when it was dropped.
        Safe from any thread; a table or row of the wrong shape is a ValueError (a bug,
        refused here rather than losing the batch it would share)."""
        columns = COLUMNS.get(table)
        if columns is None or len(row) != len(columns):
            raise ValueError(f"not a row of a log table: {table!r} with {len(row)} values")
        n = len(self._queue)
        if n >= self.capacity:
            with self._count_lock:
                self._dropped_rows += 1
            return False
        self._queue.append((table, row))
        if n + 1 == self._half:
            self._wake.set()
        return True

    def set_clients(self, mask: ClientMask) -> None:
        """Store client addresses as ``mask`` says from the next batch on (a setting changed
        while running; rows already written stay as they were)."""
        self._answers.mask = mask  # one attribute store: the writer thread sees old or new

    @property
    def dropped(self) -> int:
        """Entries dropped because the queue was full (answers and rows)."""
        return self._dropped_answers + self._dropped_rows

    @property
    def lost(self) -> int:
        """Entries taken from the queue but refused by the database."""
        return self._lost

    def pending(self) -> int:
        """Entries not yet taken: those queued and the group held."""
        return len(self._queue) + (self._held is not None)

    def dropped_samples(self) -> list[tuple[dict[str, str], float]]:
        """``rampart_log_dropped_total`` by reason: ``queue_full`` and ``write_failed``."""
        return [({"reason": "queue_full"}, float(self.dropped)),
                ({"reason": "write_failed"}, float(self._lost))]

    # ------------------------------------------------------------ the thread

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="rampart-log-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued, then end the thread (at most ``timeout`` seconds)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the log writer did not finish in %.0f s; %d entries not written",
                               timeout, len(self._queue))
            self._thread = None

    def _run(self) -> None:
        conn = self.store.connect()
        try:
            next_retention = 0.0
            while True:
                self._wake.wait(self.interval)
                self._wake.clear()
                stopping = self._stopping
                self._tick()
                self._drain(conn)
                if stopping:
                    break
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + (
                        self.interval if self._retain(conn) else self.retention_every)
        finally:
            conn.close()

    def _tick(self) -> None:
        if self.tick is not None:
            try:
                self.tick()
            except Exception:
                logger.exception("the log writer's follower failed")

    def _drain(self, conn: sqlite3.Connection) -> None:
        while self._queue or self._held is not None:
            taken, rows = self._take()
            try:
                self.written += self.store.write(conn, rows)
            except sqlite3.Error as e:
                self._lost += taken
                self._complain(f"writing {taken} log entries failed: {e}")

    def _take(self) -> tuple[int, dict[str, list[tuple[Any, ...]]]]:
        """Up to ``batch`` entries from the queue: how many, and each table's rows. Answers
        become rows in ``Answers.batch`` (identical ones to a client in a second are one
        row: a product asking the same thing in a loop costs one row a second, not one per
        query).

        Per entry only the ``popleft``: answers (6 values: ``entries.Entry`` with a count)
        are told from ready rows (2) by their length summed in C (all answers, the usual
        case, need no loop), and large bodies are weighed only when some are queued
        (``_bytes_in`` is added before the append, so a large body taken is always seen).
        Once the queue is empty the group held back by ``observe`` is taken too."""
        popleft = self._queue.popleft
        n = min(self.batch, len(self._queue))
        answers: list[tuple[Any, ...]] = [popleft() for _ in range(n)]
        rows: dict[str, list[tuple[Any, ...]]] = {}
        if sum(map(len, answers)) != 6 * n:  # some (table, row) among the answers
            for table, row in (e for e in answers if len(e) == 2):
                rows.setdefault(table, []).append(row)
            answers = [e for e in answers if len(e) != 2]
        if self._bytes_in != self._bytes_out:
            self._bytes_out += sum(size for size in map(len, map(_BODY, answers)) if size > SMALL)
        if not self._queue:  # the group held is newer than all queued: the writer's now
            with self._held_lock:
                held, self._held = self._held, None
            if held is not None:  # never queued, so neither weighed nor refused for room
                answers.append(tuple(held[:6]))
                n += 1
        if answers:
            query = self._answers.batch(answers)
            if query:
                rows["query"] = query
        return n, rows

    def _retain(self, conn: sqlite3.Connection) -> bool:
        """One retention pass; True when more rows are due (run again soon)."""
        try:
            deleted, more = self.store.enforce_retention(
                conn, days=self.days, max_rows=self.max_rows, now=self.clock())
        except sqlite3.Error as e:
            self._complain(f"log retention failed: {e}")
            return False
        self.retention_passes += 1
        if deleted:
            logger.debug("log retention deleted %d rows", deleted)
        return more

    def _complain(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error >= 60 or not self._last_error:
            self._last_error = now
            logger.warning("%s (log entries lost so far: %d)", message, self._lost)
