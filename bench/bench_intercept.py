"""Intercept door benchmark: intercepted local answers/s and relays/s against bare mitmproxy.

Run by hand; it prints figures and ratios and asserts nothing::

    apt-get install -y wrk
    python3 bench/bench_intercept.py [--seconds 6] [--connections 64]

Three proxies, one at a time, each pinned to core 0 (wrk and the reference
cloud on core 1), all as explicit HTTP proxies on 127.0.0.1 with keep-alive, in
``--rounds`` rounds (default 3) of alternating order; each ratio is the median of
the rounds', by requests/s and by CPU time per request (which other load on a shared
machine moves much less):

- the appliance: ``rampart serve`` (intercept door on, other doors off but the
  query door's health check), relaying unknown items to ``rampart cloud``;
- bare mitmproxy: an embedded ``Master`` with the appliance's addon set (core,
  errorcheck, proxyserver, next_layer, tlsconfig) plus one addon answering from a
  dict (this file, ``--serve-baseline``), ``connection_strategy=lazy``;
- mitmdump: its whole default addon set plus the same dict addon as a script.

wrk sends absolute-form requests (``GET http://localhost:CLOUD/v1/file/…``), as
a product with an HTTP proxy setting does for plain HTTP; wrk cannot tunnel
(CONNECT), so TLS record costs are left out alike for all three. "answers" asks
for the EICAR SHA-256 (a pattern hit); "relays" asks for a new SHA-256 every
time, which the appliance must relay to the cloud (the baselines answer those
from their dict as well: the ratio shows what relaying costs on top).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

EICAR_SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
SERVER_CORE, LOAD_CORE = 0, 1

DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""
# args: 1 = absolute URL prefix (http://localhost:PORT/v1/file/), 2 = Host header
ANSWER = r"""
init = function(args)
  wrk.headers["Host"] = args[2]
  wrk.path = args[1] .. "HASH"
end
""".replace("HASH", EICAR_SHA256) + DONE
RELAY = r"""
local counter = 0
init = function(args)
  prefix = args[1]
  wrk.headers["Host"] = args[2]
  stem = string.format("%08x", math.random(0, 0x7fffffff)) .. "STEM"
end
request = function()
  counter = counter + 1
  return wrk.format("GET", prefix .. stem .. string.format("%08x", counter))
end
""".replace("STEM", "b" * 48) + DONE

DICT_SCRIPT = """
from mitmproxy import http

BODY = open({body!r}, "rb").read()
HEADERS = {{"Content-Type": "application/json"}}


class DictAnswer:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.path.startswith("/v1/file/"):
            flow.response = http.Response.make(200, BODY, HEADERS)


addons = [DictAnswer()]
"""


# ---------------------------------------------------------------- the bare baseline


async def serve_baseline(port: int, body: bytes) -> None:
    from mitmproxy import http, options
    from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
    from mitmproxy.master import Master

    headers = {"Content-Type": "application/json"}

    class DictAnswer:
        def request(self, flow: http.HTTPFlow) -> None:
            if flow.request.path.startswith("/v1/file/"):
                flow.response = http.Response.make(200, body, headers)

    opts = options.Options(confdir=tempfile.mkdtemp(prefix="bench-mitm-"))
    master = Master(opts)
    master.addons.add(core.Core(), errorcheck.ErrorCheck(), proxyserver.Proxyserver(),
                      next_layer.NextLayer(), tlsconfig.TlsConfig(), DictAnswer())
    opts.update(mode=[f"regular@{port}"], listen_host="127.0.0.1", connection_strategy="lazy")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()


# ---------------------------------------------------------------- processes and load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(core: int, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *cmd] if shutil.which("taskset") else cmd


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, cmd: list[str], log: Path) -> Proc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        popen = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env,
                                 cwd=ROOT)
        return cls(name, popen, log)

    def wait_port(self, port: int, timeout: float = 40) -> Proc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on {port}:\n{self.log.read_text()[-3000:]}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()


@dataclass(frozen=True)
class Row:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int
    cpu: float

    @property
    def cpu_per_request_us(self) -> float:
        """The proxy's CPU time per request: moves much less with other load than req/s."""
        return self.cpu / self.rps * 1e6 if self.rps else float("inf")


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def wrk(proc: Proc, proxy_port: int, script: Path, prefix: str, host: str, seconds: float,
        connections: int) -> Row:
    import json

    before, t0 = proc.cpu_seconds(), time.monotonic()
    cmd = pinned(LOAD_CORE, ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout=5s",
                             "-s", str(script), f"http://127.0.0.1:{proxy_port}/", "--", prefix, host])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    cpu = (proc.cpu_seconds() - before) / (time.monotonic() - t0)
    for line in out.splitlines():
        if line.startswith("BENCH "):
            d = json.loads(line[6:])
            secs = d["duration_us"] / 1e6
            return Row(proc.name, d["requests"] / secs, d["p50_us"] / 1000, d["p99_us"] / 1000,
                       d["socket_errors"] + d["non2xx"], cpu)
    raise RuntimeError(f"wrk gave no result:\n{out}")


