"""The updater with a fake fetcher and clock: full, diff chains, every bad update, schedule, backoff."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.errors import FetchError
from proxy.model import FileQuery, HashKind
from proxy.patterns import agent, table_diff
from proxy.patterns.build import build_pattern
from proxy.patterns.layout import version_time
from proxy.patterns.pattern import PatternSet
from proxy.updates import repo
from proxy.updates.manifest import read_local
from proxy.updates.store import PatternStore
from proxy.updates.updater import Updater, UpdateResult, held_versions, write_file

# ---------------------------------------------------------------- a test-side publisher
#
# Independent of `rampart pattern publish`, so the updater is tested against the
# documented layout itself (proxy/updates/repo.py's docstring).


def digests_of(n: int, seed: str) -> list[str]:
    return [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]


def build_version(root: Path, version: str, hashes: list[str], urls: list[str] = ()) -> Path:
    """A pattern build with an agent.bin (fixed prefix bits, so agent diffs are incremental)."""
    src = root / f"src-{version}"
    src.mkdir(parents=True)
    (src / "h.txt").write_text("".join(f"{h},Test-Threat\n" for h in hashes))
    (src / "u.txt").write_text("".join(f"{u},dangerous,malware\n" for u in urls) or "#\n")
    out = root / f"build-{version}"
    build_pattern(out, hashes=[src / "h.txt"], urls=[src / "u.txt"], version=version)
    (out / "agent.bin").write_bytes(agent.build_agent([bytes.fromhex(h) for h in hashes],
                                                      prefix_bits=24))
    return out


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _spec(p: Path) -> dict:
    return {"size": p.stat().st_size, "sha256": _sha(p)}


def publish(repo_dir: Path, builds: list[Path], key: Ed25519PrivateKey,
            published: datetime | None = None) -> bytes:
    """Write REPO_DIR for ``builds`` (oldest first): full files, diffs, signed manifest."""
    if repo_dir.exists():
        shutil.rmtree(repo_dir)
    repo_dir.mkdir(parents=True)
    patterns: dict[str, dict] = {}
    prev_build: dict[str, tuple[str, Path]] = {}
    strings: dict | None = None
    for build in builds:
        version = json.loads((build / "manifest.json").read_text())["version"]
        s = build / "strings.json"
        if strings is None or strings["sha256"] != _sha(s):
            strings = {"version": version, **_spec(s)}
            dst = repo_dir / repo.full_path(repo.STRINGS, version, "strings.json")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(s, dst)
        for name, files in repo.PATTERN_FILES.items():
            entry = patterns.get(name)
            if entry is not None and all(
                    entry["files"][f]["sha256"] == _sha(build / f) for f in files):
                continue  # unchanged: keeps its version
            for f in files:
                dst = repo_dir / repo.full_path(name, version, f)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(build / f, dst)
            new = {"version": version, "entries": 0,
                   "files": {f: _spec(build / f) for f in files},
                   "history": [*(entry["history"] if entry else []), version],
                   "diffs": list(entry["diffs"]) if entry else []}
            if entry is not None:
                old_v, old_build = prev_build[name]
                dfiles = {}
                for f in files:
                    if f in repo.FULL_ONLY:
                        continue
                    if f == repo.AGENT_FILE:
                        d = agent.make_diff((old_build / f).read_bytes(), (build / f).read_bytes())
                    else:
                        d = table_diff.make_table_diff(old_build / f, build / f)
                    dst = repo_dir / repo.diff_path(name, old_v, version, f)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_bytes(d)
                    dfiles[f] = {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                if dfiles:
                    new["diffs"].append({"from": old_v, "to": version, "files": dfiles})
            patterns[name] = new
            prev_build[name] = (version, build)
    assert strings is not None
    doc = {"format": 1, "type": repo.REPO_TYPE, "keep": 24,
           "published": (published or datetime(2026, 1, 1, tzinfo=UTC)).isoformat(),
           "strings": strings, "patterns": patterns}
    raw = json.dumps(doc, indent=1).encode()
    (repo_dir / repo.MANIFEST).write_bytes(raw)
    (repo_dir / repo.SIGNATURE).write_bytes(key.sign(raw))
    return raw


# ---------------------------------------------------------------- fakes


@dataclass
class FakeFetcher:
    """Serves REPO_DIR; ``override`` replaces a path's bytes (or raises), ``log`` records paths."""

    root: Path
    override: dict[str, bytes | Exception | Callable[[bytes], bytes]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    async def get(self, path: str, *, max_bytes: int, deadline: float) -> bytes:
        self.log.append(path)
        o = self.override.get(path)
        if isinstance(o, Exception):
            raise o
        if isinstance(o, bytes):
            return o
        f = self.root / path
        if not f.is_file():
            raise FetchError(f"{path}: not found", missing=True)
        data = f.read_bytes()
        return o(data) if callable(o) else data


class Clock:
    def __init__(self, t: float = 1_767_225_600.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def inline(fn: Callable, *args: object) -> object:
    return fn(*args)


EICARLIKE = digests_of(40, "v1")
V1, V2, V3 = "2026010100", "2026010101", "2026010102"


@dataclass
class World:
    tmp: Path
    key: Ed25519PrivateKey
    builds: dict[str, Path]
    repo_dir: Path
    store: PatternStore
    fetcher: FakeFetcher
    clock: Clock

    def updater(self, **kw: object) -> Updater:
        kw = {"clock": self.clock, "monotonic": self.clock, "rng": lambda: 0.5,
              "offload": inline, **kw}
        return Updater("http://127.0.0.1:9/", self.key.public_key(), self.store, self.fetcher,
                       **kw)  # type: ignore[arg-type]

    def publish(self, *versions: str, published: datetime | None = None) -> bytes:
        return publish(self.repo_dir, [self.builds[v] for v in versions], self.key, published)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("builds")
    h1 = EICARLIKE
    h2 = h1[5:] + digests_of(10, "v2")
    h3 = h2[3:] + digests_of(7, "v3")
    return {
        V1: build_version(root, V1, h1, ["bad.example.test/"]),
        V2: build_version(root, V2, h2, ["bad.example.test/"]),
        V3: build_version(root, V3, h3, ["bad.example.test/", "worse.example.test/"]),
    }


@pytest.fixture
def world(tmp_path: Path, builds: dict[str, Path]) -> World:
    key = Ed25519PrivateKey.generate()
    repo_dir = tmp_path / "repo"
    store = PatternStore.open(tmp_path / "data" / "patterns", keep=3)
    return World(tmp_path, key, builds, repo_dir, store, FakeFetcher(repo_dir), Clock())


def lookup(store: PatternStore, digest: str) -> bool:
    with PatternSet.open(store.current_path()) as ps:
        return ps.lookup_file(FileQuery(HashKind.SHA256, bytes.fromhex(digest))) is not None


def same_files(a: Path, b: Path, files: Mapping[str, tuple[str, ...]] = repo.PATTERN_FILES) -> None:
    for fs in files.values():
        for f in fs:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f


# ---------------------------------------------------------------- the good paths


async def test_from_empty_takes_full_files(world: World) -> None:
    world.publish(V1)
    result = await world.updater().update_once()
    assert result.ok and result.changed and result.path == "full" and result.version == V1
    assert world.store.current_version() == V1
    same_files(world.store.current_path(), world.builds[V1])
    assert lookup(world.store, EICARLIKE[0])
    assert result.bytes == sum(p.stat().st_size for p in world.repo_dir.rglob("*") if p.is_file()
                               and "full/" in str(p)) + len(
        (world.repo_dir / "manifest.json").read_bytes()) + 64
    # The signed source manifest is kept for re-serving.
    src = world.store.current_path() / "source"
    assert (src / "manifest.json").read_bytes() == (world.repo_dir / "manifest.json").read_bytes()
    assert held_versions(read_local(world.store.current_path()), world.store.current_path())[
        repo.SMART_SCAN] == V1


async def test_v1_to_v3_takes_the_diff_chain_and_equals_a_full_build(world: World) -> None:
    world.publish(V1)
    up = world.updater()
    assert (await up.update_once()).ok
    world.publish(V1, V2, V3)
    world.fetcher.log.clear()
    result = await up.update_once()
    assert result.ok and result.changed and result.version == V3, result
    assert "diff" in result.path
    assert any(p.startswith(f"diffs/smart-scan/{V1}-{V2}/") for p in world.fetcher.log)
    assert any(p.startswith(f"diffs/smart-scan/{V2}-{V3}/") for p in world.fetcher.log)
    assert not any(p.startswith("full/smart-scan/") for p in world.fetcher.log)
    same_files(world.store.current_path(), world.builds[V3])
    assert not lookup(world.store, EICARLIKE[0]) and lookup(world.store, EICARLIKE[-1])
    assert world.store.versions() == [V1, V3]


async def test_nothing_to_do_when_current(world: World) -> None:
    world.publish(V1)
    up = world.updater()
    await up.update_once()
    world.fetcher.log.clear()
    again = await up.update_once()
    assert again.ok and not again.changed and again.path == "none"
    assert world.fetcher.log == ["manifest.json", "manifest.json.sig"]


async def test_replaces_a_sample_built_pattern_whole(world: World, tmp_path: Path) -> None:
    staging = world.store.staging() / "p"
    src = tmp_path / "s.txt"
    src.write_text(f"{EICARLIKE[0]},Other-Name\n")
    build_pattern(staging, hashes=[src], version="2025010100")
    world.store.install(staging)
    world.publish(V1)
    result = await world.updater().update_once()
    assert result.ok and result.path == "full" and world.store.current_version() == V1
    same_files(world.store.current_path(), world.builds[V1])


async def test_missing_diff_at_the_source_falls_back_to_the_full_file(world: World) -> None:
    world.publish(V1)
    up = world.updater()
    await up.update_once()
    world.publish(V1, V2)
    for p in (world.repo_dir / "diffs").rglob("*.diff"):
        p.unlink()
    result = await up.update_once()
    assert result.ok and result.version == V2 and result.path == "full"
    same_files(world.store.current_path(), world.builds[V2])


# ---------------------------------------------------------------- bad updates change nothing


def _corrupt(data: bytes) -> bytes:
    return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]


BAD = {
    "unsigned": ({"manifest.json.sig": FetchError("gone", missing=True)}, "unsigned"),
    "wrongly signed": ({"manifest.json.sig": Ed25519PrivateKey.generate().sign(b"x")},
                       "bad_signature"),
    "tampered manifest": ({"manifest.json": lambda d: d.replace(b'"keep": 24', b'"keep": 23')},
                          "bad_signature"),
    "truncated table": ({f"full/smart-scan/{V2}/file-sha256.tbl": lambda d: d[:-10]}, "truncated"),
    "corrupt table": ({f"full/smart-scan/{V2}/file-sha256.tbl": _corrupt}, "digest_mismatch"),
    "corrupt diff": ({f"diffs/smart-scan/{V1}-{V2}/file-sha256.tbl.diff": _corrupt},
                     "digest_mismatch"),
    "network down": ({"manifest.json": FetchError("refused")}, "fetch_failed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_a_bad_update_changes_nothing(world: World, case: str) -> None:
    world.publish(V1)
    up = world.updater()
    await up.update_once()
    before = sorted(p.name for p in world.store.versions_dir.iterdir())
    world.publish(V1, V2)
    override, reason = BAD[case]
    if case in ("truncated table", "corrupt table"):  # make the plan take the full file
        for p in (world.repo_dir / "diffs").rglob("*.diff"):
            p.unlink()
    world.fetcher.override.update(override)
    result = await up.update_once()
    assert not result.ok and result.reason == reason, result
    assert world.store.current_version() == V1
    assert sorted(p.name for p in world.store.versions_dir.iterdir()) == before
    assert not any((world.store.root / ".staging").iterdir())
    assert up.failures[reason] == 1 and up.consecutive_failures == 1
    assert up.status()["last"]["reason"] == reason
    assert lookup(world.store, EICARLIKE[0])


async def test_a_diff_against_the_wrong_base_is_refused_then_full_is_taken(world: World) -> None:
    world.publish(V1)
    up = world.updater()
    await up.update_once()
    world.publish(V1, V2, V3)
    # Signed and listed correctly, but made from V2's table, not V1's: the base does not match.
    bad = table_diff.make_table_diff(world.builds[V2] / "file-sha256.tbl",
                                 world.builds[V3] / "file-sha256.tbl")
    manifest = json.loads((world.repo_dir / "manifest.json").read_text())
    for d in manifest["patterns"]["smart-scan"]["diffs"]:
        if d["from"] == V1:
            d["files"]["file-sha256.tbl"] = {"size": len(bad),
                                             "sha256": hashlib.sha256(bad).hexdigest()}
    raw = json.dumps(manifest).encode()
    world.fetcher.override.update({
        "manifest.json": raw, "manifest.json.sig": world.key.sign(raw),
        f"diffs/smart-scan/{V1}-{V2}/file-sha256.tbl.diff": bad,
    })
    result = await up.update_once()
    assert not result.ok and result.reason == "wrong_base", result
    assert world.store.current_version() == V1
    world.fetcher.log.clear()
    retry = await up.update_once()  # the next attempt takes the full files of that pattern
    assert retry.ok and retry.version == V3 and "full" in retry.path
    assert f"full/smart-scan/{V3}/file-sha256.tbl" in world.fetcher.log
    same_files(world.store.current_path(), world.builds[V3])


async def test_a_full_disk_changes_nothing(world: World) -> None:
    world.publish(V1)
    up = world.updater()
    await up.update_once()
    world.publish(V1, V2)

    def no_space(path: Path, data: bytes) -> None:
        if path.name == "manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        Path(path).write_bytes(data)

    up.writer = no_space
    result = await up.update_once()
    assert not result.ok and result.reason == "disk_full"
    assert world.store.current_version() == V1 and world.store.versions() == [V1]
    assert "No space left" in result.message


async def test_a_rolled_back_version_is_not_installed_again(world: World) -> None:
    world.publish(V1)
    up = world.updater()
    await up.update_once()
    world.publish(V1, V2)
    await up.update_once()
    assert world.store.rollback() == V1
    again = await up.update_once()
    assert again.ok and not again.changed and "rolled back" in again.message
    assert world.store.current_version() == V1
    world.publish(V1, V2, V3)
    newer = await up.update_once()
    assert newer.ok and newer.version == V3


# ---------------------------------------------------------------- replays, the clock, rollback

T0 = datetime(2026, 1, 1, tzinfo=UTC)  # the world's clock starts here


def signed(world: World) -> dict[str, bytes]:
    """The source's manifest and signature as they are now (to serve them again later)."""
    return {name: (world.repo_dir / name).read_bytes()
            for name in (repo.MANIFEST, repo.SIGNATURE)}


async def test_an_older_source_served_again_is_refused(world: World) -> None:
    world.publish(V1, published=T0 - timedelta(hours=2))
    old = signed(world)
    world.publish(V1, V2, published=T0 - timedelta(hours=1))
    up = world.updater()
    assert (await up.update_once()).version == V2
    world.fetcher.override.update(old)  # genuinely signed, and its files are all still there
    result = await up.update_once()
    assert not result.ok and result.reason == "downgrade", result
    assert "published 2025-12-31T22:00:00Z is older than the installed 2025-12-31T23:00:00Z" in (
        result.message)
    assert world.store.current_version() == V2 and world.store.versions() == [V2]
    assert up.failures["downgrade"] == 1 and up.status()["last"]["reason"] == "downgrade"
    assert lookup(world.store, digests_of(10, "v2")[0])  # what V2 added still answers


async def test_a_store_from_before_the_mark_is_guarded_by_its_current_version(world: World) -> None:
    world.publish(V1, published=T0 - timedelta(hours=2))
    old = signed(world)
    world.publish(V1, V2, published=T0 - timedelta(hours=1))
    assert (await world.updater().update_once()).version == V2
    state = world.store.root / "state.json"
    doc = json.loads(state.read_text())
    state.write_text(json.dumps({k: v for k, v in doc.items() if k != "newest"}))
    assert world.store.newest() == {}
    world.fetcher.override.update(old)
    result = await world.updater().update_once()  # a fresh process: `rampart update now`
    assert result.reason == "downgrade" and world.store.current_version() == V2


async def test_the_sample_takes_the_first_version_whatever_its_number(world: World,
                                                                     tmp_path: Path) -> None:
    src = tmp_path / "s.txt"
    src.write_text(f"{EICARLIKE[0]},Sample\n")
    sample = world.store.staging() / "p"
    build_pattern(sample, hashes=[src], version="2099010100")  # built later than V1, say
    world.store.install(sample)
    world.publish(V1, published=T0 - timedelta(hours=2))
    result = await world.updater().update_once()
    assert result.ok and result.version == V1 and world.store.current_version() == V1


async def test_a_manifest_from_the_future_is_refused(world: World) -> None:
    world.publish(V1, published=T0 + timedelta(days=2))
    up = world.updater()
    result = await up.update_once()
    assert not result.ok and result.reason == "from_future", result
    assert "172800 s ahead" in result.message and world.store.current_version() is None
    assert (await world.updater(max_clock_skew=3 * 86400).update_once()).ok


async def test_rollback_is_kept_and_the_next_newer_version_taken(world: World) -> None:
    world.publish(V1, published=T0 - timedelta(hours=2))
    up = world.updater()
    await up.update_once()
    world.publish(V1, V2, published=T0 - timedelta(hours=1))
    await up.update_once()
    assert world.store.rollback() == V1
    kept = await up.update_once()  # V2 again: neither reinstalled nor a downgrade
    assert kept.ok and not kept.changed and "rolled back" in kept.message
    assert world.store.current_version() == V1
    world.publish(V1, V2, V3, published=T0)
    newer = await up.update_once()
    assert newer.ok and newer.version == V3 and up.failures == {}


async def test_the_expiry_of_the_last_manifest_is_reported(world: World) -> None:
    raw = json.loads(world.publish(V1))
    raw["expires"] = "2026-01-08T00:00:00Z"
    data = json.dumps(raw).encode()
    world.fetcher.override.update({repo.MANIFEST: data, repo.SIGNATURE: world.key.sign(data)})
    up = world.updater()
    assert (await up.update_once()).ok
    assert up.status()["source_expires"] == "2026-01-08T00:00:00Z"


async def test_an_update_racing_another_process_to_the_same_version_succeeds(world: World) -> None:
    """`rampart update now` while the server's own update runs: both install, neither fails."""
    world.publish(V1)
    await world.updater().update_once()
    world.publish(V1, V2)
    other = world.updater()
    raced: list[UpdateResult] = []

    def write_after_the_other_installed(path: Path, data: bytes) -> None:
        if not raced:  # the other process runs its whole update now, mid-way through ours
            t = threading.Thread(target=lambda: raced.append(asyncio.run(other.update_once())))
            t.start()
            t.join(60)
        write_file(path, data)

    result = await world.updater(writer=write_after_the_other_installed).update_once()
    assert raced[0].ok and raced[0].version == V2
    assert result.ok and result.changed, result
    assert world.store.current_version() == result.version and lookup(world.store, EICARLIKE[-1])


async def test_an_update_overtaken_by_a_newer_one_does_not_undo_it(world: World) -> None:
    """Ours fetched V2's manifest; meanwhile another process installs V3: V3 stays."""
    world.publish(V1, published=T0 - timedelta(hours=3))
    await world.updater().update_once()
    world.publish(V1, V2, published=T0 - timedelta(hours=2))
    raced: list[UpdateResult] = []

    def write_after_a_newer_install(path: Path, data: bytes) -> None:
        if not raced:
            world.publish(V1, V2, V3, published=T0 - timedelta(hours=1))
            other = world.updater()
            t = threading.Thread(target=lambda: raced.append(asyncio.run(other.update_once())))
            t.start()
            t.join(60)
        write_file(path, data)

    result = await world.updater(writer=write_after_a_newer_install).update_once()
    assert raced[0].ok and raced[0].version == V3
    assert result.ok and not result.changed and "newer" in result.message, result
    assert world.store.current_version() == V3
    assert not any((world.store.root / ".staging").iterdir())


# ---------------------------------------------------------------- schedule and backoff


async def test_backoff_is_exponential_with_jitter_and_capped(world: World) -> None:
    world.fetcher.override["manifest.json"] = FetchError("down")
    rng = iter([0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    up = world.updater(rng=lambda: next(rng), backoff_max=200)
    delays = []
    for _ in range(6):
        await up.update_once()
        delays.append(up.next_delay())
    # step 30, 60, 120, 200, 200, 200; delay = step/2 + rng*step/2
    assert delays == [15.0, 60.0, 90.0, 150.0, 150.0, 150.0]
    world.fetcher.override.clear()
    world.publish(V1)
    assert (await up.update_once()).ok
    assert up.next_delay() == 3600.0 and up.consecutive_failures == 0


async def test_per_pattern_schedule_updates_only_what_is_due(world: World) -> None:
    world.publish(V1)
    up = world.updater(schedule={repo.WEB_BLOCKING: 86400})
    await up.update_once()
    world.publish(V1, V2, V3)  # V3 changes both smart-scan and web-blocking
    world.clock.t += 3600
    assert up.due() == set(repo.PATTERN_FILES) - {repo.WEB_BLOCKING}
    result = await up.update_once(patterns=up.due())
    assert result.ok and result.changed
    local = read_local(world.store.current_path())
    assert local["patterns"][repo.SMART_SCAN]["version"] == V3
    assert local["patterns"][repo.WEB_BLOCKING]["version"] == V1
    with PatternSet.open(world.store.current_path()) as ps:
        assert ps.lookup_url(["worse.example.test/"]) is None
    world.clock.t += 86400
    assert repo.WEB_BLOCKING in up.due()
    await up.update_once(patterns=up.due())
    with PatternSet.open(world.store.current_path()) as ps:
        assert ps.lookup_url(["worse.example.test/"]) is not None


async def test_run_swaps_after_each_install(world: World) -> None:
    world.publish(V1)
    up = world.updater()
    installed: list[str] = []
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) > 2:
            raise RuntimeError("stop")
        world.clock.t += s

    with pytest.raises(RuntimeError):
        await up.run(installed.append, sleep=sleep)
    assert installed == [V1] and sleeps[:2] == [0.0, 3600.0]


@pytest.mark.parametrize(("version", "expected"), [
    ("2026010203", datetime(2026, 1, 2, 3, tzinfo=UTC)),
    ("202601020304", datetime(2026, 1, 2, 3, 4, tzinfo=UTC)),
    ("20260102030405", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2026139903", None),
])
def test_version_time(version: str, expected: datetime | None) -> None:
    assert version_time(version) == expected
