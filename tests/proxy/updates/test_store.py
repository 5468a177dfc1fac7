"""The versioned pattern store: install, atomic pointer, pruning, rollback, migration."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from proxy.config import Config
from proxy.errors import PatternError, RampartError, Superseded
from proxy.model import FileQuery, HashKind
from proxy.patterns.build import build_pattern
from proxy.patterns.pattern import PatternSet
from proxy.updates.store import PatternStore, check_name
from tests.conftest import in_threads

EICAR = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("src")
    (d / "hashes.txt").write_text(f"{EICAR},EICAR-Test-File\n")
    return d / "hashes.txt"


def build(store: PatternStore, version: str, source: Path) -> Path:
    out = store.staging() / "p"
    build_pattern(out, hashes=[source], version=version)
    return out


def test_empty_store_has_nothing_current(tmp_path: Path) -> None:
    store = PatternStore.open(tmp_path / "patterns")
    assert store.current_version() is None and store.current_path() is None
    assert store.versions() == []


def test_install_makes_current_and_keeps_order(tmp_path: Path, source: Path) -> None:
    store = PatternStore.open(tmp_path / "patterns", keep=5)
    for v in ("2026010100", "2026010101", "2026010102"):
        assert store.install(build(store, v, source)) == v
        assert store.current_version() == v
    assert store.versions() == ["2026010100", "2026010101", "2026010102"]
    assert (tmp_path / "patterns" / "current").is_symlink()
    with PatternSet.open(store.current_path()) as ps:
        assert ps.version == "2026010102"
    # Another process opening the same store sees the same thing.
    assert PatternStore.open(tmp_path / "patterns").current_version() == "2026010102"


def test_keeps_only_the_last_versions(tmp_path: Path, source: Path) -> None:
    store = PatternStore.open(tmp_path / "patterns", keep=2)
    for v in ("2026010100", "2026010101", "2026010102", "2026010103"):
        store.install(build(store, v, source))
    assert store.versions() == ["2026010102", "2026010103"]
    assert sorted(p.name for p in (tmp_path / "patterns" / "versions").iterdir()) == [
        "2026010102", "2026010103"]


def test_installing_the_current_version_again_is_refused(tmp_path: Path, source: Path) -> None:
    store = PatternStore.open(tmp_path / "patterns")
    store.install(build(store, "2026010100", source))
    again = build(store, "2026010100", source)
    with pytest.raises(PatternError, match="already current"):
        store.install(again)
    assert store.current_version() == "2026010100"


def test_an_incomplete_directory_is_not_installed(tmp_path: Path, source: Path) -> None:
    store = PatternStore.open(tmp_path / "patterns")
    store.install(build(store, "2026010100", source))
    bad = build(store, "2026010101", source)
    with open(bad / "file-sha256.tbl", "r+b") as f:
        f.truncate(100)
    with pytest.raises(PatternError, match="truncated"):
        store.install(bad)
    assert store.current_version() == "2026010100" and store.versions() == ["2026010100"]


def test_rollback_walks_back_and_refuses_the_rolled_back_version(tmp_path: Path, source: Path) -> None:
    store = PatternStore.open(tmp_path / "patterns", keep=3)
    for v in ("2026010100", "2026010101", "2026010102"):
        store.install(build(store, v, source))
    assert store.rollback() == "2026010101"
    assert store.current_version() == "2026010101"
    assert store.refused() == {"2026010102"}
    assert store.rollback() == "2026010100"
    assert store.refused() == {"2026010102", "2026010101"}
    with pytest.raises(PatternError, match="no version before"):
        store.rollback()
    assert store.current_version() == "2026010100"
    # Installing a version explicitly clears its refusal.
    store.install(build(store, "2026010102", source))
    assert "2026010102" not in store.refused()


def test_rollback_with_nothing_installed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PatternError, match="no current"):
        PatternStore.open(tmp_path / "patterns").rollback()


def test_migrates_the_old_layout(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "patterns"
    build_pattern(root / "current", hashes=[source], version="2025123123")
    store = PatternStore.open(root)
    assert (root / "current").is_symlink()
    assert store.current_version() == "2025123123"
    assert store.versions() == ["2025123123"]
    with PatternSet.open(store.current_path()) as ps:
        assert ps.version == "2025123123"
        hit = ps.lookup_file(FileQuery(HashKind.SHA256, bytes.fromhex(EICAR)))
        assert hit is not None and hit.threat == "EICAR-Test-File"


def test_migration_discards_a_broken_old_directory(tmp_path: Path) -> None:
    root = tmp_path / "patterns"
    (root / "current").mkdir(parents=True)
    (root / "current" / "junk").write_text("x")
    store = PatternStore.open(root)
    assert store.current_version() is None and not (root / "current").exists()


def test_a_dangling_pointer_is_repaired_to_the_newest_version(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "patterns"
    store = PatternStore.open(root, keep=3)
    for v in ("2026010100", "2026010101"):
        store.install(build(store, v, source))
    shutil.rmtree(root / "versions" / "2026010101")
    assert store.current_path() is None
    assert PatternStore.open(root).current_version() == "2026010100"


def test_pointer_swap_is_one_rename(tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while swapping leaves the old pointer in place and the new version out."""
    store = PatternStore.open(tmp_path / "patterns")
    store.install(build(store, "2026010100", source))
    new = build(store, "2026010101", source)

    def no_space(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "symlink", no_space)
    with pytest.raises(OSError):
        store.install(new)
    assert store.current_version() == "2026010100"
    assert store.versions() == ["2026010100"]


