"""Settings from the console on a real `rampart serve`: every key shown with where it is
set, live keys changed at once and saved for the next start, fixed keys and bad values
refused with the key named."""

from __future__ import annotations

import re
import socket
import stat
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from proxy import settings
from tests.conftest import EICAR_MD5, RAMPART, Proc, free_port
from tests.integration.test_console_api import Console

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("settings")
    (tmp / "rampart.toml").write_text("log_max_rows = 5000\n")
    http, port = free_port(), free_port()
    proc = Proc([*RAMPART, "serve", "--config", str(tmp / "rampart.toml"),
                 "--data-dir", str(tmp / "d"), "--listen", "127.0.0.1",
                 "--query-port", str(http), "--query-tls-port", "0", "--console-port", str(port),
                 "--degraded-action", "block"],
                tmp / "d", tmp / "serve.log", {"http": http, "console": port})
    proc.start(f"http://127.0.0.1:{http}/healthz")
    deadline = time.monotonic() + 20
    found = None
    while found is None and time.monotonic() < deadline:
        found = re.search(r"first login: admin / (\S+)", proc.output())
        time.sleep(0.1)
    assert found is not None, proc.output()
    yield Console(proc, port, found[1])
    proc.stop()


def _by_key(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in doc["settings"]}


def _query_rows(c: httpx.Client, client_text: str) -> list[dict[str, Any]]:
    return list(c.get("/api/logs", params={"log": "query", "text": client_text}).json()["rows"])


def test_every_key_is_shown_with_where_it_is_set(console: Console) -> None:
    with console.client() as c:
        console.login(c)
        doc = c.get("/api/settings").json()
    shown = _by_key(doc)
    assert doc["config_file"].endswith("rampart.toml")
    assert shown["log_max_rows"]["set_by"] == "config file" and not shown["log_max_rows"]["editable"]
    assert shown["log_max_rows"]["value"] == 5000
    assert shown["degraded_action"]["set_by"] == "command line"
    assert shown["log_retention_days"] == {**shown["log_retention_days"], "set_by": "default",
                                           "editable": True, "type": "int"}
    assert shown["log_clients"]["choices"] == ["full", "truncated", "none"]
    assert not shown["query_port"]["editable"]  # a door's port needs a restart: the file's


def test_a_change_applies_at_once_and_is_saved_for_the_next_start(console: Console) -> None:
    query = f"http://127.0.0.1:{console.proc.ports['http']}"
    with console.client() as c:
        h = {"X-CSRF-Token": console.login(c)}
        r = c.post("/api/settings", json={"changes": {"log_clients": "none",
                                                      "log_retention_days": 7}}, headers=h)
        assert r.status_code == 200, r.text
        assert _by_key(r.json())["log_clients"] == {**_by_key(r.json())["log_clients"],
                                                     "value": "none", "set_by": "console"}
        httpx.get(f"{query}/v1/file/{EICAR_MD5}")
        deadline = time.monotonic() + 10
        rows: list[dict[str, Any]] = []
        while not rows and time.monotonic() < deadline:
            rows = [row for row in _query_rows(c, EICAR_MD5) if row["client"] == ""]
            time.sleep(0.1)
        assert rows, "a query after the change is stored without its client address"
        saved = console.proc.data_dir / settings.FILE
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        cfg, _ = settings.load(None, {"data_dir": str(console.proc.data_dir)})
        assert (cfg.log_clients, cfg.log_retention_days) == ("none", 7)  # what a restart takes
        r = c.post("/api/settings", json={"changes": {"log_clients": None}}, headers=h)
        assert _by_key(r.json())["log_clients"]["set_by"] == "default"
        assert "log_clients" not in settings.read_saved(console.proc.data_dir)
        audit = c.get("/api/logs", params={"log": "audit", "text": "log_retention_days"}).json()
        assert audit["rows"] and audit["rows"][0]["actor"] == "admin"


def test_the_query_log_turns_off_and_on_while_running(console: Console) -> None:
    query = f"http://127.0.0.1:{console.proc.ports['http']}"
    with console.client() as c:
        h = {"X-CSRF-Token": console.login(c)}
        assert c.post("/api/settings", json={"changes": {"query_log": False}},
                      headers=h).status_code == 200
        httpx.get(f"{query}/v1/web", params={"url": "http://while-off.example.test/"})
        assert c.post("/api/settings", json={"changes": {"query_log": True}},
                      headers=h).status_code == 200
        httpx.get(f"{query}/v1/web", params={"url": "http://while-on.example.test/"})
        deadline = time.monotonic() + 10
        while not _query_rows(c, "while-on") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _query_rows(c, "while-on") and not _query_rows(c, "while-off")


def test_syslog_forwarding_starts_from_the_console(console: Console) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, console.client() as c:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        h = {"X-CSRF-Token": console.login(c)}
        target = f"udp://127.0.0.1:{sock.getsockname()[1]}"
        r = c.post("/api/settings", json={"changes": {"syslog": target}}, headers=h)
        assert r.status_code == 200, r.text
        line = sock.recv(65536).decode()
        c.post("/api/settings", json={"changes": {"syslog": None}}, headers=h)
    assert re.match(r"<30>rampart\[\d+\]: INFO \S+: settings changed: syslog=", line), line


@pytest.mark.parametrize(("changes", "status", "code", "named"), [
    ({"degraded_action": "allow"}, 409, "setting_fixed", "command line"),
    ({"log_max_rows": 9000}, 409, "setting_fixed", "rampart.toml"),
    ({"query_port": 9999}, 400, "not_editable", "query_port"),
    ({"log_retention_days": 0}, 400, "bad_config", "log_retention_days"),
    ({"log_clients": "hashed"}, 400, "bad_config", "log_clients"),
    ({"syslog": "http://example.test"}, 400, "bad_config", "syslog"),
    ({"log_client_networks": ["10.0.0.0/8"]}, 400, "bad_config", "log_client_networks"),
    ({}, 400, "bad_field", "changes"),
    ([], 400, "bad_field", "changes"),
])
def test_refusals_name_the_key_and_change_nothing(console: Console, changes: Any, status: int,
                                                  code: str, named: str) -> None:
    with console.client() as c:
        h = {"X-CSRF-Token": console.login(c)}
        before = c.get("/api/settings").json()
        r = c.post("/api/settings", json={"changes": changes}, headers=h)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code and named in r.json()["error"]["message"]
        assert c.get("/api/settings").json() == before
