"""A real App on 127.0.0.1 answering real HTTP requests leaves query-log rows with the
source and verdict its answers gave; relay failures and update results land in their logs;
query_log = false keeps no query rows (the other logs stay)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from proxy.config import Config
from proxy.decide.lists import ListName
from proxy.logs.search import Search, search
from proxy.logs.store import FILENAME
from proxy.serve.app import App
from proxy.updates.signing import keygen
from tests.conftest import free_port
from tests.proxy.logs.conftest import EICAR_SHA256, MALWARE_URL


def config(tmp_path: Path, **changes: Any) -> Config:
    data = tmp_path / "data"
    data.mkdir(mode=0o700, exist_ok=True)
    return Config(data_dir=data, listen="127.0.0.1", query_port=free_port(), query_tls_port=0,
                  lists_poll=0.05, **changes)


async def test_answered_queries_leave_rows_with_their_source_and_verdict(tmp_path: Path) -> None:
    app = App(config(tmp_path))
    await app.start()
    try:
        assert app.logs is not None
        app.lists_store.add(ListName.BLOCKED, [(None, "evil.example.test")])
        app.engine.lists = app.lists_store.snapshot()
        base = f"http://127.0.0.1:{app.ports()['http']}"
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get(f"/v1/file/{EICAR_SHA256}")).status_code == 200
            web = await client.post("/v1/web", json={
                "urls": [MALWARE_URL, "http://evil.example.test/page?id=7"], "policy": "low"})
            assert web.status_code == 200
            assert (await client.get("/v1/domain/malware.example.test")).status_code == 200
            assert (await client.get("/v1/file/zz")).status_code == 400
            assert (await client.get("/healthz")).status_code == 200
            metrics = (await client.get("/metrics")).text
        assert 'rampart_log_dropped_total{reason="queue_full"} 0.0' in metrics
    finally:
        await app.stop()  # writes what is queued
    store = app.logs.store
    assert store.path == tmp_path / "data" / FILENAME
    rows = search(store, Search()).rows
    assert [(r["service"], r["item"], r["source"], r["verdict"], r["action"], r["client"]) for r in rows] == [
        ("domain", "malware.example.test", "pattern", "dangerous", "", "127.0.0.1"),
        ("web", "http://evil.example.test/page", "blocked-list", "dangerous", "block", "127.0.0.1"),
        ("web", MALWARE_URL, "pattern", "dangerous", "block", "127.0.0.1"),
        ("file", EICAR_SHA256, "pattern", "malicious", "", "127.0.0.1"),
    ]
    blocked = search(store, Search(log="blocked", where=(("origin", "blocked-list"),))).rows
    assert [r["matched"] for r in blocked] == ["evil.example.test"]


async def test_relay_failures_are_logged(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there: every upstream attempt fails to connect
    app = App(config(tmp_path, cloud=[f"http://127.0.0.1:{closed}"], total_timeout=2.0))
    await app.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.ports()['http']}") as client:
            answer = (await client.get(f"/v1/file/{'ab' * 32}")).json()
        assert answer["results"][0]["source"] == "degraded"
    finally:
        await app.stop()
    assert app.logs is not None
    rows = search(app.logs.store, Search(log="relay")).rows
    assert rows and rows[0]["endpoint"] == f"http://127.0.0.1:{closed}"
    assert rows[0]["kind"] == "connect" and rows[0]["service"] == "file"
    (degraded,) = search(app.logs.store, Search(where=(("source", "degraded"),))).rows
    assert degraded["origin"] == "degraded"


async def test_a_real_update_failure_is_logged(tmp_path: Path) -> None:
    pub = keygen(tmp_path / "keys" / "update.key")
    closed = free_port()  # the update source does not answer: the first attempt fails at once
    app = App(config(tmp_path, update_source=f"http://127.0.0.1:{closed}", update_key=pub,
                     update_timeout=5))
    await app.start()
    try:
        assert app.logs is not None and app.keeper.updater is not None
        for _ in range(1500):
            if app.logs.store.counts()["updates"]:
                break
            await asyncio.sleep(0.02)
    finally:
        await app.stop()
    (row,) = search(app.logs.store, Search(log="updates")).rows
    assert row["ok"] is False and row["reason"] == "fetch_failed"
    assert str(closed) in row["message"]


class _Result:
    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def to_json(self) -> dict[str, Any]:
        return self.fields


class _Updater:
    last: _Result | None = None


async def test_update_results_are_logged(tmp_path: Path) -> None:
    app = App(config(tmp_path))
    await app.start()
    updater = _Updater()
    try:
        assert app.logs is not None
        app.logs.follow_updates(lambda: updater)  # the keeper's updater, as App wires it
        for result in (_Result(ok=False, changed=False, version="2026120112", path="full", bytes=10,
                               seconds=1.5, reason="timeout", message="no answer", at=1.8e9),
                       _Result(ok=True, changed=True, version="2026120113", path="diff", bytes=99,
                               seconds=0.2, reason=None, message="", at=1.8e9 + 60)):
            updater.last = result
            want = 1 if result.fields["ok"] is False else 2
            for _ in range(1500):  # the writer looks between batches (every 0.2 s)
                if app.logs.writer.written >= want:
                    break
                await asyncio.sleep(0.02)
    finally:
        await app.stop()
    rows = search(app.logs.store, Search(log="updates")).rows
    assert [(r["ok"], r["version"], r["reason"]) for r in rows] == [
        (True, "2026120113", ""), (False, "2026120112", "timeout")]
    failed = search(app.logs.store, Search(log="updates", where=(("ok", "false"),))).rows
    assert failed[0]["message"] == "no answer" and failed[0]["seconds"] == 1.5


async def test_query_log_off_keeps_no_query_rows_but_the_other_logs(tmp_path: Path) -> None:
    app = App(config(tmp_path, query_log=False))
    await app.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.ports()['http']}") as client:
            assert (await client.get(f"/v1/file/{EICAR_SHA256}")).status_code == 200
        assert app.logs is not None
        app.logs.audit("admin", "settings.change", "query_log=false", "127.0.0.1")
    finally:
        await app.stop()
    assert search(app.logs.store, Search()).rows == []
    assert [r["action"] for r in search(app.logs.store, Search(log="audit")).rows] == [
        "settings.change"]
