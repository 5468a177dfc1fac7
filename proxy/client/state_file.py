"""The client state's file: its schema, opening it (a bad one moved aside), and the checks
every value passes before it is stored (``proxy.client.state`` is the API on top).

Opening checks the version first (a newer client's file is refused, never touched), then
``PRAGMA quick_check`` (a truncated or damaged file), then the tables and their columns
(another program's database). What fails is moved aside with its ``-wal``/``-shm``: a
stale ``-wal`` left beside a new file would be replayed into it.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from proxy.client.digests import ALGORITHMS, Digests
from proxy.client.errors import ClientError
from proxy.clock import utcnow
from proxy.files import create_private_sqlite, open_sqlite

FILENAME = "client.sqlite"
SCHEMA_VERSION = 1
MAX_ANSWER_BYTES = 16 * 1024
MAX_KEY_CHARS = 8192  # a URL key: proxy.wire.urls.MAX_URL_LENGTH
MAX_PATH_BYTES = 4096
MAX_TEXT_CHARS = 1000  # a flag's reason, a record's threat: clipped
MAX_META_KEY = 100
MAX_META_VALUE = 64 * 1024
_HEX_LENGTH = {"sha256": 64, "sha1": 40, "md5": 32}
_HEX = re.compile(r"[0-9a-f]+")
_KIND = re.compile(r"[a-z0-9_]{1,16}")
_META_KEY = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_META_KEY}}}")
INT64 = 1 << 63

_DIGEST_COLS = "sha256 TEXT NOT NULL, sha1 TEXT, md5 TEXT"
_TABLES = {
    "answers": "kind TEXT NOT NULL, key TEXT NOT NULL, answer TEXT NOT NULL, expires_at REAL NOT NULL, "
               "PRIMARY KEY (kind, key)",
    "files": f"path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, {_DIGEST_COLS}, "
             "seen INTEGER NOT NULL",
    "flags": f"path BLOB PRIMARY KEY, {_DIGEST_COLS}, reason TEXT NOT NULL, at REAL NOT NULL",
    "quarantine": f"id TEXT PRIMARY KEY, path BLOB NOT NULL, stored BLOB NOT NULL, {_DIGEST_COLS}, "
                  "threat TEXT NOT NULL, at REAL NOT NULL, size INTEGER NOT NULL, mode INTEGER NOT NULL",
    "meta": "key TEXT PRIMARY KEY, value TEXT NOT NULL",
}
_INDEXES = ("CREATE INDEX IF NOT EXISTS answers_expiry ON answers (expires_at)",
            "CREATE INDEX IF NOT EXISTS files_seen ON files (seen)")


class Unusable(Exception):
    """The file is not this client's state (why in the message): moved aside and rebuilt."""


# ---------------------------------------------------------------- opening


def open_checked(path: Path) -> sqlite3.Connection:
    """A connection on ``path`` with the current schema; Unusable when the file is not this
    client's state, ClientError when it is a newer client's or cannot be opened at all.

    The file is first read through a read-only connection: switching it to WAL (which
    rewrites its header) waits until it is known to be this client's, so a foreign or a
    newer client's file is moved aside or refused exactly as it was.
    """
    try:
        create_private_sqlite(path)
    except OSError as e:
        raise ClientError(f"cannot open the client state {path}: {e.strerror or e}") from None
    try:
        probe = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True)
        try:
            version = check_schema(probe, path)
        finally:
            probe.close()
        conn = open_sqlite(path)
    except sqlite3.DatabaseError as e:
        raise Unusable(str(e)) from None
    try:
        if version == 0:
            create_schema(conn)
        create_private_sqlite(path)  # WAL mode has just made its files, with the database's mode
    except BaseException:
        conn.close()
        raise
    return conn