def test_stale_staging_dirs_of_dead_processes_are_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "patterns"
    (root / ".staging" / "999999999-abc").mkdir(parents=True)
    mine = PatternStore.open(root).staging()
    PatternStore.open(root)
    assert mine.exists()
    assert not (root / ".staging" / "999999999-abc").exists()


@pytest.mark.parametrize(("name", "ok"), [
    ("2026010100", True), ("v1.2-x_y", True), ("", False), (".hidden", False),
    ("../x", False), ("a/b", False), ("x" * 65, False),
])
def test_version_names(name: str, ok: bool) -> None:
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(PatternError):
            check_name(name)


# ---------------------------------------------------------------- file modes


def _loose(root: Path) -> dict[str, int]:
    """Everything under ``root`` that is not a private folder (0700) or file (0600)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            m = stat.S_IMODE(p.lstat().st_mode)
            if not p.is_symlink() and m != (0o700 if p.is_dir() else 0o600):
                found[str(p.relative_to(root))] = m
    return found


def test_store_files_and_folders_are_private_under_umask_000(tmp_path: Path, source: Path) -> None:
    old = os.umask(0)
    try:
        store = PatternStore.open(tmp_path / "data" / "patterns", keep=1)
        store.install(build(store, "2026010100", source))
        store.install(build(store, "2026010101", source))  # the first goes through .trash
        store.staging()
    finally:
        os.umask(old)
    root = tmp_path / "data"
    assert {".lock", "state.json", "current", ".staging", ".trash", "versions"} <= {
        p.name for p in (root / "patterns").iterdir()}
    assert _loose(root) == {}


@pytest.mark.parametrize("folder", ["", "versions"])
def test_a_store_folder_others_can_write_is_refused(tmp_path: Path, source: Path, folder: str) -> None:
    store = PatternStore.open(tmp_path / "patterns")
    store.install(build(store, "2026010100", source))
    (tmp_path / "patterns" / folder).chmod(0o777)  # anyone could swap `current` or a version
    with pytest.raises(RampartError, match="writable by its group and other users"):
        PatternStore.open(tmp_path / "patterns")


# ---------------------------------------------------------------- first start, concurrently


def test_install_first_keeps_what_another_process_installed(tmp_path: Path, source: Path) -> None:
    store = PatternStore.open(tmp_path / "patterns")
    mine, theirs = build(store, "2026010100", source), build(store, "2026010100", source)
    assert store.install_first(theirs) == "2026010100"
    assert store.install_first(mine) == "2026010100"  # not "already current"
    assert mine.is_dir() and store.versions() == ["2026010100"]


def test_servers_starting_together_share_the_sample(tmp_path: Path, source: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of several starts on one fresh data directory builds the sample; all use one."""
    from proxy.serve import keeper

    starts = 4
    together = threading.Barrier(starts, timeout=30)
    real_build = keeper.build_pattern

    def build_when_all_have_looked(*args: object, **kw: object) -> object:
        together.wait()  # every start has seen an empty store before any installs
        return real_build(*args, **kw)

    monkeypatch.setattr(keeper, "build_pattern", build_when_all_have_looked)
    cfg = Config(data_dir=tmp_path / "data")
    served, errors = in_threads(
        starts, lambda: keeper.sample_store(cfg, {"hashes": [source]}).current_version())
    assert errors == [] and len(served) == starts and len(set(served)) == 1, (errors, served)
    store = PatternStore.open(tmp_path / "data" / "patterns")
    assert store.versions() == served[:1] and not any((store.root / ".staging").iterdir())


def test_the_high_water_mark_only_grows_and_guards_installs(tmp_path: Path, source: Path) -> None:
    store = PatternStore.open(tmp_path / "patterns")
    store.install(build(store, "2026010101", source), newest={"published": "2026-01-01T01:00:00Z",
                                                               "smart-scan": "2026010101"})
    store.install(build(store, "2026010102", source), newest={"published": "2026-01-01T02:00:00Z"})
    store.rollback()
    assert store.newest() == {"published": "2026-01-01T02:00:00Z", "smart-scan": "2026010101"}
    with pytest.raises(Superseded, match=r"a newer update was installed meanwhile \(published\)"):
        store.install(build(store, "2026010103", source),
                      newest={"published": "2026-01-01T01:30:00Z", "smart-scan": "2026010103"})
    assert store.current_version() == "2026010101" and store.newest()["smart-scan"] == "2026010101"
