"""`rampart lists` (proxy/cli/lists.py) as an administrator meets it: a conflicting or
doubtful command is refused (exit 2) with the fix, nothing is written, a mistyped data
directory is never created, and `--config` supplies the data directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from proxy.cli import cli

SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


def lists(*args: str) -> Result:
    return CliRunner().invoke(cli, ["lists", *args], env={"RAMPART_DATA_DIR": None,
                                                          "RAMPART_CONFIG": None})


def shown(data: Path) -> str:
    r = lists("show", "--data-dir", str(data))
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir(mode=0o700)
    return d


def test_blocked_and_approved_together_are_refused_naming_both_flags(data: Path) -> None:
    r = lists("add", "--data-dir", str(data), "--blocked", "--approved", "evil.example")
    assert r.exit_code == 2
    assert "--blocked and --approved conflict" in r.output
    assert shown(data) == "both lists are empty\n"


@pytest.mark.parametrize(("value", "hint"), [
    (SHA256[:-1], "looks like a mistyped file hash: 63 hex digits"),
    ("12345", "is neither a host name"),
    ("10.1.1", "is neither a host name"),
    ("10.0.0.0/8", "is an IP range"),
])
def test_a_value_that_looks_like_a_slip_is_refused_and_kind_insists(
        data: Path, value: str, hint: str) -> None:
    r = lists("add", "--data-dir", str(data), "--blocked", value)
    assert r.exit_code == 2, r.output
    assert hint in r.output and ("--kind" in r.output or "http://" in r.output)
    assert "Traceback" not in r.output
    assert shown(data) == "both lists are empty\n"

    kind = "url" if "/" in value else "domain"
    r = lists("add", "--data-dir", str(data), "--blocked", "--kind", kind, value)
    assert r.exit_code == 0, r.output
    assert f"blocked   {kind:<7} {value.lower()}" in shown(data)


def test_remove_checks_values_the_same_way(data: Path) -> None:
    r = lists("remove", "--data-dir", str(data), SHA256[:-1])
    assert r.exit_code == 2 and "mistyped file hash" in r.output  # not "removed 0 of 1"
    assert lists("add", "--data-dir", str(data), "--approved", "--kind", "domain", "12345").exit_code == 0
    r = lists("remove", "--data-dir", str(data), "--kind", "domain", "12345")
    assert r.exit_code == 0 and "removed 1 of 1" in r.output
    assert shown(data) == "both lists are empty\n"


def test_a_bad_url_to_test_is_a_wrong_command(data: Path) -> None:
    r = lists("test", "--data-dir", str(data), "http://exa mple.test/")
    assert r.exit_code == 2, r.output
    assert "exa mple.test" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("args", [
    ["show"],
    ["test", "http://example.test/"],
    ["remove", "evil.example"],
    ["add", "--blocked", "evil.example"],
])
def test_a_missing_data_directory_is_refused_not_created(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "mistyped"
    r = lists(args[0], "--data-dir", str(missing), *args[1:])
    assert r.exit_code == 2, r.output
    assert f"data directory {missing} does not exist" in r.output
    assert not missing.exists()


def test_the_data_directory_comes_from_the_config_file(tmp_path: Path, data: Path) -> None:
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(f'data_dir = "{data}"\n')
    r = lists("add", "--config", str(cfg), "--blocked", "evil.example")
    assert r.exit_code == 0, r.output
    assert (data / "lists.sqlite").is_file()
    r = lists("show", "--config", str(cfg))
    assert r.exit_code == 0 and "blocked   domain  evil.example" in r.output
    r = lists("test", "--config", str(cfg), "http://www.evil.example/")
    assert r.exit_code == 0 and "decision   dangerous from blocked-list" in r.output, r.output
    r = lists("remove", "--config", str(cfg), "evil.example")
    assert r.exit_code == 0 and "removed 1 of 1" in r.output
