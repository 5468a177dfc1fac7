"""HAProxy in front of two appliances: run by hand; prints figures, asserts nothing.

    python3 bench/bench_haproxy.py                 # 3 rounds of 5 s each, then the kill runs
    python3 bench/bench_haproxy.py --rounds 5 --seconds 8 --clients 8
    python3 bench/bench_haproxy.py --workers 2    # each appliance with two workers

Two real `rampart serve` appliances (127.0.0.2 and 127.0.0.3, one CA, the same door
ports) and a real haproxy on appliance/haproxy.cfg as shipped (127.0.0.1), started with
the helpers of tests/integration/scale.py. Figures, each with its baseline from the same
run:

- requests lost while appliance a is SIGKILLed and restarted under a checked load
  (``--clients`` threads on kept-alive connections, GET single items and POST batches,
  every answer compared with what it must say): through HAProxy (goal 0) against the same
  load sent straight to appliance a, which loses every request of its downtime;
  HAProxy's resent requests (retries, redispatches) are printed beside;
- requests per second of ``GET /v1/file/<EICAR sha256>`` from wrk (one thread, 64
  connections) straight to appliance a, through HAProxy with only a in service (b
  disabled on the stats socket: the cost of the hop), and through HAProxy spreading over
  a and b. The appliances are pinned to core 0, wrk and HAProxy to core 1 (when taskset
  is there), so "a and b" shares one core and shows the hop, not scaling. Rounds
  alternate; each ratio is the median of the rounds' ratios with their spread.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import run_wrk, write_scripts

from tests.conftest import EICAR_SHA256
from tests.integration.scale import (
    BLOCKED_SHA256,
    Appliance,
    Haproxy,
    Load,
    LoadResult,
    add_to_list,
    descendants,
    standard_probes,
    two_behind_haproxy,
)


def pin(pid: int, core: int) -> None:
    """Every thread of ``pid`` onto ``core`` (nothing when taskset is missing)."""
    if shutil.which("taskset"):
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], capture_output=True,
                       check=False)


def pids(a: Appliance) -> list[int]:
    """The appliance's process and its children (workers, when --workers is given)."""
    popen = a.proc.popen
    if popen is None:
        return []
    return [popen.pid, *descendants(popen.pid)]


def pin_all(pair: list[Appliance], lb: Haproxy) -> None:
    for a in pair:
        for pid in pids(a):
            pin(pid, 0)
    if lb.popen is not None:
        pin(lb.popen.pid, 1)


def wait_blocked(a: Appliance) -> None:
    """The blocked hash (added to every appliance's list) is answered from the list."""
    import httpx

    for _ in range(200):
        r = httpx.get(a.url(f"/v1/file/{BLOCKED_SHA256}"), timeout=10)
        if r.status_code == 200 and r.json()["results"][0]["source"] == "blocked-list":
            return
        time.sleep(0.05)
    raise RuntimeError(f"{a.name} does not answer its blocked list")


def kill_run(base: str, a: Appliance, lb: Haproxy | None, clients: int
             ) -> tuple[LoadResult, int, float]:
    """A checked load on ``base`` while ``a`` is killed, left down, and restarted: the
    result, how many requests HAProxy resent (0 without ``lb``), and the seconds from the
    kill until a was back (in service again, behind HAProxy). A client whose request
    failed waits 0.1 s before its next one, as a product would."""
    resent = lb.resent() if lb else 0
    with Load(base, standard_probes(), clients=clients, timeout=5, backoff=0.1) as load:
        load.wait_for(300)
        down = time.monotonic()
        a.kill()
        if lb is not None:
            lb.wait_state("a", "DOWN")
        time.sleep(1.0)  # a down for a while, as in a real restart
        a.restart()
        if lb is not None:
            lb.wait_state("a", "UP")
        away = time.monotonic() - down
        load.wait_for(300)
    return load.result, (lb.resent() - resent if lb else 0), away


def show_kill(title: str, result: LoadResult, resent: int, away: float) -> None:
    lost = result.failed + result.wrong
    print(f"  {title:<26} {result.sent:>6} sent {lost:>5} lost ({result.failed} failed,"
          f" {result.wrong} wrong), {resent:>4} resent by haproxy; a away {away:.1f} s")
    for p in result.problems[:3]:
        print(f"      e.g. {p}")


def throughput(pair: list[Appliance], lb: Haproxy, rounds: int, seconds: float,
               scripts: dict[str, Path]) -> None:
    a = pair[0]
    path = f"/v1/file/{EICAR_SHA256}"
    targets = {"direct to a": a.url(path), "haproxy, a only": lb.url(path),
               "haproxy, a and b": lb.url(path)}
    rates: dict[str, list[float]] = {k: [] for k in targets}
    for _ in range(rounds):
        for name, url in targets.items():
            only_a = name == "haproxy, a only"
            if only_a:
                lb.command("disable server query/b")
                lb.wait_state("b", "MAINT")
            result = run_wrk(url, scripts["get"], seconds=seconds, core=1)
            if only_a:
                lb.command("enable server query/b")
                lb.wait_state("b", "UP")
            rates[name].append(result.rps)
            if result.failed:
                print(f"  ({name}: {result.failed} failed requests in this run)")
    base = rates["direct to a"]
    print(f"\nGET {path[:24]}... from wrk, 64 connections, {rounds} rounds of {seconds:g} s")
    for name, got in rates.items():
        ratios = [g / b for g, b in zip(got, base) if b]
        print(f"  {name:<20} {statistics.median(got):>9.0f} req/s   x{statistics.median(ratios):.2f}"
              f" of direct (rounds {min(ratios):.2f}-{max(ratios):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=4, help="threads of the checked load")
    ap.add_argument("--workers", default=None, help="--workers for both appliances (N or auto)")
    ap.add_argument("--no-wrk", action="store_true", help="only the kill runs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-haproxy-"))
    try:
        with two_behind_haproxy(tmp, workers=args.workers) as (pair, lb):
            add_to_list(pair, "--blocked", BLOCKED_SHA256)
            for a in pair:
                wait_blocked(a)
            print("appliance a killed (SIGKILL) and restarted under a checked load,"
                  f" {args.clients} clients:")
            show_kill("straight to a (baseline)", *kill_run(pair[0].url(), pair[0], None,
                                                           args.clients))
            lb.wait_state("a", "UP")
            show_kill("through haproxy (goal 0)", *kill_run(lb.url(), pair[0], lb, args.clients))
            if not args.no_wrk and shutil.which("wrk"):
                pin_all(pair, lb)
                throughput(pair, lb, args.rounds, args.seconds, write_scripts(tmp / "lua"))
            elif not args.no_wrk:
                print("\n(wrk not installed: no throughput figures; apt-get install wrk)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
