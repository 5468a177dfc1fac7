"""Rampart benchmark
(docs/architecture.md, “The picture”; issue 2 §6): one command, prints figures and ratios, asserts nothing.

    python3 bench/run.py [--seconds 6] [--profile] [--keep]

Starts the reference cloud, the appliance relaying to it, nginx (one worker,
a static body) and a bare mitmproxy addon answering from a dict, each server
pinned to core 0 with ``taskset`` and wrk (one thread, 64 keep-alive
connections) on core 1, all on 127.0.0.1. See bench/README.md for what each
figure means. ``--profile`` repeats the appliance scenarios under py-spy and
prints each one's top functions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load
import spy

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
EICAR_MD5 = "44d88612fea8a8f36de82e1278abb02f"
EICAR_SHA1 = "3395856ce81f2b7382dee72602f798b642f14140"
EICAR_SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
PATTERN_HITS = [
    {"sha256": EICAR_SHA256}, {"sha1": EICAR_SHA1}, {"md5": EICAR_MD5},
    {"sha256": "e3cdd2e8de4be34893f09ad30b29e3ad94a84d5014416beca475dbbbd57a90d5"},
    {"sha256": "6e448262d5e28f1637398f7215de860a4c986fa32a78bdeab4d733a57d506b63"},
]
SERVER_CORE, LOAD_CORE = 0, 1
DOORS_OFF: list[str] = []
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(core: int | None, cmd: list[str]) -> list[str]:
    return cmd if core is None or shutil.which("taskset") is None else ["taskset", "-c", str(core), *cmd]


# ---------------------------------------------------------------- processes


@dataclass
class Server:
    name: str
    cmd: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    root: Path = ROOT  # the checkout it runs from (--before: an earlier one)

    def start(self, ready_url: str, timeout: float = 40) -> Server:
        out = self.log.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(self.root)}
        self.popen = subprocess.Popen(self.cmd, stdout=out, stderr=out, env=env, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.popen.returncode}:\n{self.tail()}")
            try:
                if httpx.get(ready_url, verify=False, timeout=1).status_code == 200:
                    return self
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not come up:\n{self.tail()}")

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def pids(self) -> list[int]:
        """This process and its descendants (nginx's worker)."""
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                todo += [int(c) for c in task.read_text().split()]
        return out

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLK_TCK

    def rss_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        values = {k: int(v.split()[0]) for k, v in
                  (line.split(":", 1) for line in status.splitlines() if line.startswith(("VmRSS", "VmHWM")))}
        return values["VmRSS"] / 1024, values["VmHWM"] / 1024

    def pin(self, core: int) -> None:
        for pid in self.pids():
            subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], capture_output=True)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def rampart(*args: str) -> list[str]:
    return [sys.executable, "-m", "addons.cli", *args]


def start_cloud(tmp: Path) -> tuple[Server, int]:
    port = free_port()
    s = Server("cloud", pinned(LOAD_CORE, rampart(
        "cloud", "--data-dir", str(tmp / "cloud"), "--port", str(port), "--listen", "127.0.0.1",
        "--log-level", "warning")), tmp / "cloud.log")
    return s.start(f"https://127.0.0.1:{port}/healthz"), port


