"""The admin audit: who did what, when, from where; written at once, never dropped, from
any process (the CLI beside a running server), searchable like the other logs."""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.logs.search import Search, search
from proxy.logs.store import MAX_AUDIT_TEXT, LogStore
from proxy.logs.writer import LogWriter


def test_audit_rows_say_who_what_when_and_from_where(store: LogStore) -> None:
    store.audit("alice", "lists.add", "blocked domain evil.example.test", "192.0.2.5", now=1.8e9)
    store.audit("bob", "login", "wrong password", "198.51.100.9", ok=False, now=1.8e9 + 1)
    rows = search(store, Search(log="audit")).rows
    assert [(r["actor"], r["action"], r["detail"], r["client"], r["ok"], r["time"]) for r in rows] == [
        ("bob", "login", "wrong password", "198.51.100.9", False, "2027-01-15T08:00:01.000Z"),
        ("alice", "lists.add", "blocked domain evil.example.test", "192.0.2.5", True,
         "2027-01-15T08:00:00.000Z"),
    ]
    assert [r["actor"] for r in search(store, Search(log="audit", where=(("ok", "false"),))).rows] == ["bob"]
    assert [r["actor"] for r in search(store, Search(log="audit", text="EVIL.example")).rows] == ["alice"]


def test_audit_text_is_bounded_and_one_line(store: LogStore) -> None:
    store.audit("x" * 5000, "import", "line one\nline two\r\x00", "192.0.2.5")
    (row,) = search(store, Search(log="audit")).rows
    assert len(row["actor"]) == MAX_AUDIT_TEXT
    assert "\n" not in row["detail"] and "\r" not in row["detail"] and "\x00" not in row["detail"]


def test_the_audit_is_never_dropped_when_the_query_log_is(
        store: LogStore, make_writer: Callable[..., LogWriter]) -> None:
    writer = make_writer(capacity=100, interval=3600)
    for _ in range(200):
        writer.submit("relay", (time.time(), "e", "file", 1, 1.0, "timeout", ""))
    assert writer.dropped == 100
    store.audit("alice", "update.now", client="192.0.2.5")
    assert store.counts()["audit"] == 1


def test_another_process_audits_beside_a_running_writer(
        store: LogStore, make_writer: Callable[..., LogWriter]) -> None:
    writer = make_writer(interval=0.01)
    cli = LogStore.open(store.path.parent)  # what `rampart admin ...` opens on the same data directory
    try:
        for i in range(50):
            writer.submit("relay", (time.time(), "e", "file", 1, 1.0, "timeout", ""))  # kept by retention
            cli.audit("root", "admin.key.create", f"key {i}", "local")
    finally:
        cli.close()
    writer.stop()
    assert store.counts()["audit"] == 50 and store.counts()["relay"] == 50


def test_an_update_run_from_the_command_line_is_recorded_at_once(store: LogStore) -> None:
    store.record_update({"ok": True, "changed": True, "version": "2026120113", "path": "diff",
                         "bytes": 1234, "seconds": 0.5, "reason": None, "message": "", "at": 1.8e9})
    (row,) = search(store, Search(log="updates")).rows
    assert (row["ok"], row["changed"], row["version"], row["bytes"], row["time"]) == (
        True, True, "2026120113", 1234, "2027-01-15T08:00:00.000Z")
