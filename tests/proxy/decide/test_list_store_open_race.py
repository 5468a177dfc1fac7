"""Servers started together on a fresh data directory open one new lists.sqlite at once:
every one of them must get it (SQLite can refuse the switch to WAL at once instead of
waiting, so ListStore.open tries again, bounded)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path


def _open(where: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from proxy.decide.lists import ListStore

    try:
        ListStore.open(Path(where)).close()
        results.put("ok")
    except Exception as e:  # reported to the test, which names it
        results.put(repr(e))


def test_processes_opening_a_new_list_store_together_all_get_it(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(6):
        where = tmp_path / f"data{round_}"
        where.mkdir(mode=0o700)
        os.chmod(where, 0o700)
        results = ctx.Queue()
        procs = [ctx.Process(target=_open, args=(str(where), results)) for _ in range(4)]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
        assert got == ["ok"] * 4, got
