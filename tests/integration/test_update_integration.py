"""Pattern updates end to end: `rampart pattern publish/serve`, `rampart serve`, `rampart update now`.

Real processes on loopback. A background thread hammers the appliance's /v1/file
with pattern hits the whole time and checks every answer against the pattern
version the answer names: no failed or wrong answer across the swaps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from proxy.clock import stamp
from proxy.patterns import table_diff
from proxy.updates import repo, signing
from tests.conftest import EICAR_SHA256, RAMPART, Proc, free_port, start_appliance

pytestmark = pytest.mark.integration

V1, V2, V3, V4 = "2026010100", "2026010101", "2026010102", "2026010103"


def hs(seed: str, n: int) -> list[str]:
    return [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]


STABLE = hs("stable", 30)
ONE, TWO, THREE, FOUR = hs("one", 10), hs("two", 10), hs("three", 10), hs("four", 10)
CONTENT = {V1: STABLE + ONE, V2: STABLE + ONE[:5] + TWO, V3: STABLE + TWO + THREE,
           V4: STABLE + THREE + FOUR}
PROBES = [STABLE[0], ONE[0], ONE[7], TWO[0], THREE[0], FOUR[0]]


def rampart(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAMPART, *args], capture_output=True, text=True, timeout=timeout)


@dataclass
class Source:
    tmp: Path
    key: Path
    repo: Path
    builds: dict[str, Path] = field(default_factory=dict)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        assert self.proc is not None
        return f"http://127.0.0.1:{self.proc.ports['http']}/"

    def build(self, version: str, base: str | None) -> None:
        src = self.tmp / f"h-{version}.txt"
        src.write_text("".join(f"{h},Threat-{version}\n" for h in CONTENT[version]))
        out = self.tmp / f"build-{version}"
        args = ["pattern", "build", "--out", str(out), "--hashes", str(src), "--version", version]
        if base:
            args += ["--base", str(self.builds[base])]
        r = rampart(*args)
        assert r.returncode == 0, r.stderr
        self.builds[version] = out

    def publish(self, version: str) -> None:
        r = rampart("pattern", "publish", "--from", str(self.builds[version]), "--repo",
                    str(self.repo), "--key", str(self.key))
        assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    tmp = tmp_path_factory.mktemp("source")
    assert rampart("pattern", "keygen", "--out", str(tmp / "key")).returncode == 0
    s = Source(tmp, tmp / "key", tmp / "repo")
    for v, base in ((V1, None), (V2, V1), (V3, V2), (V4, V3)):
        s.build(v, base)
    s.publish(V1)
    port = free_port()
    s.proc = Proc([*RAMPART, "pattern", "serve", str(s.repo), "--port", str(port)], tmp,
                  tmp / "serve.log", {"http": port})
    s.proc.start(f"http://127.0.0.1:{port}/manifest.json")
    yield s
    s.proc.stop()


def config(path: Path, source_url: str, key: Path, **extra: object) -> Path:
    lines = [f'update_source = "{source_url}"', f'update_key = "{key}"',
             *(f"{k} = {json.dumps(v)}" for k, v in extra.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


class Load(threading.Thread):
    """Asks about PROBES in a loop; every answer must match the version it names."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.versions: set[str] = set()
        self.requests = 0

    def run(self) -> None:
        items = [{"sha256": h} for h in PROBES]
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(f"{self.base}/v1/file", json={"items": items})
                except httpx.HTTPError as e:
                    self.errors.append(f"request failed: {e!r}")
                    continue
                self.requests += 1
                if r.status_code != 200:
                    self.errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    continue
                doc = r.json()
                version = doc["pattern"]
                self.versions.add(version)
                if version not in CONTENT:
                    continue  # the shipped sample, before the first update
                for h, res in zip(PROBES, doc["results"]):
                    hit = res["source"] == "pattern"
                    if hit != (h in CONTENT[version]) or (hit and res["threat"] != f"Threat-{version}"):
                        self.errors.append(f"version {version}: wrong answer for {h[:12]}: {res}")


def ready(p: Proc) -> dict:
    return httpx.get(f"http://127.0.0.1:{p.ports['http']}/readyz", timeout=5).json()


