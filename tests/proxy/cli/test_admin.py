"""`rampart admin` (proxy/cli/admin.py) as an administrator meets it, on a real data directory:
passwords prompted twice or read from stdin, users listed, added, re-roled and removed, API
keys printed once alone on the last line and working against the same store, file modes 0600,
and the README's exit codes (2 for a wrong command, 1 for an operation that failed)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from proxy.cli import cli
from proxy.console import passwords
from proxy.console.accounts import Accounts

PASSWORD = "correct horse battery"


def admin(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["admin", *args], input=input,
                              env={"RAMPART_DATA_DIR": None, "RAMPART_CONFIG": None})


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "CURRENT", passwords.Cost(2**4, 8, 1))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir(mode=0o700)
    return d


def logs_in(data: Path, user: str, password: str) -> bool:
    accounts = Accounts.open(data)
    try:
        accounts.login(user, password, "127.0.0.1")
        return True
    except Exception:
        return False
    finally:
        accounts.close()


def test_passwd_before_the_first_start_creates_admin_and_later_changes_it(data: Path) -> None:
    r = admin("passwd", "--data-dir", str(data), input=f"{PASSWORD}\n{PASSWORD}\n")
    assert r.exit_code == 0, r.output
    assert "created user admin (admin)" in r.output and PASSWORD not in r.output
    assert logs_in(data, "admin", PASSWORD)
    r = admin("passwd", "--data-dir", str(data), "--password-stdin", input="another long password\n")
    assert r.exit_code == 0, r.output
    assert "password of admin changed" in r.output
    assert logs_in(data, "admin", "another long password") and not logs_in(data, "admin", PASSWORD)


def test_passwd_refuses_a_short_password_and_an_unknown_user(data: Path) -> None:
    r = admin("passwd", "--data-dir", str(data), "--password-stdin", input="short\n")
    assert r.exit_code == 2 and "at least 12 characters" in r.output
    assert admin("users", "--data-dir", str(data)).output.startswith("no users")
    r = admin("passwd", "--data-dir", str(data), "--password-stdin", "nobody", input=f"{PASSWORD}\n")
    assert r.exit_code == 1 and "no user named 'nobody'" in r.output


def test_a_prompt_that_does_not_match_asks_again(data: Path) -> None:
    typed = f"{PASSWORD}\nsomething else!!\n{PASSWORD}\n{PASSWORD}\n"
    r = admin("passwd", "--data-dir", str(data), input=typed)
    assert r.exit_code == 0, r.output
    assert "do not match" in r.output and logs_in(data, "admin", PASSWORD)


def test_users_are_added_listed_re_roled_and_removed(data: Path) -> None:
    assert admin("passwd", "--data-dir", str(data), "--password-stdin", input=PASSWORD).exit_code == 0
    r = admin("users", "add", "--data-dir", str(data), "--role", "operator", "--password-stdin", "ops",
              input=f"{PASSWORD}\n")
    assert r.exit_code == 0, r.output
    listed = admin("users", "--data-dir", str(data)).output.splitlines()
    assert listed[0].split()[:2] == ["NAME", "ROLE"]
    assert [line.split()[:2] for line in listed[1:]] == [["admin", "admin"], ["ops", "operator"]]
    assert admin("users", "role", "--data-dir", str(data), "ops", "viewer").exit_code == 0
    r = admin("users", "--json", "--data-dir", str(data))
    assert [(u["name"], u["role"]) for u in json.loads(r.output)] == [("admin", "admin"), ("ops", "viewer")]
    assert "password" not in r.output.replace("password_changed", "")
    assert admin("users", "remove", "--data-dir", str(data), "ops").exit_code == 0
    left = json.loads(admin("users", "--json", "--data-dir", str(data)).output)
    assert [u["name"] for u in left] == ["admin"]


def test_the_last_admin_stays_and_bad_input_is_exit_2(data: Path) -> None:
    admin("passwd", "--data-dir", str(data), "--password-stdin", input=PASSWORD)
    r = admin("users", "remove", "--data-dir", str(data), "admin")
    assert r.exit_code == 1 and "last admin" in r.output
    r = admin("users", "role", "--data-dir", str(data), "admin", "viewer")
    assert r.exit_code == 1 and "last admin" in r.output
    r = admin("users", "add", "--data-dir", str(data), "--role", "root", "x", input=PASSWORD)
    assert r.exit_code == 2 and "'root' is not one of" in r.output
    r = admin("users", "add", "--data-dir", str(data), "--role", "viewer", "bad name", input=PASSWORD)
    assert r.exit_code == 2 and "NAME: 'bad name' is not a valid name" in r.output
    r = admin("users", "add", "--data-dir", str(data), "--role", "viewer", "--password-stdin", "Admin",
              input=PASSWORD)
    assert r.exit_code == 1 and "exists" in r.output


def test_a_created_key_is_alone_on_the_last_line_and_works(data: Path) -> None:
    r = admin("key", "create", "--data-dir", str(data), "--name", "grafana", "--role", "viewer",
              "--expires", "30")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    key = lines[-1]
    assert key.startswith("rpk_") and key == key.strip() and " " not in key
    assert "shown only this once" in lines[-2] and "expires 20" in lines[-2]
    accounts = Accounts.open(data)
    try:
        who = accounts.authenticate_bearer(f"Bearer {key}")
    finally:
        accounts.close()
    assert who is not None and (who.name, who.role) == ("grafana", "viewer")


def test_key_list_shows_keys_without_secrets_and_revoke_stops_them(data: Path) -> None:
    key = admin("key", "create", "--data-dir", str(data), "--name", "ci", "--role", "operator"
                ).output.splitlines()[-1]
    r = admin("key", "list", "--data-dir", str(data))
    assert r.exit_code == 0, r.output
    header, row = r.output.splitlines()
    assert header.split()[:3] == ["NAME", "ID", "ROLE"]
    assert row.split()[0] == "ci" and row.split()[2] == "operator" and "cli" in row
    secret = key.split("_", 2)[2]  # rpk_<id>_<secret>: the secret itself may hold "_"
    assert len(secret) == 43 and key not in r.output and secret not in r.output
    shown = json.loads(admin("key", "list", "--json", "--data-dir", str(data)).output)
    assert shown[0]["expires"] is None and secret not in json.dumps(shown)
    r = admin("key", "revoke", "--data-dir", str(data), "ci")
    assert r.exit_code == 0 and "revoked API key ci" in r.output
    assert admin("key", "list", "--data-dir", str(data)).output == "no API keys\n"
    r = admin("key", "revoke", "--data-dir", str(data), "ci")
    assert r.exit_code == 1 and "no API key named 'ci'" in r.output


def test_a_running_server_sees_a_revoke_and_a_removal_at_once(data: Path) -> None:
    admin("passwd", "--data-dir", str(data), "--password-stdin", input=PASSWORD)
    admin("users", "add", "--data-dir", str(data), "--role", "viewer", "--password-stdin", "mon",
          input=PASSWORD)
    key = admin("key", "create", "--data-dir", str(data), "--name", "ci", "--role", "operator"
                ).output.splitlines()[-1]
    server = Accounts.open(data)  # what a running server holds open
    try:
        session = server.login("mon", PASSWORD, "192.0.2.1")
        assert server.authenticate_bearer(f"Bearer {key}") is not None
        assert server.session(session.token) is not None
        assert admin("key", "revoke", "--data-dir", str(data), "ci").exit_code == 0
        assert admin("users", "remove", "--data-dir", str(data), "mon").exit_code == 0
        assert server.authenticate_bearer(f"Bearer {key}") is None
        assert server.session(session.token) is None
    finally:
        server.close()


@pytest.mark.parametrize(("args", "message"), [
    (("--name", "x", "--role", "viewer", "--expires", "0"), "expires: must be a whole number of days"),
    (("--name", "x y", "--role", "viewer"), "name: 'x y' is not a valid name"),
    (("--name", "x", "--role", "god"), "'god' is not one of"),
    (("--role", "viewer"), "Missing option '--name'"),
])
def test_bad_key_options_exit_2_naming_the_option(data: Path, args: tuple[str, ...], message: str) -> None:
    r = admin("key", "create", "--data-dir", str(data), *args)
    assert r.exit_code == 2 and message in r.output, r.output
    assert "rpk_" not in r.output and "Traceback" not in r.output


def test_a_missing_data_directory_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    for args in (("users",), ("key", "list"), ("key", "create", "--name", "a", "--role", "viewer")):
        r = admin(*args, "--data-dir", str(missing))
        assert r.exit_code == 2 and "does not exist" in r.output
    assert not missing.exists()


def test_the_config_file_gives_the_data_directory(data: Path, tmp_path: Path) -> None:
    conf = tmp_path / "rampart.toml"
    conf.write_text(f'data_dir = "{data}"\n')
    assert admin("key", "create", "--config", str(conf), "--name", "a", "--role", "viewer").exit_code == 0
    assert (data / "console.sqlite").exists()


def test_console_files_are_0600_under_a_loose_umask(data: Path) -> None:
    old = os.umask(0)
    try:
        r = admin("key", "create", "--data-dir", str(data), "--name", "a", "--role", "admin")
        assert r.exit_code == 0
        assert admin("passwd", "--data-dir", str(data), "--password-stdin", input=PASSWORD).exit_code == 0
    finally:
        os.umask(old)
    files = [p for p in data.iterdir() if p.name.startswith("console.sqlite")]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_every_admin_command_has_help() -> None:
    for args in (("passwd",), ("users",), ("users", "add"), ("users", "remove"), ("users", "role"),
                 ("key", "create"), ("key", "list"), ("key", "revoke")):
        r = admin(*args, "--help")
        assert r.exit_code == 0 and "--data-dir" in r.output, (args, r.output)
    for args in ((), ("key",)):
        r = admin(*args, "--help")
        assert r.exit_code == 0 and "Commands:" in r.output, (args, r.output)