def doors_off() -> list[str]:
    """Flags that turn off every door but the query door's HTTP listener (those this build has)."""
    text = subprocess.run(rampart("serve", "--help"), capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    out = ["--query-tls-port", "0"]
    for flag in ("--proxy-port", "--transparent-port", "--capture-port", "--dns-port", "--console-port"):
        if flag in text:
            out += [flag, "0"]
    return out


def start_appliance(tmp: Path, name: str, cloud_port: int, config: str = "",
                    root: Path = ROOT, tls_port: int = 0) -> tuple[Server, int]:
    """``tls_port``: the HTTPS query door's too (0: off)."""
    port = free_port()
    extra: list[str] = list(DOORS_OFF)
    if tls_port:
        extra[extra.index("--query-tls-port") + 1] = str(tls_port)
    if config:
        (tmp / f"{name}.toml").write_text(config)
        extra += ["--config", str(tmp / f"{name}.toml")]
    s = Server(name, pinned(SERVER_CORE, rampart(
        "serve", "--data-dir", str(tmp / name), "--listen", "127.0.0.1", "--query-port", str(port),
        "--log-level", "warning",
        "--cloud", f"https://localhost:{cloud_port}", "--cloud-ca", str(tmp / "cloud" / "ca.pem"),
        *extra)), tmp / f"{name}.log", root=root)
    return s.start(f"http://127.0.0.1:{port}/healthz"), port


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {prefix}/cert.pem;
        ssl_certificate_key {prefix}/key.pem;
        location = /healthz {{ return 200 'alive'; }}
        location / {{ default_type application/json; return 200 '{body}'; }}
    }}
}}
"""


def write_p256_certificate(cert: Path, key: Path) -> None:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1: the key type of the appliance's
    door certificate (``certs``), so both TLS servers sign and encrypt alike."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    built = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
             .public_key(private.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=7))
             .add_extension(x509.SubjectAlternativeName(
                 [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
             .sign(private, hashes.SHA256()))
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key.chmod(0o600)


def start_nginx(tmp: Path, body: bytes) -> tuple[Server, int, int] | None:
    """nginx serving ``body``: (server, HTTP port, HTTPS port); None when not installed."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if exe is None:
        return None
    port, tls_port = free_port(), free_port()
    prefix = tmp / "nginx"
    prefix.mkdir(exist_ok=True)
    write_p256_certificate(prefix / "cert.pem", prefix / "key.pem")
    text = body.decode().replace("\\", "\\\\").replace("'", "\\'")
    (prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=prefix, port=port, tls_port=tls_port,
                                                         body=text))
    s = Server("nginx", pinned(SERVER_CORE, [exe, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                             "-e", str(prefix / "error.log")]), tmp / "nginx.log")
    return s.start(f"http://127.0.0.1:{port}/healthz"), port, tls_port


def start_mitm(tmp: Path, body: bytes, path: str, full: bool = False) -> tuple[Server, int]:
    port = free_port()
    (tmp / "mitm-body.json").write_bytes(body)
    cmd = [sys.executable, str(ROOT / "bench" / "baseline_mitm.py"), "--port", str(port),
           "--body-file", str(tmp / "mitm-body.json"), "--path", path]
    if full:
        cmd.append("--full")
    s = Server("mitmproxy-full" if full else "mitmproxy", pinned(SERVER_CORE, cmd), tmp / "mitm.log")
    return s.start(f"http://127.0.0.1:{port}/healthz"), port


# ---------------------------------------------------------------- scenarios


@dataclass
class Row:
    name: str
    result: load.WrkResult
    items: int = 1  # items per request
    cpu: float = 0.0  # the measured servers' CPU, in cores, during the run
    other: float = 0.0  # CPU used on the server's core by anything else (other processes), in cores
    sources: str = ""  # where the appliance's answers came from during the run (its /metrics)
    note: str = ""

    @property
    def items_per_s(self) -> float:
        return self.result.rps * self.items


