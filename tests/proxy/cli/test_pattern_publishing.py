"""The publisher's workflow through `rampart pattern build/publish`, as a publisher runs it:
complete sources each time, no --version or --base needed to publish again, a large drop
refused, published files readable by any web server (issue 9, items 1 to 3 and 12)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

import proxy.clock
from proxy.cli import cli
from proxy.patterns.layout import version_time
from proxy.patterns.pattern import load_strings
from proxy.patterns.tables import Table
from proxy.updates.repo_dir import read_repo
from proxy.wire import urls


def sha(seed: str, i: int) -> str:
    return hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, ["pattern", *args])
        assert result.exit_code == code, (result.output, result.exception)
        return result

    invoke("keygen", "--out", "key")
    return invoke


def hashes(path: Path, seed: str, n: int, threat: str = "Threat") -> str:
    path.write_text("".join(f"{sha(seed, i)},{threat}-{i % 3}\n" for i in range(n)))
    return str(path)


def publish(run, build: str, *extra: str, code: int = 0) -> str:
    return run("publish", "--from", build, "--repo", "repo", "--key", "key", *extra,
               code=code).output


def test_publish_counts_what_a_build_adds_and_removes(run, tmp_path: Path) -> None:
    run("build", "--out", "b1", "--hashes", hashes(tmp_path / "h1.txt", "a", 40),
        "--version", "2026010100")
    out = publish(run, "b1")
    assert "smart-scan       version 2026010100  new: +40 -0 entries (0 -> 40)" in out
    # b2: 30 of b1's entries and 20 new ones
    (tmp_path / "h2.txt").write_text("".join(f"{sha('a', i)},Threat-{i % 3}\n" for i in range(10, 40))
                                     + "".join(f"{sha('b', i)},Other\n" for i in range(20)))
    out = run("build", "--out", "b2", "--hashes", "h2.txt", "--version", "2026010101").output
    assert "the sources are the whole pattern: entries not in them are removed" in out
    out = publish(run, "b2")
    assert "smart-scan       version 2026010101  new: +20 -10 entries (40 -> 50)" in out
    assert "web-blocking     version 2026010100  unchanged, 0 entries" in out


def test_a_build_dropping_most_of_a_pattern_is_refused_and_nothing_written(
        run, tmp_path: Path) -> None:
    run("build", "--out", "b1", "--hashes", hashes(tmp_path / "all.txt", "a", 100),
        "--version", "2026010100")
    publish(run, "b1")
    before = {p: p.read_bytes() for p in (tmp_path / "repo").rglob("*") if p.is_file()}
    # following the old README: only the new entries
    run("build", "--out", "b2", "--hashes", hashes(tmp_path / "new.txt", "b", 10),
        "--version", "2026010101")
    err = publish(run, "b2", code=2)
    assert re.search(r"rampart: error: refusing to publish b2: it removes smart-scan 100 of 100 "
                     r"entries \(100%\), .*more than --max-shrink 50%", err)
    assert "--allow-shrink" in err and "whole pattern" in err
    after = {p: p.read_bytes() for p in (tmp_path / "repo").rglob("*") if p.is_file()}
    assert after == before
    # --allow-shrink publishes any drop; --max-shrink sets the share refused
    assert "-100 entries" in publish(run, "b2", "--allow-shrink")
    run("build", "--out", "b3", "--hashes", hashes(tmp_path / "n3.txt", "b", 4),
        "--version", "2026010102")
    assert "refusing" in publish(run, "b3", "--max-shrink", "50", code=2)
    assert "+0 -6 entries (10 -> 4)" in publish(run, "b3", "--max-shrink", "60")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[datetime]]:
    """The time build and publish read (proxy.clock.utcnow), set by the test."""
    now = [datetime(2026, 11, 24, 0, 30, 10, tzinfo=UTC)]
    monkeypatch.setattr(proxy.clock, "utcnow", lambda: now[0])
    yield now


def test_builds_in_one_hour_publish_without_version_or_base(run, tmp_path: Path,
                                                             clock: list[datetime]) -> None:
    published, built = [], []
    for i in range(4):
        src = hashes(tmp_path / f"h{i}.txt", "a", 20 + i)  # complete sources, one entry more each
        built.append(run("build", "--out", f"b{i}", "--hashes", src).output)
        out = publish(run, f"b{i}")
        assert "published" in out and "error" not in out
        published.append(read_repo(tmp_path / "repo", tmp_path / "key.pub").pattern(
            "smart-scan").version)
    # the hour, then its minute, then its second, then the second after (two in one second)
    assert published == ["2026112400", "202611240030", "20261124003010", "20261124003011"]
    assert published == sorted(published)
    assert all("version 2026112400 is the build hour" in out for out in built)
    assert [version_time(v) for v in published[1:3]] == [
        datetime(2026, 11, 24, 0, 30, tzinfo=UTC), datetime(2026, 11, 24, 0, 30, 10, tzinfo=UTC)]
    info = json.loads(run("info", "repo", "--json").output)
    assert info["patterns"]["smart-scan"]["history"] == published
    assert info["patterns"]["smart-scan"]["entries"] == 23
    assert "signature good" in run("verify", "repo", "--key", "key.pub").output


def test_publish_says_which_version_it_took(run, tmp_path: Path, clock: list[datetime]) -> None:
    run("build", "--out", "b1", "--hashes", hashes(tmp_path / "h1.txt", "a", 20))
    publish(run, "b1")
    run("build", "--out", "b2", "--hashes", hashes(tmp_path / "h2.txt", "a", 21))
    out = publish(run, "b2")
    assert "smart-scan       version 202611240030  new: +1 -0 entries (20 -> 21)" in out
    assert "version 2026112400 (the build hour) was taken: published as 202611240030" in out
    # a version given to the build is the publisher's: kept, and refused when not newer
    run("build", "--out", "b3", "--hashes", hashes(tmp_path / "h3.txt", "a", 22),
        "--version", "2026112400")
    err = publish(run, "b3", code=2)
    assert "version 2026112400 (given to `rampart pattern build --version`) is not newer " \
           "than the published smart-scan 202611240030" in err
    assert "without --version" in err


def _name_of(repo: Path, pattern: str, table: str, key: bytes, column: str) -> str:
    """What an appliance holding the newest strings.json reads for ``key``."""
    m = read_repo(repo, None)
    threats, categories = load_strings(repo / "full" / "strings" / m.strings_version /
                                       "strings.json")
    with Table.open(repo / "full" / pattern / m.pattern(pattern).version / table) as t:
        row = t.lookup(key)
        assert row is not None
        ids = t.value(column, row)
    return (threats if column == "threat" else categories)[ids]


def test_a_build_without_base_keeps_every_published_name_right(run, tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("evil.example,dangerous,malware\n")
    (tmp_path / "u1.txt").write_text("http://bad.example/,dangerous,phishing\n")
    run("build", "--out", "b1", "--hashes", hashes(tmp_path / "h1.txt", "a", 30, "First"),
        "--urls", "u1.txt", "--domains", "d.txt", "--version", "2026010100")
    publish(run, "b1")
    # b2 without --base: new names come first, so every id differs from b1's
    (tmp_path / "h2.txt").write_text(f"{sha('new', 0)},Brand-New\n" + (tmp_path / "h1.txt").read_text())
    (tmp_path / "u2.txt").write_text("http://ads.example/,dangerous,adware\n"
                                     + (tmp_path / "u1.txt").read_text())
    run("build", "--out", "b2", "--hashes", "h2.txt", "--urls", "u2.txt", "--domains", "d.txt",
        "--version", "2026010101")
    out = publish(run, "b2")
    assert "renumbered onto the published ones" in out
    # domain-ip did not change: same version, so appliances keep it and read it with the
    # newest strings.json, which must still say malware for its category id
    assert "domain-ip        version 2026010100  unchanged" in out
    assert "smart-scan       version 2026010101  new: +1 -0" in out
    repo = tmp_path / "repo"
    evil = urls.digest("evil.example")
    assert _name_of(repo, "domain-ip", "domains.tbl", evil, "category") == "malware"
    assert _name_of(repo, "smart-scan", "file-sha256.tbl", bytes.fromhex(sha("a", 1)),
                    "threat") == "First-1"
    assert _name_of(repo, "smart-scan", "file-sha256.tbl", bytes.fromhex(sha("new", 0)),
                    "threat") == "Brand-New"
    assert _name_of(repo, "web-blocking", "web-blocking.tbl", urls.digest("ads.example/"),
                    "category") == "adware"
    assert "signature good" in run("verify", "repo", "--key", "key.pub").output


def _modes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): f"{stat.S_IMODE(p.stat().st_mode):04o}"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("umask", [0o077, 0o000])
def test_published_files_are_public_whatever_the_umask(run, tmp_path: Path, umask: int) -> None:
    run("build", "--out", "b1", "--hashes", hashes(tmp_path / "h1.txt", "a", 30),
        "--version", "2026010100")
    run("build", "--out", "b2", "--hashes", hashes(tmp_path / "h2.txt", "a", 40),
        "--version", "2026010101")
    old = os.umask(umask)
    try:
        publish(run, "b1")
        publish(run, "b2")
    finally:
        os.umask(old)
    repo = tmp_path / "repo"
    modes = _modes(repo)
    assert modes.pop(".publish.lock") == "0600"  # the lock stays private
    assert any(name.startswith("diffs/smart-scan/") and name.endswith(".diff") for name in modes)
    wrong = {name: mode for name, mode in modes.items()
             if mode != ("0755" if (repo / name).is_dir() else "0644")}
    assert wrong == {}
    assert f"{stat.S_IMODE(repo.stat().st_mode):04o}" == "0755"
    assert f"{stat.S_IMODE((tmp_path / 'key').stat().st_mode):04o}" == "0600"


def test_a_repo_an_older_release_made_private_is_opened_up(run, tmp_path: Path) -> None:
    run("build", "--out", "b1", "--hashes", hashes(tmp_path / "h1.txt", "a", 30),
        "--version", "2026010100")
    publish(run, "b1")
    for p in [tmp_path / "repo", *(tmp_path / "repo").rglob("*")]:
        p.chmod(0o700 if p.is_dir() else 0o600)
    run("build", "--out", "b2", "--hashes", hashes(tmp_path / "h2.txt", "a", 31),
        "--version", "2026010101")
    publish(run, "b2")
    modes = _modes(tmp_path / "repo")
    modes.pop(".publish.lock")
    assert set(modes.values()) == {"0644", "0755"}


def test_build_refuses_an_existing_build_unless_force(run, tmp_path: Path) -> None:
    run("build", "--out", "b1", "--hashes", hashes(tmp_path / "h1.txt", "a", 30),
        "--version", "2026010100")
    err = run("build", "--out", "b1", "--hashes", hashes(tmp_path / "h2.txt", "b", 5),
              code=2).output
    assert "rampart: error: --out b1 holds a build already" in err and "--force" in err
    assert json.loads((tmp_path / "b1" / "manifest.json").read_text())["version"] == "2026010100"
    out = run("build", "--out", "b1", "--hashes", "h2.txt", "--force", "--version",
              "2026010101").output
    assert "built b1 version 2026010101: 5 hashes" in out
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    err = run("build", "--out", "notes", "--hashes", "h2.txt", "--force", code=2).output
    assert "refusing to replace notes: it holds files and is not a pattern build" in err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    run("build", "--out", "empty", "--hashes", "h2.txt")
