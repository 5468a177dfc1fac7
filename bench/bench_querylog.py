"""The query log's cost (issue 10, "Logs"): the query door's single-item rate with
``query_log`` on against off, in the same run. Prints both rates and the ratio (goal
>= 0.85); asserts nothing.

    python3 bench/bench_querylog.py [--seconds 6] [--rounds 3] [--drains 25] [--keep] [--writer-only]

Starts two ``rampart serve`` appliances (every door off but the HTTP query door, no
cloud), one with ``query_log = false`` in its TOML, each pinned to core 0 with
``taskset``; wrk (one thread, 64 keep-alive connections) runs on core 1, as
``bench/run.py`` does. The runs alternate off/on for ``--rounds`` rounds and the median
of each is compared, and the median of each round's on/off ratio (a round's two runs are
back to back, so a neighbour's burst of CPU more likely hits both alike); the rate per
CPU-second the server used (all its threads, the writer's included) is printed too, the
fairer figure when other processes share core 0, and the CPU microseconds per request
spent off the event loop's thread (the log writer's thread: what the log costs beyond
``observe``). Scenarios:

- the EICAR SHA-256 by GET (a pattern hit; the same rendered answer every time);
- unique unknown SHA-256s by GET (answered ``local``: a new answer each request, so
  the writer reads every one).

After the runs it prints the logged appliance's query-log rows and
``rampart_log_dropped_total`` (entries dropped because the writer fell behind), then
the writer alone, in this process: the microseconds its thread spends per answer
(turning 5,000 queued answers into rows and writing them), min and median of
``--drains`` drains, for distinct unknown hashes and for the repeated EICAR answer. The
servers' figures move with whatever else shares the machine; this one moves much less,
so a change to the writer is best judged by it (``--writer-only`` runs just that).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load
import run

sys.path.insert(0, str(run.ROOT))
from proxy.config import Config
from proxy.logs.store import LogStore
from proxy.logs.writer import LogWriter
from proxy.serve.app import App
from proxy.wire.http import Request, Response, respond

EICAR = f"/v1/file/{run.EICAR_SHA256}"


def start(tmp: Path, name: str, config: str) -> tuple[run.Server, str]:
    port = run.free_port()
    (tmp / f"{name}.toml").write_text(config)
    server = run.Server(name, run.pinned(run.SERVER_CORE, run.rampart(
        "serve", "--data-dir", str(tmp / name), "--listen", "127.0.0.1", "--query-port", str(port),
        "--log-level", "warning", "--config", str(tmp / f"{name}.toml"), *run.doors_off())),
        tmp / f"{name}.log")
    return server.start(f"http://127.0.0.1:{port}/healthz"), f"http://127.0.0.1:{port}"


def side_threads(server: run.Server) -> float:
    """CPU seconds of the server's threads but its main one (the event loop's): the log
    writer's, and any worker's."""
    total = 0
    for task in Path(f"/proc/{server.pid}/task").iterdir():
        if task.name != str(server.pid):
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total / run.CLK_TCK


def rate(server: run.Server, base: str, scripts: dict[str, Path], scenario: str,
         seconds: float) -> tuple[float, float, float]:
    """Requests a second, requests per CPU-second of the server (its threads together), and
    the microseconds of CPU per request of its threads but the event loop's."""
    cpu, side = server.cpu_seconds(), side_threads(server)
    if scenario == "pattern":
        result = load.run_wrk(base + EICAR, scripts["get"], seconds=seconds, core=run.LOAD_CORE)
    else:
        result = load.run_wrk(base, scripts["get_unique"], "/v1/file/", os.urandom(24).hex(),
                              seconds=seconds, core=run.LOAD_CORE)
    if result.failed:
        print(f"    ({result.failed} failed requests)", flush=True)
    used, side = server.cpu_seconds() - cpu, side_threads(server) - side
    requests = max(result.requests, 1)
    return result.rps, result.requests / used if used > 0 else 0.0, side / requests * 1e6


def dropped(base: str) -> str:
    text = httpx.get(base + "/metrics", timeout=10).text
    lines = [ln for ln in text.splitlines() if ln.startswith("rampart_log_dropped_total")]
    return ", ".join(lines) or "not exported"


def rows(data_dir: Path) -> int:
    conn = sqlite3.connect(data_dir / "logs.sqlite")
    try:
        return int(conn.execute("SELECT count(*) FROM query").fetchone()[0])
    finally:
        conn.close()


