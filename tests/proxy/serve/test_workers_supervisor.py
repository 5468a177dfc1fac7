"""proxy.serve.workers: the restart policy, and the Supervisor over real (stand-in) worker
processes: started and awaited, restarted when they die, stopped with SIGTERM, killed when
they do not drain, and a worker that cannot start named in the error."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from proxy.config import Config
from proxy.errors import RampartError
from proxy.serve import worker as worker_mod
from proxy.serve.workers import RestartPolicy, Supervisor, worker_count

STAND_IN = """
import os, signal, sys, time
mode, run, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(os.path.join(run, f"starts-{index}"), "a") as f:
    f.write(f"{os.getpid()}\\n")
if mode == "never":
    sys.exit(4)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.stdout.write("ready\\n"); sys.stdout.flush()
if mode == "dies" and index == 1:
    sys.exit(3)
while True:
    time.sleep(0.05)
"""


def test_restart_policy_backs_off_while_a_worker_keeps_dying() -> None:
    p = RestartPolicy(first=0.25, most=4.0, stable=10.0)
    assert p.delay(0) == 0.25
    assert [p.delay(n) for n in (1, 2, 3, 4, 5, 50)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert p.failures_after(3, ran=0.5) == 4  # died quickly again
    assert p.failures_after(3, ran=60.0) == 0  # had run a long while: at once again


def test_worker_count_is_the_key_or_one_per_core() -> None:
    assert worker_count(Config(workers=3)) == 3
    assert worker_count(Config(workers=0)) == len(os.sched_getaffinity(0))


def _supervisor(tmp_path: Path, mode: str, count: int = 2, **kw: float) -> Supervisor:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    cfg = Config(data_dir=tmp_path / "data", query_tls_port=0)
    return Supervisor(cfg, [sys.executable, str(script), mode], count=count,
                      policy=RestartPolicy(first=0.05, most=0.4, stable=10.0), **kw)


def _starts(sup: Supervisor, index: int) -> list[int]:
    path = sup.run / f"starts-{index}"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


async def _until(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


def test_workers_start_and_stop_and_get_the_resolved_config(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, "ok")

    async def scenario() -> None:
        await sup.start()
        pids = [s.pid for s in sup.slots]
        assert all(s.ready for s in sup.slots) and len(set(pids)) == 2
        assert [_starts(sup, i) for i in (0, 1)] == [[pids[0]], [pids[1]]]
        written = worker_mod.read_config(sup.run / worker_mod.CONFIG_FILE)
        assert written == sup.cfg
        assert oct((sup.run / worker_mod.CONFIG_FILE).stat().st_mode & 0o777) == "0o600"
        assert oct(sup.run.stat().st_mode & 0o777) == "0o700"
        await sup.stop()
        assert [s.proc.returncode for s in sup.slots if s.proc] == [-signal.SIGTERM] * 2

    asyncio.run(scenario())


def test_a_worker_that_dies_is_restarted_with_backoff_while_the_other_runs(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, "dies")

    async def scenario() -> None:
        await sup.start()
        steady = sup.slots[0].pid
        await _until(lambda: len(_starts(sup, 1)) >= 4 and sup.slots[1].ready is False)
        assert sup.slots[1].last_exit == 3
        assert sup.slots[1].failures >= 3  # each quick death lengthens the next wait
        assert sup.slots[0].pid == steady and sup.slots[0].restarts == 0
        assert sup.slots[1].restarts >= 3
        text = "".join(str(m.samples) for m in sup.collect())
        assert "'worker': '1'" in text
        await sup.stop()

    asyncio.run(scenario())


def test_a_worker_that_cannot_start_is_named(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, "never", count=1)

    async def scenario() -> None:
        with pytest.raises(RampartError, match=r"worker 0 did not start \(exit 4\)"):
            await sup.start()

    asyncio.run(scenario())


def test_a_worker_that_does_not_drain_is_killed(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, "stubborn", count=1, stop_seconds=0.5)

    async def scenario() -> None:
        await sup.start()
        await sup.stop()
        assert sup.slots[0].proc is not None
        assert sup.slots[0].proc.returncode == -signal.SIGKILL

    asyncio.run(scenario())


def test_a_bad_worker_config_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"workers": "many"}))
    path.chmod(0o600)
    with pytest.raises(RampartError, match="workers"):
        worker_mod.read_config(path)
    path.write_text("[1]")
    with pytest.raises(RampartError, match="not a JSON object"):
        worker_mod.read_config(path)


def test_workers_refuse_a_data_directory_another_server_holds(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, "ok", count=1)
    (sup.cfg.data_dir / "serve.lock").write_text("4242\n")

    async def scenario() -> None:
        with pytest.raises(RampartError, match=r"another rampart server \(pid 4242\)"):
            await sup.start()
        assert _starts(sup, 0) == []  # no worker was started

    asyncio.run(scenario())
