"""The log database, ``DATA_DIR/logs.sqlite`` (SQLite, WAL, 0600 like ``proxy.decide.lists``).

Tables, one per log (``COLUMNS`` names their columns after ``id``; ``t`` is Unix time):

- ``query``: one row per answered item: client (as ``log_clients`` says), latency, how
  many identical answers the row stands for (``count``: the same answer to the same
  client within one second and one writer batch is one row, latency their mean), service, item
  (a digest, a domain or IP, or a URL without its query, clipped), verdict (a file's
  verdict or a URL's or domain's rating), action (``block``/``allow`` when the request
  named a policy), source, origin (which list or pattern decided: ``entries.ORIGINS``),
  matched entry, threat or category, latency, and whether it was blocked;
- ``blocked``: not a table but the Blocked Access log, the view of ``query`` rows with
  ``blocked = 1`` (by ``origin``: blocked list, Web Blocking List, Suspicious URLs, ...);
- ``updates``: one row per pattern update attempt (the updater's result);
- ``relay``: one row per failed upstream attempt to a cloud endpoint;
- ``audit``: who did what, from where (``audit``): written at once, never queued or
  dropped, and kept by rows only (``log_max_rows``), not by days.

Each thread uses its own connection (``connect``): the writer thread one, each search
one, ``audit`` one under a lock. Retention (``enforce_retention``) deletes in bounded
chunks so the writer never stalls long behind it.
"""

from __future__ import annotations

import itertools
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError, RampartError
from proxy.files import check_private_dir, create_private_sqlite, open_sqlite

logger = logging.getLogger(__name__)

FILENAME = "logs.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT = 10.0  # seconds a connection waits for another's write lock
INSERT_ROWS = 64  # rows per INSERT statement, at most (13 columns: far below SQLite's 999 variables)
RETENTION_CHUNK = 20_000  # rows deleted per statement: the writer drains between chunks
MAX_AUDIT_TEXT = 2000  # characters of an audit row's actor, action, detail (each), clipped


class LogError(RampartError):
    """The log database cannot be opened or written."""

    code = "log_error"


class LogQueryError(ConfigError):
    """A search or export the logs refuse (a bad filter, regular expression or page); names
    the field. HTTP 400 for the admin API, exit 2 for the command line."""

    status = 400
    code = "bad_log_query"


