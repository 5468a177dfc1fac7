"""The client's state in one SQLite file, ``STATE_DIR/client.sqlite``: cached answers, the
file index (digests by path, size and mtime), offline flags, quarantine records and a few
meta values (agent pattern etag/version, last server, location decision).

The folder is private (0700, refused when another user owns it or may write to it) and the
file and SQLite's ``-wal``/``-shm`` 0600 whatever the umask: the flags and the quarantine
say which files were found malicious where. The schema is versioned (``PRAGMA
user_version``): a file from a newer client is refused, never touched; a file that is not
this client's state (not SQLite, truncated, other tables) is moved aside as
``client.sqlite.corrupt-<UTC time>`` with its sidecars, a warning names both paths, and a
new one is made: the state is a cache, losing it costs queries, not protection.

Every table is bounded (``Limits``). At the bound the answers cache drops the answers that
expire soonest, the file index the paths remembered longest ago (both are caches); flags
and quarantine records are never dropped: a new one beyond the bound is refused with
ClientError (a dropped flag would leave a file allowed and never re-checked; a dropped
record would strand a quarantined file). Paths are stored as their bytes
(``os.fsencode``), so names that are not UTF-8 round-trip.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.client.digests import Digests
from proxy.client.errors import ClientError
from proxy.client.state_file import (
    FILENAME,
    INT64,
    MAX_META_VALUE,
    Unusable,
    check_key,
    clip,
    digest_values,
    digests_from,
    dump_answer,
    finite,
    fs_path,
    load_answer,
    meta_key,
    move_aside,
    open_checked,
)
from proxy.files import check_private_dir

logger = logging.getLogger(__name__)

_CHUNK = 250  # keys per SELECT (two parameters each)
_SAME = "size = excluded.size AND mtime_ns = excluded.mtime_ns"
_REMEMBER = ("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET "
             + "".join(f"{k} = CASE WHEN {_SAME} THEN coalesce(excluded.{k}, {k}) ELSE excluded.{k} END, "
                       for k in ("sha1", "md5"))
             + "size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, "
             "seen = excluded.seen")


@dataclass(frozen=True)
class Limits:
    """How many rows each table keeps (see the module's docstring for what the bound does)."""

    answers: int = 200_000
    files: int = 500_000
    flags: int = 100_000
    quarantine: int = 100_000
    meta: int = 256


@dataclass(frozen=True)
class Flag:
    """A file that needed a query when no server answered: re-checked once one does."""

    path: str
    digests: Digests
    reason: str
    at: float


@dataclass(frozen=True)
class QuarantineRecord:
    """A file moved into quarantine: ``stored`` is where it is now, ``path`` where it was,
    ``mode`` its permission bits there (restored with it), ``id`` 16 hex digits."""

    id: str
    path: str
    stored: str
    digests: Digests
    threat: str
    at: float
    size: int
    mode: int


class ClientState:
    """The open state file; one connection behind a lock, so threads of one process may
    share it, and processes share the file through SQLite's WAL locking."""

    def __init__(self, conn: sqlite3.Connection, path: Path, limits: Limits) -> None:
        self._conn = conn
        self.path = path
        self.limits = limits
        self._lock = threading.Lock()

    @classmethod
    def open(cls, state_dir: Path, *, limits: Limits = Limits()) -> ClientState:
        """Open (or make) ``state_dir/client.sqlite``; ClientError for a folder that is not
        private, a file from a newer client, or one the system refuses to open."""
        path = check_private_dir(Path(state_dir), "client state folder", error=ClientError) / FILENAME
        try:
            conn = open_checked(path)
        except Unusable as e:
            aside = move_aside(path)
            logger.warning("%s is not a usable client state (%s); moved aside to %s and started afresh",
                           path, e, aside)
            try:
                conn = open_checked(path)
            except Unusable as again:
                raise ClientError(f"cannot make a new client state {path}: {again}") from None
        return cls(conn, path, limits)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ClientState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self, what: str, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """The connection under the lock (in one IMMEDIATE transaction when ``write``);
        SQLite's errors become ClientError naming the file and what was being done."""
        with self._lock:
            conn = self._conn
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                yield conn
                if write:
                    conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise ClientError(f"{self.path}: cannot {what}: {e}") from e
            finally:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")

    # ------------------------------------------------------------ answers cache

    def get_answers(self, keys: Iterable[tuple[str, str]],
                    now: float) -> dict[tuple[str, str], dict[str, Any]]:
        """The cached answers among ``keys`` that have not expired at ``now``."""
        wanted = list(dict.fromkeys(check_key(k) for k in keys))
        found: dict[tuple[str, str], dict[str, Any]] = {}
        with self._tx("read cached answers", write=False) as conn:
            for i in range(0, len(wanted), _CHUNK):
                part = wanted[i:i + _CHUNK]
                sql = ("SELECT kind, key, answer FROM answers WHERE expires_at > ? AND (kind, key) IN "
                       f"(VALUES {','.join(['(?,?)'] * len(part))})")
                for kind, key, text in conn.execute(sql, [now, *(v for k in part for v in k)]):
                    answer = load_answer(text)
                    if answer is not None:
                        found[(kind, key)] = answer
        return found

    def put_answers(self, rows: Iterable[tuple[tuple[str, str], dict[str, Any], float]]) -> None:
        """Cache each (key, answer, expires_at); beyond ``limits.answers`` the answers that
        expire soonest are dropped. ClientError for an answer over MAX_ANSWER_BYTES."""
        checked = [(*check_key(key), dump_answer(key, answer), finite(expires, "expires_at"))
                   for key, answer, expires in rows]
        with self._tx("cache answers") as conn:
            conn.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)", checked)
            _trim(conn, "answers", "expires_at", self.limits.answers)

    def answer_count(self) -> int:
        return self._count("answers")

    def prune(self, now: float) -> int:
        """Drop the answers expired at ``now``; returns how many."""
        with self._tx("prune cached answers") as conn:
            return conn.execute("DELETE FROM answers WHERE expires_at <= ?", (now,)).rowcount

    # ------------------------------------------------------------ file index

    def known_file(self, path: str, size: int, mtime_ns: int, kinds: Iterable[str]) -> Digests | None:
        """The digests remembered for ``path`` if its size and mtime are those given and every
        kind in ``kinds`` is stored; None otherwise (the file is to be hashed again)."""
        if not _in_range(size, mtime_ns):
            return None
        with self._tx("read the file index", write=False) as conn:
            row = conn.execute("SELECT sha256, sha1, md5 FROM files WHERE path = ? AND size = ? "
                               "AND mtime_ns = ?", (fs_path(path), size, mtime_ns)).fetchone()
        digests = digests_from(row)
        if digests is None or any(getattr(digests, k, None) is None for k in kinds):
            return None
        return digests

    def remember_file(self, path: str, size: int, mtime_ns: int, digests: Digests) -> None:
        """Remember ``path``'s digests at this size and mtime (``remember_files`` for one)."""
        self.remember_files([(path, size, mtime_ns, digests)])

    def remember_files(self, rows: Iterable[tuple[str, int, int, Digests]]) -> None:
        """Remember each (path, size, mtime_ns, digests) in one transaction (a scan of many
        small files commits once per batch, not per file). Kinds already stored for the same
        size and mtime are kept; beyond ``limits.files`` the oldest-remembered paths go."""
        checked = [(fs_path(path), *_stat_values(path, size, mtime_ns), *digest_values(digests))
                   for path, size, mtime_ns, digests in rows]
        with self._tx("update the file index") as conn:
            seen = int(conn.execute("SELECT coalesce(max(seen), 0) FROM files").fetchone()[0])
            conn.executemany(_REMEMBER, [(*row, seen + n) for n, row in enumerate(checked, 1)])
            _trim(conn, "files", "seen", self.limits.files)

    def file_count(self) -> int:
        return self._count("files")

    # ------------------------------------------------------------ offline flags

    def flag(self, path: str, digests: Digests, reason: str, at: float) -> None:
        """Flag ``path`` for a re-check (a path flagged again is updated, not added); ClientError
        when ``limits.flags`` are held already."""
        row = (fs_path(path), *digest_values(digests), clip(reason), finite(at, "at"))
        with self._tx("flag a file") as conn:
            _refuse_full(conn, "flags", "path", row[0], self.limits.flags,
                         "flagged files; run rampart client rescan once a server answers")
            conn.execute("INSERT OR REPLACE INTO flags VALUES (?, ?, ?, ?, ?, ?)", row)

    def flags(self) -> list[Flag]:
        """Every flag, oldest first."""
        with self._tx("read the flags", write=False) as conn:
            rows = conn.execute("SELECT path, sha256, sha1, md5, reason, at FROM flags ORDER BY at, path")
            return [Flag(os.fsdecode(r[0]), d, r[4], r[5]) for r in rows if (d := digests_from(r[1:4]))]

    def clear_flag(self, path: str) -> bool:
        """Clear ``path``'s flag; False when it had none."""
        with self._tx("clear a flag") as conn:
            return conn.execute("DELETE FROM flags WHERE path = ?", (fs_path(path),)).rowcount > 0

    def flag_count(self) -> int:
        return self._count("flags")

    # ------------------------------------------------------------ quarantine records

    def add_quarantine(self, rec: QuarantineRecord) -> None:
        """Record a quarantined file; ClientError when ``limits.quarantine`` are held already."""
        if not re.fullmatch(r"[0-9a-f]{16}", rec.id):
            raise ClientError(f"quarantine record id {rec.id!r} is not 16 hex digits")
        row = (rec.id, fs_path(rec.path), fs_path(rec.stored), *digest_values(rec.digests),
               clip(rec.threat), finite(rec.at, "at"), rec.size, rec.mode & 0o7777)
        with self._tx("record a quarantined file") as conn:
            _refuse_full(conn, "quarantine", "id", rec.id, self.limits.quarantine,
                         "quarantine records; restore or delete some")
            conn.execute("INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def quarantine_records(self) -> list[QuarantineRecord]:
        """Every record, oldest first."""
        return self._records("ORDER BY at, id", ())

    def quarantine_record(self, id: str) -> QuarantineRecord | None:
        found = self._records("WHERE id = ?", (id,))
        return found[0] if found else None

    def remove_quarantine(self, id: str) -> bool:
        """Forget a record; False when there was none."""
        with self._tx("remove a quarantine record") as conn:
            return conn.execute("DELETE FROM quarantine WHERE id = ?", (id,)).rowcount > 0

    def _records(self, where: str, args: tuple[str, ...]) -> list[QuarantineRecord]:
        with self._tx("read the quarantine records", write=False) as conn:
            rows = conn.execute("SELECT id, path, stored, sha256, sha1, md5, threat, at, size, mode "
                                f"FROM quarantine {where}", args).fetchall()
        return [QuarantineRecord(r[0], os.fsdecode(r[1]), os.fsdecode(r[2]), d, r[6], r[7], r[8], r[9])
                for r in rows if (d := digests_from(r[3:6]))]

    # ------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        with self._tx("read a meta value", write=False) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (meta_key(key),)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set ``key`` (letters, digits, ``._-``); ClientError for a value over 64 KiB or a new
        key beyond ``limits.meta``."""
        if len(value) > MAX_META_VALUE:
            raise ClientError(f"meta value for {key!r} has {len(value)} characters; at most {MAX_META_VALUE}")
        with self._tx("set a meta value") as conn:
            _refuse_full(conn, "meta", "key", meta_key(key), self.limits.meta, "meta keys")
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _count(self, table: str) -> int:
        with self._tx(f"count {table}", write=False) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _in_range(size: int, mtime_ns: int) -> bool:
    """Whether a size and an mtime fit SQLite's 64-bit integers."""
    return 0 <= size < INT64 and -INT64 <= mtime_ns < INT64


def _stat_values(path: str, size: int, mtime_ns: int) -> tuple[int, int]:
    if not _in_range(size, mtime_ns):
        raise ClientError(f"{path}: size {size} or mtime {mtime_ns} out of range")
    return size, mtime_ns


def _trim(conn: sqlite3.Connection, table: str, order: str, limit: int) -> None:
    """Drop the rows first in ``order`` beyond ``limit``."""
    excess = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) - limit
    if excess > 0:
        key = "kind, key" if table == "answers" else "path"
        conn.execute(f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} "
                     f"ORDER BY {order} LIMIT ?)", (excess,))


def _refuse_full(conn: sqlite3.Connection, table: str, column: str, key: object, limit: int,
                 what: str) -> None:
    """ClientError when ``table`` holds ``limit`` rows and ``key`` is not one of them."""
    if conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ?", (key,)).fetchone():
        return
    if int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) >= limit:
        raise ClientError(f"the client state holds {limit} {what}")