def eventually(check, timeout: float = 2.5):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def update_now(p: Proc, cfg: Path) -> subprocess.CompletedProcess[str]:
    return rampart("update", "now", "--data-dir", str(p.data_dir), "--config", str(cfg))


def test_updates_swap_live_without_a_wrong_answer(source: Source, tmp_path: Path) -> None:
    cfg = config(tmp_path / "rampart.toml", source.url, source.key.with_name("key.pub"))
    appliance = start_appliance(tmp_path, None, "--config", str(cfg))
    base = f"http://127.0.0.1:{appliance.ports['http']}"
    load = Load(base)
    load.start()
    try:
        # From the sample to V1: the schedule's first run at start, full files.
        assert eventually(lambda: ready(appliance)["pattern"]["version"] == V1, 15)
        last = ready(appliance)["pattern"]["update"]["last"]
        assert last["ok"] and last["path"] == "full" and last["version"] == V1

        # V1 -> V3 by `update now` in another process: a diff chain; the server swaps within 2 s.
        source.publish(V2)
        source.publish(V3)
        r = update_now(appliance, cfg)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"installed version {V3}" in r.stdout and "diff" in r.stdout
        assert eventually(lambda: ready(appliance)["pattern"]["version"] == V3)
        assert update_now(appliance, cfg).stdout.startswith("up to date")

        # Every bad update is refused; the old pattern keeps answering.
        good = source.tmp / "repo-good"
        source.publish(V4)
        shutil.copytree(source.repo, good)
        for case, reason in _bad_updates(source):
            r = update_now(appliance, cfg)
            assert r.returncode == 1, (case, r.stdout, r.stderr)
            assert f"({reason})" in r.stderr, (case, r.stderr)
            assert ready(appliance)["pattern"]["version"] == V3, case
            shutil.rmtree(source.repo)
            shutil.copytree(good, source.repo)

        # Chaining: another appliance follows this one's /v1/patterns with the same key.
        chained_cfg = config(tmp_path / "chained.toml", f"{base}/v1/patterns",
                             source.key.with_name("key.pub"))
        chained = start_appliance(tmp_path / "chained", None, "--config", str(chained_cfg))
        try:
            assert eventually(lambda: ready(chained)["pattern"]["version"] == V3, 15)
            hit = httpx.get(f"http://127.0.0.1:{chained.ports['http']}/v1/file/{THREE[0]}").json()
            assert hit["results"][0]["threat"] == f"Threat-{V3}"
        finally:
            chained.stop()

        # The agent pattern: ETag, 304, and a diff from the version a product holds.
        agent = httpx.get(f"{base}/v1/agent-pattern")
        assert agent.status_code == 200 and agent.headers["etag"].strip('"') == hashlib.sha256(
            agent.content).hexdigest()
        same = httpx.get(f"{base}/v1/agent-pattern", headers={"If-None-Match": agent.headers["etag"]})
        assert same.status_code == 304 and same.content == b""

        # Rollback in another process: the server goes back to V1 within 2 s.
        r = rampart("pattern", "rollback", "--data-dir", str(appliance.data_dir))
        assert r.returncode == 0 and f"to {V1}" in r.stdout, r.stderr
        assert eventually(lambda: ready(appliance)["pattern"]["version"] == V1)
        old_etag = httpx.get(f"{base}/v1/agent-pattern").headers["etag"]
        assert old_etag != agent.headers["etag"]
        r = update_now(appliance, cfg)  # V4 is newer than the rolled-back V3: it is taken
        assert r.returncode == 0 and f"installed version {V4}" in r.stdout, r.stdout + r.stderr
        assert eventually(lambda: ready(appliance)["pattern"]["version"] == V4)
        diff = httpx.get(f"{base}/v1/agent-pattern", params={"from": old_etag.strip('"')})
        assert diff.status_code == 200 and diff.content[:4] == b"RMAD"
    finally:
        load.stop.set()
        load.join(10)
        appliance.stop()
    assert not load.errors, load.errors[:5]
    assert {V1, V3, V4} <= load.versions and load.requests > 50


