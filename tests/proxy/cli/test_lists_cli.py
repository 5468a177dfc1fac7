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


# ---------------------------------------------------------------- issue 10: the full rules


def test_add_with_kind_clients_expiry_and_note_and_show_them(data: Path) -> None:
    r = lists("add", "--data-dir", str(data), "--blocked", "--kind", "keyword", "--client", "10.0.0.0/8",
              "--client", "192.0.2.7", "--expires", "7d", "--note", "exam week", "Casino")
    assert r.exit_code == 0, r.output
    assert r.output == "added keyword casino to the blocked list\n"
    assert lists("add", "--data-dir", str(data), "--approved", "--kind", "regex", r"^https://[^/]+\.bank/",
                 "--expires", "2030-01-01T00:00:00Z").exit_code == 0
    line = next(x for x in shown(data).splitlines() if "casino" in x)
    assert line.startswith("blocked   keyword casino  clients 10.0.0.0/8 192.0.2.7/32  expires ")
    assert " by " in line and line.endswith("# exam week")
    assert "approved  regex   ^https://[^/]+\\.bank/  expires 2030-01-01T00:00:00Z" in shown(data)
    r = lists("show", "--data-dir", str(data), "--json")
    (first, second) = __import__("json").loads(r.output)
    assert first["kind"] == "regex" and first["expired"] is False
    assert second["clients"] == ["10.0.0.0/8", "192.0.2.7/32"] and second["note"] == "exam week"
    assert lists("show", "--data-dir", str(data), "--approved", "--kind", "keyword").output == "no rules\n"
    r = lists("remove", "--data-dir", str(data), "--kind", "keyword", "CASINO")
    assert r.output == "removed 1 of 1\n"


@pytest.mark.parametrize(("args", "problem"), [
    (["--client", "10.1.2.3/8", "x.example"], "has host bits set; did you mean 10.0.0.0/8?"),
    (["--expires", "soon", "x.example"], "is neither a duration (30m, 12h, 7d, 2w) nor an ISO-8601 time"),
    (["--expires", "2001-01-01", "x.example"], "is already past"),
    (["--kind", "regex", "(a)\\1"], "invalid escape sequence"),
    (["--kind", "keyword", "ab"], "shorter than 3 characters"),
])
def test_bad_new_fields_are_refused_and_nothing_is_stored(data: Path, args: list[str], problem: str) -> None:
    r = lists("add", "--data-dir", str(data), "--blocked", *args)
    assert r.exit_code == 2, r.output
    assert problem in r.output and "Traceback" not in r.output
    assert shown(data) == "both lists are empty\n"


def test_test_for_a_client(data: Path) -> None:
    r = lists("add", "--data-dir", str(data), "--blocked", "--client", "10.0.0.0/8", "games.test")
    assert r.exit_code == 0, r.output
    r = lists("test", "--data-dir", str(data), "--client", "10.1.1.1", "http://www.games.test/")
    assert r.exit_code == 0, r.output
    assert "blocked  domain  games.test  [clients 10.0.0.0/8]  <- decides" in r.output
    r = lists("test", "--data-dir", str(data), "--client", "192.0.2.1", "http://www.games.test/")
    assert "does not apply: not for this client" in r.output and "decision   not decided here" in r.output
    r = lists("test", "--data-dir", str(data), "--client", "somewhere", "http://www.games.test/")
    assert r.exit_code == 2 and "--client 'somewhere' is not an IP address" in r.output


def test_import_export_and_audit(data: Path, tmp_path: Path) -> None:
    feed = tmp_path / "feed.txt"
    feed.write_text("# ads\nads.example\n0.0.0.0 tracker.example\n")
    r = lists("import", "--data-dir", str(data), "--blocked", str(feed))
    assert r.exit_code == 0, r.output
    assert "imported feed.txt: 2 added, 0 moved from the other list, 0 updated, 0 unchanged" in r.output
    assert lists("import", "--data-dir", str(data), str(feed)).output.endswith(
        "say which list: --blocked or --approved\n")

    out = tmp_path / "all.json"
    r = lists("export", "--data-dir", str(data), "--format", "json", "--output", str(out))
    assert r.exit_code == 0 and (out.stat().st_mode & 0o777) == 0o600
    csv_text = lists("export", "--data-dir", str(data)).output
    assert csv_text.splitlines()[1].startswith("blocked,domain,ads.example,,,,")

    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    r = lists("import", "--data-dir", str(other), str(out))
    assert r.exit_code == 0 and "2 added" in r.output, r.output
    assert lists("export", "--data-dir", str(other)).output == csv_text

    bad = tmp_path / "bad.csv"
    bad.write_text("value,clients\nok.example,\nnope..example,\nfine.example,10.0.0.1/8\n")
    r = lists("import", "--data-dir", str(data), "--approved", str(bad))
    assert r.exit_code == 2
    assert "bad.csv:3: field 'value':" in r.output and "bad.csv:4: field 'clients':" in r.output
    assert "2 bad row(s); nothing was imported" in r.output
    assert "ok.example" not in shown(data)
    r = lists("import", "--data-dir", str(data), "--kind", "hash", str(bad))
    assert r.exit_code == 2 and "--kind is for plain lists" in r.output

    r = lists("audit", "--data-dir", str(data))
    assert r.exit_code == 0
    first = r.output.splitlines()[0]
    assert "(cli)  import" in first and "file feed.txt" in first and "added 2" in first
    assert "import  blocked domain tracker.example" in r.output
    r = lists("audit", "--data-dir", str(other), "--json", "--limit", "1")
    (entry,) = __import__("json").loads(r.output)
    assert entry["action"] == "import" and entry["detail"]["file"] == "all.json"
