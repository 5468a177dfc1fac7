"""proxy.serve.worker in process: two workers bind one port (SO_REUSEPORT), answer for the
fleet on /readyz and /metrics, take the settings the main process writes again, and stop
cleanly. Real sockets on 127.0.0.1, the bundled sample pattern in a temporary store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from proxy.config import Config
from proxy.serve import fleet, worker
from tests.conftest import EICAR_SHA256, free_port, opened_app


async def _until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


def test_two_workers_share_a_port_answer_for_the_fleet_and_follow_settings(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with opened_app(data):  # the main process's part: the sample installed in the store
        pass
    port = free_port()
    cfg = Config(data_dir=data, listen="127.0.0.1", query_port=port, query_tls_port=0, workers=2)
    run = fleet.run_dir(data)
    worker.write_config(run, cfg)
    assert worker.read_config(run / worker.CONFIG_FILE) == cfg

    async def scenario() -> None:
        stop = asyncio.Event()
        ready = [asyncio.Event(), asyncio.Event()]
        workers = [worker.Worker(cfg, run, i, 2) for i in (0, 1)]
        tasks = [asyncio.create_task(w.serve(stop, ready[i].set)) for i, w in enumerate(workers)]
        try:
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 30)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                r = await client.get("/readyz")
                assert r.status_code == 200, r.text
                body = r.json()
                assert [w["status"] for w in body["workers"]] == ["ready", "ready"]
                assert body["main"]["status"] == "missing"  # no main process in this test
                text = (await client.get("/metrics")).text
                assert 'rampart_worker_up{worker="1"} 1.0' in text
                assert 'rampart_worker_requests_total{worker="0"}' in text
                r = await client.get(f"/v1/file/{EICAR_SHA256}")
                assert r.json()["results"][0]["source"] == "pattern"

            # a setting the console changed in the main process reaches every worker
            worker.write_config(run, cfg.replace(degraded_action="block"))
            await _until(lambda: all(w.app.engine.block_degraded for w in workers))
            assert all(w.app.cfg.degraded_action == "block" for w in workers)

            # one worker gone: the other says so, 503
            await workers[1].member.close()  # type: ignore[union-attr]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                statuses = set()
                for _ in range(20):  # whichever worker a new connection reaches
                    r = await client.get("/readyz", headers={"Connection": "close"})
                    statuses.add(r.status_code)
                    if r.status_code == 503:
                        assert r.json()["missing_workers"] == [1]
                assert 503 in statuses
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert not list(run.glob("worker-*.sock"))

    asyncio.run(scenario())
