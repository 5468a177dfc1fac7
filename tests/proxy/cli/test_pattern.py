"""Tests for the `rampart pattern` commands, through click's CliRunner."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import cli

MD5 = "44d88612fea8a8f36de82e1278abb02f"


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


@pytest.fixture
def run(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, ["pattern", *args])
        assert result.exit_code == code, (result.output, result.exception)
        return result

    return invoke


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    (tmp_path / "main.hdb").write_text(f"{MD5}:68:Eicar-Test-Signature\n")
    (tmp_path / "h.txt").write_text("".join(f"{sha(i)},T{i}\n" for i in range(50)))
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n0.0.0.0 ads.example.com\n")
    return tmp_path


def test_build_from_every_format(run, sources: Path) -> None:
    out = run("build", "--out", "b1", "--hashes", "h.txt", "--clamav", "main.hdb",
              "--hosts", "hosts", "--version", "2024010100").output
    assert "51 hashes (md5 1, sha1 0, sha256 50)" in out and "1 domains" in out
    assert "agent 51" in out
    assert "good" in run("verify", "b1").output
    info = json.loads(run("info", "b1", "--json").output)
    assert info["patterns"]["agent"]["entries"] == 51


def test_malformed_line_fails_naming_file_and_line_unless_skip_bad(run, sources: Path) -> None:
    (sources / "bad.hdb").write_text(f"{MD5}:68:Ok\nbroken line\n")
    r = run("build", "--out", "b", "--clamav", "bad.hdb", code=1)
    assert "bad.hdb:2:" in r.output and not (sources / "b").exists()
    r = run("build", "--out", "b", "--clamav", "bad.hdb", "--skip-bad")
    assert "skipped 1 malformed line(s)" in r.output
    assert "bad.hdb:2:" in r.output


def test_build_needs_a_source(run) -> None:
    assert "give at least one source" in run("build", "--out", "b", code=2).output


def test_keygen_publish_verify_info(run, sources: Path) -> None:
    run("keygen", "--out", "key")
    assert stat.S_IMODE((sources / "key").stat().st_mode) == 0o600
    assert "exists" in run("keygen", "--out", "key", code=2).output
    run("build", "--out", "b1", "--hashes", "h.txt", "--version", "2024010100")
    out = run("publish", "--from", "b1", "--repo", "repo", "--key", "key").output
    assert "smart-scan       version 2024010100  new" in out
    (sources / "h.txt").write_text("".join(f"{sha(i)},T{i}\n" for i in range(10, 70)))
    run("build", "--out", "b2", "--hashes", "h.txt", "--base", "b1", "--version", "2024010101")
    out = run("publish", "--from", "b2", "--repo", "repo", "--key", "key", "--keep", "5").output
    assert "web-blocking     version 2024010100  unchanged" in out
    assert "signature good" in run("verify", "repo", "--key", "key.pub").output
    assert "NOT checked" in run("verify", "repo").output
    info = run("info", "repo").output
    assert "smart-scan       version 2024010101  entries 60  diffs 1" in info
    assert re.search(r"update source  published \S+  expires \d{4}-\d\d-\d\dT", info)  # signed
    data = json.loads(run("info", "repo", "--json").output)
    assert data["patterns"]["smart-scan"]["history"] == ["2024010100", "2024010101"]

    run("keygen", "--out", "other")
    assert "bad signature" in run("verify", "repo", "--key", "other.pub", code=1).output
    target = sources / "repo" / "full" / "smart-scan" / "2024010101" / "file-sha256.tbl"
    target.write_bytes(target.read_bytes()[:-1])
    r = run("verify", "repo", "--key", "key.pub", code=1)
    assert "file-sha256.tbl: truncated" in r.output and "1 problem(s)" in r.output


def test_publish_refuses_an_older_version(run, sources: Path) -> None:
    run("keygen", "--out", "key")
    run("build", "--out", "b1", "--hashes", "h.txt", "--version", "2024010100")
    run("publish", "--from", "b1", "--repo", "repo", "--key", "key")
    run("build", "--out", "b0", "--hashes", "h.txt", "--hashes", "main.hdb", "--base", "b1",
        "--version", "2023010100")
    assert "not newer" in run("publish", "--from", "b0", "--repo", "repo", "--key", "key",
                              code=2).output


def test_verify_detects_a_corrupt_build(run, sources: Path) -> None:
    run("build", "--out", "b1", "--hashes", "h.txt")
    agent = sources / "b1" / "agent.bin"
    agent.write_bytes(agent.read_bytes()[:-1] + b"\0")
    assert "agent.bin" in run("verify", "b1", code=1).output
