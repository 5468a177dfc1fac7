"""An appliance on its bundled sample takes an update source's patterns whatever their
version numbers (issue 9, item 2, the appliance's side).

The sample is built on first start with that hour as its version, so a source
published in the same hour carries the very same version numbers; it must still be
installed, whole. Once a version from a source is installed the normal rules apply
(an older source is a downgrade).
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.config import Config
from proxy.patterns.build import build_pattern
from proxy.patterns.layout import version_time
from proxy.patterns.pattern import PatternSet
from proxy.serve.app import sample_sources
from proxy.serve.keeper import sample_store
from proxy.updates.manifest import LocalManifest
from proxy.updates.store import PatternStore
from proxy.updates.updater import Updater, UpdateResult
from tests.proxy.updates.test_updater import (
    FakeFetcher,
    build_version,
    digests_of,
    publish,
    same_files,
)

HASHES = digests_of(30, "first-update")


def first_start(data: Path) -> tuple[PatternStore, str]:
    """The data directory as `rampart serve` leaves it on first start: the sample, current."""
    data.mkdir(mode=0o700)
    store = sample_store(Config(data_dir=data), sample_sources("appliance"))
    local = LocalManifest.load(store.current_path())
    assert local.version is not None
    return store, local.version


def shifted(version: str, hours: int) -> str:
    t = version_time(version)
    assert t is not None
    return (t + timedelta(hours=hours)).strftime("%Y%m%d%H")


def update(store: PatternStore, repo_dir: Path, key: Ed25519PrivateKey) -> UpdateResult:
    updater = Updater("http://127.0.0.1:9/", key.public_key(), store, FakeFetcher(repo_dir))
    return asyncio.run(updater.update_once())


def served_version(store: PatternStore) -> str:
    with PatternSet.open(store.current_path()) as ps:
        return ps.version


@pytest.mark.parametrize("hours", [0, -1, 1], ids=["same-hour", "older", "newer"])
def test_the_sample_takes_a_source_whatever_its_version(tmp_path: Path, hours: int) -> None:
    store, sample = first_start(tmp_path / "data")
    assert LocalManifest.load(store.current_path()).sample  # marked as the sample
    version = shifted(sample, hours)  # hours=0: published in the hour of the first start
    build = build_version(tmp_path / "b", version, HASHES, ["bad.example.test/"])
    key = Ed25519PrivateKey.generate()
    publish(tmp_path / "repo", [build], key, datetime.now(UTC))
    result = update(store, tmp_path / "repo", key)
    assert result.ok and result.changed and result.path == "full", result
    same_files(store.current_path(), build)  # the source's patterns, every one of them
    assert served_version(store) == version
    assert not LocalManifest.load(store.current_path()).sample
    assert len(store.versions()) == 2  # the sample is kept for rollback, under its own name


def test_a_sample_from_before_the_marker_takes_the_same_hour_too(tmp_path: Path) -> None:
    """A data directory whose sample an earlier release built (no marker) upgrades as well."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    store = PatternStore.open(data / "patterns")
    staging = store.staging()
    src = sample_sources("appliance")
    build_pattern(staging / "sample", hashes=src["hashes"], urls=src["urls"], domains=src["domains"])
    sample = store.install_first(staging / "sample")
    shutil.rmtree(staging, ignore_errors=True)
    build = build_version(tmp_path / "b", sample, HASHES)
    key = Ed25519PrivateKey.generate()
    publish(tmp_path / "repo", [build], key, datetime.now(UTC))
    result = update(store, tmp_path / "repo", key)
    assert result.ok and result.changed, result
    same_files(store.current_path(), build)


def test_after_the_first_update_the_normal_rules_apply(tmp_path: Path) -> None:
    store, sample = first_start(tmp_path / "data")
    key = Ed25519PrivateKey.generate()
    now = datetime.now(UTC)
    newer = build_version(tmp_path / "b", shifted(sample, 1), HASHES)
    publish(tmp_path / "new", [newer], key, now)
    assert update(store, tmp_path / "new", key).changed
    older = build_version(tmp_path / "b", sample, HASHES[1:])  # the sample's hour, published since
    publish(tmp_path / "old", [older], key, now + timedelta(minutes=1))
    result = update(store, tmp_path / "old", key)
    assert not result.ok and result.reason == "downgrade", result
    same_files(store.current_path(), newer)
