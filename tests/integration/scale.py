"""Several appliances, HAProxy in front, and a load to put through them: helpers for the
scale tests (issue 13) and bench/bench_haproxy.py.

    cloud = start_cloud(tmp)                                    # tests.conftest
    a, b = appliance_pair(tmp, cloud=cloud, extra=["--redis", redis.url])
    lb = start_haproxy(tmp, [a, b])                             # appliance/haproxy.cfg
    with Load(lb.url(), standard_probes(), clients=4) as load:
        a.kill(); lb.wait_state("a", "DOWN"); a.restart(); lb.wait_state("a", "UP")
    assert load.result.failed == 0 and load.result.wrong == 0

Every appliance listens on its own loopback address (127.0.0.2, 127.0.0.3, ...) with the
same door ports, as appliances on separate machines would; HAProxy listens on 127.0.0.1
with those ports too. That is what lets the test run the shipped appliance/haproxy.cfg
unchanged: it takes the appliances' addresses and the ports from environment variables.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.conftest import EICAR_MD5, EICAR_SHA256, RAMPART, Proc, metric, start_cloud, stop_process

__all__ = ["BLOCKED_SHA256", "HAPROXY", "HAPROXY_CFG", "UNKNOWN_SHA256", "Appliance", "Haproxy", "Load",
           "LoadResult", "Probe", "add_to_list", "appliance_pair", "descendants", "expect", "free_ports",
           "metric", "standard_probes", "start_appliance", "start_cloud", "start_haproxy",
           "two_behind_haproxy"]

ROOT = Path(__file__).parents[2]
HAPROXY_CFG = ROOT / "appliance" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
LB_HOST = "127.0.0.1"
SERVERS = ("a", "b")
"""The appliances appliance/haproxy.cfg names (RAMPART_LB_A, RAMPART_LB_B)."""
DOORS = ("http", "https", "proxy")
"""The doors HAProxy fronts: query HTTP, query HTTPS, intercept."""

BLOCKED_SHA256 = "b1" * 32
"""A hash `add_to_list` callers put on the blocked list (no pattern knows it)."""
UNKNOWN_SHA256 = "5ca1e" + "0" * 59
"""A hash nobody knows: `unknown` with source local on an appliance without a cloud."""


def free_ports(hosts: Iterable[str], count: int) -> list[int]:
    """``count`` ports free on every one of ``hosts`` (the same numbers on each)."""
    found: list[int] = []
    hosts = list(hosts)
    while len(found) < count:
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        if port not in found and all(_bindable(h, port) for h in hosts):
            found.append(port)
    return found


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Appliance:
    """A real `rampart serve` on ``host`` with its own data directory; ``kill`` and
    ``restart`` keep its ports and data."""

    name: str
    host: str
    proc: Proc
    redis: str | None = None
    """The Redis URL it shares state through (--redis), if any."""
    timeout: float = 60.0

    @property
    def ports(self) -> dict[str, int]:
        return self.proc.ports

    @property
    def data_dir(self) -> Path:
        return self.proc.data_dir

    @property
    def ca(self) -> Path:
        return self.proc.data_dir / "ca.pem"

    def url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.ports['http']}{path}"

    def start(self) -> Appliance:
        """Start it and wait until /readyz answers 200 (what HAProxy's check asks)."""
        self.proc.start(self.url("/readyz"), timeout=self.timeout)
        return self

    restart = start

    def kill(self) -> None:
        """SIGKILL to the appliance and every process under it (its --workers): no draining,
        no goodbye, as when its machine dies."""
        popen = self.proc.popen
        if popen is None or popen.poll() is not None:
            return
        for pid in [popen.pid, *descendants(popen.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        popen.wait(10)

    def stop(self) -> None:
        self.proc.stop()

    @property
    def running(self) -> bool:
        return self.proc.popen is not None and self.proc.popen.poll() is None

    def metrics(self) -> str:
        return httpx.get(self.url("/metrics"), timeout=10).text

    def counter(self, name: str, **labels: str) -> float:
        return metric(self.metrics(), name, **labels)


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (children, theirs, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def start_appliance(tmp: Path, name: str, host: str, ports: dict[str, int], *,
                    cloud: Proc | None = None, redis: str | None = None,
                    workers: int | str | None = None, extra: Sequence[str] = (),
                    start: bool = True) -> Appliance:
    """A `rampart serve` named ``name`` listening on ``host`` with ``ports`` (keys http,
    https and, for the intercept door, proxy; a missing one is off), its data in
    ``tmp/name``, relaying to ``cloud`` when given; ``redis``, ``workers`` and ``extra``
    become flags. Started (and ready) unless ``start`` is False."""
    data = tmp / name
    args = [*RAMPART, "serve", "--data-dir", str(data), "--listen", host,
            "--query-port", str(ports.get("http", 0)), "--query-tls-port", str(ports.get("https", 0)),
            "--proxy-port", str(ports.get("proxy", 0)), "--transparent-port", "0",
            "--log-level", "warning", "--trusted-proxy", "127.0.0.0/8", *extra]  # haproxy's
    for door in ("--capture-port", "--console-port", "--dns-port"):  # off unless asked for
        if door not in extra:
            args += [door, "0"]
    if redis is not None:
        args += ["--redis", redis]
    if workers is not None:
        args += ["--workers", str(workers)]
    if cloud is not None:
        args += ["--cloud", f"https://localhost:{cloud.ports['https']}",
                 "--cloud-ca", str(cloud.data_dir / "ca.pem")]
    appliance = Appliance(name, host, Proc(args, data, tmp / f"{name}.log", dict(ports)), redis)
    return appliance.start() if start else appliance


def appliance_pair(tmp: Path, *, cloud: Proc | None = None, redis: str | None = None,
                   workers: int | str | None = None, extra: Sequence[str] = (),
                   intercept: bool = False, count: int = 2) -> list[Appliance]:
    """``count`` appliances ``a``, ``b``, ... on 127.0.0.2, 127.0.0.3, ... with the same door
    ports (free on each and on HAProxy's 127.0.0.1) and one CA (`rampart ca init` in a's data
    directory, `rampart ca import` of it in the others': a client trusting a.ca trusts every
    appliance behind HAProxy), started together and ready."""
    hosts = [f"127.0.0.{2 + i}" for i in range(count)]
    doors = DOORS if intercept else DOORS[:2]
    ports = dict(zip(doors, free_ports([LB_HOST, *hosts], len(doors))))
    made = [start_appliance(tmp, chr(ord("a") + i), host, ports, cloud=cloud, redis=redis,
                            workers=workers, extra=extra, start=False)
            for i, host in enumerate(hosts)]
    _rampart("ca", "init", "--data-dir", str(made[0].data_dir))
    for other in made[1:]:
        _rampart("ca", "import", "--data-dir", str(other.data_dir), "--cert", str(made[0].ca),
                 "--key", str(made[0].data_dir / "ca-key.pem"), "--overlap-days", "0")
    errors: list[BaseException] = []

    def start(a: Appliance) -> None:
        try:
            a.start()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(a,)) for a in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for a in made:
            a.stop()
        raise errors[0]
    return made


def _rampart(*args: str) -> None:
    """One `rampart` command that must succeed."""
    run = subprocess.run([*RAMPART, *args], capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        raise RuntimeError(f"rampart {' '.join(args[:2])} failed: {run.stdout}{run.stderr}")


def add_to_list(appliances: Iterable[Appliance], *args: str) -> None:
    """`rampart lists add ARGS` on each appliance's data directory, through its Redis when it
    shares one ($RAMPART_REDIS: then one appliance is enough, the others follow within 2 s;
    appliances without Redis keep their own lists)."""
    for a in appliances:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_REDIS")}
        if a.redis:
            env["RAMPART_REDIS"] = a.redis
        run = subprocess.run([*RAMPART, "lists", "add", "--data-dir", str(a.data_dir), *args],
                             capture_output=True, text=True, timeout=60, env=env)
        if run.returncode != 0:
            raise RuntimeError(f"lists add on {a.name} failed: {run.stdout}{run.stderr}")


@dataclass
class Haproxy:
    """A real haproxy running appliance/haproxy.cfg as shipped, in the foreground (-db), its
    addresses and ports given by the environment variables the file documents."""

    env: dict[str, str]
    ports: dict[str, int]
    socket_path: Path
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    config: Path = HAPROXY_CFG

    def url(self, path: str = "") -> str:
        return f"http://{LB_HOST}:{self.ports['http']}{path}"

    def tls_url(self, path: str = "") -> str:
        return f"https://{LB_HOST}:{self.ports['https']}{path}"

    def start(self, timeout: float = 20.0) -> Haproxy:
        """Start it and wait until every appliance server of the query backend is UP."""
        out = self.log.open("ab")
        self.popen = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=out,
                                      stderr=out, env={**os.environ, **self.env})
        try:
            self.wait_all("UP", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def command(self, line: str) -> str:
        """One runtime-API command on the stats socket, its whole answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> list[dict[str, str]]:
        """``show stat``: a row per frontend, backend and server, by column name."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        return [dict(zip(header, line.split(","))) for line in lines[1:] if line]

    def states(self, backend: str = "query") -> dict[str, str]:
        """Each server of ``backend`` and its status as the health checks see it (UP, DOWN,
        ``UP 1/2`` while rising, ``MAINT``...)."""
        return {r["svname"]: r["status"] for r in self.stats()
                if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")}

    def resent(self) -> int:
        """How many queries haproxy resent to another appliance (retries and redispatches)."""
        for row in self.stats():
            if row.get("pxname") == "query" and row.get("svname") == "BACKEND":
                return int(row.get("wretr") or 0) + int(row.get("wredis") or 0)
        raise AssertionError("no query backend in haproxy's stats")

    def wait_state(self, server: str, state: str, timeout: float = 20.0,
                   backend: str = "query") -> None:
        """Wait until ``server`` is exactly ``state`` (UP or DOWN) in ``backend``."""
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"haproxy exited {self.popen.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError):
                seen = self.states(backend)
                if seen.get(server) == state:
                    return
            time.sleep(0.05)
        raise AssertionError(f"{backend}/{server} not {state} within {timeout} s: {seen}\n"
                             f"{self.output()}")

    def wait_all(self, state: str, timeout: float = 20.0) -> None:
        for name in SERVERS:
            self.wait_state(name, state, timeout)

    def stop(self) -> None:
        stop_process(self.popen)
        shutil.rmtree(self.socket_path.parent, ignore_errors=True)


def start_haproxy(tmp: Path, appliances: Sequence[Appliance], start: bool = True) -> Haproxy:
    """HAProxy on 127.0.0.1 in front of two ``appliances`` (the shipped file names servers a
    and b), on their door ports; its stats socket in ``tmp``. A door the appliances keep off
    gets a free port nothing listens on, so HAProxy still starts."""
    if len(appliances) != 2:
        raise ValueError("appliance/haproxy.cfg names two appliances, a and b")
    ports = dict(appliances[0].ports)
    missing = [d for d in DOORS if d not in ports]
    ports.update(zip(missing, free_ports([LB_HOST, *(a.host for a in appliances)], len(missing))))
    # A Unix socket path must stay under 108 bytes; pytest's tmp paths can be longer.
    sock = Path(tempfile.mkdtemp(prefix="rampart-lb-")) / "haproxy.sock"
    env = {
        "RAMPART_LB_A": appliances[0].host, "RAMPART_LB_B": appliances[1].host,
        "RAMPART_LB_QUERY_PORT": str(ports["http"]), "RAMPART_LB_QUERY_TLS_PORT": str(ports["https"]),
        "RAMPART_LB_PROXY_PORT": str(ports["proxy"]), "RAMPART_LB_LISTEN": LB_HOST,
        "RAMPART_LB_SOCKET": str(sock),
    }
    lb = Haproxy(env, ports, sock, tmp / "haproxy.log")
    return lb.start() if start else lb


# --------------------------------------------------------------------------------------
# The load: N clients on kept-alive connections, every answer checked.

Check = Callable[[httpx.Response], str | None]
"""What is wrong with an answer (None: it is right)."""


@dataclass(frozen=True)
class Probe:
    """One request of the load and how to tell its answer is right."""

    method: str
    path: str
    body: Any = None
    check: Check = field(default=lambda r: None)


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    """Requests that got no answer (connection error, timeout) or a status other than 200."""
    wrong: int = 0
    """Answers that came back 200 but said the wrong thing."""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


class Load:
    """``clients`` threads, each on its own kept-alive httpx connection, sending ``probes``
    in turn to ``base`` until stopped or ``max_requests`` in all were sent; every failure
    and wrong answer is counted (the first 20 described). ``pause`` seconds between a
    client's requests bound the rate; ``backoff`` seconds after a failed one stop a client
    from spinning on a refused connection (as a product waits before asking again). A
    context manager: the load runs inside the block and ``result`` is final after it."""

    def __init__(self, base: str, probes: Sequence[Probe], clients: int = 4,
                 max_requests: int = 200_000, verify: Any = False, timeout: float = 20.0,
                 pause: float = 0.0, backoff: float = 0.0) -> None:
        self.base, self.probes, self.clients = base, list(probes), clients
        self.max_requests, self.verify, self.timeout, self.pause = max_requests, verify, timeout, pause
        self.backoff = backoff
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    def start(self) -> Load:
        self._started = time.monotonic()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 10)
        self.result.seconds = time.monotonic() - self._started
        return self.result

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` more requests have been answered right (the load is flowing)."""
        target = self.result.ok + count
        deadline = time.monotonic() + timeout
        while self.result.ok < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load stalled: {self.result}")
            time.sleep(0.02)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self.result.sent >= self.max_requests:
                return False
            self.result.sent += 1
            return True

    def _count(self, kind: str, problem: str | None = None) -> None:
        with self._lock:
            setattr(self.result, kind, getattr(self.result, kind) + 1)
            if problem and len(self.result.problems) < 20:
                self.result.problems.append(problem)

    def _client(self, index: int) -> None:
        with httpx.Client(base_url=self.base, verify=self.verify, timeout=self.timeout) as client:
            turn = index
            while self._take():
                probe = self.probes[turn % len(self.probes)]
                turn += 1
                right = self._one(client, probe)
                if self.pause or (self.backoff and not right):
                    time.sleep(self.pause if right else max(self.pause, self.backoff))

    def _one(self, client: httpx.Client, probe: Probe) -> bool:
        """Send ``probe`` once and count the outcome; True when it was answered right."""
        what = f"{probe.method} {probe.path}"
        try:
            r = client.request(probe.method, probe.path, json=probe.body)
        except httpx.HTTPError as e:
            self._count("failed", f"{what}: {type(e).__name__}: {e}")
            return False
        if r.status_code != 200:
            self._count("failed", f"{what}: {r.status_code} {r.text[:200]}")
            return False
        problem = probe.check(r)
        self._count("wrong" if problem else "ok", f"{what}: {problem}" if problem else None)
        return not problem


def _results(r: httpx.Response) -> list[dict[str, Any]]:
    got = r.json().get("results")
    return got if isinstance(got, list) else []


def expect(*wanted: dict[str, str]) -> Check:
    """A check: the answer's results carry these fields, in this order."""
    def check(r: httpx.Response) -> str | None:
        got = _results(r)
        if len(got) != len(wanted):
            return f"{len(got)} results, wanted {len(wanted)}: {r.text[:200]}"
        for i, (have, want) in enumerate(zip(got, wanted)):
            if any(have.get(k) != v for k, v in want.items()):
                return f"result {i} is {have}, wanted {want}"
        return None
    return check


def standard_probes() -> list[Probe]:
    """The scale tests' mix: single GETs and POST batches whose answers are known without a
    cloud: EICAR from the pattern, BLOCKED_SHA256 from the blocked list (``add_to_list``
    it first), UNKNOWN_SHA256 unknown."""
    pattern = {"verdict": "malicious", "source": "pattern"}
    blocked = {"verdict": "malicious", "source": "blocked-list"}
    return [
        Probe("GET", f"/v1/file/{EICAR_SHA256}", check=expect(pattern)),
        Probe("GET", f"/v1/file/{BLOCKED_SHA256}", check=expect(blocked)),
        Probe("POST", "/v1/file", {"items": [{"md5": EICAR_MD5}, {"sha256": BLOCKED_SHA256},
                                             {"sha256": UNKNOWN_SHA256}]},
              check=expect(pattern, blocked, {"verdict": "unknown"})),
        Probe("POST", "/v1/domain", {"items": ["malware.example.test", "192.0.2.7"]},
              check=lambda r: None if len(_results(r)) == 2 else f"bad domain answer {r.text[:200]}"),
    ]


@contextlib.contextmanager
def two_behind_haproxy(tmp: Path, **options: Any) -> Iterator[tuple[list[Appliance], Haproxy]]:
    """Two appliances (``appliance_pair`` options) and HAProxy in front, all stopped after."""
    pair = appliance_pair(tmp, **options)
    try:
        lb = start_haproxy(tmp, pair)
        try:
            yield pair, lb
        finally:
            lb.stop()
    finally:
        for a in pair:
            a.stop()
