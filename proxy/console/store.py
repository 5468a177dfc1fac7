"""``DATA_DIR/console.sqlite``: users, API keys and browser sessions, shared by the server and
``rampart admin``.

Opened like the list store (``proxy.decide.lists``): the file and its ``-wal``/``-shm``
side files are made 0600 before SQLite touches them, WAL mode so the CLI and the server
can both write, every change one ``BEGIN IMMEDIATE`` transaction. Secrets never reach
this file: passwords as scrypt hashes, keys and session tokens as SHA-256 digests.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.clock import iso
from proxy.console.errors import BadInput, StoreError
from proxy.files import check_private_dir, create_private_sqlite, immediate, open_sqlite

FILENAME = "console.sqlite"
SCHEMA_VERSION = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
"""A user or key name: 1 to 64 letters, digits and ``._@-``, starting with a letter or digit."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    role TEXT NOT NULL,
    password TEXT NOT NULL,
    created REAL NOT NULL,
    changed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    role TEXT NOT NULL,
    digest TEXT NOT NULL,
    created REAL NOT NULL,
    created_by TEXT NOT NULL,
    expires REAL,
    last_used REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    client TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_use ON sessions(last_seen);
"""


def when(t: float | None) -> str | None:
    """A stored time (seconds since the epoch) as ISO-8601 UTC to the second; None stays None."""
    return None if t is None else iso(datetime.fromtimestamp(int(t), UTC))


def check_name(value: object, field: str) -> str:
    """``value`` if it is a valid user or key name (``NAME``), else BadInput naming ``field``."""
    if not isinstance(value, str) or not value:
        raise BadInput(field, "a name is required")
    if not NAME.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise BadInput(field, f"{shown!r} is not a valid name: 1 to 64 letters, digits and . _ @ -, "
                              "starting with a letter or digit")
    return value


class ConsoleStore:
    """The open console database; ``now`` is the clock every record's time comes from."""

    def __init__(self, conn: sqlite3.Connection, now: Callable[[], float]) -> None:
        self._conn = conn
        self.now = now
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: Path, *, now: Callable[[], float] = time.time) -> ConsoleStore:
        """Open (creating 0600 if missing) ``data_dir/console.sqlite``; the folder is checked private."""
        path = check_private_dir(Path(data_dir)) / FILENAME
        try:
            create_private_sqlite(path)
        except OSError as e:
            raise StoreError(f"cannot open {FILENAME}: {e.strerror or e}") from None
        try:
            conn = open_sqlite(path)
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise StoreError(f"{FILENAME} was made by a newer rampart (schema {version}); "
                                 "upgrade rampart to use it")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open {FILENAME}: {e}") from e
        try:
            create_private_sqlite(path)  # WAL mode has just made its files, with the database's mode
        except OSError as e:
            conn.close()
            raise StoreError(f"cannot open {FILENAME}: {e.strerror or e}") from None
        return cls(conn, now)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ConsoleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Cursor]:
        """One transaction: everything done on the cursor is committed together, or nothing."""
        with self._lock:
            try:
                with immediate(self._conn) as cur:
                    yield cur
            except sqlite3.Error as e:
                raise StoreError(f"{FILENAME} refused the change: {e}") from e

    def read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """The rows of one query."""
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {FILENAME}: {e}") from e
