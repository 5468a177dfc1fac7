"""CPU per answer with 1 and 2 query-door workers: does a second worker cost extra per answer?

Two appliances run side by side (other doors off, query log on as by default):
``rampart serve --workers 1`` (today's single process) and ``--workers 2`` (a main
process and two workers on SO_REUSEPORT). wrk (C, one thread, 64 keep-alive
connections) asks ``GET /v1/file/<EICAR sha256>`` for ``--seconds``; for each run the
script reads, from ``/proc/PID/stat``, the user+system CPU seconds of the processes
that answer (the single process; the two workers) and of all the appliance's processes
(the main process included), and divides by the answers wrk counted: CPU seconds per
million answers. Rounds alternate 1 and 2 so drift hits both; the medians and their
ratio are printed (goal: 2 workers cost at most 1.1x the CPU per answer of 1, so
throughput scales with cores). Each run's per-worker counters (``rampart_worker_requests_total``)
show that both workers answered.

Pinning: with 4 or more cores the appliances get cores 0-1 and wrk core 2 and up;
with fewer, the appliances share core 0 and wrk gets core 1 (both workers then share
a core: CPU per answer is still comparable, throughput is not).

    python3 bench/bench_workers.py [--seconds 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load
import run

EICAR = f"/v1/file/{run.EICAR_SHA256}"


def cores() -> tuple[str, str]:
    """(the appliances' cores, wrk's cores) for taskset."""
    have = sorted(os.sched_getaffinity(0))
    if len(have) >= 4:
        return f"{have[0]},{have[1]}", ",".join(str(c) for c in have[2:])
    if len(have) >= 2:
        return str(have[0]), str(have[1])
    return str(have[0]), str(have[0])


def start(tmp: Path, workers: int, server_cores: str, config: str) -> tuple[run.Server, str]:
    port = run.free_port()
    name = f"workers-{workers}"
    (tmp / f"{name}.toml").write_text(config)
    cmd = ["taskset", "-c", server_cores, *run.rampart(
        "serve", "--data-dir", str(tmp / name), "--listen", "127.0.0.1", "--query-port", str(port),
        "--log-level", "warning", "--workers", str(workers), "--config", str(tmp / f"{name}.toml"),
        *run.doors_off())]
    server = run.Server(name, cmd, tmp / f"{name}.log")
    server.start(f"http://127.0.0.1:{port}/healthz", timeout=90)
    base = f"http://127.0.0.1:{port}"
    for _ in range(900):  # /readyz is ready once every worker answers
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return server, base


def cpu_of(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / run.CLK_TCK


def answering(server: run.Server) -> list[int]:
    """The processes that answer the query door: the workers, or the single process."""
    workers = [p for p in server.pids() if p != server.pid and _is_worker(p)]
    return workers or [server.pid]


def _is_worker(pid: int) -> bool:
    try:
        return b"proxy.cli.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def per_worker(base: str) -> str:
    text = httpx.get(base + "/metrics", timeout=10).text
    found = re.findall(r'^rampart_worker_requests_total\{worker="(\d+)"\} (\S+)$', text, re.M)
    return ", ".join(f"worker {w}: {float(n):,.0f}" for w, n in found) or "one process"


def measure(server: run.Server, base: str, script: Path, seconds: float,
            load_cores: str) -> tuple[float, float, float]:
    """(requests/s, CPU s per million answers of the answering processes, of all of them)."""
    who, everyone = answering(server), server.pids()
    before, before_all = cpu_of(who), cpu_of(everyone)
    result = _wrk(base + EICAR, script, seconds, load_cores)
    used, used_all = cpu_of(who) - before, cpu_of(everyone) - before_all
    if result.failed:
        print(f"    ({result.failed} failed requests)", flush=True)
    answers = max(result.requests, 1)
    return result.rps, used / answers * 1e6, used_all / answers * 1e6


def _wrk(url: str, script: Path, seconds: float, load_cores: str) -> load.WrkResult:
    """wrk on ``load_cores`` (load.run_wrk pins to one core; here a list may be given)."""
    cmd = ["taskset", "-c", load_cores, "wrk", "-t1", "-c64", f"-d{seconds:g}s", "--timeout=5s",
           "-s", str(script), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            d = json.loads(line[6:])
            return load.WrkResult(d["requests"], d["duration_us"] / 1e6, d["socket_errors"],
                                  d["non2xx"], d["p50_us"] / 1000, d["p90_us"] / 1000,
                                  d["p99_us"] / 1000, d["mean_us"] / 1000)
    raise RuntimeError(f"wrk gave no result ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description="CPU per answer with 1 and 2 query-door workers")
    ap.add_argument("--seconds", type=float, default=6, help="length of each measured run")
    ap.add_argument("--rounds", type=int, default=3, help="1/2 pairs")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--no-query-log", action="store_true",
                    help="query_log = false in both (shows what the log writers cost)")
    args = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("bench: wrk and taskset are needed (apt-get install -y wrk util-linux)")
    tmp = Path(tempfile.mkdtemp(prefix="rampart-bench-workers-"))
    scripts = load.write_scripts(tmp / "lua")
    server_cores, load_cores = cores()
    servers: list[run.Server] = []
    try:
        config = "query_log = false\n" if args.no_query_log else ""
        one, one_base = start(tmp, 1, server_cores, config)
        servers.append(one)
        two, two_base = start(tmp, 2, server_cores, config)
        servers.append(two)
        print(f"workers bench: {os.cpu_count()} cores; appliances on {server_cores}, wrk on "
              f"{load_cores}; {args.seconds:g} s a run, {args.rounds} rounds; query log"
              f" {'off' if args.no_query_log else 'on'}; work dir {tmp}",
              flush=True)
        got: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for n, server, base in ((1, one, one_base), (2, two, two_base)):
                got[n].append(measure(server, base, scripts["get"], args.seconds, load_cores))
                rps, mine, everyone = got[n][-1]
                print(f"  {n} worker{'s' if n > 1 else ' '} {rps:>10,.0f} req/s {mine:>8.1f} CPU-s per"
                      f" million answers (answering) {everyone:>8.1f} (all processes)  [{per_worker(base)}]",
                      flush=True)
        for i, what in ((1, "answering processes"), (2, "all the appliance's processes")):
            m1 = statistics.median(r[i] for r in got[1])
            m2 = statistics.median(r[i] for r in got[2])
            print(f"CPU-s per million single-item answers, {what}: 1 worker {m1:.1f}, 2 workers"
                  f" {m2:.1f}, ratio {m2 / m1:.3f} (goal <= 1.1)", flush=True)
        r1 = statistics.median(r[0] for r in got[1])
        r2 = statistics.median(r[0] for r in got[2])
        print(f"requests/s: 1 worker {r1:,.0f}, 2 workers {r2:,.0f}, ratio {r2 / r1:.3f}"
              " (only meaningful with a core per worker)", flush=True)
    finally:
        for s in servers:
            s.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