def check_schema(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version: 0 for an empty file, SCHEMA_VERSION for one with exactly
    this client's tables; ClientError for a newer client's, Unusable for anything else."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise ClientError(f"{path} was made by a newer rampart client (schema {version}; this one "
                          f"reads {SCHEMA_VERSION}); upgrade it, or use another --state-dir")
    check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    if check != "ok":
        raise Unusable(f"integrity check: {check}")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version == 0:
        if tables:
            raise Unusable(f"holds other tables: {', '.join(sorted(tables))}")
        return 0
    for name, columns in _TABLES.items():
        have = [r[1] for r in conn.execute(f"PRAGMA table_info({name})")]
        want = [c.split()[0] for c in re.sub(r", PRIMARY KEY \(.*\)", "", columns).split(", ")]
        if have != want:
            raise Unusable(f"table {name} has columns {have or 'none'}, not {want}")
    return version


def create_schema(conn: sqlite3.Connection) -> None:
    """Make the tables in a new file, unless another process did meanwhile."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if int(conn.execute("PRAGMA user_version").fetchone()[0]) == 0:
            for name, columns in _TABLES.items():
                conn.execute(f"CREATE TABLE {name} ({columns}) WITHOUT ROWID")
            for index in _INDEXES:
                conn.execute(index)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def move_aside(path: Path) -> Path:
    """Rename ``path`` and its sidecars to ``<name>.corrupt-<UTC time>``: a stale -wal left
    beside a new file would be replayed into it."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    try:
        for suffix in ("", "-wal", "-shm", "-journal"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.rename(side, aside.with_name(aside.name + suffix))
    except OSError as e:
        raise ClientError(f"cannot move the unusable client state {path} aside: {e.strerror or e}") from None
    return aside


# ---------------------------------------------------------------- checks and conversions


def check_key(key: tuple[str, str]) -> tuple[str, str]:
    kind, value = key
    if not (isinstance(kind, str) and _KIND.fullmatch(kind)):
        raise ClientError(f"answer key kind {kind!r} is not 1-16 of a-z, 0-9, _")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_KEY_CHARS:
        raise ClientError(f"answer key for {kind} must be 1..{MAX_KEY_CHARS} characters")
    return kind, value


def dump_answer(key: tuple[str, str], answer: dict[str, Any]) -> str:
    if not isinstance(answer, dict):
        raise ClientError(f"answer for {key[0]} {key[1][:100]} is not a JSON object")
    try:
        text = json.dumps(answer, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise ClientError(f"answer for {key[0]} {key[1][:100]} cannot be stored as JSON: {e}") from None
    if len(text.encode()) > MAX_ANSWER_BYTES:
        raise ClientError(f"answer for {key[0]} {key[1][:100]} is {len(text.encode())} bytes of JSON; "
                          f"at most {MAX_ANSWER_BYTES} are cached")
    return text


def load_answer(text: object) -> dict[str, Any] | None:
    """A stored answer, or None (a miss) for one that is not a JSON object of bounded size."""
    if not isinstance(text, str) or len(text) > MAX_ANSWER_BYTES:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def digest_values(digests: Digests) -> tuple[str | None, ...]:
    """The digests' columns, each checked to be lower-case hex of its kind's length."""
    values = tuple(getattr(digests, k) for k in ALGORITHMS)
    for kind, value in zip(ALGORITHMS, values):
        if (value is not None or kind == "sha256") and not (
                isinstance(value, str) and len(value) == _HEX_LENGTH[kind] and _HEX.fullmatch(value)):
            raise ClientError(f"{kind} digest {value!r} is not {_HEX_LENGTH[kind]} lower-case hex digits")
    return values


def digests_from(row: Iterable[Any] | None) -> Digests | None:
    """Digests from stored columns, or None for a missing row or one that does not check."""
    if row is None:
        return None
    digests = Digests(*row)
    try:
        digest_values(digests)
    except ClientError:
        return None
    return digests


def fs_path(path: str) -> bytes:
    raw = os.fsencode(path)
    if not 0 < len(raw) <= MAX_PATH_BYTES:
        raise ClientError(f"path {path[:100]!r} must be 1..{MAX_PATH_BYTES} bytes")
    return raw


def meta_key(key: str) -> str:
    if not _META_KEY.fullmatch(key):
        raise ClientError(f"meta key {key[:100]!r} is not 1-{MAX_META_KEY} of letters, digits, '._-'")
    return key


def clip(text: str) -> str:
    return str(text)[:MAX_TEXT_CHARS]


def finite(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ClientError(f"{what} {value!r} is not a finite number of seconds")
    return float(value)


