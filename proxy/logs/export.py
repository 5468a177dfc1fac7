"""Exporting a log search as CSV or JSON, streamed: a chunk of bytes per page of rows.

``export(store, search, "csv" | "json")`` yields chunks (one per ``page_rows`` rows) and
stops after ``max_rows`` rows, so neither the server nor the reader holds a whole log in
memory; the admin API sends each chunk as it comes (iterating in a thread: each page is
a SQLite read). Rows are ``search.row_dict``'s, newest first.

- CSV: a header line naming the columns, then one line per row (RFC 4180 quoting). A
  text cell that a spreadsheet would run as a formula (starting with ``=``, ``+``,
  ``-``, ``@``, a tab or a carriage return: an item or a threat name comes from the
  network) is written with a leading ``'``, as OWASP advises; ``read_csv`` undoes it.
- JSON: one array of row objects, written a page at a time.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from proxy.logs.search import MAX_LIMIT, Search, pages, row_dict
from proxy.logs.store import COLUMNS, TABLE_OF, LogQueryError, LogStore

FORMATS = ("csv", "json")
MAX_EXPORT_ROWS = 1_000_000
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json"}
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def columns(log: str) -> list[str]:
    """The fields of an exported row of ``log``, in order."""
    return ["id", "time", *COLUMNS[TABLE_OF[log]][1:]]


def export(store: LogStore, query: Search, fmt: str, *, max_rows: int = MAX_EXPORT_ROWS,
           page_rows: int = MAX_LIMIT) -> Iterator[bytes]:
    """``query``'s rows (its filters; its paging ignored) as ``fmt`` chunks."""
    if fmt not in FORMATS:
        raise LogQueryError(f"log export field 'format': {fmt[:20]!r} is not one of {', '.join(FORMATS)}")
    rows = _bounded(store, query, max_rows, page_rows)
    return _csv(query.log, rows) if fmt == "csv" else _json(rows)


def _bounded(store: LogStore, query: Search, max_rows: int,
             page_rows: int) -> Iterator[list[dict[str, Any]]]:
    left = max_rows
    for raw in pages(store, query, page_rows=min(page_rows, max_rows)):
        page = [row_dict(query.log, r) for r in raw[:left]]
        yield page
        left -= len(page)
        if left <= 0:
            return


def _csv(log: str, pages_of: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    names = columns(log)
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    out.writerow(names)
    yield buf.getvalue().encode()
    for page in pages_of:
        buf.seek(0)
        buf.truncate()
        out.writerows([_cell(row[n]) for n in names] for row in page)
        yield buf.getvalue().encode()


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.lstrip("'").startswith(_FORMULA):
        return "'" + value  # also "'=..." itself, so read_csv gives back exactly what was kept
    return value


def _json(pages_of: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    yield b"["
    first = True
    for page in pages_of:
        if not page:
            continue
        text = ",\n".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) for row in page)
        yield (("\n" if first else ",\n") + text).encode()
        first = False
    yield b"\n]\n"


def read_csv(text: str) -> list[dict[str, str]]:
    """An exported CSV read back (formula guards removed), each row a dict of texts."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return [{k: (v[1:] if v.startswith("'") and v.lstrip("'").startswith(_FORMULA) else v)
             for k, v in row.items()} for row in reader]
