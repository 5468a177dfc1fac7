"""Searching the logs: filters, text or a regular expression, pages, newest first.

A ``Search`` is checked when it is made (``Search(...)`` or ``Search.from_params`` for an
HTTP query string's parameters): a bad value is a ``LogQueryError`` naming the field,
never a crash. Filters: a time range (``since``, ``until``: Unix seconds or ISO-8601),
exact values of the log's ``FILTERS`` columns (``client`` also matches the address's
truncated network, so it finds rows kept under ``log_clients = "truncated"``), ``text``
(a case-insensitive substring of the log's ``TEXT`` columns) and ``regex`` (a regular
expression, at most ``MAX_REGEX`` characters, compiled once: RE2 when installed, which
runs in linear time, else Python's ``re``; searched in the same columns). A search runs
at most ``SEARCH_SECONDS``; a longer one is refused, asking for a narrower search.

Rows come newest first (time, then id). Page with ``limit`` and ``offset``, or with the
``next`` cursor of the previous page (``cursor``), which stays right while rows are added.
Calls block on SQLite: an event loop runs them in a thread.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy.clock import parse_iso
from proxy.logs.clients import truncate
from proxy.logs.store import COLUMNS, LOGS, TABLE_OF, LogQueryError, LogStore

try:  # linear-time matching when google-re2 is installed
    import re2

    _RE2_OPTIONS = re2.Options()
    _RE2_OPTIONS.log_errors = False
    _RE2_OPTIONS.max_mem = 8 << 20
except ImportError:  # pragma: no cover - depends on the installation
    re2 = None

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_OFFSET = 100_000
MAX_VALUE = 256  # characters of a filter value or a text search
MAX_REGEX = 256
SEARCH_SECONDS = 5.0
_QUERY_FILTERS = ("client", "service", "source", "verdict", "action", "origin", "blocked")
FILTERS: dict[str, tuple[str, ...]] = {
    "query": _QUERY_FILTERS, "blocked": _QUERY_FILTERS,
    "updates": ("version", "reason", "ok", "changed"),
    "relay": ("endpoint", "service", "kind"),
    "audit": ("actor", "action", "client", "ok"),
}
_QUERY_TEXT = ("item", "matched", "threat", "client")
TEXT: dict[str, tuple[str, ...]] = {
    "query": _QUERY_TEXT, "blocked": _QUERY_TEXT,
    "updates": ("version", "reason", "message"),
    "relay": ("endpoint", "kind", "message"),
    "audit": ("actor", "action", "detail", "client"),
}
FLAGS = frozenset({"blocked", "ok", "changed"})
PARAMS = ("log", "since", "until", "text", "regex", "limit", "offset", "cursor")


def _bad(name: str, message: str) -> LogQueryError:
    return LogQueryError(f"log search field {name!r}: {message}")


def compile_regex(pattern: str) -> Callable[[str], bool]:
    """``pattern`` compiled once, as a test of one text; LogQueryError when it is unusable."""
    if len(pattern) > MAX_REGEX:
        raise _bad("regex", f"longer than {MAX_REGEX} characters")
    try:
        if re2 is not None:
            rx: Any = re2.compile(pattern, options=_RE2_OPTIONS)
        else:  # pragma: no cover - depends on the installation
            rx = re.compile(pattern)
    except Exception as e:  # re.error, re2.error: both name the problem
        detail = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else e
        raise _bad("regex", f"{pattern[:60]!r} is not a regular expression ({detail})") from None
    search = rx.search
    return lambda text: text is not None and search(text) is not None


def parse_time(name: str, value: object) -> float:
    """Unix seconds or an ISO-8601 time (UTC when no zone is given)."""
    if isinstance(value, bool):
        raise _bad(name, "want Unix seconds or an ISO-8601 time")
    if isinstance(value, int | float):
        t = float(value)
    else:
        text = str(value).strip()[:64]
        try:
            t = float(text)
        except ValueError:
            try:
                t = parse_iso(text).timestamp()
            except ValueError:
                raise _bad(name, f"{text!r} is neither Unix seconds nor an ISO-8601 time") from None
    if not 0 <= t < 1e11:
        raise _bad(name, "out of range")
    return t


def _int(name: str, value: object, lo: int, hi: int) -> int:
    try:
        n = int(str(value).strip()[:20]) if not isinstance(value, int) else value
    except ValueError:
        raise _bad(name, f"{str(value)[:40]!r} is not a whole number") from None
    if isinstance(value, bool) or not lo <= n <= hi:
        raise _bad(name, f"want {lo} to {hi}")
    return n


def _cursor(value: str) -> tuple[float, int]:
    t, sep, rowid = value.partition(":")
    try:
        if sep:
            return float(t), int(rowid)
    except ValueError:
        pass
    raise _bad("cursor", "not a cursor this log gave (use the 'next' of the previous page)")


@dataclass(frozen=True)
class Search:
    log: str = "query"
    since: float | None = None
    until: float | None = None
    where: tuple[tuple[str, str], ...] = ()
    """(column, value): exact values of the log's ``FILTERS`` columns."""
    text: str = ""
    regex: str = ""
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    cursor: str | None = None
    _matcher: Callable[[str], bool] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.log not in LOGS:
            raise _bad("log", f"{str(self.log)[:40]!r} is not one of {', '.join(LOGS)}")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise _bad("until", "must be later than since")
        for name, value in self.where:
            if name not in FILTERS[self.log]:
                raise _bad(name, f"not a filter of the {self.log} log (filters: "
                                 f"{', '.join(FILTERS[self.log])})")
            if not isinstance(value, str) or len(value) > MAX_VALUE:
                raise _bad(name, f"want text of at most {MAX_VALUE} characters")
            if name in FLAGS and value not in ("true", "false"):
                raise _bad(name, "want true or false")
        if len(self.text) > MAX_VALUE:
            raise _bad("text", f"longer than {MAX_VALUE} characters")
        _int("limit", self.limit, 1, MAX_LIMIT)
        _int("offset", self.offset, 0, MAX_OFFSET)
        if self.cursor is not None:
            _cursor(self.cursor)
        if self.regex:
            object.__setattr__(self, "_matcher", compile_regex(self.regex))

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Search:
        """A search from query-string parameters (``log``, ``since``, ``until``, ``text``,
        ``regex``, ``limit``, ``offset``, ``cursor`` and the log's filters)."""
        log = params.get("log", "query")
        if log not in LOGS:
            raise _bad("log", f"{str(log)[:40]!r} is not one of {', '.join(LOGS)}")
        where = []
        for name, value in params.items():
            if name in PARAMS:
                continue
            if name not in FILTERS[log]:
                raise _bad(name[:40], f"not a parameter of the {log} log (parameters: "
                                      f"{', '.join((*PARAMS, *FILTERS[log]))})")
            where.append((name, value))
        since, until = params.get("since"), params.get("until")
        return cls(
            log=log, since=None if since in (None, "") else parse_time("since", since),
            until=None if until in (None, "") else parse_time("until", until),
            where=tuple(where), text=params.get("text", ""), regex=params.get("regex", ""),
            limit=_int("limit", params.get("limit", DEFAULT_LIMIT), 1, MAX_LIMIT),
            offset=_int("offset", params.get("offset", 0), 0, MAX_OFFSET),
            cursor=params.get("cursor") or None,
        )

    def sql(self, *, cursor: str | None = None, limit: int | None = None,
            offset: int | None = None) -> tuple[str, list[Any]]:
        """The SELECT and its arguments (``regex`` calls the ``rampart_rx`` function); the
        page (``cursor``, ``limit``, ``offset``) is this search's unless given."""
        cursor = self.cursor if cursor is None else cursor
        cols = ("id", *COLUMNS[TABLE_OF[self.log]])
        conds: list[str] = ["1"]
        args: list[Any] = []
        if self.since is not None:
            conds.append("t >= ?")
            args.append(self.since)
        if self.until is not None:
            conds.append("t < ?")
            args.append(self.until)
        for name, value in self.where:
            if name in FLAGS:
                conds.append(f"{name} = ?")
                args.append(int(value == "true"))
            elif name == "client" and truncate(value) not in ("", value):
                conds.append("client IN (?, ?)")
                args += [value, truncate(value)]
            else:
                conds.append(f"{name} = ?")
                args.append(value)
        if cursor is not None:
            conds.append("(t, id) < (?, ?)")
            args += list(_cursor(cursor))
        text_cols = TEXT[self.log]
        if self.text:
            conds.append("(" + " OR ".join(f"instr(lower({c}), ?) > 0" for c in text_cols) + ")")
            args += [self.text.lower()] * len(text_cols)
        if self.regex:
            conds.append("(" + " OR ".join(f"rampart_rx({c})" for c in text_cols) + ")")
        sql = (f"SELECT {', '.join(cols)} FROM {self.log} WHERE {' AND '.join(conds)}"
               " ORDER BY t DESC, id DESC LIMIT ? OFFSET ?")
        return sql, [*args, self.limit if limit is None else limit,
                     self.offset if offset is None else offset]

    def rows(self, conn: sqlite3.Connection, *, seconds: float = SEARCH_SECONDS,
             **page: Any) -> list[tuple[Any, ...]]:
        """The raw rows of this page, or of ``page`` (``sql``'s): id first, then ``COLUMNS``."""
        if self._matcher is not None:
            conn.create_function("rampart_rx", 1, self._matcher, deterministic=True)
        deadline = time.monotonic() + seconds
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        sql, args = self.sql(**page)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            if "interrupt" in str(e):
                raise LogQueryError(f"the log search ran longer than {seconds:g} s; narrow it"
                                    " (a time range, a client, a service)") from None
            raise
        finally:
            conn.set_progress_handler(None, 0)


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next: str | None
    """The cursor of the next (older) page; None when this one was the last."""

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "next": self.next}