def core_busy() -> dict[str, int]:
    """Busy jiffies per core (cpu0, cpu1, …) from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals]
            out[name] = sum(v) - v[3] - v[4]  # all but idle and iowait
    return out


def item_sources(base: str) -> Counter[str]:
    """rampart_items_total{service="file",source=…} from an appliance's /metrics, and as
    ``log_dropped`` the answers its query log dropped (``rampart_log_dropped_total``): a
    run with the log on where the writer fell behind shows it, so its rate is not read as
    the rate of logged answers."""
    out: Counter[str] = Counter()
    try:
        text = httpx.get(base + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return out
    for line in text.splitlines():
        if line.startswith('rampart_items_total{') and 'service="file"' in line:
            source = line.split('source="', 1)[1].split('"', 1)[0]
            out[source] += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("rampart_log_dropped_total{"):
            out["log_dropped"] += int(float(line.rsplit(" ", 1)[1]))
    return out


@dataclass
class Bench:
    tmp: Path
    seconds: float
    scripts: dict[str, Path]
    rows: dict[str, Row] = field(default_factory=dict)
    rss: tuple[float, float] | None = None  # the appliance's (VmRSS, VmHWM) in MiB after its runs
    single_ratios: dict[str, float] = field(default_factory=dict)  # median of alternating rounds

    def measure(self, key: str, name: str, servers: list[Server], url: str, script: str, *args: str,
                items: int = 1, connections: int = 64, note: str = "", metrics: str | None = None,
                probe: str | None = None) -> Row:
        before_sources = item_sources(metrics) if metrics else Counter()
        before = [s.cpu_seconds() for s in servers]
        busy = core_busy()
        started = time.monotonic()
        result = load.run_wrk(url, self.scripts[script], *args, connections=connections,
                              seconds=self.seconds, core=LOAD_CORE)
        wall = time.monotonic() - started
        busy_after = core_busy()
        ours = [s.cpu_seconds() - b for s, b in zip(servers, before)]
        cpu = sum(ours) / wall
        core0 = (busy_after[f"cpu{SERVER_CORE}"] - busy[f"cpu{SERVER_CORE}"]) / CLK_TCK / wall
        other = max(0.0, core0 - ours[0] / wall)  # servers[0] is the one pinned to the server core
        sources = ""
        if metrics:
            diff = item_sources(metrics) - before_sources
            sources = " ".join(f"{k}={v}" for k, v in sorted(diff.items()))
        row = Row(name, result, items, cpu, other, sources, note)
        self.rows[key] = row
        r = result
        print(f"  {name:<44} {row.items_per_s:>12,.0f} items/s  p50 {r.p50_ms:7.2f} ms  "
              f"p99 {r.p99_ms:7.2f} ms  cpu {cpu:4.0%}  other {other:4.0%}"
              + (f"  [{sources}]" if sources else ""), flush=True)
        if r.failed:
            print(f"    FAILED: {r.socket_errors} socket errors, {r.non2xx} non-2xx", flush=True)
            if probe:
                try:
                    got = httpx.get(probe, timeout=10, verify=False)
                    print(f"    probe {probe}: {got.status_code} {got.text[:300]}", flush=True)
                except httpx.HTTPError as e:
                    print(f"    probe {probe}: {e!r}", flush=True)
        return row


def probe(base: str) -> str:
    """A URL asking about one new unknown hash (relayed)."""
    return f"{base}/v1/file/{os.urandom(32).hex()}"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_sources(url: str, body: dict[str, object], want: set[str]) -> Counter[str]:
    doc = httpx.post(url, json=body, timeout=30).json()
    sources = Counter(r["source"] for r in doc["results"])
    if not set(sources) <= want:
        raise RuntimeError(f"unexpected sources {dict(sources)} (want only {sorted(want)})")
    return sources


def warm(url: str, hashes: list[str]) -> Counter[str]:
    """Ask every hash once (batches of 1,000) so the cloud's answers are cached."""
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=30) as client:
        for i in range(0, len(hashes), 1000):
            body = {"items": [{"sha256": h} for h in hashes[i:i + 1000]]}
            doc = client.post(url, json=body).json()
            seen.update(r["source"] for r in doc["results"])
    return seen


def profile_run(bench: Bench, server: Server, title: str, url: str, script: str, *args: str) -> str:
    out = bench.tmp / f"profile-{'-'.join(title.replace(',', '').split())}.txt"
    secs = max(3, int(bench.seconds))
    rec = spy.record(server.pid, secs, out, core=LOAD_CORE)
    time.sleep(0.3)
    load.run_wrk(url, bench.scripts[script], *args, seconds=secs, core=LOAD_CORE)
    try:
        rec.wait(secs + 30)
    except subprocess.TimeoutExpired:
        rec.kill()
    if not out.exists():
        err = rec.stderr.read().decode(errors="replace") if rec.stderr else ""
        return f"--- {title}: py-spy failed: {err[-500:]}\n"
    return spy.report(out, title)


