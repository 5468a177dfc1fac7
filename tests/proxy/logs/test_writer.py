"""The writer as the appliance relies on it: off the request path, bounded, dropping log
entries (counted) rather than holding up a query, storing clients as configured, keeping
the logs within their retention, and writing everything queued when it stops."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from proxy.logs.clients import ClientMask
from proxy.logs.search import Search, search
from proxy.logs.store import LogStore, relay_row
from proxy.logs.writer import LogWriter
from tests.proxy.logs.conftest import EICAR_SHA256, Ask

DAY = 86400.0


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_blocked_writer_drops_and_counts_entries_while_observe_returns(
        ask: Ask, store: LogStore, make_writer: Callable[..., LogWriter]) -> None:
    writer = make_writer(capacity=100, interval=0.01, retention_every=3600)
    request, response = ask("GET", f"/v1/file/{EICAR_SHA256}")
    wait_for(lambda: writer.retention_passes == 1, "the first retention pass (it writes too)")
    blocker = store.connect(timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database: the drain waits
    try:
        writer.observe(request, response, 0.001)
        wait_for(lambda: writer.pending() == 0, "the writer to take the first entry and block")
        # 150 clients (identical answers to one client would be one entry): the queue holds
        # 100 and the last is held back as a group, so 49 must be dropped, none may wait
        for i in range(150):
            writer.observe(*ask("GET", f"/v1/file/{EICAR_SHA256}", client=f"10.0.{i}.1"), 0.001)
        assert writer.pending() == 101
        assert writer.dropped == 49
        assert ({"reason": "queue_full"}, 49.0) in writer.dropped_samples()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    writer.stop()
    assert writer.lost == 0
    assert store.items_logged() == 102  # the one in flight, the 100 queued and the one held


def test_a_product_asking_the_same_thing_in_a_loop_is_one_entry(
        ask: Ask, store: LogStore) -> None:
    writer = LogWriter(store, interval=3600, clock=lambda: 1.8e9 + 0.5)
    writer.start()
    request, response = ask("GET", f"/v1/file/{EICAR_SHA256}")
    for _ in range(1000):
        writer.observe(request, response, 0.001)
    assert writer.pending() == 1  # held back as one group, however many: nothing to drop
    writer.stop()
    (row,) = search(store, Search()).rows
    assert (row["count"], row["latency_ms"]) == (1000, 1.0)


def test_a_batch_the_database_refuses_is_counted_lost_not_retried(
        ask: Ask, store: LogStore, make_writer: Callable[..., LogWriter]) -> None:
    writer = make_writer(interval=0.01, retention_every=3600)
    wait_for(lambda: writer.retention_passes == 1, "the first retention pass (it writes too)")
    blocker = store.connect(timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        writer.store = _Impatient(store)  # gives up on the lock at once
        request, response = ask("GET", f"/v1/file/{EICAR_SHA256}")
        writer.observe(request, response, 0.001)
        wait_for(lambda: writer.lost == 1, "the batch to be refused")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert ({"reason": "write_failed"}, 1.0) in writer.dropped_samples()
    writer.stop()
    assert store.counts()["query"] == 0


class _Impatient(LogStore):
    def __init__(self, store: LogStore) -> None:
        super().__init__(store.path)

    def write(self, conn, rows):  # type: ignore[no-untyped-def]
        conn.execute("PRAGMA busy_timeout = 0")
        return super().write(conn, rows)


def test_stop_writes_everything_queued(ask: Ask, store: LogStore) -> None:
    writer = LogWriter(store, interval=3600)  # would not wake on its own within the test
    writer.start()
    request, response = ask("POST", "/v1/file", {"items": [{"sha256": EICAR_SHA256}] * 3})
    for _ in range(10):
        writer.observe(request, response, 0.001)
    writer.stop()
    assert store.items_logged() == 30


def test_identical_answers_to_a_client_in_one_second_are_one_row(
        ask: Ask, store: LogStore) -> None:
    writer = LogWriter(store, interval=3600, clock=lambda: 1.8e9 + 0.5)
    writer.start()
    request, response = ask("GET", f"/v1/file/{EICAR_SHA256}")  # the routes' memo: one object
    for latency in (0.001, 0.002, 0.003):
        writer.observe(request, response, latency)
    other, again = ask("GET", f"/v1/file/{EICAR_SHA256}", client="192.0.2.99")
    assert again is response
    writer.observe(other, again, 0.004)
    writer.stop()
    rows = search(store, Search()).rows
    assert [(r["client"], r["count"], r["latency_ms"]) for r in rows] == [
        ("192.0.2.99", 1, 4.0), ("192.0.2.10", 3, 2.0)]


def test_only_answered_engine_requests_are_logged(
        ask: Ask, store: LogStore, make_writer: Callable[..., LogWriter]) -> None:
    writer = make_writer()
    for method, target in (("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
                           ("GET", "/v1/agent-pattern"), ("GET", f"/v1/file/{EICAR_SHA256}")):
        writer.observe(*ask(method, target), 0.001)
    request, response = ask("POST", "/v1/file", {"items": [{"md5": "zz"}]})
    assert response.status == 400
    writer.observe(request, response, 0.001)
    writer.stop()
    assert [r["item"] for r in search(store, Search()).rows] == [EICAR_SHA256]


@pytest.mark.parametrize(("mode", "client", "stored"), [
    ("full", "192.0.2.77", "192.0.2.77"),
    ("full", "2001:db8:1:2::5", "2001:db8:1:2::5"),
    ("truncated", "192.0.2.77", "192.0.2.0/24"),
    ("truncated", "2001:db8:1:2::5", "2001:db8:1::/48"),
    ("truncated", "::ffff:198.51.100.9", "198.51.100.0/24"),
    ("truncated", "not-an-address", ""),
    ("none", "192.0.2.77", ""),
    ("none", "2001:db8:1:2::5", ""),
])
def test_client_addresses_are_stored_as_configured(
        ask: Ask, store: LogStore, make_writer: Callable[..., LogWriter],
        mode: str, client: str, stored: str) -> None:
    writer = make_writer(clients=mode)
    writer.observe(*ask("GET", f"/v1/file/{EICAR_SHA256}", client=client), 0.001)
    writer.stop()
    (row,) = search(store, Search()).rows
    assert row["client"] == stored
    conn = store.connect()
    try:  # nothing else in the file holds the address either
        assert conn.execute("SELECT count(*) FROM query WHERE client = ?", (client,)).fetchone()[0] == (
            1 if mode == "full" else 0)
    finally:
        conn.close()


def test_per_network_modes_store_each_client_as_its_network_says(
        ask: Ask, store: LogStore, make_writer: Callable[..., LogWriter]) -> None:
    mask = ClientMask("full", ["10.0.0.0/8=truncated", "10.9.0.0/16=none"])
    writer = make_writer(clients=mask)
    for client in ("192.0.2.5", "10.1.2.3", "10.9.8.7"):
        writer.observe(*ask("GET", f"/v1/file/{EICAR_SHA256}", client=client), 0.001)
    deadline = time.monotonic() + 10
    while writer.written < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.set_clients(ClientMask("none"))  # a setting changed while running: later rows
    writer.observe(*ask("GET", f"/v1/file/{EICAR_SHA256}", client="192.0.2.6"), 0.001)
    writer.stop()
    stored = sorted(row["client"] for row in search(store, Search()).rows)
    assert stored == ["", "", "10.1.2.0/24", "192.0.2.5"]


def test_an_unknown_client_mode_is_refused(store: LogStore) -> None:
    with pytest.raises(ValueError, match="log_clients"):
        LogWriter(store, clients="hashed")


def test_a_row_of_the_wrong_shape_is_refused_at_submit(store: LogStore) -> None:
    writer = LogWriter(store)
    with pytest.raises(ValueError):
        writer.submit("relay", (1.0, "too few"))
    with pytest.raises(ValueError):
        writer.submit("nonsense", ())


# ---------------------------------------------------------------- retention


def test_retention_by_days_in_the_background(
        ask: Ask, store: LogStore, make_writer: Callable[..., LogWriter]) -> None:
    now = [1.8e9 - 40 * DAY]
    writer = make_writer(days=30, interval=0.01, retention_every=0.01, clock=lambda: now[0])
    request, response = ask("GET", f"/v1/file/{EICAR_SHA256}")
    for _ in range(5):
        writer.observe(request, response, 0.001)  # 40 days before "now"
    writer.submit("relay", relay_row(now[0], "https://cloud.example.test", "file", 1, 0.5, "timeout", "x"))
    store.audit("admin", "login", client="192.0.2.1", now=now[0])
    wait_for(lambda: store.items_logged() == 5, "the old rows to be written")
    now[0] = 1.8e9 - 20 * DAY
    writer.observe(request, response, 0.001)  # 20 days before "now"
    now[0] = 1.8e9
    wait_for(lambda: store.items_logged() == 1 and store.counts()["relay"] == 0,
             "the rows past 30 days to go")
    assert search(store, Search()).rows[0]["time"] == "2026-12-26T08:00:00.000Z"  # the newer one
    assert store.counts()["audit"] == 1  # the audit is kept by rows only


def test_retention_by_rows_in_the_background(
        ask: Ask, store: LogStore, make_writer: Callable[..., LogWriter]) -> None:
    writer = make_writer(max_rows=25, interval=0.01, retention_every=0.01)
    for _ in range(6):  # six answers (six objects: rows apart), ten items each
        request, response = ask("POST", "/v1/file", {"items": [{"sha256": EICAR_SHA256}] * 10})
        writer.observe(request, response, 0.001)
    wait_for(lambda: writer.written == 60, "60 rows written")
    wait_for(lambda: store.counts()["query"] == 25, "the oldest rows past 25 to go")
    ids = [r["id"] for r in search(store, Search(limit=100)).rows]
    assert ids == list(range(60, 35, -1))  # the newest 25 kept


def test_retention_deletes_in_chunks(store: LogStore) -> None:
    conn = store.connect()
    try:
        conn.executemany("INSERT INTO relay (t, endpoint, service, items, latency_ms, kind, message)"
                         " VALUES (?, 'e', 'file', 1, 1, 'timeout', '')", [(float(i),) for i in range(100)])
        deleted, more = store.enforce_retention(conn, days=1, max_rows=1000, now=1e9, chunk=30)
        assert (deleted, more) == (30, True)
        while more:
            deleted, more = store.enforce_retention(conn, days=1, max_rows=1000, now=1e9, chunk=30)
        assert store.counts()["relay"] == 0
    finally:
        conn.close()
