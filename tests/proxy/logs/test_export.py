"""Exports an administrator downloads: CSV and JSON, streamed in chunks, read back whole."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from proxy.logs.export import columns, export, read_csv
from proxy.logs.search import Search, search
from proxy.logs.store import LogQueryError, LogStore, relay_row
from proxy.logs.writer import LogWriter
from tests.proxy.logs.conftest import Ask
from tests.proxy.logs.test_search import fill


@pytest.fixture
def filled(ask: Ask, store: LogStore, make_writer: Callable[..., LogWriter]) -> LogStore:
    fill(ask, make_writer())
    return store


def test_json_export_round_trip(filled: LogStore) -> None:
    chunks = list(export(filled, Search(), "json", page_rows=4))
    assert len(chunks) == 5  # "[", three pages of at most 4 rows, "]"
    assert json.loads(b"".join(chunks)) == search(filled, Search(limit=1000)).rows


def test_csv_export_round_trip(filled: LogStore) -> None:
    chunks = list(export(filled, Search(), "csv", page_rows=4))
    assert len(chunks) == 4  # the header, then three pages
    got = read_csv(b"".join(chunks).decode())
    want = search(filled, Search(limit=1000)).rows
    assert list(got[0]) == columns("query")
    assert got == [{k: _text(v) for k, v in row.items()} for row in want]


def _text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def test_an_export_takes_the_search_filters(filled: LogStore) -> None:
    rows = json.loads(b"".join(export(filled, Search(log="blocked", where=(("service", "file"),)), "json")))
    assert [r["origin"] for r in rows] == ["smart-scan", "smart-scan"]
    empty = b"".join(export(filled, Search(text="nothing like it"), "json"))
    assert json.loads(empty) == []


def test_an_export_is_bounded(filled: LogStore) -> None:
    rows = json.loads(b"".join(export(filled, Search(), "json", max_rows=3)))
    assert len(rows) == 3
    assert rows == search(filled, Search(limit=3)).rows


def test_a_formula_from_the_network_is_not_run_by_a_spreadsheet(
        store: LogStore, make_writer: Callable[..., LogWriter]) -> None:
    writer = make_writer(days=3650)  # rows of 2027 stay whatever the clock says
    for message in ('=HYPERLINK("http://evil.example")', "'=already quoted", "plain"):
        writer.submit("relay", relay_row(1.8e9, "https://cloud.example.test", "file", 1, 0.1,
                                         "bad_answer", message))
    writer.stop()
    text = b"".join(export(store, Search(log="relay"), "csv")).decode()
    lines = text.splitlines()
    assert lines[1].endswith(",plain")
    assert "\"'=HYPERLINK(\"\"http://evil.example\"\")\"" in lines[3]
    assert lines[2].endswith(",''=already quoted")
    back = [r["message"] for r in read_csv(text)]
    assert back == ["plain", "'=already quoted", '=HYPERLINK("http://evil.example")']


def test_an_unknown_format_is_refused(filled: LogStore) -> None:
    with pytest.raises(LogQueryError, match="'format'"):
        export(filled, Search(), "xml")