def writer_alone(tmp: Path, drains: int, n: int = 5000) -> None:
    """The writer thread's own cost per answer, measured in this process (see the docstring)."""
    data = tmp / "in-process"
    data.mkdir(mode=0o700)
    app = App(Config(data_dir=data, query_port=0, query_tls_port=0))
    app.open()
    store = LogStore.open(data)
    conn = store.connect()
    try:
        def answer(target: str) -> tuple[Request, Response]:
            request = Request("GET", target.encode(), [], b"", "127.0.0.1")
            response = respond(app.routes, request)
            assert isinstance(response, Response)
            return request, response

        distinct = [answer(f"/v1/file/{os.urandom(32).hex()}") for _ in range(n)]
        scenarios = {"distinct unknown hashes": distinct, "repeated EICAR answer": [answer(EICAR)] * n}
        for label, answers in scenarios.items():
            took = []
            for _ in range(drains):
                writer = LogWriter(store, capacity=n)
                for request, response in answers:
                    writer.observe(request, response, 0.0001)
                started = time.perf_counter()
                writer._drain(conn)  # what the thread does each time it wakes
                took.append((time.perf_counter() - started) / n * 1e6)
            print(f"writer alone, {label}: min {min(took):.2f} µs an answer, median "
                  f"{statistics.median(took):.2f} ({drains} drains of {n:,}; {writer.written:,} rows each)",
                  flush=True)
    finally:
        conn.close()
        store.close()
        app.lists_store.close()
        app.engine.patterns.close()


def main() -> None:
    ap = argparse.ArgumentParser(description="query log on against off: single-item rates")
    ap.add_argument("--seconds", type=float, default=6, help="length of each measured run")
    ap.add_argument("--rounds", type=int, default=3, help="off/on pairs per scenario")
    ap.add_argument("--drains", type=int, default=25, help="drains timed for the writer alone")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--writer-only", action="store_true", help="only the writer alone, no servers")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rampart-bench-querylog-"))
    if args.writer_only:
        try:
            writer_alone(tmp, args.drains)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is needed (apt-get install -y wrk)")
    scripts = load.write_scripts(tmp / "lua")
    servers: list[run.Server] = []
    try:
        off, off_base = start(tmp, "log-off", "query_log = false\n")
        servers.append(off)
        on, on_base = start(tmp, "log-on", "query_log = true\n")
        servers.append(on)
        print(f"query log bench: {os.cpu_count()} cores; servers on core {run.SERVER_CORE}, wrk on core "
              f"{run.LOAD_CORE}; {args.seconds:g} s a run, {args.rounds} rounds; work dir {tmp}", flush=True)
        for scenario, label in (("pattern", "single item, pattern (GET EICAR)"),
                                ("unique", "single item, unique unknown hashes (GET, local)")):
            got: dict[str, list[tuple[float, float, float]]] = {"off": [], "on": []}
            for _ in range(args.rounds):
                for side, server, base in (("off", off, off_base), ("on", on, on_base)):
                    got[side].append(rate(server, base, scripts, scenario, args.seconds))
                    rps, per_cpu, others = got[side][-1]
                    print(f"  {label:<50} log {side:<3} {rps:>10,.0f} req/s {per_cpu:>10,.0f} req/CPU-s"
                          f" {others:>6.1f} µs/req off the loop", flush=True)
            for i, unit in ((0, "req/s"), (1, "req/CPU-s")):
                m_off = statistics.median(r[i] for r in got["off"])
                m_on = statistics.median(r[i] for r in got["on"])
                pairs = statistics.median(b[i] / a[i] for a, b in zip(got["off"], got["on"]) if a[i])
                print(f"{label}: median off {m_off:,.0f} {unit}, on {m_on:,.0f} {unit}, "
                      f"ratio {m_on / m_off:.3f}; median of each round's on/off {pairs:.3f}"
                      " (goal >= 0.85)", flush=True)
            print(f"{label}: CPU off the event loop (the log writer's thread), median "
                  f"{statistics.median(r[2] for r in got['on']):.1f} µs a request", flush=True)
        print(f"logged appliance: {dropped(on_base)}")
        on.stop()  # writes what is queued
        servers.remove(on)
        print(f"logged appliance: {rows(tmp / 'log-on'):,} query-log rows written")
        writer_alone(tmp, args.drains)
    finally:
        for s in servers:
            s.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
