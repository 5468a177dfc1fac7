"""`rampart serve --workers 2` end to end: real processes on 127.0.0.1, a signed update source.

Both workers answer (their own counters in one /metrics scrape), a pattern the main
process's updater installs is served by both within 2 s, a worker killed with SIGKILL
is started again while the other keeps answering, every answered query reaches the
query log, and SIGTERM drains everything and exits 0.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mitmproxy.io import FlowReader

from tests.conftest import RAMPART, Proc, free_port, start_appliance

pytestmark = pytest.mark.integration

V1, V2 = "2026010100", "2026010101"


def hashes(seed: str, n: int) -> list[str]:
    return [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]


ONE, TWO = hashes("one", 5), hashes("two", 5)


def rampart(*args: str) -> None:
    r = subprocess.run([*RAMPART, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """A signed update source serving V1: (url, public key, tmp), V2 built beside it."""
    tmp = tmp_path_factory.mktemp("source")
    rampart("pattern", "keygen", "--out", str(tmp / "key"))
    for version, items, base in ((V1, ONE, None), (V2, ONE + TWO, V1)):
        src = tmp / f"h-{version}.txt"
        src.write_text("".join(f"{h},Threat-{version}\n" for h in items))
        args = ["pattern", "build", "--out", str(tmp / version), "--hashes", str(src),
                "--version", version]
        rampart(*args, *(["--base", str(tmp / base)] if base else []))
    publish(tmp, V1)
    port = free_port()
    proc = Proc([*RAMPART, "pattern", "serve", str(tmp / "repo"), "--port", str(port)], tmp,
                tmp / "source.log", {"http": port})
    proc.start(f"http://127.0.0.1:{port}/manifest.json")
    yield f"http://127.0.0.1:{port}/", tmp / "key.pub", tmp
    proc.stop()


def publish(tmp: Path, version: str) -> None:
    rampart("pattern", "publish", "--from", str(tmp / version), "--repo", str(tmp / "repo"),
            "--key", str(tmp / "key"))


def ready(base: str) -> tuple[int, dict]:
    r = httpx.get(f"{base}/readyz", timeout=5)
    return r.status_code, r.json()


def eventually(check, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (httpx.HTTPError, KeyError, ValueError):
            result = None
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def per_worker(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {m[1]: float(m[2]) for m in
            re.finditer(r'^rampart_worker_requests_total\{worker="(\d+)"\} (\S+)$', text, re.M)}


def ask(base: str, item: str) -> dict:
    """One query on a new connection each time, so the kernel spreads them over the workers."""
    r = httpx.get(f"{base}/v1/file/{item}", timeout=5, headers={"Connection": "close"})
    assert r.status_code == 200, r.text
    return r.json()


def test_two_workers_answer_follow_updates_restart_and_drain(
        source: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, key, tmp = source
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(f'update_source = "{url}"\nupdate_key = "{key}"\nupdate_interval = 1\n')
    capture_port, console_port = free_port(), free_port()
    appliance = start_appliance(tmp_path, None, "--workers", "2", "--config", str(cfg),
                                "--capture-port", str(capture_port),
                                "--console-port", str(console_port))
    base = f"http://127.0.0.1:{appliance.ports['http']}"
    try:
        assert eventually(lambda: ready(base)[0] == 200, 30), appliance.output()
        body = ready(base)[1]
        assert [w["worker"] for w in body["workers"]] == [0, 1]
        assert body["main"]["pid"] == appliance.popen.pid

        # Both answer: new connections spread over both sockets.
        asked, sent, answered = hashes("asked", 300), [], {}
        for item in asked[:200]:
            ask(base, item)
            sent.append(item)
            if len(sent) % 10 == 0:
                answered = per_worker(base)
                if len(answered) == 2 and min(answered.values()) > 0:
                    break
        assert len(answered) == 2 and min(answered.values()) > 0, answered

        # The console's status page counts what every worker answered, not the main process's.
        r = subprocess.run([*RAMPART, "admin", "key", "create", "--name", "v", "--role", "viewer",
                            "--data-dir", str(appliance.data_dir)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        status = httpx.get(f"https://127.0.0.1:{console_port}/api/status", timeout=10,
                           verify=ssl.create_default_context(
                               cafile=str(appliance.data_dir / "ca.pem")),
                           headers={"Authorization": f"Bearer {r.stdout.split()[-1]}"})
        assert status.status_code == 200, status.text
        assert status.json()["items"]["file/local"] >= len(sent)
        assert [w["worker"] for w in status.json()["workers"]] == [0, 1]

        # The main process's updater installs V1, then V2; both workers serve each within 2 s.
        for version in (V1, V2):
            if version == V2:
                publish(tmp, V2)
            assert eventually(lambda v=version: ready(base)[1]["main"]["pattern"] == v, 30)
            assert eventually(lambda v=version: all(w["pattern"] == v
                                                    for w in ready(base)[1]["workers"]), 2.0)
        assert ask(base, TWO[0])["results"][0]["threat"] == f"Threat-{V2}"

        # `rampart capture` sees the workers' answers (forwarded to the main process).
        out, log = tmp_path / "live.mitm", tmp_path / "capture.log"
        with log.open("wb") as sink:
            client = subprocess.Popen(
                [*RAMPART, "capture", "-w", str(out), "--service", "file", "--count", "6",
                 "--server", f"http://127.0.0.1:{capture_port}"], stdout=sink, stderr=sink)
        try:
            assert eventually(lambda: "capturing to" in log.read_text(), 20), log.read_text()
            captured = hashes("captured", 100)
            for item in captured:  # until six were captured: the feed turns on within a poll
                ask(base, item)
                if client.poll() is not None:
                    break
            assert client.wait(20) == 0, log.read_text()
        finally:
            if client.poll() is None:
                client.kill()
        flows = list(FlowReader(io.BytesIO(out.read_bytes())).stream())
        assert len(flows) == 6
        assert all(f.request.path.split("/")[-1] in captured for f in flows)
        assert all(f.metadata["rampart"]["door"] == "query" for f in flows)

        # A killed worker is started again; the other answers meanwhile.
        victim = ready(base)[1]["workers"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        for item in asked[-40:]:
            assert ask(base, item)["results"][0]["verdict"] == "unknown"
        restarted = eventually(
            lambda: ready(base)[0] == 200 and ready(base)[1]["workers"][1]["pid"] != victim, 60)
        assert restarted, appliance.output()
        assert 'rampart_worker_restarts_total{worker="1"} 1.0' in httpx.get(f"{base}/metrics").text

        # SIGTERM: every worker drains and ends, then the main process exits 0.
        pids = [w["pid"] for w in ready(base)[1]["workers"]]
        assert appliance.popen is not None
        appliance.popen.send_signal(signal.SIGTERM)
        assert appliance.popen.wait(30) == 0, appliance.output()
        for pid in pids:
            assert _gone(pid)
    finally:
        appliance.stop()

    # Every worker's answers reached the one query log.
    with sqlite3.connect(appliance.data_dir / "logs.sqlite") as db:
        logged = {row[0] for row in db.execute("SELECT item FROM query")}
    assert set(sent) <= logged


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_workers_end_when_the_main_process_is_killed(tmp_path: Path) -> None:
    appliance = start_appliance(tmp_path, None, "--workers", "2")
    base = f"http://127.0.0.1:{appliance.ports['http']}"
    try:
        assert eventually(lambda: ready(base)[0] == 200, 30), appliance.output()
        pids = [w["pid"] for w in ready(base)[1]["workers"]]
        assert appliance.popen is not None
        appliance.popen.kill()  # no drain, no goodbye: the workers notice on their own
        appliance.popen.wait(10)
        assert eventually(lambda: all(_gone(pid) for pid in pids), 15), pids
    finally:
        appliance.stop()


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _zombie(pid)
