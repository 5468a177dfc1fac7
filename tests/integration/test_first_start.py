"""A new administrator's first starts, as real `rampart` processes on 127.0.0.1: what the
banner says, busy ports, every door off, the cloud's own data directory, exit codes."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RAMPART, Proc, free_port

QUIET = ["--log-level", "warning", "--listen", "127.0.0.1"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAMPART, *args], capture_output=True, text=True, timeout=timeout)


def test_serve_with_every_door_off_is_refused(tmp_path: Path) -> None:
    r = run("serve", "--data-dir", str(tmp_path / "d"), "--query-port", "0",
            "--query-tls-port", "0", "--proxy-port", "0", "--transparent-port", "0", timeout=30)
    assert r.returncode == 2 and "every door is off" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_busy_port_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run("serve", "--data-dir", str(tmp_path / "d"), *QUIET, "--query-port", str(port),
                "--query-tls-port", "0", timeout=30)
    assert r.returncode == 1, r.stderr
    assert f"rampart: error: port {port} for the query door (http)" in r.stderr
    assert "--query-port" in r.stderr and "Traceback" not in r.stderr


def test_a_second_server_on_the_same_data_directory_is_named(tmp_path: Path) -> None:
    http = free_port()
    first = Proc([*RAMPART, "serve", "--data-dir", str(tmp_path / "d"), *QUIET,
                  "--query-port", str(http), "--query-tls-port", "0"],
                 tmp_path / "d", tmp_path / "first.log").start(f"http://127.0.0.1:{http}/healthz")
    try:
        r = run("serve", "--data-dir", str(tmp_path / "d"), *QUIET, "--query-port", str(http),
                "--query-tls-port", "0", timeout=30)
        assert r.returncode == 1
        assert first.popen is not None
        assert f"another rampart server (pid {first.popen.pid}) on data directory" in r.stderr
    finally:
        first.stop()


def test_the_banner_tells_where_the_doors_listen_and_whom_they_answer(tmp_path: Path) -> None:
    http = free_port()
    p = Proc([*RAMPART, "serve", "--data-dir", str(tmp_path / "new" / "d"), "--listen", "0.0.0.0",
              "--query-port", str(http), "--query-tls-port", "0"],
             tmp_path / "d", tmp_path / "serve.log").start(f"http://127.0.0.1:{http}/healthz")
    try:
        out = p.output()
    finally:
        p.stop()
    assert f"created data directory {tmp_path / 'new' / 'd'} (mode 0700)" in out
    assert f"query door  http://0.0.0.0:{http} (every address; here http://127.0.0.1:{http})" in out
    assert "answers loopback and private networks (--query-client)" in out
    assert (tmp_path / "new" / "d").stat().st_mode & 0o777 == 0o700


def test_the_cloud_has_its_own_data_directory_and_refuses_an_appliances(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("XDG_DATA_HOME", "RAMPART_DATA_DIR", "RAMPART_CLOUD_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    Proc([*RAMPART, "cloud", *QUIET, "--port", str(port)], tmp_path, tmp_path / "c.log").start(
        f"https://127.0.0.1:{port}/healthz").stop()
    share = tmp_path / ".local" / "share"
    assert (share / "rampart-cloud" / "ca.pem").is_file()
    assert not (share / "rampart").exists()  # the appliance's default folder is untouched
    r = run("serve", "--data-dir", str(share / "rampart-cloud"), *QUIET, "--query-port",
            str(free_port()), "--query-tls-port", "0", timeout=30)
    assert r.returncode == 2
    assert "is rampart cloud's" in r.stderr and "give rampart serve its own --data-dir" in r.stderr


def test_update_now_without_a_source_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    r = run("update", "now", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and "no update source configured" in r.stderr
    r = run("update", "now", "--data-dir", str(tmp_path / "missing"),
            "--update-source", "http://127.0.0.1:9", "--update-key", __file__)
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "missing").exists()


def test_the_clouds_busy_port_names_its_own_flag(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run("cloud", "--data-dir", str(tmp_path / "c"), *QUIET, "--port", str(port))
    assert r.returncode == 1
    assert f"port {port} for the query door (https)" in r.stderr and "change --port" in r.stderr


def test_log_format_json_writes_one_object_a_line(tmp_path: Path) -> None:
    import json

    http = free_port()
    p = Proc([*RAMPART, "serve", "--data-dir", str(tmp_path / "j"), "--listen", "127.0.0.1",
              "--query-port", str(http), "--query-tls-port", "0", "--log-format", "json"],
             tmp_path / "j", tmp_path / "j.log").start(f"http://127.0.0.1:{http}/healthz")
    p.stop()
    records = [json.loads(line) for line in p.output().splitlines() if line.startswith("{")]
    assert records, p.output()
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any("query door listening" in rec["message"] for rec in records)
