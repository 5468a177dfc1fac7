"""The list store's side of sharing the lists (``proxy.shared.lists`` is the other side).

A ``ListMirror`` is told, inside each write transaction and before its COMMIT, which rules
that transaction touched and what each is now (None: removed); if it raises, the
transaction rolls back, so a change the shared copy refused is not made here either.
Which rows a transaction touched is kept by TEMP triggers on this connection in a TEMP
table, whatever the write function (add, edit, remove, import), so no write path can
forget to tell. ``differences`` is what following the shared copy changes here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from proxy.decide.list_rules import Entry, EntryKind
from proxy.decide.list_schema import COLUMNS, entry_of

Change = tuple[EntryKind, str, Entry | None]  # a rule touched: kind, value, what it is now


class ListMirror(Protocol):
    def push(self, changes: Sequence[Change], everything: Callable[[], list[Entry]]) -> None:
        """Store ``changes`` in the shared copy, or raise a ListError (nothing is changed).
        ``everything``: every rule as this transaction leaves them, for seeding an empty
        shared copy."""


_TRIGGERS = (
    # no key: a trigger's OR IGNORE gives way to the outer statement's ON CONFLICT (the store's
    # upsert), so duplicates are kept here and dropped when read
    "CREATE TEMP TABLE IF NOT EXISTS touched (kind TEXT NOT NULL, value TEXT NOT NULL)",
    "CREATE TEMP TRIGGER IF NOT EXISTS touched_insert AFTER INSERT ON main.entries BEGIN "
    "INSERT INTO touched VALUES (new.kind, new.value); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS touched_update AFTER UPDATE ON main.entries BEGIN "
    "INSERT INTO touched VALUES (old.kind, old.value); "
    "INSERT INTO touched VALUES (new.kind, new.value); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS touched_delete AFTER DELETE ON main.entries BEGIN "
    "INSERT INTO touched VALUES (old.kind, old.value); END",
)


def watch_touched(conn: sqlite3.Connection) -> None:
    """Keep, on this connection, which rules each transaction touches."""
    for sql in _TRIGGERS:
        conn.execute(sql)


def take_touched(cur: sqlite3.Cursor) -> list[Change]:
    """The rules this transaction touched, as they are now; forgets them."""
    cols = ", ".join(f"e.{c.strip()}" for c in COLUMNS.split(","))
    rows = cur.execute(
        f"SELECT t.kind, t.value, e.kind IS NOT NULL, {cols} FROM "
        "(SELECT DISTINCT kind, value FROM temp.touched) t "
        "LEFT JOIN main.entries e ON e.kind = t.kind AND e.value = t.value").fetchall()
    cur.execute("DELETE FROM temp.touched")
    out: list[Change] = []
    for kind, value, present, *row in rows:
        entry = entry_of(tuple(row)) if present else None
        if present and entry is None:
            continue  # a row no Rampart writes: not shared
        out.append((EntryKind(kind), str(value), entry))
    return out


def forget_touched(cur: sqlite3.Cursor) -> None:
    cur.execute("DELETE FROM temp.touched")


def differences(local: Sequence[Entry], shared: Mapping[tuple[EntryKind, str], Entry]
                ) -> tuple[list[Entry], list[tuple[EntryKind, str]]]:
    """What to put and what to delete here so the local rules equal ``shared``."""
    have = {(e.kind, e.value): e for e in local}
    put = [e for key, e in shared.items() if have.get(key) != e]
    gone = [key for key in have if key not in shared]
    return put, gone