def ratio(a: Row | None, b: Row | None) -> str:
    if a is None or b is None or not b.items_per_s:
        return "n/a"
    return f"{a.items_per_s / b.items_per_s:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description="Rampart benchmark: prints figures and ratios.")
    ap.add_argument("--seconds", type=float, default=6, help="length of each measured run")
    ap.add_argument("--profile", action="store_true", help="also profile each appliance scenario (py-spy)")
    ap.add_argument("--mitm-full", action="store_true", help="also run mitmproxy with its default addons")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--batches", action="store_true",
                    help="only the 1,000-item batch scenarios and nginx (with --profile: their profiles)")
    ap.add_argument("--before", type=Path, metavar="DIR",
                    help="with --batches: also run the batches without the query log from the checkout in "
                         "DIR (e.g. git archive of an earlier commit), in the same run")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is needed (apt-get install -y wrk nginx)")

    DOORS_OFF[:] = doors_off()
    tmp = Path(tempfile.mkdtemp(prefix="rampart-bench-"))
    bench = Bench(tmp, args.seconds, load.write_scripts(tmp / "lua"))
    servers: list[Server] = []
    profiles: list[str] = []
    try:
        print(f"rampart bench: {os.cpu_count()} cores; servers on core {SERVER_CORE}, wrk on core "
              f"{LOAD_CORE}; {args.seconds:g} s per run; work dir {tmp}", flush=True)
        cloud, cloud_port = start_cloud(tmp)
        servers.append(cloud)
        tls_port = free_port()
        app, app_port = start_appliance(tmp, "appliance", cloud_port, tls_port=tls_port)
        servers.append(app)
        base = f"http://127.0.0.1:{app_port}"

        # -- correctness and cache warming (not measured)
        single_path = f"/v1/file/{EICAR_SHA256}"
        single = httpx.get(base + single_path)
        assert single.json()["results"][0]["source"] == "pattern", single.text
        body = single.content
        warm_hashes = [sha256_hex(f"rampart-bench-warm-{i}") for i in range(20_000)]
        first = warm(base + "/v1/file", warm_hashes)
        again = warm(base + "/v1/file", warm_hashes[:1000])
        print(f"  warmed the cache with {len(warm_hashes):,} hashes: first {dict(first)}, "
              f"again {dict(again)}", flush=True)
        (tmp / "warm.txt").write_text("\n".join(warm_hashes) + "\n")
        bodies = batch_bodies(tmp, warm_hashes)
        mix = check_sources(base + "/v1/file", json.loads(bodies["batch"].read_text()), {"pattern", "cache"})
        print(f"  batch body: 1,000 items {dict(mix)}, {bodies['batch'].stat().st_size:,} bytes; "
              f"single answer {len(body)} bytes", flush=True)

        # -- appliance, local answers
        print("appliance (query door, HTTP, pinned to core 0):", flush=True)
        if not args.batches:
            singles_against_nginx(bench, servers, app, base, f"https://127.0.0.1:{tls_port}", body,
                                  single_path)
        measure_batches(bench, app, base, bodies)
        if args.batches:
            app.stop()
            servers.remove(app)
            if args.before:
                before_and_after(bench, servers, cloud_port, bodies, warm_hashes, args.before)
            else:
                batches_without_log(bench, servers, cloud_port, bodies, warm_hashes)
            print("baselines (pinned to core 0):", flush=True)
            baseline_nginx(bench, servers, tmp, body, single_path)
        else:
            singles_and_relays(bench, servers, app, base, cloud, cloud_port, body, single_path,
                               args.mitm_full)
        summary(bench)

        if args.profile:
            # --batches: the request path itself, without the query log's writer thread
            app, app_port = start_appliance(tmp, "appliance-prof", cloud_port,
                                            "query_log = false\n" if args.batches else "")
            servers.append(app)
            base = f"http://127.0.0.1:{app_port}"
            warm(base + "/v1/file", warm_hashes)
            print("\nprofiles (py-spy, appliance under the same load"
                  + (", query_log = false" if args.batches else "") + "):", flush=True)
            batch_profiles = [
                ("batch 1,000 pattern+cache", base + "/v1/file", "post_file", (str(bodies["batch"]),)),
                ("batch 1,000 pattern only", base + "/v1/file", "post_file", (str(bodies["batch_pattern"]),)),
                ("batch 1,000 cache only", base + "/v1/file", "post_file", (str(bodies["batch_cache"]),)),
            ]
            others = [
                ("single item, pattern", base + single_path, "get", ()),
                ("cache hit, single", base, "get_cycle", ("/v1/file/", str(tmp / "warm.txt"))),
                ("relayed, single", base, "get_unique", ("/v1/file/", os.urandom(24).hex())),
            ]
            for title, url, script, sargs in batch_profiles + ([] if args.batches else others):
                text = profile_run(bench, app, title, url, script, *sargs)
                profiles.append(text)
                print(text, flush=True)
    finally:
        for s in servers:
            s.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def batch_bodies(tmp: Path, warm_hashes: list[str]) -> dict[str, Path]:
    """The 1,000-item batch bodies, written as JSON files (json.dumps' spacing, as clients send).

    ``batch``: 100 pattern hits of all three kinds + 900 cached; ``batch_pattern``: 1,000
    pattern hits; ``batch_cache``: 1,000 cached; ``batch_mixed``: 333 pattern hits and 333
    cached, to which ``post_misses`` adds 334 digests nobody has seen, new every request.
    """
    rng = random.Random(7)
    hits = [PATTERN_HITS[i % len(PATTERN_HITS)] for i in range(1000)]
    cached = [{"sha256": h} for h in rng.sample(warm_hashes, 1000)]
    items = {
        "batch": hits[:100] + cached[:900],
        "batch_pattern": hits,
        "batch_cache": cached,
        "batch_mixed": hits[:333] + cached[:333],
    }
    out = {}
    for name, chosen in items.items():
        chosen = list(chosen)
        rng.shuffle(chosen)
        out[name] = tmp / f"{name.replace('_', '-')}.json"
        out[name].write_text(json.dumps({"items": chosen}))
    return out


