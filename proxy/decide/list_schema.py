"""The list store's SQLite schema, its migrations, and how a row becomes an ``Entry``.

Version 1 (Rampart before issue 10): ``entries(id, list, kind, value, note, created)``,
kinds hash, domain and url. Version 2 adds the kinds keyword and regex, ``clients``
(space-separated CIDR networks; empty for every client), ``expires`` (epoch seconds
or NULL), ``added_by`` and ``origin``, and the ``audit`` table. Migrating copies every
version-1 row (added_by ``"(before audit)"``) in the same transaction that changes the
schema, so a failure leaves the old file as it was.
"""

from __future__ import annotations

import logging
import sqlite3

from proxy.decide import list_audit
from proxy.decide.list_rules import Actor, Entry, EntryKind, ListName, parse_clients
from proxy.errors import ListError

logger = logging.getLogger(__name__)

FILENAME = "lists.sqlite"
SCHEMA_VERSION = 2
MIGRATED_BY = "(before audit)"

_KINDS = ", ".join(f"'{k.value}'" for k in EntryKind)
ENTRIES = f"""CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    list TEXT NOT NULL CHECK (list IN ('blocked', 'approved')),
    kind TEXT NOT NULL CHECK (kind IN ({_KINDS})),
    value TEXT NOT NULL CHECK (length(value) BETWEEN 1 AND 2048),
    note TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    clients TEXT NOT NULL DEFAULT '',
    expires REAL,
    added_by TEXT NOT NULL DEFAULT '',
    origin TEXT NOT NULL DEFAULT '',
    UNIQUE (kind, value)
)"""
AUDIT = """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    origin TEXT NOT NULL,
    action TEXT NOT NULL,
    list TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '',
    value TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '{}'
)"""
COLUMNS = "list, kind, value, note, created, clients, expires, added_by, origin"


def create_schema(conn: sqlite3.Connection, now: float) -> int:
    """Bring the file to ``SCHEMA_VERSION``; returns the version it had (0: new)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise ListError(f"{FILENAME} has schema version {version}; this Rampart reads {SCHEMA_VERSION}")
        has_entries = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'entries'").fetchone()
        conn.execute(AUDIT)
        if not has_entries:
            conn.execute(ENTRIES)
        elif version < 2:
            rules = _migrate_from_1(conn)
            list_audit.record(conn.cursor(), Actor("rampart", "upgrade"), now, "migrate",
                              detail={"from": version, "to": SCHEMA_VERSION, "rules": rules})
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return version


def _migrate_from_1(conn: sqlite3.Connection) -> int:
    before = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    conn.execute("ALTER TABLE entries RENAME TO entries_v1")
    conn.execute(ENTRIES)
    conn.execute(
        "INSERT INTO entries (id, list, kind, value, note, created, added_by) "
        "SELECT id, list, kind, value, note, created, ? FROM entries_v1", (MIGRATED_BY,))
    after = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    if after != before:  # cannot happen with the v1 constraints; never lose a rule silently
        raise ListError(f"migrating {FILENAME} copied {after} of {before} rules; the file is unchanged")
    conn.execute("DROP TABLE entries_v1")
    logger.info("list store migrated", extra={"from": 1, "to": SCHEMA_VERSION, "rules": after})
    return int(after)


_LISTS = {n.value: n for n in ListName}  # a dict probe: calling the Enum costs ~1 µs a row
_KINDS_BY_VALUE = {k.value: k for k in EntryKind}


def entry_of(row: tuple[object, ...]) -> Entry | None:
    """A row of ``COLUMNS`` as an Entry; None (and a warning) for one no Rampart would write."""
    ln, kind, value, note, created, clients, expires, added_by, origin = row
    try:
        return Entry(
            _LISTS[ln], _KINDS_BY_VALUE[kind], str(value), str(note), float(created),  # type: ignore[arg-type,index]
            parse_clients(str(clients).split()) if clients else (),
            None if expires is None else float(expires),  # type: ignore[arg-type]
            str(added_by), str(origin),
        )
    except (KeyError, ValueError, TypeError, ListError):
        logger.warning("skipping a malformed list row", extra={"kind": str(kind)[:16]})
        return None
