"""The administrator's approved and blocked lists: the store.

Rules live in SQLite (``DIR/lists.sqlite``, WAL mode, 0600) so the server, the CLI and
the console can all change them. A rule is a file hash, a domain (with all its
subdomains; an IP literal matches that address), a URL prefix (a canonical expression
without scheme), a keyword or a regular expression, with optional client networks,
expiry and note, and who added it, from where and when (``proxy.decide.list_rules``).
A value is on at most one list: adding it to the other list moves it. What matches what,
and which rule wins, is ``proxy.decide.list_match``'s docstring.

Every write is one transaction, audited in it (``proxy.decide.list_audit``): all of a
batch or nothing, and the trail never disagrees with the lists. The request path never
touches SQLite: the server takes an immutable ``ListSnapshot`` and takes a new one when
``ListStore.changed()`` says a process committed a change, or a rule in the current
snapshot has expired since.
"""

from __future__ import annotations

import enum
import getpass
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from proxy.decide import list_audit, list_mirror
from proxy.decide.list_audit import AuditEntry
from proxy.decide.list_match import ListSnapshot, compile_set
from proxy.decide.list_mirror import ListMirror
from proxy.decide.list_rules import (
    MAX_NOTE_LENGTH,
    MAX_VALUE_LENGTH,
    PATTERN_KINDS,
    Actor,
    Entry,
    EntryKind,
    ListName,
    check_text,
    classify,
    clients_text,
    parse_clients,
)
from proxy.decide.list_schema import COLUMNS, FILENAME, SCHEMA_VERSION, create_schema, entry_of
from proxy.errors import ListError
from proxy.files import check_private_dir, create_private_sqlite, immediate, open_sqlite
from proxy.model import Network

__all__ = [
    "FILENAME", "MAX_BATCH", "MAX_IMPORT", "MAX_NOTE_LENGTH", "MAX_PATTERN_RULES", "MAX_VALUE_LENGTH",
    "SCHEMA_VERSION", "Actor", "AuditEntry", "Entry", "EntryKind", "ImportResult", "ListName",
    "ListSnapshot", "ListStore", "NoSuchRule", "classify",
]

logger = logging.getLogger(__name__)

MAX_BATCH = 10_000  # values in one add or remove
MAX_IMPORT = 500_000  # rules in one import
MAX_PATTERN_RULES = 10_000  # keyword and regex rules in all (one compiled RE2 set)


class NoSuchRule(ListError):
    status = 404
    code = "no_such_rule"


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP = _Keep.KEEP  # edit(): leave this field as it is