def _bad_updates(source: Source) -> Iterator[tuple[str, str]]:
    """Damage the repository one way at a time (V4 is pending); yields (case, reason)."""
    r = source.repo
    (r / repo.SIGNATURE).unlink()
    yield "unsigned", "unsigned"
    (r / repo.SIGNATURE).write_bytes(os.urandom(64))
    yield "wrongly signed", "bad_signature"
    diff = r / repo.diff_path("smart-scan", V3, V4, "file-sha256.tbl")
    data = diff.read_bytes()
    diff.write_bytes(data[:-7])
    yield "truncated diff", "truncated"
    diff.write_bytes(data[:50] + bytes([data[50] ^ 1]) + data[51:])
    yield "corrupt diff", "digest_mismatch"
    # A correctly signed manifest listing a diff made against another base (V2, not V3).
    bad = table_diff.make_table_diff(source.builds[V2] / "file-sha256.tbl",
                                 source.builds[V4] / "file-sha256.tbl")
    diff.write_bytes(bad)
    manifest = json.loads((r / repo.MANIFEST).read_bytes())
    for d in manifest["patterns"]["smart-scan"]["diffs"]:
        if d["from"] == V3:
            d["files"]["file-sha256.tbl"] = {"size": len(bad), "sha256": hashlib.sha256(bad).hexdigest()}
    raw = json.dumps(manifest).encode()
    (r / repo.MANIFEST).write_bytes(raw)
    (r / repo.SIGNATURE).write_bytes(signing.sign(raw, signing.load_private_key(source.key)))
    yield "diff against the wrong base", "wrong_base"


