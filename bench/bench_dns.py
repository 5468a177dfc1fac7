"""DNS door benchmark: run by hand; prints figures, asserts nothing.

    python3 bench/bench_dns.py                        # 100,000 domains + 100,000 IPv4 addresses
    python3 bench/bench_dns.py --entries 1000000 --seconds 10 --rounds 3

In one run, with the same data: a pattern built from ``--entries`` listed domains and as
many listed IPv4 addresses (``rampart pattern build --domains``), served by
``rampart serve --pattern BUILD --dns-port P`` (every other door off but the HTTP query
door), and the same entries as rbldnsd zones (``dnset`` and ``ip4set``). Both servers
are pinned to core 0 with ``taskset``; dnsperf runs on core 1. Runs alternate
(rbldnsd, rampart, rbldnsd, rampart, ...) for ``--rounds`` rounds and medians are kept.

Printed, for each of listed names (A), not-listed names (NXDOMAIN) and, with
``--relayed``, names the door relays to a reference cloud (``rampart cloud``, started
here; rbldnsd has no such thing, so that line has no ratio):

- queries per second from dnsperf (``-c 8 -q 256``) and the ratio rampart / rbldnsd
  (goal for local answers: >= 0.5 on one core);
- p50 and p99 latency of 2,000 queries sent one at a time from this process;
- the response codes dnsperf saw (a rate of REFUSED answers is not a rate of answers:
  rampart's ``dns_rate_limit`` is off here, through a config file, as rbldnsd has none);
- the server's CPU time (user and system, all its threads) per answered query, median of
  the rounds: what the server itself spends, which the load of other processes on the
  cores moves much less than queries/s (rbldnsd's rate is often dnsperf's own limit);
- resident memory of each server after loading, and per million entries (the RSS with
  the entries less the RSS with a 10-entry data set, scaled), the goal being below
  rbldnsd's; and the RSS of the measured servers after every dnsperf run (the pattern's
  tables are memory-mapped: the pages the queries touched count then, not at loading).

``--no-query-log`` measures rampart without its query log (a SQLite row per answer,
written by a thread on the same core; rbldnsd keeps no log).

``--floor`` adds two responders that answer every query NXDOMAIN without reading it
(``bench/dns_floor.py``: an asyncio datagram protocol on uvloop, as the door's transport, and
a plain recvfrom/sendto loop), run on the same core in the same rounds: their rate against
rbldnsd's is the most any Python answer path on that transport can reach.

A fourth query set, ``repeated``, asks a few hundred names (listed and not) over and over,
as a mail server asks about its regular senders: the case the answer memo serves.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RAMPART = [sys.executable, "-m", "addons.cli"]
IP_ZONE, DN_ZONE = "ip.rampart.local", "dn.rampart.local"
SEED = 20261201
REPEATED = 300  # distinct names in the repeated set


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def entries(n: int) -> tuple[list[str], list[str]]:
    rng = random.Random(SEED)
    domains = [f"bad{i}-{rng.randrange(1 << 30):x}.example.net" for i in range(n)]
    ips = sorted({f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}" for _ in range(n)})
    return domains, ips


def write_sources(tmp: Path, domains: list[str], ips: list[str]) -> tuple[Path, Path]:
    """The pattern's domain/IP source and rbldnsd's two zone files, with the same entries."""
    src = tmp / "domains.txt"
    with src.open("w") as out:
        for d in domains:
            out.write(f"{d},dangerous,malware\n")
        for ip in ips:
            out.write(f"{ip},dangerous,spam\n")
    rbl = tmp / "rbl"
    rbl.mkdir()
    (rbl / "dn.zone").write_text(":127.0.0.2:listed\n" + "".join(f"{d}\n*.{d}\n" for d in domains))
    (rbl / "ip.zone").write_text(":127.0.0.2:listed\n" + "".join(f"{ip}\n" for ip in ips))
    os.chmod(rbl, 0o755)
    for f in rbl.iterdir():
        os.chmod(f, 0o644)
    return src, rbl


def query_files(tmp: Path, domains: list[str], ips: list[str], n: int = 100_000) -> dict[str, Path]:
    rng = random.Random(SEED + 1)
    listed = [f"{rng.choice(domains)}.{DN_ZONE} A" if i % 2 else
              f"{'.'.join(reversed(rng.choice(ips).split('.')))}.{IP_ZONE} A" for i in range(n)]
    unlisted = [f"good{rng.randrange(1 << 40):x}.example.org.{DN_ZONE} A" if i % 2 else
                f"{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}.172.{IP_ZONE} A"
                for i in range(n)]
    relayed = [f"cloud{i}-{rng.randrange(1 << 40):x}.example.org.{DN_ZONE} A" for i in range(n)]
    few = listed[:REPEATED // 2] + unlisted[:REPEATED // 2]
    repeated = [rng.choice(few) for _ in range(n)]
    out = {}
    for name, lines in (("listed", listed), ("not listed", unlisted), ("repeated", repeated),
                        ("relayed", relayed)):
        path = tmp / f"q-{name.replace(' ', '-')}.txt"
        path.write_text("\n".join(lines) + "\n")
        out[name] = path
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User and system time of ``pid`` and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, timeout: float = 60) -> None:
    """Wait until the server is idle (under 5% of a core for half a second): whatever a
    server still does after its first answer (opening, warming) is not measured."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return


