"""The list store's audit trail: every change, who made it, when and from where.

Written by ``record`` inside the transaction that makes the change, so the trail and
the lists never disagree (a refused batch leaves neither). Rows live in the ``audit``
table of ``lists.sqlite``; the oldest go first past ``MAX_ROWS``. Actions: ``add``,
``move`` (to the other list), ``edit``, ``remove``, ``import`` (one row per rule it
changed, and one for the file), ``migrate`` (the schema upgraded). ``detail`` is JSON:
the rule's fields after the change, or for an edit each changed field as
``[before, after]``; ``follow`` (a rule changed here to follow another appliance's change,
through ``proxy.shared``: who made it there, or one summary row for a large catch-up).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proxy.decide.list_rules import Actor, Entry, EntryKind, clients_text, iso_time

MAX_ROWS = 1_000_000
ACTIONS = ("add", "move", "edit", "remove", "import", "migrate", "follow")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    who: str
    origin: str
    action: str
    list: str
    kind: str
    value: str
    detail: dict[str, Any]

    def line(self) -> str:
        """One line for ``rampart lists audit``."""
        what = " ".join(p for p in (self.list, self.kind, self.value) if p)
        extra = ", ".join(f"{k} {v}" for k, v in self.detail.items() if v not in ("", None, []))
        return (f"{iso_time(self.at)}  {self.who or '?'} ({self.origin or '?'})  {self.action:<7} {what}"
                + (f"  [{extra}]" if extra else ""))

    def as_json(self) -> dict[str, Any]:
        return {"at": iso_time(self.at), "who": self.who, "origin": self.origin, "action": self.action,
                "list": self.list, "kind": self.kind, "value": self.value, "detail": self.detail}


def fields(e: Entry) -> dict[str, Any]:
    """What a rule says, as an audit detail shows it."""
    return {"clients": clients_text(e.clients), "expires": iso_time(e.expires) if e.expires else None,
            "note": e.note}


def record(cur: sqlite3.Cursor, actor: Actor, at: float, action: str, *, entry: Entry | None = None,
           detail: dict[str, Any] | None = None) -> None:
    """Add one audit row (inside the caller's transaction) and drop rows past ``MAX_ROWS``."""
    assert action in ACTIONS, action
    cur.execute(
        "INSERT INTO audit (at, who, origin, action, list, kind, value, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (at, actor.who, actor.origin, action,
         entry.list.value if entry else "", entry.kind.value if entry else "", entry.value if entry else "",
         json.dumps(detail or {}, sort_keys=True)),
    )
    last = cur.lastrowid or 0
    if last > MAX_ROWS and last % 1000 == 0:  # trimmed now and then, not on every write
        cur.execute("DELETE FROM audit WHERE id <= ?", (last - MAX_ROWS,))


def read(conn: sqlite3.Connection, *, limit: int = 100, value: str | None = None) -> list[AuditEntry]:
    """The newest ``limit`` audit rows (of one value, when given), newest first."""
    sql = "SELECT at, who, origin, action, list, kind, value, detail FROM audit"
    args: tuple[Any, ...] = ()
    if value is not None:
        sql += " WHERE value = ?"
        args = (value,)
    sql += " ORDER BY id DESC LIMIT ?"
    out = []
    for at, who, origin, action, ln, kind, val, detail in conn.execute(sql, (*args, max(0, limit))):
        try:
            parsed = json.loads(detail)
        except ValueError:
            parsed = {}
        out.append(AuditEntry(float(at), who, origin, action, ln, kind, val,
                              parsed if isinstance(parsed, dict) else {}))
    return out


FOLLOWED_ONE_BY_ONE = 100  # more rules followed at once are audited as one summary row
FOLLOWER = Actor("shared lists", "redis")


def record_followed(cur: sqlite3.Cursor, now: float, put: Sequence[Entry],
                    gone: Sequence[tuple[EntryKind, str]], local: Sequence[Entry]) -> None:
    """The rules changed to follow the shared lists, in this appliance's trail too: who made
    the change elsewhere (a removal's author is not shared), or one row for a large catch-up."""
    if not put and not gone:
        return
    if len(put) + len(gone) > FOLLOWED_ONE_BY_ONE:
        record(cur, FOLLOWER, now, "follow", detail={"changed": len(put), "removed": len(gone)})
        return
    for e in put:
        record(cur, FOLLOWER, now, "follow", entry=e, detail={"by": e.added_by, "origin": e.origin})
    before = {(e.kind, e.value): e for e in local}
    for key in gone:
        old = before.get(key)
        if old is not None:
            record(cur, FOLLOWER, now, "follow", entry=old, detail={"removed": True})
