"""One SQLite write transaction, as every store here takes it.

``immediate(conn)`` yields a new cursor inside ``BEGIN IMMEDIATE``: the body's work is
committed together, or rolled back on any error (then re-raised), and the cursor is
closed either way. A store turns ``sqlite3.Error`` into its own error around it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Cursor]:
    cur = conn.cursor()
    try:
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
    finally:
        cur.close()
