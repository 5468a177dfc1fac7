"""Hourly diffs installed as base + overlay: served like the full build, compacted after the
swap, a mismatch answered with the full file, rollback, pruning and re-serving."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.model import FileQuery, HashKind
from proxy.patterns.pattern import PatternSet
from proxy.sb.prefixes import pattern_hashes
from proxy.serve.pattern_source import PatternSource
from proxy.updates import repo
from proxy.updates.manifest import LocalManifest
from proxy.updates.store import PatternStore
from tests.proxy.updates.test_updater import (
    EICARLIKE,
    V1,
    V2,
    V3,
    Clock,
    FakeFetcher,
    World,
    build_version,
    digests_of,
    same_files,
)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """test_updater's three builds: V2 drops 5 digests and adds 10, V3 drops 3 and adds 7."""
    root = tmp_path_factory.mktemp("builds")
    h2 = EICARLIKE[5:] + digests_of(10, "v2")
    h3 = h2[3:] + digests_of(7, "v3")
    return {V1: build_version(root, V1, EICARLIKE, ["bad.example.test/"]),
            V2: build_version(root, V2, h2, ["bad.example.test/"]),
            V3: build_version(root, V3, h3, ["bad.example.test/", "worse.example.test/"]),
            V4: build_version(root, V4, h2, ["bad.example.test/", "new.example.test/"])}


@pytest.fixture
def world(tmp_path: Path, builds: dict[str, Path]) -> World:
    store = PatternStore.open(tmp_path / "data" / "patterns", keep=3)
    return World(tmp_path, Ed25519PrivateKey.generate(), builds, tmp_path / "repo", store,
                 FakeFetcher(tmp_path / "repo"), Clock())

F = "file-sha256.tbl"
V4 = "2026010103"  # V2's hashes (smart-scan unchanged), another URL (web-blocking changes)
EVERY = EICARLIKE + digests_of(10, "v2") + digests_of(7, "v3") + digests_of(5, "never")


def answers(directory: Path) -> list[object]:
    """Every digest's answer, one by one and batched: what a product would see."""
    qs = [FileQuery(HashKind.SHA256, bytes.fromhex(h)) for h in EVERY]
    with PatternSet.open(directory) as ps:
        one = [ps.lookup_file(q) for q in qs]
        assert ps.lookup_files(qs) == one
        joined: list[object] = [None] * len(qs)
        for hit, at in ps.lookup_joined(HashKind.SHA256, b"".join(q.digest for q in qs)):
            for i in at:
                joined[i] = hit
        assert joined == one
        return one


def overlaid(directory: Path) -> bool:
    return not (directory / F).is_file() and (directory / f"{F}.overlay").is_file()


async def _to_v2(world: World, **kw: object) -> Path:
    world.publish(V1)
    assert (await world.updater().update_once()).ok
    world.publish(V1, V2)
    result = await world.updater(compact=False, **kw).update_once()
    assert result.ok and result.changed and result.version == V2 and result.path == "diff", result
    current = world.store.current_path()
    assert current is not None
    return current


async def test_an_hourly_diff_is_installed_as_base_plus_overlay(world: World) -> None:
    current = await _to_v2(world)
    assert overlaid(current)
    v1 = world.store.path_of(V1)
    assert (current / f"{F}.base").stat().st_ino == (v1 / F).stat().st_ino  # linked, not copied
    assert answers(current) == answers(world.builds[V2])
    local = LocalManifest.load(current)
    assert set(local.overlays) >= {F} and local.held(current)[repo.SMART_SCAN] == V2
    assert PatternSet.open(current, verify=True).info()["tables"][F]["entries"] == len(
        EICARLIKE) - 5 + 10


async def test_a_second_diff_folds_into_the_one_overlay_then_compacts(world: World) -> None:
    current = await _to_v2(world)
    world.publish(V1, V2, V3)
    assert (await world.updater(compact=False).update_once()).version == V3
    v3 = world.store.current_path()
    assert v3 is not None and overlaid(v3)
    assert (v3 / f"{F}.base").stat().st_ino == (world.store.path_of(V1) / F).stat().st_ino
    assert answers(v3) == answers(world.builds[V3])
    assert await world.updater().settle() == set()
    same_files(v3, world.builds[V3])
    assert not LocalManifest.load(v3).overlays
    assert not list(v3.glob("*.overlay")) and not list(v3.glob("*.base"))
    assert answers(v3) == answers(world.builds[V3])
    assert current != v3