def check(proxy_port: int, url: str) -> httpx.Response:
    with httpx.Client(proxy=f"http://127.0.0.1:{proxy_port}", timeout=10) as c:
        return c.get(url)


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the six runs, in alternating orders")
    ap.add_argument("--profile", action="store_true",
                    help="also py-spy the appliance during its runs and print its top functions")
    ap.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--body", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_baseline:
        import uvloop

        uvloop.run(serve_baseline(args.serve_baseline, args.body.read_bytes()))
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install -y wrk")

    tmp = Path(tempfile.mkdtemp(prefix="bench-intercept-"))
    py = sys.executable
    procs: list[Proc] = []
    try:
        cloud_port = free_port()
        cloud = Proc.start("cloud", pinned(LOAD_CORE, [
            py, "-m", "addons.cli", "cloud", "--data-dir", str(tmp / "cloud"), "--port",
            str(cloud_port), "--listen", "127.0.0.1", "--log-level", "warning"]), tmp / "cloud.log")
        procs.append(cloud.wait_port(cloud_port))
        time.sleep(0.5)
        host = f"localhost:{cloud_port}"
        prefix = f"http://{host}/v1/file/"

        query, proxy = free_port(), free_port()
        appliance = Proc.start("appliance", pinned(SERVER_CORE, [
            py, "-m", "addons.cli", "serve", "--data-dir", str(tmp / "appliance"), "--listen",
            "127.0.0.1", "--query-port", str(query), "--query-tls-port", "0", "--proxy-port",
            str(proxy), "--transparent-port", "0", "--capture-port", "0", "--log-level", "warning",
            "--cloud", f"https://{host}", "--cloud-ca", str(tmp / "cloud" / "ca.pem")]),
            tmp / "appliance.log")
        procs.append(appliance.wait_port(query).wait_port(proxy))
        answer = check(proxy, prefix + EICAR_SHA256)
        assert answer.headers.get("x-rampart-source") == "pattern", answer.text
        body = tmp / "body.json"
        body.write_bytes(answer.content)

        bare_port, dump_port = free_port(), free_port()
        bare = Proc.start("bare mitmproxy", pinned(SERVER_CORE, [
            py, __file__, "--serve-baseline", str(bare_port), "--body", str(body)]), tmp / "bare.log")
        script = tmp / "dict_answer.py"
        script.write_text(DICT_SCRIPT.format(body=str(body)))
        mitmdump = shutil.which("mitmdump") or "mitmdump"
        dump = Proc.start("mitmdump", pinned(SERVER_CORE, [
            mitmdump, "-q", "--mode", f"regular@{dump_port}", "--listen-host", "127.0.0.1",
            "--set", "connection_strategy=lazy", "--set", f"confdir={tmp / 'mitmdump'}",
            "-s", str(script)]), tmp / "mitmdump.log")
        procs += [bare.wait_port(bare_port), dump.wait_port(dump_port)]
        for port in (bare_port, dump_port):
            assert check(port, prefix + EICAR_SHA256).content == answer.content

        scripts = {}
        for name, text in (("answer", ANSWER), ("relay", RELAY)):
            scripts[name] = tmp / f"{name}.lua"
            scripts[name].write_text(text)
        servers = [(appliance, proxy), (bare, bare_port), (dump, dump_port)]
        rows: dict[tuple[str, str], Row] = {}
        profiles = []
        runs: dict[tuple[str, str], list[Row]] = {}
        for n in range(args.rounds):  # alternating orders: each proxy meets the same machine
            for kind in ("answer", "relay"):
                for proc, port in servers if n % 2 == 0 else servers[::-1]:
                    check(port, prefix + EICAR_SHA256)  # warm
                    spying = None
                    if args.profile and proc is appliance and n == 0:
                        import spy

                        raw = tmp / f"spy-{kind}.txt"
                        spying = spy.record(proc.popen.pid, max(1, args.seconds - 1), raw)
                    row = wrk(proc, port, scripts[kind], prefix, host, args.seconds, args.connections)
                    runs.setdefault((kind, proc.name), []).append(row)
                    if spying is not None:
                        spying.wait()
                        profiles.append(spy.report(raw, f"appliance, {kind}s (py-spy)", 25))
        print(f"\n{'scenario':<10} {'proxy':<16} {'round':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'cpu':>5} {'µs cpu/req':>10} {'failed':>7}")
        for (kind, name), rows in runs.items():
            for i, r in enumerate(rows):
                print(f"{kind:<10} {name:<16} {i + 1:>5} {r.rps:>9,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
                      f"{r.cpu:>5.2f} {r.cpu_per_request_us:>10.0f} {r.failed:>7}")
        print("\nratios, the median of the rounds' (each round measures the three back to back):")
        for kind in ("answer", "relay"):
            for other, label in (("bare mitmproxy", "bare mitmproxy (same addons, dict)"),
                                 ("mitmdump", "mitmdump (default addons, dict)")):
                mine, theirs = runs[(kind, "appliance")], runs[(kind, other)]
                rate = median([a.rps / b.rps for a, b in zip(mine, theirs)])
                cpu = median([b.cpu_per_request_us / a.cpu_per_request_us for a, b in zip(mine, theirs)])
                print(f"  intercepted {kind + 's'}/s / {label:<36} {rate:5.2f}   "
                      f"(by CPU per request: {cpu:5.2f})")
        print("(goals: answers ≥ 0.95 of bare mitmproxy and ≥ 1.8 of mitmdump)")
        for text in profiles:
            print("\n" + text)
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
