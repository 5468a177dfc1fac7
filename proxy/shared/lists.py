"""The approved/blocked lists the appliances share (docs/architecture.md, "Workers and shared state").

Redis holds the shared rule set (``PREFIX lists:...``): ``rules``, a hash of every rule
(``proxy.shared.list_rows``); ``version``, a counter; ``epoch``, a token made when the set
is seeded (a Redis that lost its data and was seeded again is another epoch); ``changed``,
a sorted set of the fields each version touched (score: the version), complete after
``floor``; all changed in one MULTI/EXEC, WATCHing ``version``, with a PUBLISH on
``PREFIX lists``.

Writing: ``SharedLists.push`` is the store's ``ListMirror``. Every write on any appliance
(CLI, admin API, console) reaches it inside the SQLite transaction, before the COMMIT; if
Redis cannot take it the transaction rolls back and the write is refused with
``ListsUnreachable`` (HTTP 503, ``redis_unavailable``): never half-applied. The first
write to an empty Redis seeds it with every local rule.

Following: ``SharedLists.catch_up`` looks when woken by the channel, or every ``POLL``
seconds as a fallback. When the version moved within the epoch it knows, it reads only
the rules changed since (``changed`` and HMGET) and applies those; otherwise (first join,
a new epoch, changes trimmed past ``floor``, too many changes) it reads the whole set and
makes lists.sqlite equal it. Either is one transaction (``ListStore.follow``), then
``on_change`` swaps the snapshot. On the first join an empty Redis is seeded from the local
lists; a non-empty one wins, and local rules it does not hold are first exported to
``DATA_DIR/lists-before-redis-<UTC>.json`` (0600) with a warning naming the file. While
Redis is down the appliance answers from its local copy; once it is back the follower
catches up (seeding it again if it came back empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from proxy.clock import utcnow
from proxy.decide import list_io
from proxy.decide.list_mirror import Change
from proxy.decide.list_rules import Entry, EntryKind
from proxy.decide.lists import MAX_IMPORT, ListStore
from proxy.errors import ListError
from proxy.files import write_atomic
from proxy.shared.link import Link, LinkDown
from proxy.shared.list_rows import decode, encode, field_of, key_of

logger = logging.getLogger(__name__)

POLL = 1.0  # seconds between version checks when no message came
CHUNK = 10_000  # fields per HSET/HDEL/ZADD inside one MULTI
MAX_CHANGED = 200_000  # fields kept in ``changed``; past it the oldest half goes
MAX_INCREMENT = 50_000  # changed rules read one by one; more: the whole set
Shared = dict[tuple[EntryKind, str], Entry]


class ListsUnreachable(ListError):
    """A list write the shared Redis could not take: refused whole (exit 1: nothing was wrong
    with the values; try again once Redis answers)."""

    exit_code = 1
    status = 503
    code = "redis_unavailable"


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
        self.epoch_key = link.key("lists", "epoch")
        self.changed = link.key("lists", "changed")
        self.floor = link.key("lists", "floor")
        self.channel = link.key("lists")
        self.seen: int | None = None  # the shared version the local copy equals
        self.epoch = ""  # ... in this epoch
        self._pushed: tuple[str, int] = ("", 0)  # the newest version a write of this process made
        self._wake = asyncio.Event()
        self.synced = 0  # rules changed here by following
        self.reads = {"whole": 0, "changes": 0}  # how each catch-up read the shared set

    # ------------------------------------------------------------ writes (ListMirror)

    def push(self, changes: Sequence[Change], everything: Callable[[], list[Entry]]) -> None:
        try:
            epoch, version = self.link.run_sync("lists_write", lambda r: self._push(r, changes, everything))
        except LinkDown as e:
            raise ListsUnreachable(
                f"the shared lists are unreachable ({e.message}); nothing was changed") from None
        if self.seen is not None and self.epoch == epoch and version == self.seen + 1:
            self.seen = version  # only this change since: no need to read it back
        self._pushed = (epoch, max(self._pushed[1], version) if self._pushed[0] == epoch else version)

    def _push(self, r: redis.Redis, changes: Sequence[Change],
              everything: Callable[[], list[Entry]]) -> tuple[str, int]:
        with r.pipeline(transaction=True) as pipe:
            for _ in range(8):  # another appliance writing meanwhile: try again
                try:
                    pipe.watch(self.version)  # type: ignore[no-untyped-call]
                    now, epoch = pipe.mget(self.version, self.epoch_key)
                    if now is None or epoch is None:
                        epoch = self._seed_into(pipe, everything())
                        version = 1
                    else:
                        version = int(now) + 1
                        trim = self._trim_point(pipe)
                        pipe.multi()
                        self._change_into(pipe, changes, version, trim)
                    pipe.publish(self.channel, self.node)
                    pipe.execute()
                    return _text(epoch), version
                except redis.WatchError:
                    pipe.reset()
        raise LinkDown("the shared lists kept changing under this write")

    def _change_into(self, pipe: Any, changes: Sequence[Change], version: int, trim: float | None) -> None:
        put = [(field_of(k, v), encode(e)) for k, v, e in changes if e is not None]
        gone = [field_of(k, v) for k, v, e in changes if e is None]
        for at in range(0, len(put), CHUNK):
            pipe.hset(self.rules, mapping=dict(put[at:at + CHUNK]))
        for at in range(0, len(gone), CHUNK):
            pipe.hdel(self.rules, *gone[at:at + CHUNK])
        touched = [f for f, _ in put] + gone
        for at in range(0, len(touched), CHUNK):
            pipe.zadd(self.changed, dict.fromkeys(touched[at:at + CHUNK], version))
        if trim is not None:
            pipe.zremrangebyscore(self.changed, "-inf", trim)
            pipe.set(self.floor, int(trim))
        pipe.set(self.version, version)

    def _trim_point(self, pipe: Any) -> float | None:
        """The version up to which ``changed`` is dropped when it has grown past MAX_CHANGED."""
        if int(pipe.zcard(self.changed)) <= MAX_CHANGED:
            return None
        at = pipe.zrange(self.changed, MAX_CHANGED // 2, MAX_CHANGED // 2, withscores=True)
        return float(at[0][1]) if at else None

    def _seed_into(self, pipe: Any, entries: list[Entry]) -> str:
        """Queue a new epoch holding ``entries`` (after ``multi``); returns the epoch."""
        epoch = secrets.token_hex(8)
        pipe.multi()
        pipe.delete(self.rules, self.changed)
        for start in range(0, len(entries), CHUNK):
            chunk = entries[start:start + CHUNK]
            pipe.hset(self.rules, mapping={field_of(e.kind, e.value): encode(e) for e in chunk})
        pipe.mset({self.version: 1, self.floor: 1, self.epoch_key: epoch})
        return epoch

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
        raw, token = await self.link.run("lists_version", lambda r: r.mget(self.version, self.epoch_key))
        if raw is None or token is None:
            await self._seed()
            return
        version, same_epoch = int(raw), _text(token) == self.epoch
        if version == self.seen and same_epoch:
            return
        if (self.seen is not None and same_epoch and version > self.seen
                and await self._catch_up_changes()):
            return
        self.reads["whole"] += 1
        got = await self.link.run("lists_read", self._read, timeout=self.link.write_timeout)
        version, epoch, rules = int(got[0] or 0), (got[1] or b"").decode(), got[2]
        if len(rules) > MAX_IMPORT:
            raise ListError(f"the shared lists hold more than {MAX_IMPORT} rules; not followed")
        shared: Shared = {}
        for field, value in rules.items():
            e = decode(field, value)
            if e is not None:
                shared[(e.kind, e.value)] = e
        await self._settle(epoch, version, await asyncio.to_thread(self._apply, shared, epoch, version, None))

    async def _catch_up_changes(self) -> bool:
        """Read and apply only the rules changed since ``seen``; False: read the whole set."""
        assert self.seen is not None
        seen = self.seen

        async def changes(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=True)
            pipe.mget(self.version, self.floor, self.epoch_key)
            pipe.zrangebyscore(self.changed, f"({seen}", "+inf", start=0, num=MAX_INCREMENT + 1)
            return list(await pipe.execute())

        (raw, floor, epoch), fields = await self.link.run("lists_changes", changes,
                                                          timeout=self.link.write_timeout)
        if raw is None or epoch is None or _text(epoch) != self.epoch or int(floor or 0) > seen:
            return False
        if len(fields) > MAX_INCREMENT:
            return False
        self.reads["changes"] += 1
        keys = [k for k in map(key_of, fields) if k is not None]
        names = [field_of(*k) for k in keys]
        values: list[Any] = await self.link.run(
            "lists_read", lambda r: r.hmget(self.rules, names), timeout=self.link.write_timeout
        ) if keys else []
        shared: Shared = {}
        for key, name, value in zip(keys, names, values):
            e = decode(name.encode(), value) if isinstance(value, bytes) else None
            if e is not None:
                shared[key] = e
        # a removed rule is removed here; a malformed one leaves the local rule untouched
        only = [k for k, v in zip(keys, values) if v is None or k in shared]
        version = int(raw)
        await self._settle(self.epoch, version,
                           await asyncio.to_thread(self._apply, shared, self.epoch, version, only))
        return True

    async def _settle(self, epoch: str, version: int, changed: int | None) -> None:
        if changed is None:
            self._wake.set()  # a local write made a newer version meanwhile: read again
            return
        self.seen, self.epoch = version, epoch
        self.synced += changed
        if changed:
            logger.info("shared lists followed", extra={"changed": changed, "version": version})
            if self.on_change is not None:
                await self.on_change()

    async def _read(self, r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=True)
        pipe.get(self.version)
        pipe.get(self.epoch_key)
        pipe.hgetall(self.rules)
        return list(await pipe.execute())

    def _newer(self, epoch: str, version: int) -> bool:
        """A write of this process made a version after the one read."""
        return self._pushed[0] == epoch and self._pushed[1] > version

    def _apply(self, shared: Shared, epoch: str, version: int,
               only: list[tuple[EntryKind, str]] | None) -> int | None:
        if self.seen is None and only is None:
            self._keep_local_extras(shared)
        if self._newer(epoch, version):
            return None
        changed = self.store.follow(shared, lambda: not self._newer(epoch, version), only=only)
        return None if self._newer(epoch, version) else changed

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

        def seed(r: redis.Redis) -> str | None:
            with r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.version)  # type: ignore[no-untyped-call]
                    if pipe.get(self.version) is not None:
                        return None  # someone else seeded first: follow theirs
                    epoch = self._seed_into(pipe, entries)
                    pipe.publish(self.channel, self.node)
                    pipe.execute()
                except redis.WatchError:
                    return None
            return epoch

        epoch = await asyncio.to_thread(self.link.run_sync, "lists_seed", seed)
        if epoch is not None:
            self.seen, self.epoch = 1, epoch
            logger.info("seeded the shared lists in Redis at %s with %d local rule(s)",
                        self.link.where, len(entries))
        else:
            self._wake.set()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