COLUMNS: dict[str, tuple[str, ...]] = {
    "query": ("t", "client", "latency_ms", "count", "service", "item", "verdict", "action", "source",
              "origin", "matched", "threat", "blocked"),
    "updates": ("t", "ok", "changed", "version", "path", "bytes", "seconds", "reason", "message"),
    "relay": ("t", "endpoint", "service", "items", "latency_ms", "kind", "message"),
    "audit": ("t", "actor", "action", "detail", "client", "ok"),
}
LOGS = ("query", "blocked", "updates", "relay", "audit")
"""The logs a search may name: the tables and the Blocked Access view."""
TABLE_OF = {"query": "query", "blocked": "query", "updates": "updates", "relay": "relay",
            "audit": "audit"}

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS query (
        id INTEGER PRIMARY KEY, t REAL NOT NULL, client TEXT NOT NULL, latency_ms REAL NOT NULL,
        count INTEGER NOT NULL, service TEXT NOT NULL, item TEXT NOT NULL, verdict TEXT NOT NULL,
        action TEXT NOT NULL, source TEXT NOT NULL, origin TEXT NOT NULL, matched TEXT NOT NULL,
        threat TEXT NOT NULL, blocked INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS query_t ON query (t)",
    "CREATE VIEW IF NOT EXISTS blocked AS SELECT * FROM query WHERE blocked = 1",
    """CREATE TABLE IF NOT EXISTS updates (
        id INTEGER PRIMARY KEY, t REAL NOT NULL, ok INTEGER NOT NULL, changed INTEGER NOT NULL,
        version TEXT NOT NULL, path TEXT NOT NULL, bytes INTEGER NOT NULL, seconds REAL NOT NULL,
        reason TEXT NOT NULL, message TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS updates_t ON updates (t)",
    """CREATE TABLE IF NOT EXISTS relay (
        id INTEGER PRIMARY KEY, t REAL NOT NULL, endpoint TEXT NOT NULL, service TEXT NOT NULL,
        items INTEGER NOT NULL, latency_ms REAL NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS relay_t ON relay (t)",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY, t REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        detail TEXT NOT NULL, client TEXT NOT NULL, ok INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS audit_t ON audit (t)",
)


def insert_sql(table: str, rows: int = 1) -> str:
    cols = COLUMNS[table]
    one = f"({', '.join('?' * len(cols))})"
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES {', '.join([one] * rows)}"


_SQL: dict[tuple[str, int], str] = {}


def insert_many(conn: sqlite3.Connection, table: str, rows: Sequence[Sequence[Any]]) -> None:
    """Insert ``rows`` a few statements of up to ``INSERT_ROWS`` rows each (sizes halving
    down to 1, so a handful of cached statements serve any count).

    Not ``executemany``: the sqlite3 module lets go of the GIL for every row it steps,
    and a writer thread beside a busy event loop then waits a whole switch interval
    (5 ms) to get it back, every row; one statement for many rows lets go once.
    """
    i, n, size = 0, len(rows), INSERT_ROWS
    while i < n:
        while size > n - i:
            size //= 2
        key = (table, size)
        sql = _SQL.get(key)
        if sql is None:
            sql = _SQL[key] = insert_sql(table, size)
        conn.execute(sql, list(itertools.chain.from_iterable(rows[i:i + size])))
        i += size


_UNSAFE = re.compile("[\r\n\x00]")


def clip(value: object, limit: int) -> str:
    """``value`` as one line of at most ``limit`` characters (logs hold text, bounded); None
    is empty. Quick for the usual short clean text: the writer calls it for every field."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    if len(text) > limit:
        text = text[:limit]
    return _UNSAFE.sub(" ", text) if _UNSAFE.search(text) else text


class LogStore:
    """The database at ``path``; opened once, then each thread ``connect``s its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._audit: sqlite3.Connection | None = None

    @classmethod
    def open(cls, data_dir: Path) -> LogStore:
        """The store in ``data_dir`` (checked private), created with its schema if new."""
        path = check_private_dir(data_dir) / FILENAME
        try:
            create_private_sqlite(path)
        except OSError as e:
            raise LogError(f"cannot open the log store {path}: {e.strerror or e}") from None
        store = cls(path)
        conn = store.connect()
        try:
            _create_schema(conn)
        except sqlite3.Error as e:
            raise LogError(f"cannot open the log store {path}: {e}") from e
        finally:
            conn.close()
        return store

    def connect(self, *, timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
        """A new connection (autocommit; callers open their own transactions)."""
        try:
            conn = open_sqlite(self.path, timeout=timeout)
        except sqlite3.Error as e:
            raise LogError(f"cannot open the log store {self.path}: {e}") from e
        return conn

    def close(self) -> None:
        with self._lock:
            if self._audit is not None:
                self._audit.close()
                self._audit = None

    # ------------------------------------------------------------ writing

    def audit(self, actor: str, action: str, detail: str = "", client: str = "", *,
              ok: bool = True, now: float | None = None) -> None:
        """Record an administrator's action now (not queued: an audit row is never dropped).

        ``actor`` is the account or API key name, ``action`` what was done (e.g.
        ``lists.add``), ``detail`` what it changed, ``client`` the address it came from
        (kept whole, whatever ``log_clients`` says), ``ok`` False for a refused attempt
        (a failed login). Raises LogError when the database refuses the row.
        """
        row = (time.time() if now is None else now, clip(actor, MAX_AUDIT_TEXT),
               clip(action, MAX_AUDIT_TEXT), clip(detail, MAX_AUDIT_TEXT), clip(client, 100), int(ok))
        with self._lock:
            try:
                if self._audit is None:
                    self._audit = self.connect()
                self._audit.execute(insert_sql("audit"), row)
            except sqlite3.Error as e:
                raise LogError(f"cannot write the admin audit to {self.path}: {e}") from e

    def record_update(self, result: Mapping[str, Any]) -> None:
        """Record an update result now (``UpdateResult.to_json()``): for ``rampart update
        now``, which runs its own updater beside the server's. Raises LogError."""
        with self._lock:
            try:
                if self._audit is None:
                    self._audit = self.connect()
                self._audit.execute(insert_sql("updates"), update_row(result))
            except sqlite3.Error as e:
                raise LogError(f"cannot write the update log to {self.path}: {e}") from e

    def write(self, conn: sqlite3.Connection, rows: Mapping[str, Sequence[Sequence[Any]]]) -> int:
        """Insert each table's rows in one transaction; the number of rows written."""
        written = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table, batch in rows.items():
                insert_many(conn, table, batch)
                written += len(batch)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return written

    # ------------------------------------------------------------ retention

    def enforce_retention(self, conn: sqlite3.Connection, *, days: int, max_rows: int,
                          now: float | None = None, chunk: int = RETENTION_CHUNK) -> tuple[int, bool]:
        """Delete rows older than ``days`` (all logs but the audit) and the oldest rows past
        ``max_rows`` (each table); at most ``chunk`` a statement. Returns (rows deleted,
        whether more are due: call again)."""
        cutoff = (time.time() if now is None else now) - days * 86400.0
        deleted, more = 0, False
        for table in COLUMNS:
            if table != "audit":
                n = conn.execute(
                    f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE t < ?"
                    " ORDER BY t LIMIT ?)", (cutoff, chunk)).rowcount
                deleted += n
                more = more or n >= chunk
            lo, hi = conn.execute(f"SELECT min(id), max(id) FROM {table}").fetchone()
            if hi is not None and hi - lo + 1 > max_rows:  # ids are dense at the new end
                cut = min(hi - max_rows, lo + chunk - 1)
                deleted += conn.execute(f"DELETE FROM {table} WHERE id <= ?", (cut,)).rowcount
                more = more or cut < hi - max_rows
        return deleted, more

    def items_logged(self) -> int:
        """Answered items the query log stands for (its rows' ``count``s)."""
        conn = self.connect()
        try:
            return int(conn.execute("SELECT coalesce(sum(count), 0) FROM query").fetchone()[0])
        finally:
            conn.close()

    def counts(self) -> dict[str, int]:
        """Rows in each table (for status and tests)."""
        conn = self.connect()
        try:
            return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in COLUMNS}
        finally:
            conn.close()


def update_row(result: Mapping[str, Any], now: float | None = None) -> tuple[Any, ...]:
    """An ``updates`` row from an update result (``UpdateResult.to_json()``'s keys)."""
    at = result.get("at")
    t = float(at) if isinstance(at, int | float) and at > 0 else (time.time() if now is None else now)
    return (t, int(bool(result.get("ok"))), int(bool(result.get("changed"))),
            clip(result.get("version") or "", 64), clip(result.get("path") or "", 32),
            _int(result.get("bytes")), _float(result.get("seconds")),
            clip(result.get("reason") or "", 64), clip(result.get("message") or "", 500))


def relay_row(t: float, endpoint: str, service: str, items: int, seconds: float, kind: str,
              message: str) -> tuple[Any, ...]:
    return (t, clip(endpoint, 300), clip(service, 16), int(items), round(seconds * 1000, 3),
            clip(kind, 32), clip(message, 500))


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _create_schema(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LogError(f"{FILENAME} has schema version {version}; this Rampart reads {SCHEMA_VERSION}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