BATCHES = (  # key, title, script, items of the body file sent
    ("batch", "1,000-item batch, pattern+cache (POST)", "post_file", 1000),
    ("batch_pattern", "1,000-item batch, pattern only (POST)", "post_file", 1000),
    ("batch_cache", "1,000-item batch, cache only (POST)", "post_file", 1000),
    ("batch_mixed", "1,000-item batch, 1/3 pattern, cache, misses", "post_misses", 666),
)
MISSES = 334  # new digests post_misses adds to each batch_mixed request (relayed to the cloud)


def measure_batches(bench: Bench, app: Server, base: str, bodies: dict[str, Path], suffix: str = "",
                    label: str = "") -> None:
    for key, title, script, count in BATCHES:
        extra = (str(MISSES),) if script == "post_misses" else ()
        bench.measure(key + suffix, title + label, [app], base + "/v1/file", script, str(bodies[key]),
                      *extra, items=count + (MISSES if extra else 0), metrics=base)


def batches_without_log(bench: Bench, servers: list[Server], cloud_port: int, bodies: dict[str, Path],
                        warm_hashes: list[str], root: Path = ROOT, suffix: str = "") -> None:
    """The batches again on an appliance with ``query_log = false``: the query log's writer
    (a row per item, in a thread on the same core) is most of a batch's cost when it is on.
    ``root``: the checkout to run (``--before``), its rows' keys ending in ``suffix``."""
    app, port = start_appliance(bench.tmp, f"appliance-nolog{suffix}", cloud_port, "query_log = false\n",
                                root=root)
    servers.append(app)
    base = f"http://127.0.0.1:{port}"
    warm(base + "/v1/file", warm_hashes)
    label = " [no log" + (", before]" if suffix else "]")
    print(f"appliance, query_log = false{', from ' + str(root) if suffix else ''}:", flush=True)
    measure_batches(bench, app, base, bodies, "_nolog" + suffix, label)
    app.stop()
    servers.remove(app)


def per_core(row: Row) -> float:
    """Items/s divided by the server's CPU share during the run."""
    return row.items_per_s / max(row.cpu, 0.01)


def before_and_after(bench: Bench, servers: list[Server], cloud_port: int, bodies: dict[str, Path],
                     warm_hashes: list[str], before: Path, rounds: int = 3) -> None:
    """The batches without the query log from the checkout in ``before`` and from this one,
    both appliances up at once and measured in turn, scenario by scenario, ``rounds`` times
    (the order swapped each round), so both see the same machine; each row keeps the round
    with the most items/s per core."""
    apps = []
    for suffix, root in (("_before", before), ("", ROOT)):
        app, port = start_appliance(bench.tmp, f"appliance-nolog{suffix}", cloud_port,
                                    "query_log = false\n", root=root)
        servers.append(app)
        base = f"http://127.0.0.1:{port}"
        warm(base + "/v1/file", warm_hashes)
        apps.append((suffix, app, base))
    print(f"appliances with query_log = false, from {before} (before) and this checkout, in turn:",
          flush=True)
    for n in range(rounds):
        for key, title, script, count in BATCHES:
            extra = (str(MISSES),) if script == "post_misses" else ()
            for suffix, app, base in apps if n % 2 == 0 else apps[::-1]:
                label = f" [no log{', before' if suffix else ''}]"
                row = bench.measure("round", title + label, [app], base + "/v1/file", script,
                                    str(bodies[key]), *extra, items=count + (MISSES if extra else 0),
                                    metrics=base)
                del bench.rows["round"]
                best = bench.rows.get(f"{key}_nolog{suffix}")
                if best is None or per_core(row) > per_core(best):
                    bench.rows[f"{key}_nolog{suffix}"] = row
    for _, app, _ in apps:
        app.stop()
        servers.remove(app)


