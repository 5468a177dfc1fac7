"""The reference client end to end: `rampart client` against real appliances on loopback.

Two appliances serve a pattern built here (EICAR's SHA-256, and an agent pattern made
from it); the client scans a folder of EICAR copies, clean files and unknown files.
The servers' own counters (/metrics) show what the client asked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import RAMPART, Proc, free_port, start_cloud

pytestmark = pytest.mark.integration

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SHA256 = hashlib.sha256(EICAR).hexdigest()
CLEAN = b"an approved tool\n"  # on the approved list of both appliances


def rampart(*args: str, env: dict[str, str] | None = None, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAMPART, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@dataclass
class Appliance:
    proc: Proc
    build: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proc.ports['http']}"

    @property
    def https(self) -> str:
        return f"https://localhost:{self.proc.ports['https']}"

    def items_asked(self) -> int:
        """File items this appliance answered, from its /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(int(float(n)) for n in re.findall(r'^rampart_items_total\{service="file",[^}]*\} (\S+)$',
                                                     text, re.M))

    def start(self) -> None:
        self.proc.start(f"{self.url}/healthz")

    def stop(self) -> None:
        self.proc.stop()


def _appliance(tmp: Path, name: str, build: Path, cloud: Proc | None = None) -> Appliance:
    http, https = free_port(), free_port()
    data = tmp / name
    relay = [] if cloud is None else ["--cloud", f"https://localhost:{cloud.ports['https']}",
                                      "--cloud-ca", str(cloud.data_dir / "ca.pem")]
    proc = Proc([*RAMPART, "serve", "--data-dir", str(data), "--pattern", str(build),
                 "--listen", "127.0.0.1", "--query-port", str(http), "--query-tls-port", str(https),
                 "--proxy-port", "0", "--transparent-port", "0", "--log-level", "warning", *relay],
                data, tmp / f"{name}.log", {"http": http, "https": https})
    a = Appliance(proc, build)
    a.start()
    done = rampart("lists", "add", "--approved", hashlib.sha256(CLEAN).hexdigest(),
                   "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    return a


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Appliance]]:
    tmp = tmp_path_factory.mktemp("client")
    (tmp / "hashes.txt").write_text(f"{EICAR_SHA256},EICAR-Test-File\n")
    built = rampart("pattern", "build", "--out", str(tmp / "build"), "--hashes", str(tmp / "hashes.txt"))
    assert built.returncode == 0, built.stderr
    cloud = start_cloud(tmp)  # a relays what its pattern does not know to the reference cloud
    try:
        a = _appliance(tmp, "a", tmp / "build", cloud)
        b = _appliance(tmp, "b", tmp / "build")
    except Exception:
        cloud.stop()
        raise
    yield {"a": a, "b": b}
    a.stop()
    b.stop()
    cloud.stop()


@pytest.fixture
def world_up(world: dict[str, Appliance]) -> Iterator[dict[str, Appliance]]:
    """Both appliances running at the start and at the end of the test."""
    for a in world.values():
        if a.proc.popen is None or a.proc.popen.poll() is not None:
            a.start()
    yield world
    for a in world.values():
        if a.proc.popen is None or a.proc.popen.poll() is not None:
            a.start()


def tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "eicar.com").write_bytes(EICAR)
    (root / "sub" / "deeper" / "copy-of-eicar.txt").write_bytes(EICAR)
    (root / "tool.bin").write_bytes(CLEAN)
    for i in range(5):
        (root / "sub" / f"unknown-{i}.dat").write_bytes(f"nobody knows file {i}\n".encode())
    return root


