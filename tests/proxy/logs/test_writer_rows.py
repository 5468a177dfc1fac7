"""What the writer puts in logs.sqlite is what a plain reading of each answer gives: the
fast path (``Answers.batch``, shapes, memo) changes the cost, never a row."""

from __future__ import annotations

from typing import Any

from proxy.logs.clients import ClientMask
from proxy.logs.store import COLUMNS, LogStore
from proxy.logs.writer import LogWriter
from proxy.wire.http import Request, Response
from tests.proxy.logs.test_entries_batch import entries_of, everything, plain


def stored(store: LogStore) -> list[tuple[object, ...]]:
    conn = store.connect()
    try:
        return conn.execute(f"SELECT {', '.join(COLUMNS['query'])} FROM query ORDER BY id").fetchall()
    finally:
        conn.close()


def held_back(entries: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The entries as ``LogWriter.observe`` queues them: a run of identical answers (the
    same body object to the same client in the same second) is one, with its count."""
    out: list[list[Any]] = []
    for t, client, target, body, seconds in entries:
        last = out[-1] if out else None
        if last is not None and last[3] is body and int(last[0]) == int(t) and last[1] == client:
            last[4] += seconds
            last[5] += 1
        else:
            out.append([t, client, target, body, seconds, 1])
    return [tuple(e) for e in out]


def test_the_rows_written_equal_a_plain_reading_of_each_answer(store: LogStore) -> None:
    entries = entries_of(everything())
    now = [0.0]
    mask = ClientMask("full", ["10.0.0.0/8=truncated"])
    writer = LogWriter(store, clients=mask, capacity=len(entries), batch=97, interval=3600,
                       clock=lambda: now[0])
    responses: dict[int, Response] = {}  # one response per body object, as the routes' memo
    for t, client, target, body, seconds in entries:
        now[0] = t
        response = responses.setdefault(id(body), Response(200, body))
        writer.observe(Request("GET", target, [], b"", client), response, seconds)
    writer.start()
    writer.stop()
    assert writer.dropped == 0 and writer.lost == 0
    queued = held_back(entries)
    expected: list[tuple[object, ...]] = []
    for i in range(0, len(queued), 97):  # one batch at a time: groups end with their batch
        expected += plain(queued[i:i + 97], mask)
    assert stored(store) == expected
    assert writer.written == len(expected) > 400
