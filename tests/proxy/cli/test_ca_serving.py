"""`rampart ca show` tells what a running server presents, not what the files say it will
(issue 9, item 6), and `ca show`/`ca export` refuse a mistyped data directory instead of
creating it (item 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from certs import CA
from certs.rotate import rotate
from proxy.cli import cli


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("command", [["show"], ["export", "--out", "-"]])
def test_a_mistyped_data_dir_is_refused_not_created(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "mistyped"
    code, out = run("ca", *command, "--data-dir", str(missing))
    assert code == 2
    assert f"data directory {missing} does not exist" in out
    assert not missing.exists()


def test_show_says_no_server_presents_the_ca_when_none_runs(tmp_path: Path) -> None:
    CA.ensure(tmp_path)
    code, out = run("ca", "show", "--data-dir", str(tmp_path))
    assert code == 0, out
    assert "served" not in out
    assert "serving      no running server on this data directory" in out
    assert json.loads(run("ca", "show", "--data-dir", str(tmp_path), "--json")[1])["serving"] == []


def test_show_tells_a_door_still_on_the_former_ca_after_a_rotation(tmp_path: Path) -> None:
    from certs.serving import Serving  # here, so the other tests run on code without it

    old = CA.ensure(tmp_path)
    door = Serving(tmp_path, "intercept", "intercept door")  # as a running server records it
    door.record(old.cert, None)
    try:
        code, out = run("ca", "show", "--data-dir", str(tmp_path))
        assert "serving      intercept door, pid" in out and "this CA since" in out

        code, out = run("ca", "rotate", "--data-dir", str(tmp_path))
        assert code == 0, out
        assert "restart" not in out and "within 2 s" in out

        code, out = run("ca", "show", "--data-dir", str(tmp_path))
        assert code == 0, out
        assert f"still the former CA {old.fingerprint_sha256()}" in out
        [entry] = json.loads(run("ca", "show", "--data-dir", str(tmp_path), "--json")[1])["serving"]
        assert entry["door"] == "intercept" and entry["current"] is False

        door.record(CA.load(tmp_path).cert, None)  # the server took the new CA
        [entry] = json.loads(run("ca", "show", "--data-dir", str(tmp_path), "--json")[1])["serving"]
        assert entry["current"] is True
    finally:
        door.close()


def test_show_tells_another_ca_when_the_served_one_is_not_in_the_bundle(tmp_path: Path) -> None:
    from certs.serving import Serving

    CA.ensure(tmp_path)
    rotate(tmp_path, overlap_days=0)
    door = Serving(tmp_path, "query", "query door (HTTPS)")
    door.record(CA.create().cert, None)
    try:
        out = run("ca", "show", "--data-dir", str(tmp_path))[1]
        assert "query door (HTTPS), pid" in out and "still another CA" in out
    finally:
        door.close()