def client(state: Path, *args: str, servers: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    server_args = [x for s in servers for x in ("--server", s)]
    return rampart("client", *args, "--state-dir", str(state), *server_args,
                   env={"RAMPART_CLIENT_CONFIG": ""})


def lines(out: str) -> dict[str, str]:
    """PATH -> what follows ``PATH: `` in clamscan-style output."""
    found = {}
    for line in out.splitlines():
        if line.startswith("/") and ": " in line:
            path, _, rest = line.partition(": ")
            found[path] = rest
    return found


def test_scan_reports_like_clamscan_and_the_agent_pattern_spares_queries(
        world_up: dict[str, Appliance], tmp_path: Path) -> None:
    a = world_up["a"]
    root = tree(tmp_path / "files")
    before = a.items_asked()
    r = client(tmp_path / "state", "scan", str(root), servers=(a.url,))
    assert r.returncode == 1, r.stdout + r.stderr  # found something
    got = lines(r.stdout)
    assert got[str(root / "eicar.com")] == "EICAR-Test-File FOUND"
    assert got[str(root / "sub" / "deeper" / "copy-of-eicar.txt")] == "EICAR-Test-File FOUND"
    assert got[str(root / "tool.bin")] == "OK" and got[str(root / "sub" / "unknown-0.dat")] == "OK"
    assert "Scanned files: 8" in r.stdout and "Infected files: 2" in r.stdout
    # only the two EICAR copies were asked about (one digest, asked once per copy at most):
    # the agent pattern cleared the other six
    asked = a.items_asked() - before
    assert 1 <= asked <= 2, asked
    # a second scan asks nothing: the answers are cached, the files not read again
    before = a.items_asked()
    again = client(tmp_path / "state", "scan", "--json", str(root), servers=(a.url,))
    assert again.returncode == 1
    rows = [json.loads(x) for x in again.stdout.splitlines()]
    assert a.items_asked() == before
    eicar = next(x for x in rows if x.get("path") == str(root / "eicar.com"))
    assert eicar["verdict"] == "malicious" and eicar["source"] == "pattern" and eicar["cached"]
    assert rows[-1]["summary"]["bytes_read"] == 0


def test_query_all_asks_every_file_and_the_approved_list_decides(
        world_up: dict[str, Appliance], tmp_path: Path) -> None:
    a = world_up["a"]
    root = tree(tmp_path / "files")
    before = a.items_asked()
    r = client(tmp_path / "state", "scan", "--query", "all", "--json", str(root), servers=(a.url,))
    rows = {x["path"]: x for x in map(json.loads, r.stdout.splitlines()) if "path" in x}
    assert a.items_asked() - before == 8  # every file once
    assert rows[str(root / "tool.bin")]["verdict"] == "clean"
    assert rows[str(root / "tool.bin")]["source"] == "approved-list"
    # asked, not cleared: the appliance relayed it, and the cloud does not know it either
    assert rows[str(root / "sub" / "unknown-1.dat")]["source"] == "cloud"
    assert rows[str(root / "sub" / "unknown-1.dat")]["verdict"] == "unknown"


def test_failover_offline_flags_and_rescan(world_up: dict[str, Appliance], tmp_path: Path) -> None:
    a, b = world_up["a"], world_up["b"]
    root = tree(tmp_path / "files")
    quarantine = tmp_path / "quarantine"
    servers = (a.url, f"{b.url}@1")
    a.stop()  # the first server is down: the second answers
    before_b = b.items_asked()
    r = client(tmp_path / "one", "scan", str(root), servers=servers)
    assert r.returncode == 1 and "Infected files: 2" in r.stdout, r.stdout + r.stderr
    assert b.items_asked() > before_b
    b.stop()  # both down: a client with no agent pattern yet must ask about every file
    state = tmp_path / "two"
    r = client(state, "scan", str(root), servers=servers)
    assert r.returncode == 0, r.stdout + r.stderr  # allowed for now
    got = lines(r.stdout)
    copies = [str(root / "eicar.com"), str(root / "sub" / "deeper" / "copy-of-eicar.txt")]
    assert len(got) == 8 and set(got.values()) == {"FLAGGED no server answered; allowed for now"}
    assert "Flagged files: 8" in r.stdout
    status = json.loads(client(state, "status", "--json", servers=servers).stdout)
    assert len(status["flagged"]) == 8
    closed = client(state, "scan", "--fail-closed", str(root), servers=servers)
    assert closed.returncode == 1 and "blocked (--fail-closed)" in closed.stdout
    b.start()  # a server is back: rescan finds the copies, quarantines them, clears the flags
    r = client(state, "rescan", "--quarantine", str(quarantine), servers=servers)
    assert r.returncode == 1, r.stdout + r.stderr
    got = lines(r.stdout)
    assert all(got[c] == "EICAR-Test-File FOUND (quarantined)" for c in copies), got
    assert got[str(root / "tool.bin")] == "OK" and "Infected files: 2" in r.stdout
    assert not any(Path(c).exists() for c in copies)
    status = json.loads(client(state, "status", "--json", servers=servers).stdout)
    assert status["flagged"] == [] and status["quarantined"] == 2
    listed = client(state, "quarantine", "list", "--json", servers=())
    record = next(x for x in json.loads(listed.stdout) if x["path"] == copies[0])
    assert record["present"] and record["sha256"] == EICAR_SHA256
    back = client(state, "quarantine", "restore", record["id"], servers=())
    assert back.returncode == 0 and Path(copies[0]).read_bytes() == EICAR


def test_the_first_server_stopped_mid_scan_hands_over_to_the_second(
        world_up: dict[str, Appliance], tmp_path: Path) -> None:
    """The library's Scanner against the two real appliances: the first is stopped after
    the scan's first chunk, and the second answers the rest of the same scan."""
    import asyncio

    from proxy.client.options import ClientOptions
    from proxy.client.scan import Scanner
    from proxy.client.session import open_session

    a, b = world_up["a"], world_up["b"]
    root = tmp_path / "many"
    root.mkdir()
    for i in range(60):
        (root / f"f{i:02}.dat").write_bytes(EICAR if i == 59 else f"file {i}\n".encode())
    before_a, before_b = a.items_asked(), b.items_asked()
    session = open_session(ClientOptions(servers=(a.url, f"{b.url}@1"), query="all",
                                         state_dir=tmp_path / "state"))
    chunks = []

    asked_a: list[int] = []

    def after_chunk(n: int) -> None:
        chunks.append(n)
        if len(chunks) == 1:
            asked_a.append(a.items_asked() - before_a)
            a.stop()  # between two chunks of one scan

    async def scan() -> list[str]:
        try:
            scanner = Scanner(session.client, session.state, chunk=10, progress=after_chunk)
            return [r.action async for r in scanner.scan([root])]
        finally:
            await session.close()

    actions = asyncio.run(scan())
    assert actions.count("found") == 1 and actions.count("ok") == 59 and len(chunks) == 6
    assert asked_a == [10]  # the first chunk, from the first server
    assert b.items_asked() - before_b == 50  # the five chunks after it, from the second


def test_outside_the_intranet_the_external_server_is_used_over_https(
        world_up: dict[str, Appliance], tmp_path: Path) -> None:
    b = world_up["b"]
    root = tree(tmp_path / "files")
    unreachable = f"http://127.0.0.1:{free_port()}"  # an internal server nobody answers on
    servers = (unreachable, f"external:{b.https}")
    ca = str(b.proc.data_dir / "ca.pem")
    r = rampart("client", "scan", str(root), "--state-dir", str(tmp_path / "state"), "--ca", ca,
                *(x for s in servers for x in ("--server", s)))
    assert r.returncode == 1 and "Infected files: 2" in r.stdout, r.stdout + r.stderr
    status = rampart("client", "status", "--json", "--state-dir", str(tmp_path / "state"),
                     "--ca", ca, *(x for s in servers for x in ("--server", s)))
    doc = json.loads(status.stdout)
    assert doc["location"] == "outside" and doc["last_server"] == b.https
    plain = rampart("client", "scan", str(root), "--state-dir", str(tmp_path / "s2"),
                    "--server", unreachable, "--server", f"external:{b.url}")
    assert plain.returncode == 2 and "https" in plain.stderr


def test_a_corrupt_state_file_is_rebuilt_with_a_warning(world_up: dict[str, Appliance],
                                                        tmp_path: Path) -> None:
    a = world_up["a"]
    root = tree(tmp_path / "files")
    state = tmp_path / "state"
    assert client(state, "scan", str(root), servers=(a.url,)).returncode == 1
    assert (state / "agent.pattern").is_file()
    (state / "client.sqlite").write_bytes(b"this is not a database" * 100)
    r = client(state, "scan", str(root), servers=(a.url,))
    assert r.returncode == 1 and "Infected files: 2" in r.stdout, r.stdout + r.stderr
    assert "corrupt" in r.stderr
    assert list(state.glob("client.sqlite.corrupt-*"))


def test_url_ratings_and_actions(world_up: dict[str, Appliance], tmp_path: Path) -> None:
    a = world_up["a"]
    done = rampart("lists", "add", "--blocked", "bad.client.example.test",
                   "--data-dir", str(a.proc.data_dir))
    assert done.returncode == 0
    for _ in range(100):  # the running appliance takes the change within 2 s
        got = httpx.get(f"{a.url}/v1/web", params={"url": "http://bad.client.example.test/x"}).json()
        if got["results"][0]["source"] == "blocked-list":
            break
        time.sleep(0.05)
    r = client(tmp_path / "state", "url", "http://bad.client.example.test/x",
               "http://fine.example.test/", servers=(a.url,))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "http://bad.client.example.test/x: dangerous" in r.stdout and "-> block" in r.stdout
    assert "http://fine.example.test/: untested -> allow" in r.stdout
