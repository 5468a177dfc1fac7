"""The approved/blocked lists the appliances share (docs/architecture.md, "Workers and shared state").

Redis holds the shared rule set: the hash ``PREFIX lists:rules`` (field ``KIND<TAB>VALUE``,
value the rule as a JSON row of the store's columns) and the counter ``PREFIX
lists:version``, both changed in one MULTI/EXEC with a PUBLISH on ``PREFIX lists``.

Writing: ``SharedLists.push`` is the store's ``ListMirror``. Every write on any appliance
(CLI, admin API, console) reaches it inside the SQLite transaction, before the COMMIT; if
Redis cannot take it the transaction rolls back and the write is refused with
``ListsUnreachable`` (HTTP 503, ``redis_unavailable``): never half-applied. The first
write to an empty Redis seeds it with every local rule (WATCHed, so two seeders cannot
both win).

Following: ``SharedLists.catch_up`` reads the set when the version moved (woken by the
channel, or every ``POLL`` seconds as a fallback) and makes the local lists.sqlite equal
it in one transaction (``ListStore.follow``), then ``on_change`` swaps the snapshot. On the
first join an empty Redis is seeded from the local lists; a non-empty one wins, and local
rules it does not hold are first exported to ``DATA_DIR/lists-before-redis-<UTC>.json``
(0600) with a warning naming the file. While Redis is down the appliance answers from its
local copy; once it is back the follower catches up (reseeding it if it came back empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from proxy.clock import utcnow
from proxy.decide import list_io
from proxy.decide.list_mirror import Change
from proxy.decide.list_rules import MAX_NOTE_LENGTH, Entry, EntryKind, classify, clients_text
from proxy.decide.list_schema import entry_of
from proxy.decide.lists import MAX_IMPORT, ListStore
from proxy.errors import ListError
from proxy.files import write_atomic
from proxy.shared.link import Link, LinkDown

logger = logging.getLogger(__name__)

POLL = 1.0  # seconds between version checks when no message came
MAX_RULE = 16 * 1024  # bytes of one stored rule
CHUNK = 10_000  # fields per HSET/HDEL inside one MULTI
Shared = dict[tuple[EntryKind, str], Entry]


class ListsUnreachable(ListError):
    """A list write the shared Redis could not take: refused whole (exit 1: nothing was wrong
    with the values; try again once Redis answers)."""

    exit_code = 1
    status = 503
    code = "redis_unavailable"


def _field(kind: EntryKind, value: str) -> str:
    return f"{kind.value}\t{value}"


def encode(e: Entry) -> str:
    return json.dumps([e.list.value, e.kind.value, e.value, e.note, e.created, clients_text(e.clients),
                       e.expires, e.added_by, e.origin], ensure_ascii=False, separators=(",", ":"))


def decode(field: bytes, raw: bytes) -> Entry | None:
    """A stored rule, checked as an import would be; None (skipped, with a warning) otherwise."""
    try:
        row = json.loads(raw) if len(raw) <= MAX_RULE else None
        entry = entry_of(tuple(row)) if isinstance(row, list) and len(row) == 9 else None
        if entry is None or classify(entry.value, entry.kind) != (entry.kind, entry.value):
            raise ValueError("not a rule")
        if len(entry.note) > MAX_NOTE_LENGTH or field.decode() != _field(entry.kind, entry.value):
            raise ValueError("not a rule")
    except (ValueError, TypeError, ListError, UnicodeDecodeError):
        logger.warning("skipping a malformed shared list rule", extra={"field": field[:80].decode("latin-1")})
        return None
    return entry


class SharedLists:
    """The store's mirror (sync, in the write's thread) and its follower (asyncio)."""

    def __init__(self, link: Link, store: ListStore, node: str, data_dir: Path | None = None,
                 on_change: Callable[[], Awaitable[None]] | None = None) -> None:
        self.link = link
        self.store = store
        self.node = node
        self.data_dir = data_dir
        self.on_change = on_change
        self.rules = link.key("lists", "rules")
        self.version = link.key("lists", "version")
        self.channel = link.key("lists")
        self.seen: int | None = None  # the shared version the local copy equals
        self._pushed = 0  # the newest version a write of this process made
        self._wake = asyncio.Event()
        self.synced = 0  # rules changed here by following

    # ------------------------------------------------------------ writes (ListMirror)

    def push(self, changes: Sequence[Change], everything: Callable[[], list[Entry]]) -> None:
        try:
            version = self.link.run_sync("lists_write", lambda r: self._push(r, changes, everything))
        except LinkDown as e:
            raise ListsUnreachable(
                f"the shared lists are unreachable ({e.message}); nothing was changed") from None
        if self.seen is not None and version == self.seen + 1:
            self.seen = version  # only this change since: no need to read it back
        self._pushed = max(self._pushed, version)

    def _push(self, r: redis.Redis, changes: Sequence[Change], everything: Callable[[], list[Entry]]) -> int:
        with r.pipeline(transaction=True) as pipe:
            for _ in range(8):  # another appliance seeding meanwhile: try again
                try:
                    pipe.watch(self.version)  # type: ignore[no-untyped-call]
                    fresh = pipe.get(self.version) is None
                    pipe.multi()
                    if fresh:
                        self._seed_into(pipe, everything())
                    else:
                        put = [(_field(k, v), encode(e)) for k, v, e in changes if e is not None]
                        gone = [_field(k, v) for k, v, e in changes if e is None]
                        for at in range(0, len(put), CHUNK):
                            pipe.hset(self.rules, mapping=dict(put[at:at + CHUNK]))
                        for at in range(0, len(gone), CHUNK):
                            pipe.hdel(self.rules, *gone[at:at + CHUNK])
                        pipe.incr(self.version)
                    pipe.publish(self.channel, self.node)
                    return int(pipe.execute()[-2])
                except redis.WatchError:
                    continue
        raise LinkDown("the shared lists kept changing under this write")

    def _seed_into(self, pipe: Any, entries: list[Entry]) -> None:
        pipe.delete(self.rules)
        for start in range(0, len(entries), CHUNK):
            chunk = entries[start:start + CHUNK]
            pipe.hset(self.rules, mapping={_field(e.kind, e.value): encode(e) for e in chunk})
        pipe.set(self.version, 1)

    # ------------------------------------------------------------ following

    def on_message(self, data: bytes) -> None:
        if data.decode("utf-8", "replace") != self.node:
            self._wake.set()

    def wake(self) -> None:
        """Catch up now (the loop's), not at the next poll."""
        self._wake.set()

    async def follow(self) -> None:
        """Catch up now, then whenever woken or every POLL seconds, until cancelled."""
        while True:
            self._wake.clear()  # before reading: news during the read wakes the next round
            try:
                await self.catch_up()
            except LinkDown:
                pass
            except Exception:
                logger.exception("following the shared lists failed; keeping the local ones")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL)

    async def catch_up(self) -> None:
        """Make the local lists equal the shared ones (seeding an empty Redis from them)."""
        raw = await self.link.run("lists_version", lambda r: r.get(self.version))
        if raw is None:
            await self._seed()
            return
        version = int(raw)
        if version == self.seen:
            return
        got = await self.link.run("lists_read", self._read, timeout=self.link.write_timeout)
        version, rules = int(got[0] or 0), got[1]
        if len(rules) > MAX_IMPORT:
            raise ListError(f"the shared lists hold more than {MAX_IMPORT} rules; not followed")
        shared: Shared = {}
        for field, value in rules.items():
            e = decode(field, value)
            if e is not None:
                shared[(e.kind, e.value)] = e
        changed = await asyncio.to_thread(self._apply, shared, version)
        if changed is None:
            self._wake.set()  # a local write made a newer version meanwhile: read again
            return
        self.seen = version
        self.synced += changed
        if changed:
            logger.info("shared lists followed", extra={"changed": changed, "version": version})
            if self.on_change is not None:
                await self.on_change()

    async def _read(self, r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=True)
        pipe.get(self.version)
        pipe.hgetall(self.rules)
        return list(await pipe.execute())

    def _apply(self, shared: Shared, version: int) -> int | None:
        if self.seen is None:
            self._keep_local_extras(shared)
        if self._pushed > version:
            return None
        changed = self.store.follow(shared, lambda: self._pushed <= version)
        return None if self._pushed > version else changed

    def _keep_local_extras(self, shared: Shared) -> None:
        """First join of a non-empty Redis: save the local rules it lacks (or holds otherwise)."""
        extra = [e for e in self.store.entries() if shared.get((e.kind, e.value)) != e]
        if not extra or self.data_dir is None:
            return
        name = f"lists-before-redis-{utcnow().strftime('%Y%m%dT%H%M%SZ')}.json"
        write_atomic(self.data_dir / name, list_io.export_json(extra).encode(), mode=0o600)
        logger.warning("the shared lists in Redis at %s replace %d local rule(s) they do not hold;"
                       " those were saved to %s", self.link.where, len(extra), self.data_dir / name)

    async def _seed(self) -> None:
        entries = await asyncio.to_thread(self.store.entries)

        def seed(r: redis.Redis) -> int:
            with r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.version)  # type: ignore[no-untyped-call]
                    if pipe.get(self.version) is not None:
                        return -1  # someone else seeded first: follow theirs
                    pipe.multi()
                    self._seed_into(pipe, entries)
                    pipe.publish(self.channel, self.node)
                    pipe.execute()
                except redis.WatchError:
                    return -1
            return 1

        done = await asyncio.to_thread(self.link.run_sync, "lists_seed", seed)
        if done == 1:
            self.seen = 1
            logger.info("seeded the shared lists in Redis at %s with %d local rule(s)",
                        self.link.where, len(entries))
        else:
            self._wake.set()