def row_dict(log: str, row: tuple[Any, ...]) -> dict[str, Any]:
    """A row as the API and the exports give it: ``id``, ``time`` (ISO-8601 UTC, ms), columns."""
    out: dict[str, Any] = {"id": row[0], "time": iso_ms(row[1])}
    for name, value in zip(COLUMNS[TABLE_OF[log]][1:], row[2:]):
        out[name] = bool(value) if name in FLAGS else value
    return out


def iso_ms(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def search(store: LogStore, query: Search) -> Page:
    """One page of ``query``'s rows, newest first."""
    conn = store.connect()
    try:
        raw = query.rows(conn)
    finally:
        conn.close()
    more = len(raw) == query.limit
    return Page([row_dict(query.log, r) for r in raw], next_cursor(raw) if more and raw else None)


def pages(store: LogStore, query: Search, *, page_rows: int = MAX_LIMIT) -> Iterator[list[tuple[Any, ...]]]:
    """Every row ``query``'s filters select (from its cursor, if any; its limit and offset
    ignored), a page at a time, by cursor, each page its own short read (a long export
    holds no transaction open)."""
    conn = store.connect()
    try:
        cursor: str | None = None
        while True:
            raw = query.rows(conn, cursor=cursor, limit=page_rows, offset=0)
            if raw:
                yield raw
            if len(raw) < page_rows:
                return
            cursor = next_cursor(raw)
    finally:
        conn.close()


def next_cursor(raw: list[tuple[Any, ...]]) -> str:
    """The cursor after the last of ``raw`` (id, t, ...): older rows than it."""
    return f"{raw[-1][1]!r}:{raw[-1][0]}"