async def test_the_swap_comes_before_the_compaction(world: World) -> None:
    world.publish(V1)
    assert (await world.updater().update_once()).ok
    world.publish(V1, V2)
    seen: list[bool] = []

    def swapped(version: str) -> None:
        seen.append(overlaid(world.store.path_of(version)))

    result = await world.updater().update_once(on_installed=swapped)
    assert result.ok and seen == [True, False]  # swapped overlaid, then told it is compacted
    same_files(world.store.path_of(V2), world.builds[V2])


async def test_a_compacted_file_unlike_the_signed_one_is_replaced_by_the_full_file(
        world: World) -> None:
    """The publisher's diff and full file disagree: the full file the manifest signs wins."""
    world.publish(V1)
    assert (await world.updater().update_once()).ok
    world.publish(V1, V2)
    other = world.builds[V3] / F  # what the (inconsistent) publisher signs as V2's full file
    doc = json.loads((world.repo_dir / repo.MANIFEST).read_text())
    doc["patterns"][repo.SMART_SCAN]["files"][F] = {
        "size": other.stat().st_size, "sha256": hashlib.sha256(other.read_bytes()).hexdigest()}
    (world.repo_dir / repo.full_path(repo.SMART_SCAN, V2, F)).write_bytes(other.read_bytes())
    raw = json.dumps(doc).encode()
    (world.repo_dir / repo.MANIFEST).write_bytes(raw)
    (world.repo_dir / repo.SIGNATURE).write_bytes(world.key.sign(raw))
    world.fetcher.log.clear()
    result = await world.updater().update_once()
    assert result.ok and result.changed and "full" in result.path, result
    assert f"full/smart-scan/{V2}/{F}" in world.fetcher.log
    current = world.store.current_path()
    assert current is not None and (current / F).read_bytes() == other.read_bytes()
    assert answers(current)[-5:] == [None] * 5


async def test_rollback_and_pruning_keep_an_overlaid_version_whole(world: World) -> None:
    world.store.keep = 1
    current = await _to_v2(world)
    assert world.store.versions() == [V2]  # V1 pruned: the base lives on as a hard link
    assert answers(current) == answers(world.builds[V2])
    world.publish(V1, V2, V3)
    assert (await world.updater(compact=False).update_once()).version == V3
    world.store.keep = 3
    world.publish(V1, V2, V3)
    v3 = world.store.current_path()
    assert v3 is not None and overlaid(v3) and answers(v3) == answers(world.builds[V3])


async def test_rollback_to_an_overlaid_version(world: World) -> None:
    v2 = await _to_v2(world)
    world.publish(V1, V2, V3)
    assert (await world.updater().update_once()).version == V3
    assert world.store.rollback() == V2
    assert overlaid(v2) and answers(world.store.current_path()) == answers(world.builds[V2])


async def test_re_serving_an_overlaid_version_builds_its_full_file(world: World) -> None:
    current = await _to_v2(world)
    keeper = SimpleNamespace(store=world.store, served=current.name, local=LocalManifest.load(current),
                             cfg=SimpleNamespace(update_max_bytes=1 << 30, pattern_dir=None))
    source = PatternSource(keeper)  # type: ignore[arg-type]
    resp = await source._repo_file(repo.full_path(repo.SMART_SCAN, V2, F))
    assert resp.status == 200 and resp.body == (world.builds[V2] / F).read_bytes()
    assert (current / F).read_bytes() == resp.body and not LocalManifest.load(current).overlays
    again = await asyncio.create_task(source._repo_file(repo.full_path(repo.SMART_SCAN, V2, F)))
    assert again.body == resp.body


async def test_an_unchanged_overlaid_pattern_is_held_as_it_was(world: World) -> None:
    v2 = await _to_v2(world)
    world.publish(V1, V2, V4)
    result = await world.updater(compact=False).update_once()
    assert result.ok and result.patterns[repo.SMART_SCAN] == V2, result
    v4 = world.store.current_path()
    assert v4 is not None and overlaid(v4) and (v4 / "web-blocking.tbl.overlay").is_file()
    assert (v4 / f"{F}.overlay").stat().st_ino == (v2 / f"{F}.overlay").stat().st_ino
    assert answers(v4) == answers(world.builds[V4])
    with PatternSet.open(v4) as ps, PatternSet.open(world.builds[V4]) as full:
        for url in ("bad.example.test/", "new.example.test/", "worse.example.test/"):
            assert ps.lookup_url([url]) == full.lookup_url([url])
        assert pattern_hashes(ps) == pattern_hashes(full)  # Safe Browsing reads whole tables
    assert await world.updater().settle() == set()
    same_files(v4, world.builds[V4])