def singles_against_nginx(bench: Bench, servers: list[Server], app: Server, base: str, tls_base: str,
                          body: bytes, single_path: str, rounds: int = 3) -> None:
    """The single-item GET on the appliance's HTTP and HTTPS doors and on nginx (HTTP, and
    HTTPS with a certificate of the same key type), in alternating rounds so that both
    meet the same machine; each ratio is the median of the rounds'. nginx is stopped
    after them; the baselines measure it again later, as the batches' yardstick."""
    started = start_nginx(bench.tmp, body)
    if started is None:
        print("  nginx: not installed (apt-get install -y nginx); single items measured alone")
        bench.measure("single", "single item, pattern (GET EICAR)", [app], base + single_path,
                      "get", metrics=base, probe=base + single_path)
        return
    nginx, port, tls_port = started
    servers.append(nginx)
    runs = [("single", "single item, pattern (GET EICAR)", app, base, base),
            ("nginx", "nginx static body (1 worker)", nginx, f"http://127.0.0.1:{port}", None),
            ("single_tls", "single item, pattern, HTTPS", app, tls_base, base),
            ("nginx_tls", "nginx static body, HTTPS", nginx, f"https://127.0.0.1:{tls_port}", None)]
    ratios: dict[str, list[float]] = {"single": [], "single_tls": []}
    for n in range(rounds):
        got: dict[str, Row] = {}
        for key, name, server, url, metrics in runs if n % 2 == 0 else runs[::-1]:
            got[key] = bench.measure(key, f"{name} [round {n + 1}]", [server], url + single_path,
                                     "get", metrics=metrics)
        ratios["single"].append(got["single"].result.rps / max(1.0, got["nginx"].result.rps))
        ratios["single_tls"].append(got["single_tls"].result.rps / max(1.0, got["nginx_tls"].result.rps))
    bench.single_ratios = {k: sorted(v)[len(v) // 2] for k, v in ratios.items()}
    nginx.stop()
    servers.remove(nginx)


def baseline_nginx(bench: Bench, servers: list[Server], tmp: Path, body: bytes, single_path: str) -> None:
    started = start_nginx(tmp, body)
    if started is None:
        print("  nginx: not installed (apt-get install -y nginx)")
        return
    nginx, nginx_port, _ = started
    servers.append(nginx)
    bench.measure("nginx", "nginx static body (1 worker)", [nginx],
                  f"http://127.0.0.1:{nginx_port}{single_path}", "get")
    nginx.stop()
    servers.remove(nginx)


def singles_and_relays(bench: Bench, servers: list[Server], app: Server, base: str, cloud: Server,
                       cloud_port: int, body: bytes, single_path: str, mitm_full: bool) -> None:
    """The single-item, relayed and baseline scenarios: everything but the batches."""
    tmp = bench.tmp
    cloud_base = f"https://127.0.0.1:{cloud_port}"
    bench.measure("cache", "single item, cache hit (GET, 20k hashes)", [app], base,
                  "get_cycle", "/v1/file/", str(tmp / "warm.txt"), metrics=base)

    # -- relay: unique unknown hashes every request
    stem_app, stem_cloud = os.urandom(24).hex(), os.urandom(24).hex()
    bench.measure("relay", "single item, relayed to the cloud (GET)", [app, cloud], base,
                  "get_unique", "/v1/file/", stem_app, metrics=base, probe=probe(base))
    cloud.pin(SERVER_CORE)
    bench.measure("cloud", "cloud directly, unique unknowns (GET, HTTPS)", [cloud], cloud_base,
                  "get_unique", "/v1/file/", stem_cloud)
    stem_app1, stem_cloud1 = os.urandom(24).hex(), os.urandom(24).hex()
    bench.measure("cloud_1", "  cloud directly, 1 connection", [cloud], cloud_base,
                  "get_unique", "/v1/file/", stem_cloud1, connections=1)
    cloud.pin(LOAD_CORE)
    bench.measure("relay_1", "  relayed, 1 connection", [app, cloud], base,
                  "get_unique", "/v1/file/", stem_app1, connections=1, metrics=base)
    bench.rss = app.rss_mb()
    print(f"  appliance RSS after its runs: {bench.rss[0]:.1f} MiB (peak {bench.rss[1]:.1f} MiB)",
          flush=True)
    app.stop()
    servers.remove(app)
    # the same with batch_window = 0: no gathering delay before asking the cloud
    app0, app0_port = start_appliance(tmp, "appliance-w0", cloud_port, "batch_window = 0\n")
    servers.append(app0)
    base0 = f"http://127.0.0.1:{app0_port}"
    bench.measure("relay_w0", "single item, relayed, batch_window=0", [app0, cloud], base0,
                  "get_unique", "/v1/file/", os.urandom(24).hex(), metrics=base0, probe=probe(base0))
    bench.measure("relay_w0_1", "  relayed, batch_window=0, 1 connection", [app0, cloud], base0,
                  "get_unique", "/v1/file/", os.urandom(24).hex(), connections=1,
                  metrics=base0)
    app0.stop()
    servers.remove(app0)

    # -- baselines on the same core
    print("baselines (pinned to core 0):", flush=True)
    baseline_nginx(bench, servers, tmp, body, single_path)
    mitm, mitm_port = start_mitm(tmp, body, single_path)
    servers.append(mitm)
    bench.measure("mitm", "bare mitmproxy addon from a dict", [mitm],
                  f"http://127.0.0.1:{mitm_port}{single_path}", "get")
    mitm.stop()
    servers.remove(mitm)
    if mitm_full:
        full, full_port = start_mitm(tmp, body, single_path, full=True)
        servers.append(full)
        bench.measure("mitm_full", "mitmproxy, default addons, from a dict", [full],
                      f"http://127.0.0.1:{full_port}{single_path}", "get")
        full.stop()
        servers.remove(full)


def summary(bench: Bench) -> None:
    rows = bench.rows
    print("\nsummary", flush=True)
    print(f"  {'scenario':<44} {'items/s':>12} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu':>5} "
          f"{'other':>5}")
    for row in rows.values():
        r = row.result
        print(f"  {row.name:<44} {row.items_per_s:>12,.0f} {r.rps:>10,.0f} {r.p50_ms:>8.2f} "
              f"{r.p99_ms:>8.2f} {row.cpu:>5.0%} {row.other:>5.0%}"
              + (f"  ({r.failed} failed)" if r.failed else ""))
    single, nginx, mitm = rows.get("single"), rows.get("nginx"), rows.get("mitm")
    print("ratios")
    for key, label in (("single", "HTTP "), ("single_tls", "HTTPS")):
        if key in bench.single_ratios:
            print(f"  appliance single-item / nginx, {label}      {bench.single_ratios[key]:.3f}   "
                  "(goal >= 0.8; median of alternating rounds)")
    if not bench.single_ratios:
        print(f"  appliance single-item / nginx static       {ratio(single, nginx)}   (goal >= 0.8)")
    print(f"  appliance single-item / bare mitmproxy     {ratio(single, mitm)}")
    # nginx's requests/s per core is the yardstick of how fast the machine is in this run
    nginx_per_core = per_core(nginx) if nginx else 0.0
    if nginx_per_core:
        print(f"  nginx requests/s per core (the yardstick)  {nginx_per_core:>11,.0f}")
    for key in [k + suffix for suffix in ("", "_nolog_before", "_nolog") for k, *_ in BATCHES]:
        batch = rows.get(key)
        if batch:
            rate = per_core(batch)
            vs = f"; {rate / nginx_per_core:.2f} x nginx's requests/s per core" if nginx_per_core else ""
            print(f"  {key + ' items/s per core':<42} {rate:>11,.0f}   (goal >= 1,000,000{vs})")
    for relay_key, cloud_key, label in (("relay", "cloud", "64 conns"), ("relay_1", "cloud_1", "1 conn"),
                                        ("relay_w0", "cloud", "64 conns, window 0"),
                                        ("relay_w0_1", "cloud_1", "1 conn, window 0")):
        a, c = rows.get(relay_key), rows.get(cloud_key)
        if a and c:
            print(f"  relay overhead p50 ({label:<18})     {a.result.p50_ms - c.result.p50_ms:+.2f} ms"
                  f"   (appliance {a.result.p50_ms:.2f} - cloud {c.result.p50_ms:.2f}; goal < 1 ms)")
    rss = bench.rss
    if rss:
        print(f"  appliance RSS after its runs               {rss[0]:.1f} MiB (peak {rss[1]:.1f} MiB)")


if __name__ == "__main__":
    main()
