"""The console door of a real `rampart serve` on 127.0.0.1: the admin API over HTTPS with the
appliance CA, its credentials, CSRF, roles, bad input, the OpenAPI document and the pages."""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.console.accounts import Accounts
from tests.conftest import EICAR_MD5, RAMPART, Proc, free_port

pytestmark = pytest.mark.integration


class Console:
    def __init__(self, proc: Proc, port: int, password: str) -> None:
        self.proc, self.port, self.password = proc, port, password
        self.base = f"https://localhost:{port}"
        self.ca = ssl.create_default_context(cafile=str(proc.data_dir / "ca.pem"))

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, verify=self.ca, timeout=15)

    def login(self, client: httpx.Client) -> str:
        r = client.post("/api/login", json={"user": "admin", "password": self.password})
        assert r.status_code == 200, r.text
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
        assert "Secure" in r.headers["set-cookie"]
        return str(r.json()["csrf"])


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    http, port = free_port(), free_port()
    proc = Proc([*RAMPART, "serve", "--data-dir", str(tmp / "d"), "--listen", "127.0.0.1",
                 "--query-port", str(http), "--query-tls-port", "0", "--console-port", str(port)],
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


def test_without_credentials_every_operation_is_401_but_login_and_the_document(
        console: Console) -> None:
    from proxy.console.door import console_routes

    guarded = [(r.method, r.path) for r in console_routes(None, None, None)
               if r.permission is not None]
    assert len(guarded) > 15
    with console.client() as c:
        for method, path in guarded:
            r = c.request(method, path, json={})
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
        assert c.get("/api/openapi.json").status_code == 200
        assert c.get("/api/nothing").status_code == 404
        assert c.delete("/api/status").status_code == 405


def test_a_session_reads_status_and_edits_lists_with_its_csrf_token(console: Console) -> None:
    query = f"http://127.0.0.1:{console.proc.ports['http']}"
    with console.client() as c:
        csrf = console.login(c)
        status = c.get("/api/status").json()
        assert status["pattern"]["version"] and status["status"] in ("ready", "stale")
        r = c.post("/api/lists", json={"list": "blocked", "values": ["console-bad.example.test"]})
        assert r.status_code == 403 and r.json()["error"]["code"] == "csrf"
        r = c.post("/api/lists", json={"list": "blocked", "values": ["console-bad.example.test"]},
                   headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        got = httpx.get(f"{query}/v1/domain/www.console-bad.example.test").json()["results"][0]
        assert got["source"] == "blocked-list"
        values = [e["value"] for e in c.get("/api/lists").json()["entries"]]
        assert "console-bad.example.test" in values
        test = c.post("/api/lists/test", json={"url": "http://console-bad.example.test/x"},
                      headers={"X-CSRF-Token": csrf}).json()
        assert test["decision"]["source"] == "blocked-list"
        r = c.post("/api/logout", json={}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200
        assert c.get("/api/status").status_code == 401


def test_rules_with_kinds_scope_expiry_import_and_export(console: Console) -> None:
    query = f"http://127.0.0.1:{console.proc.ports['http']}"
    with console.client() as c:
        h = {"X-CSRF-Token": console.login(c)}
        r = c.post("/api/lists", json={"list": "blocked", "values": ["casino"], "kind": "keyword",
                                       "clients": ["10.0.0.0/8"], "expires": "7d",
                                       "note": "lab only"}, headers=h)
        assert r.status_code == 200, r.text
        rule = next(e for e in c.get("/api/lists").json()["entries"] if e["value"] == "casino")
        assert rule["kind"] == "keyword" and rule["clients"] == ["10.0.0.0/8"]
        assert rule["expires"] and rule["added_by"] == "admin" and not rule["expired"]
        # scoped to 10/8: this client (127.0.0.1) is not blocked, a 10.x client would be
        got = httpx.get(f"{query}/v1/web", params={"url": "http://casino.example.test/"}).json()
        assert got["results"][0]["source"] != "blocked-list"
        lab = c.post("/api/lists/test", json={"url": "http://casino.example.test/",
                                              "client": "10.1.2.3"}, headers=h).json()
        assert lab["decision"]["source"] == "blocked-list"
        csv = c.get("/api/lists/export", params={"format": "csv"})
        assert csv.status_code == 200 and "casino" in csv.text
        bad = c.post("/api/lists/import", json={"format": "plain", "list": "blocked",
                                                "data": "ok-one.example.test\nexa mple\n"},
                     headers=h)
        assert bad.status_code == 400 and "import:2" in bad.json()["error"]["message"]
        values = [e["value"] for e in c.get("/api/lists").json()["entries"]]
        assert "ok-one.example.test" not in values  # one bad row: nothing imported
        good = c.post("/api/lists/import", json={"format": "plain", "list": "approved",
                                                 "data": "ok-one.example.test\n"}, headers=h)
        assert good.status_code == 200 and good.json()["added"] == 1


def test_a_rule_is_edited_in_place_and_the_door_follows(console: Console) -> None:
    query = f"http://127.0.0.1:{console.proc.ports['http']}"
    url = {"url": "http://edited.example.test/page"}
    with console.client() as c:
        h = {"X-CSRF-Token": console.login(c)}
        assert c.post("/api/lists", json={"list": "blocked", "values": ["edited.example.test"],
                                          "clients": ["10.0.0.0/8"]}, headers=h).status_code == 200
        got = httpx.get(f"{query}/v1/web", params=url).json()["results"][0]
        assert got["source"] != "blocked-list"  # scoped away from 127.0.0.1
        r = c.post("/api/lists/edit", json={"value": "edited.example.test", "clients": [],
                                            "note": "everyone now", "expires": "1d"}, headers=h)
        assert r.status_code == 200, r.text
        entry = r.json()["entry"]
        assert entry["clients"] == [] and entry["note"] == "everyone now" and entry["expires"]
        got = httpx.get(f"{query}/v1/web", params=url).json()["results"][0]
        assert got["source"] == "blocked-list"
        r = c.post("/api/lists/edit", json={"value": "edited.example.test", "list": "approved",
                                            "expires": "never"}, headers=h)
        assert r.json()["entry"]["list"] == "approved" and r.json()["entry"]["expires"] is None
        missing = c.post("/api/lists/edit", json={"value": "never-added.example.test"}, headers=h)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_such_rule"
        audit = c.get("/api/logs", params={"log": "audit", "text": "edited.example.test"}).json()
        assert any(row["action"] == "lists.edit" and row["actor"] == "admin"
                   for row in audit["rows"]), audit


def test_status_reports_the_cache_and_each_cloud_endpoint(console: Console) -> None:
    with console.client() as c:
        console.login(c)
        status = c.get("/api/status").json()
    cache = status["cache"]
    assert set(cache) == {"entries", "hits", "lookups", "hit_ratio"}
    assert status["relay"] == {}  # no cloud configured: no endpoint, none asked


def test_bad_input_is_400_naming_the_field(console: Console) -> None:
    with console.client() as c:
        csrf = console.login(c)
        h = {"X-CSRF-Token": csrf}
        for body, named in (({"list": "blocked"}, "values"), ({"list": "grey", "values": ["x.test"]},
                            "list"), ({"list": "blocked", "values": [7]}, "values")):
            r = c.post("/api/lists", json=body, headers=h)
            assert r.status_code == 400 and named in r.json()["error"]["message"], r.text
        r = c.post("/api/lists", content=b"{not json", headers=h)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json"
        r = c.post("/api/lists/test", json={"url": "http://exa mple/"}, headers=h)
        assert r.status_code == 400


def test_a_viewer_key_reads_but_may_not_write(console: Console) -> None:
    accounts = Accounts.open(console.proc.data_dir)
    try:
        _, key = accounts.create_key("monitoring", "viewer", None, "test")
    finally:
        accounts.close()
    from proxy.console.door import console_routes

    writes = [(r.method, r.path) for r in console_routes(None, None, None)
              if r.permission not in (None, "read", "account.own")]
    with console.client() as c:
        h = {"Authorization": f"Bearer {key}"}
        assert c.get("/api/status", headers=h).status_code == 200
        for method, path in writes:
            r = c.request(method, path, json={"list": "blocked", "values": ["v.example.test"]},
                          headers=h)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", path
        assert c.get("/api/status", headers={"Authorization": "Bearer rpk_nope"}).status_code == 401


def test_an_admin_manages_users_and_keys_and_a_new_key_works_once_shown(console: Console) -> None:
    with console.client() as c:
        h = {"X-CSRF-Token": console.login(c)}
        r = c.post("/api/accounts/users", json={"name": "olga", "role": "operator",
                                                "password": "short"}, headers=h)
        assert r.status_code == 400 and "password" in r.json()["error"]["message"]
        r = c.post("/api/accounts/users", json={"name": "olga", "role": "operator",
                                                "password": "a long enough password"}, headers=h)
        assert r.status_code == 200, r.text
        r = c.post("/api/accounts/keys", json={"name": "script", "role": "operator",
                                               "expires_days": 7}, headers=h)
        key = r.json()["key"]
        overview = c.get("/api/accounts").json()
        assert {"olga", "admin"} <= {u["name"] for u in overview["users"]}
        assert key.startswith("rpk_") and key not in str(overview)  # shown once, never listed
        r = c.post("/api/accounts/users/remove", json={"name": "admin"}, headers=h)
        assert r.status_code == 409  # never the last admin (olga is an operator)
    with console.client() as c:
        got = c.post("/api/lists", json={"list": "approved", "values": ["ok.example.test"]},
                     headers={"Authorization": f"Bearer {key}"})
        assert got.status_code == 200  # an operator key writes lists, no CSRF for a key
        assert c.get("/api/accounts", headers={"Authorization": f"Bearer {key}"}).status_code == 403


def test_the_logs_hold_queries_and_every_change_with_who_did_it(console: Console) -> None:
    query = f"http://127.0.0.1:{console.proc.ports['http']}"
    httpx.get(f"{query}/v1/file/{EICAR_MD5}")
    with console.client() as c:
        h = {"X-CSRF-Token": console.login(c)}
        c.post("/api/lists", json={"list": "blocked", "values": ["audited.example.test"],
                                   "note": "for the audit"}, headers=h)
        deadline = time.monotonic() + 15
        rows: list[dict[str, object]] = []
        while time.monotonic() < deadline and not rows:
            rows = c.get("/api/logs", params={"log": "query", "source": "pattern"}).json()["rows"]
            time.sleep(0.2)
        assert rows and rows[0]["service"] == "file" and rows[0]["verdict"] == "malicious"
        audit = c.get("/api/logs", params={"log": "audit", "actor": "admin"}).json()["rows"]
        actions = [(r["action"], r["ok"]) for r in audit]
        assert ("lists", True) in [(a, bool(ok)) for a, ok in actions]
        assert any(a == "login" for a, _ in actions)
        assert all("wrong password" not in str(r) and console.password not in str(r) for r in audit)
        csv = c.get("/api/logs/export", params={"log": "query", "format": "csv"})
        assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
        assert EICAR_MD5 in csv.text or "file" in csv.text.splitlines()[1]
        bad = c.get("/api/logs", params={"log": "query", "regex": "("})
        assert bad.status_code == 400 and "regex" in bad.json()["error"]["message"]
        assert c.get("/api/logs", params={"log": "nope"}).status_code == 400


def test_wrong_passwords_are_refused_then_rate_limited(console: Console) -> None:
    with console.client() as c:
        # (the other tests of this module that log in run before this one)
        codes = [c.post("/api/login", json={"user": "admin", "password": "wrong password!"}
                        ).status_code for _ in range(7)]
    assert codes[0] == 401 and codes[-1] == 429


def test_the_openapi_document_lists_exactly_the_routes(console: Console) -> None:
    from proxy.console.door import console_routes

    with console.client() as c:
        doc = c.get("/api/openapi.json").json()
    from openapi_spec_validator import validate

    validate(doc)  # a valid OpenAPI 3.1 document
    assert doc["openapi"].startswith("3.")
    routes = {(r.method.lower(), r.path) for r in console_routes(None, None, None)}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == routes


def test_the_pages_are_served_with_a_strict_policy_and_the_ca(console: Console) -> None:
    with console.client() as c:
        page = c.get("/")
        assert page.status_code == 200 and "<title>Rampart console</title>" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert c.get("/console.js").headers["content-type"].startswith("text/javascript")
        ca = c.get("/ca.pem")
        assert ca.status_code == 200
        assert ca.content == (console.proc.data_dir / "ca.pem").read_bytes()


def test_the_console_answers_its_networks_only(tmp_path: Path) -> None:
    http, port = free_port(), free_port()
    proc = Proc([*RAMPART, "serve", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1",
                 "--query-port", str(http), "--query-tls-port", "0", "--console-port", str(port),
                 "--config", str(_config(tmp_path, 'console_clients = ["10.0.0.0/8"]'))],
                tmp_path / "d", tmp_path / "serve.log")
    proc.start(f"http://127.0.0.1:{http}/healthz")
    try:
        r = httpx.get(f"https://127.0.0.1:{port}/api/status",
                      verify=ssl.create_default_context(cafile=str(tmp_path / "d" / "ca.pem")),
                      timeout=10)
        assert r.status_code == 403
    finally:
        proc.stop()


def _config(tmp: Path, text: str) -> Path:
    path = tmp / "rampart.toml"
    path.write_text(text + "\n")
    return path


def test_eicar_still_answers_on_the_query_door(console: Console) -> None:
    r = httpx.get(f"http://127.0.0.1:{console.proc.ports['http']}/v1/file/{EICAR_MD5}")
    assert r.json()["results"][0]["source"] == "pattern"