def local_actor(origin: str = "cli") -> Actor:
    """The user running this process, as the audit names a change made on this machine."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Actor(who[:128], origin)


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: int
    moved: int
    updated: int
    unchanged: int

    def message(self, source: str) -> str:
        return (f"imported {source}: {self.added} added, {self.moved} moved from the other list, "
                f"{self.updated} updated, {self.unchanged} unchanged")


class ListStore:
    """The lists in SQLite; every write is one audited transaction (all of a batch or nothing)."""

    def __init__(self, conn: sqlite3.Connection, now: Callable[[], float]) -> None:
        self._conn = conn
        self._now = now
        self._lock = threading.Lock()
        self._seen_version: int | None = None  # data_version when the last snapshot was read
        self._dirty = True  # this connection committed since the last snapshot
        self._expires_next: float | None = None  # the last snapshot's first expiry
        self._mirror: ListMirror | None = None  # the shared copy every write goes to first

    def share(self, mirror: ListMirror) -> None:
        """Send every write to ``mirror`` (the lists the appliances share) before it commits
        here; a write the mirror refuses is not made (``proxy.decide.list_mirror``)."""
        with self._lock:
            list_mirror.watch_touched(self._conn)
            self._mirror = mirror

    @classmethod
    def open(cls, data_dir: Path, *, now: Callable[[], float] = time.time) -> ListStore:
        path = check_private_dir(data_dir) / FILENAME
        try:
            create_private_sqlite(path)
        except OSError as e:
            raise ListError(f"cannot open the list store {FILENAME}: {e.strerror or e}") from None
        try:
            conn = open_sqlite(path)
            try:
                create_schema(conn, now())
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as e:
            raise ListError(f"cannot open the list store {FILENAME}: {e}") from e
        logger.debug("list store opened", extra={"file": FILENAME})
        return cls(conn, now)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ListStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes

    def add(self, name: ListName, values: Iterable[tuple[EntryKind | None, str]], note: str = "", *,
            clients: Iterable[str] | None = None, expires: float | None = None,
            actor: Actor | None = None) -> list[str]:
        """Put values on a list; a value on the other list moves. Returns one message per value.

        For a value already on this list, a given note, ``clients`` or ``expires``
        replaces the rule's; what is not given stays.
        """
        items = _validate(values)
        check_text(note, "note", MAX_NOTE_LENGTH)
        scope = None if clients is None else parse_clients(clients)
        actor = actor or local_actor()
        now = self._now()
        if expires is not None and expires <= now:
            raise ListError("expiry is already past; nothing was changed")
        messages: list[str] = []
        with self._write(any(k in PATTERN_KINDS for k, _ in items)) as cur:
            for kind, value in items:
                fresh = Entry(name, kind, value, note, now, scope or (), expires, actor.who, actor.origin)
                messages.append(self._add_one(cur, fresh, note, scope, expires, actor, now))
        logger.info("list entries added", extra={"list": name.value, "given": len(items)})
        return messages

    def _add_one(self, cur: sqlite3.Cursor, fresh: Entry, note: str, scope: tuple[Network, ...] | None,
                 expires: float | None, actor: Actor, now: float) -> str:
        what = f"{fresh.kind.value} {fresh.value}"
        old = _get(cur, fresh.kind, fresh.value)
        if old is None:
            _put(cur, fresh)
            list_audit.record(cur, actor, now, "add", entry=fresh, detail=list_audit.fields(fresh))
            return f"added {what} to the {fresh.list.value} list"
        if old.list is not fresh.list:
            _put(cur, fresh)
            list_audit.record(cur, actor, now, "move", entry=fresh,
                              detail={"from": old.list.value, **list_audit.fields(fresh)})
            return f"moved {what} from the {old.list.value} list to the {fresh.list.value} list"
        new = replace(old, note=note or old.note, clients=old.clients if scope is None else fresh.clients,
                      expires=old.expires if expires is None else expires)
        if new == old:
            return f"{what} is already on the {fresh.list.value} list"
        _put(cur, new)
        changes = _changes(old, new)
        list_audit.record(cur, actor, now, "edit", entry=new, detail=changes)
        return f"updated {what} on the {fresh.list.value} list ({', '.join(changes)})"

    def edit(self, kind: EntryKind | None, value: str, *, to: ListName | None = None,
             note: str | None = None, clients: Iterable[str] | None = None,
             expires: float | _Keep | None = KEEP, actor: Actor | None = None) -> Entry:
        """Change one rule's list, note, client networks or expiry (None: never); what is
        not given stays. Raises NoSuchRule when no list holds the value."""
        kind, value = classify(value, kind)
        if note is not None:
            check_text(note, "note", MAX_NOTE_LENGTH)
        scope = None if clients is None else parse_clients(clients)
        actor = actor or local_actor()
        now = self._now()
        if isinstance(expires, float | int) and expires <= now:
            raise ListError("expiry is already past; nothing was changed")
        with self._write(False) as cur:
            old = _get(cur, kind, value)
            if old is None:
                raise NoSuchRule(f"no list holds {kind.value} {value}")
            new = replace(old, list=to or old.list, note=old.note if note is None else note,
                          clients=old.clients if scope is None else scope,
                          expires=old.expires if expires is KEEP else expires)
            if new != old:
                _put(cur, new)
                list_audit.record(cur, actor, now, "edit", entry=new, detail=_changes(old, new))
        return new

    def remove(self, values: Iterable[tuple[EntryKind | None, str]], *, name: ListName | None = None,
               actor: Actor | None = None) -> int:
        """Remove values (normalised first) from whichever list holds them, or only ``name``."""
        items = _validate(values)
        actor = actor or local_actor()
        now = self._now()
        removed = 0
        with self._write(False) as cur:
            for kind, value in items:
                old = _get(cur, kind, value)
                if old is None or (name is not None and old.list is not name):
                    continue
                cur.execute("DELETE FROM entries WHERE kind = ? AND value = ?", (kind.value, value))
                list_audit.record(cur, actor, now, "remove", entry=old, detail=list_audit.fields(old))
                removed += 1
        logger.info("list entries removed", extra={"removed": removed, "given": len(items)})
        return removed

    def import_entries(self, entries: Sequence[Entry], *, source: str, complete: bool = True,
                       actor: Actor | None = None) -> ImportResult:
        """Store validated rules (``proxy.decide.list_io``) in one transaction.

        ``complete``: each row states the whole rule (CSV, JSON), which replaces a stored
        one; otherwise (plain lists) a value already on its list is left as it is. A
        rule's empty ``added_by``/``origin`` and zero ``created`` are the importer's and now.
        """
        if len(entries) > MAX_IMPORT:
            raise ListError(f"more than {MAX_IMPORT} rules in one import; nothing was changed")
        actor = actor or local_actor()
        now = self._now()
        counts: Counter[str] = Counter()
        with self._write(any(e.kind in PATTERN_KINDS for e in entries)) as cur:
            for e in entries:
                e = replace(e, created=e.created or now, added_by=e.added_by or actor.who,
                            origin=e.origin or actor.origin)
                old = _get(cur, e.kind, e.value)
                result = ("added" if old is None else "moved" if old.list is not e.list
                          else "updated" if complete and not old.same_rule(e) else "unchanged")
                counts[result] += 1
                if result != "unchanged":
                    _put(cur, e)
                    list_audit.record(cur, actor, now, "import", entry=e,
                                      detail={"result": result, "file": source, **list_audit.fields(e)})
            done = ImportResult(counts["added"], counts["moved"], counts["updated"], counts["unchanged"])
            list_audit.record(cur, actor, now, "import", detail={"file": source, **_counts_of(done)})
        logger.info("list rules imported", extra=_counts_of(done))
        return done

    @contextmanager
    def _write(self, patterns: bool) -> Iterator[sqlite3.Cursor]:
        """One transaction; ``patterns``: it touches keyword/regex rules, which must still
        compile together (checked before the commit, so a server never loads a set it cannot)."""
        with self._lock:
            with self._transaction("the change") as cur:
                yield cur
                if patterns:
                    _check_patterns(cur)
                if self._mirror is not None:
                    self._tell_mirror(cur, self._mirror)
            self._dirty = True

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Cursor]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` on a new cursor, rolled back on any error (the
        caller holds the lock); a database error is a ListError saying it refused ``what``."""
        try:
            with immediate(self._conn) as cur:
                yield cur
        except sqlite3.Error as e:
            raise ListError(f"the list store refused {what}: {e}") from e

    def _tell_mirror(self, cur: sqlite3.Cursor, mirror: ListMirror) -> None:
        changes = list_mirror.take_touched(cur)
        if changes:
            mirror.push(changes, lambda: [e for e in map(entry_of, cur.execute(
                f"SELECT {COLUMNS} FROM entries").fetchall()) if e is not None])

    def follow(self, shared: dict[tuple[EntryKind, str], Entry],
               current: Callable[[], bool] = lambda: True, *,
               only: Sequence[tuple[EntryKind, str]] | None = None) -> int:
        """Make the local rules equal the shared ones in one transaction (not sent back to
        the mirror); ``current()`` is asked under the store's lock, and a copy a write made
        since has outdated is not applied. ``only``: just these rules changed (the others
        are left as they are; ``shared`` holds those of them still present). Returns how
        many rules changed."""
        with self._lock:
            if not current():
                return 0
            with self._transaction("the shared lists") as cur:
                local = self._read_entries(None) if only is None else [
                    e for e in (_get(cur, k, v) for k, v in only) if e is not None]
                put, gone = list_mirror.differences(local, shared)
                for e in put:
                    _put(cur, e)
                cur.executemany("DELETE FROM entries WHERE kind = ? AND value = ?",
                                [(k.value, v) for k, v in gone])
                list_audit.record_followed(cur, self._now(), put, gone, local)
                if any(e.kind in PATTERN_KINDS for e in put):
                    _check_patterns(cur)  # what a snapshot must compile, as a write checks
                if self._mirror is not None:
                    list_mirror.forget_touched(cur)
            self._dirty = self._dirty or bool(put or gone)
            return len(put) + len(gone)

    # -- reads

    def entries(self, name: ListName | None = None) -> list[Entry]:
        """Every rule (expired ones too: ``Entry.expired`` tells), by list, kind and value."""
        with self._lock:
            return self._read_entries(name)

    def get(self, kind: EntryKind, value: str) -> Entry | None:
        with self._lock:
            return _get(self._conn.cursor(), kind, value)

    def audit(self, *, limit: int = 100, value: str | None = None) -> list[AuditEntry]:
        """The newest audit entries first (of one rule's value, when given)."""
        with self._lock:
            return list_audit.read(self._conn, limit=limit, value=value)

    def _read_entries(self, name: ListName | None) -> list[Entry]:
        sql = f"SELECT {COLUMNS} FROM entries"
        args: tuple[str, ...] = ()
        if name is not None:
            sql += " WHERE list = ?"
            args = (name.value,)
        sql += " ORDER BY list, kind, value"
        return [e for e in map(entry_of, self._conn.execute(sql, args)) if e is not None]

    def changed(self) -> bool:
        """Whether any process committed a change since the last ``snapshot()``, or a rule
        in it has expired since (so the server's poll drops it)."""
        with self._lock:
            if self._dirty or self._seen_version is None:
                return True
            if self._expires_next is not None and self._now() >= self._expires_next:
                return True
            return self._data_version() != self._seen_version

    def snapshot(self) -> ListSnapshot:
        """Read both lists into an immutable in-memory snapshot (expired rules left out)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                version = self._data_version()
                entries = self._read_entries(None)
            finally:
                self._conn.execute("COMMIT")
            snap = ListSnapshot(entries, now=self._now(), clock=self._now)
            self._seen_version = version
            self._dirty = False
            self._expires_next = snap.expires_next
        return snap

    def _data_version(self) -> int:
        row = self._conn.execute("PRAGMA data_version").fetchone()
        return int(row[0])


# ---------------------------------------------------------------- rows


def _get(cur: sqlite3.Cursor, kind: EntryKind, value: str) -> Entry | None:
    row = cur.execute(f"SELECT {COLUMNS} FROM entries WHERE kind = ? AND value = ?",
                      (kind.value, value)).fetchone()
    return None if row is None else entry_of(row)


def _put(cur: sqlite3.Cursor, e: Entry) -> None:
    cur.execute(
        f"INSERT INTO entries ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, value) DO "
        "UPDATE SET list = excluded.list, note = excluded.note, created = excluded.created, "
        "clients = excluded.clients, expires = excluded.expires, added_by = excluded.added_by, "
        "origin = excluded.origin",
        (e.list.value, e.kind.value, e.value, e.note, e.created, clients_text(e.clients), e.expires,
         e.added_by, e.origin),
    )


def _changes(old: Entry, new: Entry) -> dict[str, list[object]]:
    """Each field an edit changed, as ``[before, after]`` (what the audit shows)."""
    before, after = list_audit.fields(old), list_audit.fields(new)
    out: dict[str, list[object]] = {k: [before[k], after[k]] for k in before if before[k] != after[k]}
    if old.list is not new.list:
        out["list"] = [old.list.value, new.list.value]
    return out


def _check_patterns(cur: sqlite3.Cursor) -> None:
    rows = cur.execute(f"SELECT {COLUMNS} FROM entries WHERE kind IN ('keyword', 'regex')").fetchall()
    if len(rows) > MAX_PATTERN_RULES:
        raise ListError(f"more than {MAX_PATTERN_RULES} keyword and regex rules; nothing was changed")
    compile_set(e for e in map(entry_of, rows) if e is not None)


def _counts_of(result: ImportResult) -> dict[str, int]:
    return {"added": result.added, "moved": result.moved, "updated": result.updated,
            "unchanged": result.unchanged}


def _validate(values: Iterable[tuple[EntryKind | None, str]]) -> list[tuple[EntryKind, str]]:
    """Classify every value before anything is written; refuse the batch on the first bad one."""
    items: list[tuple[EntryKind, str]] = []
    for kind, value in values:
        if len(items) >= MAX_BATCH:
            raise ListError(f"more than {MAX_BATCH} values in one change")
        if not isinstance(value, str):
            raise ListError(f"list value #{len(items) + 1} is not text")
        try:
            items.append(classify(value, kind))
        except ListError as e:
            raise ListError(f"value #{len(items) + 1}: {e.message}; nothing was changed") from None
    return items
