"""The writer's bound on queued bytes: large answers beyond it are dropped and counted, and
the bytes of those written are given back, so a later burst is taken again. Ready rows
queued among answers land in their own tables."""

from __future__ import annotations

import pytest

from proxy.logs import writer as writer_module
from proxy.logs.entries import Logged
from proxy.logs.store import LogStore, relay_row
from proxy.logs.writer import SMALL, LogWriter
from proxy.wire.http import Response
from tests.proxy.logs.conftest import EICAR_SHA256, Ask
from tests.proxy.logs.test_writer import wait_for


def weight(response: Response) -> int:
    """What the writer weighs a queued answer as (a batch: with its items by column)."""
    return len(Logged(response.body, response.items) if response.items else response.body)


def test_large_answers_past_the_byte_bound_are_dropped_then_taken_again_once_written(
        ask: Ask, store: LogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [ask("POST", "/v1/file", {"items": [{"sha256": EICAR_SHA256}] * (40 + i)})
               for i in range(5)]
    sizes = [weight(response) for _, response in answers]
    assert min(sizes) > SMALL
    monkeypatch.setattr(writer_module, "MAX_QUEUED_BYTES", sum(sizes[:3]))
    writer = LogWriter(store, interval=3600)  # not started: nothing is taken yet
    for request, response in answers:
        writer.observe(request, response, 0.001)
    # each answer is queued when the next comes: three fit, the fourth is dropped, and the
    # last is held back (one group at most, not weighed)
    assert (writer.pending(), writer.dropped) == (4, 1)
    writer.start()
    writer.stop()  # writes the three and the one held, and gives their bytes back
    assert store.items_logged() == 40 + 41 + 42 + 44
    for request, response in answers[:4]:  # the same writer takes as many again
        writer.observe(request, response, 0.001)
    assert (writer.pending(), writer.dropped) == (4, 1)


def test_the_bytes_taken_are_given_back_by_a_running_writer(
        ask: Ask, store: LogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    request, response = ask("POST", "/v1/file", {"items": [{"sha256": EICAR_SHA256}] * 60})
    monkeypatch.setattr(writer_module, "MAX_QUEUED_BYTES", 2 * weight(response))
    writer = LogWriter(store, interval=3600)
    writer.start()
    try:
        for _ in range(6):  # never more than two held: each is written before the next
            writer.observe(request, response, 0.001)
            writer._wake.set()
            wait_for(lambda: writer.pending() == 0 and writer._bytes_in == writer._bytes_out,
                     "the answer to be taken and its bytes given back")
    finally:
        writer.stop()
    assert writer.dropped == 0
    assert store.items_logged() == 6 * 60


def test_ready_rows_queued_among_answers_land_in_their_tables(ask: Ask, store: LogStore) -> None:
    writer = LogWriter(store, interval=3600)
    request, response = ask("GET", f"/v1/file/{EICAR_SHA256}")
    for i in range(10):
        writer.observe(request, response, 0.001)
        if i % 3 == 0:
            assert writer.submit("relay", relay_row(1.8e9, "https://cloud.example.test", "file", 1,
                                                    0.5, "timeout", f"attempt {i}"))
    writer.start()
    writer.stop()
    counts = store.counts()
    assert (counts["relay"], store.items_logged()) == (4, 10)
