"""`rampart lists` and `rampart update now` with --server, as an administrator meets them: the
real CLI against a real `rampart serve` on 127.0.0.1, through its console's admin API with API
keys. Every change is checked on the server itself (GET /api/lists, the query door), and the
output is the local mode's, byte for byte, for the same lists."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import certs
from tests.conftest import RAMPART, Proc, free_port

pytestmark = pytest.mark.integration

CLEAN = {k: v for k, v in os.environ.items()
         if k not in ("RAMPART_CONSOLE", "RAMPART_API_KEY", "RAMPART_DATA_DIR", "RAMPART_CONFIG")}


@dataclass
class Appliance:
    proc: Proc
    data: Path
    url: str
    operator: str
    viewer: str
    tmp: Path

    def run(self, *args: str, key: str | None = "operator", ca: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``rampart ARGS --server URL --server-ca ca.pem`` with the operator's (or no) key."""
        full = {**CLEAN, **(env or {})}
        if key is not None:
            full["RAMPART_API_KEY"] = {"operator": self.operator, "viewer": self.viewer}.get(key, key)
        extra = ["--server", self.url] + (["--server-ca", str(self.data / "ca.pem")] if ca else [])
        return subprocess.run([*RAMPART, *args, *extra], env=full, capture_output=True, text=True,
                              timeout=120)

    def local(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The same command on the appliance's data directory (the local mode)."""
        return subprocess.run([*RAMPART, *args, "--data-dir", str(self.data)], env=CLEAN,
                              capture_output=True, text=True, timeout=120)

    def entries(self) -> dict[str, dict[str, object]]:
        """What the server holds now, by value."""
        ca = ssl.create_default_context(cafile=str(self.data / "ca.pem"))
        r = httpx.get(f"{self.url}/api/lists", verify=ca, timeout=15,
                      headers={"Authorization": f"Bearer {self.operator}"})
        assert r.status_code == 200, r.text
        return {e["value"]: e for e in r.json()["entries"]}

    def source_of(self, domain: str) -> str:
        r = httpx.get(f"http://127.0.0.1:{self.proc.ports['http']}/v1/domain/{domain}", timeout=15)
        return str(r.json()["results"][0]["source"])


def _key(data: Path, name: str, role: str) -> str:
    r = subprocess.run([*RAMPART, "admin", "key", "create", "--name", name, "--role", role,
                        "--data-dir", str(data)], env=CLEAN, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    tmp = tmp_path_factory.mktemp("remote")
    data = tmp / "d"
    http, port = free_port(), free_port()
    proc = Proc([*RAMPART, "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
                 "--query-port", str(http), "--query-tls-port", "0", "--console-port", str(port)],
                data, tmp / "serve.log", {"http": http, "console": port})
    proc.start(f"http://127.0.0.1:{http}/healthz")
    try:
        yield Appliance(proc, data, f"https://localhost:{port}", _key(data, "ops", "operator"),
                        _key(data, "watch", "viewer"), tmp)
    finally:
        proc.stop()


def test_add_show_edit_remove_change_the_server_and_print_what_the_local_mode_prints(
        appliance: Appliance) -> None:
    r = appliance.run("lists", "add", "--blocked", "--note", "from afar", "remote-bad.example.test")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "added domain remote-bad.example.test to the blocked list\n"
    assert appliance.entries()["remote-bad.example.test"]["added_by"] == "ops"
    assert appliance.source_of("www.remote-bad.example.test") == "blocked-list"

    r = appliance.run("lists", "add", "--approved", "--client", "10.0.0.0/8", "--expires", "7d",
                      "--kind", "keyword", "remote-lab")
    assert r.returncode == 0, r.stderr
    rule = appliance.entries()["remote-lab"]
    assert rule["kind"] == "keyword" and rule["clients"] == ["10.0.0.0/8"] and rule["expires"]

    for args in (["lists", "show"], ["lists", "show", "--json"], ["lists", "show", "--blocked"],
                 ["lists", "export"], ["lists", "export", "--format", "json"],
                 ["lists", "export", "--approved"]):
        remote, local = appliance.run(*args), appliance.local(*args)
        assert remote.returncode == local.returncode == 0, remote.stderr + local.stderr
        assert remote.stdout == local.stdout, args
    assert "remote-bad.example.test  added" in appliance.run("lists", "show").stdout

    r = appliance.run("lists", "edit", "remote-bad.example.test", "--approved", "--note", "fine now",
                      "--client", "192.0.2.0/24")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("approved  domain  remote-bad.example.test  clients 192.0.2.0/24")
    assert r.stdout.rstrip().endswith("# fine now")
    rule = appliance.entries()["remote-bad.example.test"]
    assert rule["list"] == "approved" and rule["note"] == "fine now"
    r = appliance.run("lists", "edit", "remote-bad.example.test", "--every-client", "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout == appliance.local("lists", "edit", "remote-bad.example.test", "--every-client",
                                       "--json").stdout
    assert appliance.entries()["remote-bad.example.test"]["clients"] == []

    r = appliance.run("lists", "edit", "nowhere.example.test", "--note", "x")
    assert r.returncode == 2 and "no list holds domain nowhere.example.test" in r.stderr

    r = appliance.run("lists", "remove", "remote-bad.example.test", "gone.example.test")
    assert r.returncode == 1 and r.stdout == "removed 1 of 2\n"
    assert "remote-bad.example.test" not in appliance.entries()
    assert appliance.source_of("www.remote-bad.example.test") != "blocked-list"


def test_a_bad_value_is_refused_before_anything_is_sent(appliance: Appliance) -> None:
    r = appliance.run("lists", "add", "--blocked", "10.0.0.0/8")
    assert r.returncode == 2 and "is an IP range" in r.stderr
    assert "10.0.0.0/8" not in appliance.entries()


def test_test_explains_as_the_server_decides_for_a_client(appliance: Appliance) -> None:
    r = appliance.run("lists", "add", "--blocked", "--client", "10.0.0.0/8", "scoped.example.test")
    assert r.returncode == 0, r.stderr
    url = "http://scoped.example.test/page"
    lab = appliance.run("lists", "test", "--client", "10.1.2.3", url)
    assert lab.returncode == 0, lab.stderr
    assert "blocked" in lab.stdout and lab.stdout.rstrip().splitlines()[-1].startswith("(pattern ")
    assert lab.stdout == appliance.local("lists", "test", "--client", "10.1.2.3", url).stdout
    other = appliance.run("lists", "test", "--client", "192.168.1.1", url)
    assert other.returncode == 0 and other.stdout != lab.stdout
    r = appliance.run("lists", "test", "not a url")
    assert r.returncode == 2 and "give a URL" in r.stderr


def test_import_is_all_or_nothing_and_names_the_file(appliance: Appliance) -> None:
    good = appliance.tmp / "good.txt"
    good.write_text("imp-one.example.test\nimp-two.example.test # two\n")
    r = appliance.run("lists", "import", "--blocked", str(good))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "imported good.txt: 2 added, 0 moved from the other list, 0 updated, 0 unchanged\n"
    held = appliance.entries()
    assert held["imp-one.example.test"]["list"] == "blocked" and "imp-two.example.test" in held

    bad = appliance.tmp / "bad.txt"
    bad.write_text("imp-three.example.test\nexa mple\n")
    r = appliance.run("lists", "import", "--blocked", str(bad))
    assert r.returncode == 2 and "bad.txt:2:" in r.stderr and "nothing was imported" in r.stderr
    assert "imp-three.example.test" not in appliance.entries()


def test_audit_shows_who_changed_the_lists_through_the_api(appliance: Appliance) -> None:
    r = appliance.run("lists", "add", "--blocked", "audited.example.test")
    assert r.returncode == 0, r.stderr
    r = appliance.run("lists", "audit", "--value", "audited.example.test")
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert "ops (127.0.0.1)" in first and "add" in first and "blocked domain audited.example.test" in first
    r = appliance.run("lists", "audit", "--json", "--limit", "2")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 2 and set(rows[0]) == {"at", "who", "origin", "action", "list", "kind", "value",
                                               "detail"}


def test_update_now_without_an_update_source_is_a_clear_refusal(appliance: Appliance) -> None:
    r = appliance.run("update", "now")
    assert r.returncode == 2
    assert "no update source configured" in r.stderr and appliance.url in r.stderr


def test_a_viewer_key_reads_but_may_not_write(appliance: Appliance) -> None:
    assert appliance.run("lists", "show", key="viewer").returncode == 0
    r = appliance.run("lists", "add", "--blocked", "viewer.example.test", key="viewer")
    assert r.returncode == 2
    assert "role 'viewer' may not lists.write" in r.stderr and "operator" in r.stderr
    assert "viewer.example.test" not in appliance.entries()
    r = appliance.run("update", "now", key="viewer")
    assert r.returncode == 2 and "may not updates.run" in r.stderr


def test_no_key_or_a_wrong_key_is_refused_naming_the_fix(appliance: Appliance) -> None:
    r = appliance.run("lists", "show", key=None)
    assert r.returncode == 2 and "no API key given: set RAMPART_API_KEY" in r.stderr
    r = appliance.run("lists", "add", "--blocked", "nokey.example.test", key=None)
    assert r.returncode == 2 and "nokey.example.test" not in appliance.entries()
    r = appliance.run("lists", "show", key="rpk_aaaaaaaaaaaa_" + "b" * 43)
    assert r.returncode == 2 and "the API key was not accepted" in r.stderr


def test_the_key_may_come_from_a_file(appliance: Appliance) -> None:
    f = appliance.tmp / "key"
    f.write_text(appliance.operator + "\n")
    f.chmod(0o644)
    r = appliance.run("lists", "show", "--api-key-file", str(f), key=None)
    assert r.returncode == 2 and "chmod 600" in r.stderr
    f.chmod(0o600)
    r = appliance.run("lists", "show", "--api-key-file", str(f), key=None)
    assert r.returncode == 0, r.stderr


def test_tls_is_verified_against_the_given_ca_or_the_data_directorys(appliance: Appliance) -> None:
    other = appliance.tmp / "other"
    certs.CA.ensure(other)
    r = subprocess.run([*RAMPART, "lists", "show", "--server", appliance.url, "--server-ca",
                        str(other / "ca.pem")], env={**CLEAN, "RAMPART_API_KEY": appliance.operator},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "certificate not trusted by --server-ca" in r.stderr and appliance.url in r.stderr
    r = appliance.run("lists", "show", ca=False, env={"RAMPART_DATA_DIR": str(other)})
    assert r.returncode == 1 and "give --server-ca with the appliance's ca.pem" in r.stderr
    # on the appliance itself the data directory's CA is trusted by default
    r = appliance.run("lists", "show", ca=False, env={"RAMPART_DATA_DIR": str(appliance.data)})
    assert r.returncode == 0, r.stderr


def test_server_and_a_data_directory_together_are_a_usage_error(appliance: Appliance) -> None:
    r = appliance.run("lists", "show", "--data-dir", str(appliance.data))
    assert r.returncode == 2 and "--server and --data-dir conflict" in r.stderr
    r = appliance.run("update", "now", "--update-source", "http://127.0.0.1:1/")
    assert r.returncode == 2 and "--server and --update-source conflict" in r.stderr


def test_nothing_listening_is_a_clear_failure() -> None:
    url = f"https://localhost:{free_port()}"
    r = subprocess.run([*RAMPART, "lists", "show", "--server", url], capture_output=True, text=True,
                       env={**CLEAN, "RAMPART_API_KEY": "x"}, timeout=60)
    assert r.returncode == 1 and f"cannot reach {url}: connection refused" in r.stderr


def test_an_update_the_appliance_could_not_take_exits_1_with_its_reason(tmp_path: Path) -> None:
    key = tmp_path / "key"
    r = subprocess.run([*RAMPART, "pattern", "keygen", "--out", str(key)], env=CLEAN,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    data = tmp_path / "d"
    http, port = free_port(), free_port()
    proc = Proc([*RAMPART, "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
                 "--query-port", str(http), "--query-tls-port", "0", "--console-port", str(port),
                 "--update-source", f"http://127.0.0.1:{free_port()}/", "--update-key",
                 str(key.with_name("key.pub"))],
                data, tmp_path / "serve.log", {"http": http, "console": port})
    proc.start(f"http://127.0.0.1:{http}/healthz")
    try:
        env = {**CLEAN, "RAMPART_API_KEY": _key(data, "ops", "operator"), "RAMPART_DATA_DIR": str(data)}
        r = subprocess.run([*RAMPART, "update", "now", "--server", f"https://localhost:{port}"],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 1, r.stderr
        assert r.stderr.startswith("update failed (fetch_failed)") and r.stdout == ""
        r = subprocess.run([*RAMPART, "update", "now", "--json", "--server", f"https://localhost:{port}"],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and json.loads(r.stdout)["reason"] == "fetch_failed"
    finally:
        proc.stop()


def test_rollback_through_the_api_says_why_it_cannot(appliance: Appliance) -> None:
    r = appliance.run("pattern", "rollback")
    assert r.returncode == 2, r.stderr
    assert appliance.url in r.stderr and "version" in r.stderr  # only one version installed