def wait_answering(port: int, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(port), "@127.0.0.1",
                            name, "A"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return
        time.sleep(0.2)
    sys.exit(f"bench_dns: nothing answered {name} on port {port}")


class Server:
    def __init__(self, name: str, args: list[str], port: int) -> None:
        self.name, self.port = name, port
        self.proc = subprocess.Popen(["taskset", "-c", "0", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)

    @property
    def pid(self) -> int:
        """The server's own pid (rbldnsd -n and rampart serve run under taskset's exec)."""
        return self.proc.pid


def floor(kind: str, port: int) -> Server:
    return Server(f"{kind} floor", [sys.executable, str(Path(__file__).with_name("dns_floor.py")),
                                    kind, str(port)], port)


def wait_udp(port: int, timeout: float = 30) -> None:
    """Until something answers a query on ``port`` (any response code)."""
    import dns.exception
    import dns.message
    import dns.query

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            dns.query.udp(dns.message.make_query("probe.example", "A"), "127.0.0.1", port=port,
                          timeout=0.5)
            return
        except (dns.exception.Timeout, OSError):
            time.sleep(0.2)
    sys.exit(f"bench_dns: nothing answered on port {port}")


def rbldnsd(rbl: Path, port: int) -> Server:
    return Server("rbldnsd", ["rbldnsd", "-n", "-u", "nobody", "-b", f"127.0.0.1/{port}", "-w", str(rbl),
                              "-t", "3600", f"{DN_ZONE}:dnset:dn.zone", f"{IP_ZONE}:ip4set:ip.zone"], port)


QUERY_LOG = True  # --no-query-log: without the query log's row per answer (rbldnsd keeps none)


def rampart(tmp: Path, build: Path, port: int, name: str, cloud: list[str]) -> Server:
    data = tmp / f"data-{name}"
    config = tmp / "bench.toml"  # no per-client rate limit: dnsperf is one client, as rbldnsd sees it
    config.write_text("dns_rate_limit = 0\n" + ("" if QUERY_LOG else "query_log = false\n"))
    return Server("rampart", [
        *RAMPART, "serve", "--config", str(config), "--data-dir", str(data), "--pattern", str(build),
        "--listen", "127.0.0.1",
        "--dns-port", str(port), "--query-port", str(free_port()), "--query-tls-port", "0",
        "--console-port", "0", "--proxy-port", "0", "--transparent-port", "0", "--capture-port", "0",
        "--log-level", "warning", *cloud], port)


def dnsperf(port: int, queries: Path, seconds: float) -> tuple[float, str, int]:
    """Queries per second, the response codes seen (e.g. "NOERROR 100.00%") and how many
    queries were answered."""
    r = subprocess.run(["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port),
                        "-d", str(queries), "-l", str(seconds), "-c", "8", "-q", "256", "-t", "2"],
                       capture_output=True, text=True)
    m = re.search(r"Queries per second:\s+([\d.]+)", r.stdout)
    if not m:
        sys.exit(f"bench_dns: dnsperf said:\n{r.stdout}{r.stderr}")
    codes = re.search(r"Response codes:\s+(.*)", r.stdout)
    shares = re.findall(r"([A-Z]+) \d+ \(([\d.]+%)\)", codes.group(1)) if codes else []
    done = re.search(r"Queries completed:\s+(\d+)", r.stdout)
    return float(m.group(1)), ", ".join(f"{c} {p}" for c, p in shares), int(done.group(1)) if done else 0


def latencies(port: int, queries: Path, n: int = 2000) -> tuple[float, float]:
    """p50 and p99 in ms of ``n`` queries sent one at a time (dnspython, UDP)."""
    import dns.message
    import dns.query

    names = [line.split()[0] for line in queries.read_text().splitlines()[:n]]
    took = []
    for name in names:
        q = dns.message.make_query(name, "A")
        t = time.perf_counter()
        dns.query.udp(q, "127.0.0.1", port=port, timeout=2)
        took.append((time.perf_counter() - t) * 1000)
    took.sort()
    return statistics.median(took), took[int(len(took) * 0.99) - 1]


def build(tmp: Path, name: str, src: Path) -> Path:
    out = tmp / f"build-{name}"
    subprocess.run([*RAMPART, "pattern", "build", "--out", str(out), "--domains", str(src)], check=True,
                   capture_output=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000, help="listed domains, and as many IPs")
    ap.add_argument("--seconds", type=float, default=5.0, help="each dnsperf run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--relayed", action="store_true", help="also relayed names (a reference cloud)")
    ap.add_argument("--floor", action="store_true",
                    help="also Python responders that answer without reading (bench/dns_floor.py)")
    ap.add_argument("--no-query-log", action="store_true",
                    help="rampart without its query log (on by default: a row per answer)")
    args = ap.parse_args()
    global QUERY_LOG
    QUERY_LOG = not args.no_query_log
    for tool in ("dnsperf", "rbldnsd", "dig", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench_dns: {tool} is needed"
                     " (apt-get install dnsperf rbldnsd bind9-dnsutils util-linux)")
    with tempfile.TemporaryDirectory(prefix="bench-dns-") as t:
        tmp = Path(t)
        os.chmod(tmp, 0o755)
        domains, ips = entries(args.entries)
        src, rbl = write_sources(tmp, domains, ips)
        (tmp / "small").mkdir()
        s_src, small_rbl = write_sources(tmp / "small", domains[:5], ips[:5])
        print(f"building the pattern: {len(domains)} domains, {len(ips)} IPv4 addresses ...")
        big, small = build(tmp, "big", src), build(tmp, "small", s_src)
        files = query_files(tmp, domains, ips)
        probe = f"{'.'.join(reversed(ips[0].split('.')))}.{IP_ZONE}"
        cloud: list[str] = []
        cloud_proc = None
        if args.relayed:
            cport = free_port()
            cloud_proc = subprocess.Popen(
                [*RAMPART, "cloud", "--data-dir", str(tmp / "cloud"), "--port", str(cport),
                 "--listen", "127.0.0.1", "--log-level", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(3)
            cloud = ["--cloud", f"https://localhost:{cport}", "--cloud-ca", str(tmp / "cloud" / "ca.pem")]
        memory: dict[str, tuple[int, int]] = {}
        for name, (data_big, data_small) in (("rbldnsd", (rbl, small_rbl)), ("rampart", (big, small))):
            sizes: list[int] = []
            for data in (data_small, data_big):
                port = free_port()
                s = (rbldnsd(data, port) if name == "rbldnsd"
                     else rampart(tmp, data, port, f"m{len(sizes)}", []))
                wait_answering(port, probe)
                time.sleep(1)
                sizes.append(rss_kib(s.pid))
                s.stop()
            memory[name] = (sizes[1], sizes[0])
        rates: dict[tuple[str, str], list[float]] = {}
        codes: dict[tuple[str, str], str] = {}  # the last round's response codes
        cpu: dict[tuple[str, str], list[float]] = {}  # the server's CPU µs per answered query
        after: dict[str, int] = {}  # RSS after the dnsperf runs: mapped pages touched count
        lat: dict[tuple[str, str], tuple[float, float]] = {}
        rp, bp = free_port(), free_port()
        servers = [rbldnsd(rbl, bp), rampart(tmp, big, rp, "run", cloud)]
        if args.floor:
            servers += [floor("uvloop", free_port()), floor("blocking", free_port())]
        try:
            for s in servers:
                if s.name.endswith("floor"):
                    wait_udp(s.port)
                else:
                    wait_answering(s.port, probe)
            for s in servers:
                settle(s.pid)
            kinds = ["listed", "not listed", "repeated"] + (["relayed"] if args.relayed else [])
            for _ in range(args.rounds):
                for kind in kinds:
                    for s in servers:
                        if (kind == "relayed" and s.name == "rbldnsd") or (
                                s.name.endswith("floor") and kind != "listed"):
                            continue  # a floor answers every name alike: measured once a round
                        before = cpu_seconds(s.pid)
                        rate, seen, done = dnsperf(s.port, files[kind], args.seconds)
                        rates.setdefault((s.name, kind), []).append(rate)
                        cpu.setdefault((s.name, kind), []).append(
                            (cpu_seconds(s.pid) - before) * 1e6 / max(done, 1))
                        codes[(s.name, kind)] = seen
            for s in servers:
                after[s.name] = rss_kib(s.pid)
            for kind in kinds:
                for s in servers:
                    if (kind == "relayed" and s.name == "rbldnsd") or s.name.endswith("floor"):
                        continue
                    lat[(s.name, kind)] = latencies(s.port, files[kind])
        finally:
            for s in servers:
                s.stop()
            if cloud_proc is not None:
                cloud_proc.terminate()
        report(args, len(domains) + len(ips), len(ips), rates, codes, lat, memory, after, cpu)


def spread(values: list[float]) -> str:
    """The median and the range of the rounds (other work on the cores moves them)."""
    return f"{statistics.median(values):>9,.0f} q/s ({min(values):,.0f}-{max(values):,.0f})"


def report(args: argparse.Namespace, n: int, n_ips: int, rates: dict[tuple[str, str], list[float]],
           codes: dict[tuple[str, str], str], lat: dict[tuple[str, str], tuple[float, float]],
           memory: dict[str, tuple[int, int]], after: dict[str, int],
           cpu: dict[tuple[str, str], list[float]]) -> None:
    print(f"\n{n - n_ips} domains + {n_ips} IPv4 entries; {args.rounds} alternating rounds of"
          f" {args.seconds:g} s; medians (range of the rounds); rampart's query log"
          f" {'off' if args.no_query_log else 'on'}")
    for kind in ("listed", "not listed", "repeated", "relayed"):
        if ("rampart", kind) not in rates:
            continue
        r = rates[("rampart", kind)]
        p50, p99 = lat[("rampart", kind)]
        print(f"  {kind:<11} rampart {spread(r)}  p50 {p50:.2f} ms  p99 {p99:.2f} ms"
              f"  [{codes[('rampart', kind)]}]")
        b = rates.get(("rbldnsd", kind))
        if b:
            bp50, bp99 = lat[("rbldnsd", kind)]
            ratios = [x / y for x, y in zip(r, b)]  # round by round: the same load on the cores
            print(f"  {'':<11} rbldnsd {spread(b)}  p50 {bp50:.2f} ms  p99 {bp99:.2f} ms"
                  f"  [{codes[('rbldnsd', kind)]}]")
            print(f"  {'':<11} ratio {statistics.median(r) / statistics.median(b):.2f}"
                  f" (rounds {', '.join(f'{x:.2f}' for x in ratios)})")
            rc, bc = statistics.median(cpu[("rampart", kind)]), statistics.median(cpu[("rbldnsd", kind)])
            print(f"  {'':<11} CPU per answered query: rampart {rc:.1f} us, rbldnsd {bc:.1f} us"
                  f" (rbldnsd / rampart {bc / rc:.2f})")
    for name in ("uvloop floor", "blocking floor"):
        if (name, "listed") not in rates:
            continue
        r, b = rates[(name, "listed")], rates[("rbldnsd", "listed")]
        ratios = [x / y for x, y in zip(r, b)]
        fc, bc = statistics.median(cpu[(name, "listed")]), statistics.median(cpu[("rbldnsd", "listed")])
        print(f"  {name:<15} {spread(r)}  answers without reading; ratio to rbldnsd (listed)"
              f" {statistics.median(ratios):.2f}; CPU per query {fc:.1f} us (rbldnsd {bc:.1f} us)")
    for name, (big_kib, small_kib) in memory.items():
        per_million = (big_kib - small_kib) * 1_000_000 / n / 1024
        print(f"  memory {name:<8} {big_kib / 1024:8.1f} MiB loaded,"
              f" {per_million:8.1f} MiB per million entries;"
              f" {after.get(name, 0) / 1024:8.1f} MiB after the dnsperf runs")


if __name__ == "__main__":
    main()