def test_failures_show_in_metrics_and_readyz_while_answering(source: Source, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert rampart("pattern", "keygen", "--out", str(other)).returncode == 0
    cfg = config(tmp_path / "rampart.toml", source.url, other.with_name("other.pub"),
                 update_interval=1, update_backoff_max=1)
    appliance = start_appliance(tmp_path, None, "--config", str(cfg))
    base = f"http://127.0.0.1:{appliance.ports['http']}"
    try:
        assert eventually(lambda: (ready(appliance)["pattern"]["update"]["last"] or {}).get(
            "reason") == "bad_signature", 10)
        body = ready(appliance)
        assert body["pattern"]["version"] not in CONTENT  # still the sample
        assert body["pattern"]["update"]["consecutive_failures"] >= 1
        text = httpx.get(f"{base}/metrics").text
        assert 'rampart_update_failures_total{reason="bad_signature"}' in text
        assert "rampart_update_last_success_timestamp 0.0" in text
        assert 'rampart_pattern_age_seconds{pattern="smart-scan"}' in text
        eicar = httpx.get(f"{base}/v1/file/{EICAR_SHA256}").json()["results"][0]
        assert eicar["source"] == "pattern"
    finally:
        appliance.stop()


def test_update_now_exit_codes(source: Source, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)  # update now works on a server's data directory, never makes one
    r = rampart("update", "now", "--data-dir", str(data))
    assert r.returncode == 2 and "no update source" in r.stderr
    r = rampart("update", "now", "--data-dir", str(data), "--update-source", source.url)
    assert r.returncode == 2 and "update_key" in r.stderr
    pub = str(source.key.with_name("key.pub"))
    r = rampart("update", "now", "--data-dir", str(data), "--update-source",
                f"http://127.0.0.1:{free_port()}/", "--update-key", pub)
    assert r.returncode == 1 and "fetch_failed" in r.stderr
    r = rampart("update", "now", "--data-dir", str(data), "--update-source", source.url,
                "--update-key", pub, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["changed"] is True
    r = rampart("pattern", "rollback", "--data-dir", str(data))
    assert r.returncode == 1 and "no version before" in r.stderr


# ---------------------------------------------------------------- replays and expiry


def resign(repo_dir: Path, key: Path, **changes: str) -> None:
    """Sign the repository's manifest again, with ``changes`` (as the publisher could)."""
    doc = json.loads((repo_dir / repo.MANIFEST).read_bytes())
    doc.update(changes)
    raw = json.dumps(doc).encode()
    (repo_dir / repo.MANIFEST).write_bytes(raw)
    (repo_dir / repo.SIGNATURE).write_bytes(signing.sign(raw, signing.load_private_key(key)))


def metric(base: str, line: str) -> bool:
    return any(m.startswith(line) for m in httpx.get(f"{base}/metrics", timeout=5).text.splitlines())


def test_an_old_source_served_again_is_refused_and_expiry_is_reported(source: Source,
                                                                     tmp_path: Path) -> None:
    own = Source(tmp_path, source.key, tmp_path / "repo", source.builds)
    own.publish(V1)
    shutil.copytree(own.repo, tmp_path / "repo-v1")  # what someone on the path kept
    own.publish(V2)
    shutil.copytree(own.repo, tmp_path / "repo-v2")
    port = free_port()
    own.proc = Proc([*RAMPART, "pattern", "serve", str(own.repo), "--port", str(port)], tmp_path,
                    tmp_path / "serve.log", {"http": port})
    own.proc.start(f"http://127.0.0.1:{port}/manifest.json")
    cfg = config(tmp_path / "rampart.toml", own.url, source.key.with_name("key.pub"),
                 update_interval=1, update_backoff_max=1, stale_after=10 * 365 * 86400)
    appliance = start_appliance(tmp_path, None, "--config", str(cfg))
    base = f"http://127.0.0.1:{appliance.ports['http']}"
    try:
        assert eventually(lambda: ready(appliance)["pattern"]["version"] == V2, 15)
        assert ready(appliance)["pattern"]["source_expired"] is False

        # The genuinely signed V1 source, served again: refused by `update now` and the schedule.
        shutil.rmtree(own.repo)
        shutil.copytree(tmp_path / "repo-v1", own.repo)
        r = update_now(appliance, cfg)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "(downgrade)" in r.stderr and "older than the installed" in r.stderr, r.stderr
        assert eventually(lambda: (ready(appliance)["pattern"]["update"]["last"] or {}).get(
            "reason") == "downgrade", 10)
        assert metric(base, 'rampart_update_failures_total{reason="downgrade"}')
        assert ready(appliance)["pattern"]["version"] == V2
        hit = httpx.get(f"{base}/v1/file/{TWO[0]}", timeout=5).json()["results"][0]
        assert hit["threat"] == f"Threat-{V2}"  # published after V1: still answers

        # V2 again, renewed by the publisher with an expiry that soon passes: stale, not failed.
        shutil.rmtree(own.repo)
        shutil.copytree(tmp_path / "repo-v2", own.repo)
        published = repo.parse_manifest((own.repo / repo.MANIFEST).read_bytes()).published
        resign(own.repo, own.key, published=stamp(published + timedelta(seconds=1)),
               expires=stamp(published + timedelta(seconds=2)))
        assert eventually(lambda: ready(appliance)["pattern"]["source_expired"], 15)
        body = ready(appliance)["pattern"]
        assert body["stale"] and body["patterns"]["smart-scan"]["stale"], body
        assert body["update"]["last"]["ok"] and body["version"] == V2
        assert metric(base, 'rampart_pattern_stale{pattern="smart-scan"} 1.0')
        assert not metric(base, "rampart_update_source_expires_timestamp 0.0")
    finally:
        appliance.stop()
        own.proc.stop()


# ---------------------------------------------------------------- first start


def test_servers_started_together_on_a_fresh_data_dir_both_come_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    procs = []
    for i in range(2):
        http, https = free_port(), free_port()
        procs.append(Proc([*RAMPART, "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
                           "--query-port", str(http), "--query-tls-port", str(https),
                           "--proxy-port", "0", "--transparent-port", "0"],
                          data, tmp_path / f"serve-{i}.log", {"http": http}))
    errors: list[str] = []

    def start(p: Proc) -> None:
        try:
            p.start(f"http://127.0.0.1:{p.ports['http']}/healthz")
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=start, args=(p,)) for p in procs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [], errors
        versions = {ready(p)["pattern"]["version"] for p in procs}
        assert len(versions) == 1, versions
    finally:
        for p in procs:
            p.stop()


def test_update_now_is_written_to_the_update_log(source: Source, tmp_path: Path) -> None:
    from proxy.logs.search import Search, search
    from proxy.logs.store import LogStore

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    pub = str(source.key.with_name("key.pub"))
    r = rampart("update", "now", "--data-dir", str(data), "--update-source", source.url,
                "--update-key", pub)
    assert r.returncode == 0, r.stderr
    store = LogStore.open(data)
    try:
        rows = search(store, Search(log="updates")).rows
    finally:
        store.close()
    assert len(rows) == 1 and rows[0]["ok"] and rows[0]["changed"]
