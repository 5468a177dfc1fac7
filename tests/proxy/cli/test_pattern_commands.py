"""`rampart pattern keygen`, `serve`, `versions` and `rollback` as a new administrator meets
them: missing folders, an existing key, a busy port, the data directory from --config
(issue 9, items 14, 15 and the README's --config)."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import cli
from proxy.patterns.build import build_pattern
from proxy.updates.store import PatternStore

EICAR = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


def invoke(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["pattern", *args])
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output
    return result.output


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_makes_missing_folders_private_and_says_so(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "rampart" / "signing.key"
    out = invoke("keygen", "--out", str(key))
    assert f"created folder {tmp_path / 'keys'} (mode 0700)" in out
    assert f"created folder {tmp_path / 'keys' / 'rampart'} (mode 0700)" in out
    assert mode(tmp_path / "keys") == mode(tmp_path / "keys" / "rampart") == 0o700
    assert mode(key) == 0o600 and mode(key.with_name("signing.key.pub")) == 0o644


def test_keygen_refuses_an_existing_key_naming_it_unless_force(tmp_path: Path) -> None:
    key = tmp_path / "k" / "signing.key"
    invoke("keygen", "--out", str(key))
    first = key.read_bytes()
    err = invoke("keygen", "--out", str(key), code=2)
    assert f"rampart: error: {key} exists; refusing to overwrite a key" in err
    assert "--force" in err and key.read_bytes() == first
    invoke("keygen", "--out", str(key), "--force")
    assert key.read_bytes() != first and mode(key) == 0o600
    # a public key left behind is not silently replaced either
    lone = tmp_path / "lone.key"
    lone.with_name("lone.key.pub").write_text("someone's public key")
    assert f"{lone}.pub exists" in invoke("keygen", "--out", str(lone), code=2)
    assert not lone.exists()


def test_keygen_where_it_cannot_write_names_the_full_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    err = invoke("keygen", "--out", str(tmp_path / "file" / "k"), code=1)
    assert f"rampart: error: cannot create {tmp_path / 'file'}" in err


def test_serve_on_a_busy_port_is_one_line_naming_port(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        err = invoke("serve", str(tmp_path / "repo"), "--port", str(port), code=1)
    assert err.startswith(f"rampart: error: cannot listen on 127.0.0.1:{port}: the port is in use")
    assert "choose another --port" in err and len(err.strip().splitlines()) == 1


def test_serve_on_an_address_not_of_this_machine_names_listen(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    err = invoke("serve", str(tmp_path / "repo"), "--port", "0", "--listen", "192.0.2.1", code=2)
    assert "rampart: error: cannot listen on 192.0.2.1:0" in err and "--listen" in err


def test_serve_help_explains_listen() -> None:
    out = " ".join(invoke("serve", "--help").split())
    assert "[default: 127.0.0.1]" in out
    assert "0.0.0.0 for every address, so appliances on other machines can reach it" in out


def test_build_and_publish_help_say_a_build_is_the_whole_pattern() -> None:
    build = " ".join(invoke("build", "--help").split())
    assert "the sources are the whole pattern: entries not in them are removed" in build.lower()
    assert "--force" in build
    publish = " ".join(invoke("publish", "--help").split())
    assert "--max-shrink PERCENT" in publish and "--allow-shrink" in publish


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data directory with two pattern versions installed, named only in a config file."""
    data = tmp_path / "appliance"
    (tmp_path / "h.txt").write_text(f"{EICAR},Eicar\n")
    store = PatternStore.open(data / "patterns")
    for version in ("2026010100", "2026010101"):
        build_pattern(store.staging() / "p", hashes=[tmp_path / "h.txt"], version=version)
        store.install(next(store.staging().parent.glob("*/p")))
    (tmp_path / "rampart.toml").write_text(f'data_dir = "{data}"\n')
    return data


def test_versions_and_rollback_take_the_data_directory_from_config(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAMPART_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # not the default data directory
    cfg = str(tmp_path / "rampart.toml")
    assert invoke("versions", "--config", cfg).splitlines() == ["  2026010100", "* 2026010101"]
    assert "rolled back from 2026010101 to 2026010100" in invoke("rollback", "--config", cfg)
    assert "* 2026010100" in invoke("versions", "--config", cfg)
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("command", ["versions", "rollback"])
def test_versions_and_rollback_refuse_a_missing_data_directory(tmp_path: Path,
                                                               command: str) -> None:
    missing = tmp_path / "mistyped"
    err = invoke(command, "--data-dir", str(missing), code=2)
    assert f"rampart: error: data directory {missing} does not exist" in err
    assert not missing.exists()
