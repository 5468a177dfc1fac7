"""proxy/cli/remote_lists.py and `update now --server` read back: what the commands send to the
admin API and how its answers become the local mode's values (rules, audit entries, update
results), so the printing code is shared. The API is a stub here (a unit test); the real
exchange is tests/integration/test_cli_remote.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from proxy.cli import cli, remote_lists
from proxy.cli.remote import RemoteFailed
from proxy.cli.remote_lists import RemoteLists
from proxy.decide.list_rules import EntryKind, ListName
from proxy.errors import ConfigError


class Stub:
    """Stands in for a Remote: records requests, answers from ``answers`` (path -> docs)."""

    url = "https://appliance.example.test:4343"

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.answers = answers
        self.sent: list[tuple[str, str, Any]] = []

    def get(self, path: str, params: dict[str, Any] | None = None, *, limit: int = 0) -> Any:
        self.sent.append(("GET", path, params))
        return self.answers[path].pop(0)

    def post(self, path: str, doc: dict[str, Any], *, timeout: float | None = None) -> Any:
        self.sent.append(("POST", path, doc))
        return self.answers[path].pop(0)


def test_values_of_several_kinds_go_in_requests_of_one_kind_at_most_1000_each() -> None:
    stub = Stub({"/api/lists": [{"messages": [f"m{i}"]} for i in range(3)]})
    values = [(EntryKind.DOMAIN, f"d{i}.example.test") for i in range(1001)] + [(EntryKind.KEYWORD, "casino")]
    got = RemoteLists(stub).add(ListName.BLOCKED, values, note="n", clients=["10.0.0.0/8"],
                                expires=1_900_000_000.0)
    assert got == ["m0", "m1", "m2"]
    docs = [doc for _, _, doc in stub.sent]
    assert [len(d["values"]) for d in docs] == [1000, 1, 1]
    assert [d["kind"] for d in docs] == ["domain", "domain", "keyword"]
    assert docs[0]["clients"] == ["10.0.0.0/8"] and docs[0]["expires"] == "2030-03-17T17:46:40Z"


def test_an_edit_sends_only_what_changes_and_never_for_a_permanent_rule() -> None:
    entry = {"list": "approved", "kind": "domain", "value": "a.example.test", "note": "", "created": 1.0,
             "clients": [], "expires": None, "expired": False, "added_by": "ops", "origin": "127.0.0.1"}
    stub = Stub({"/api/lists/edit": [{"entry": entry}]})
    got = RemoteLists(stub).edit(EntryKind.DOMAIN, "a.example.test", to=ListName.APPROVED, expires=None)
    assert got.list is ListName.APPROVED and got.added_by == "ops"
    assert stub.sent[0][2] == {"value": "a.example.test", "kind": "domain", "list": "approved",
                               "expires": "never"}


@pytest.mark.parametrize("bad", [
    {"entries": [{"list": "grey", "kind": "domain", "value": "a"}]},
    {"entries": [{"list": "blocked", "kind": "domain", "value": "a", "note": "", "created": "yesterday",
                  "clients": [], "added_by": "", "origin": ""}]},
    {"rules": []},
    ["not", "an", "object"],
])
def test_a_rule_the_api_would_not_send_is_a_failure_naming_it(bad: Any) -> None:
    with pytest.raises(RemoteFailed, match="answered unlike the admin API") as e:
        RemoteLists(Stub({"/api/lists": [bad]})).entries()
    assert e.value.exit_code == 1


def test_the_lists_trail_reads_as_the_local_modes_entries() -> None:
    row = {"at": 1772366400.0, "who": "ops", "origin": "10.0.0.9", "action": "add",
           "list": "blocked", "kind": "domain", "value": "a.test", "detail": {"note": "n"}}
    stub = Stub({"/api/lists/audit": [{"entries": [row]}]})
    got = RemoteLists(stub).audit(limit=5, value="a.test")
    assert got[0].line() == "2026-03-01T12:00:00Z  ops (10.0.0.9)  add     blocked domain a.test  [note n]"
    assert stub.sent[0][2] == {"limit": 5, "value": "a.test"}


@pytest.mark.parametrize("bad", [{"entries": [{"at": "x"}]}, {"entries": [{"detail": "s"}]},
                                 {"rows": []}])
def test_a_trail_row_the_api_would_not_send_is_a_failure(bad: Any) -> None:
    with pytest.raises(RemoteFailed):
        RemoteLists(Stub({"/api/lists/audit": [bad]})).audit()


def test_an_import_over_the_apis_request_limit_is_refused_before_it_is_sent() -> None:
    stub = Stub({})
    with pytest.raises(ConfigError, match="over the admin API's 1 MiB request limit"):
        RemoteLists(stub).import_text("a.example.test\n" * 80_000, "plain", name=ListName.BLOCKED,
                                      kind=None)
    assert stub.sent == []


def test_test_urls_gives_each_urls_lines_and_the_pattern_version() -> None:
    stub = Stub({"/api/lists/test": [{"lines": ["a"]}, {"lines": ["b", "c"]}],
                 "/api/status": [{"pattern": {"version": "2026.03.01.1"}}]})
    assert remote_lists.test_urls(stub, ["http://a/", "http://b/"], "10.0.0.1") == (
        [["a"], ["b", "c"]], "2026.03.01.1")
    assert stub.sent[0][2] == {"url": "http://a/", "client": "10.0.0.1"}


@pytest.mark.parametrize(("answer", "code", "out"), [
    ({"ok": True, "changed": True, "version": "v2", "path": "diff", "bytes": 1200, "seconds": 0.5,
      "reason": None, "message": "", "at": 1}, 0, "installed version v2: path diff, 1200 bytes, 0.50 s\n"),
    ({"ok": False, "changed": False, "version": "v3", "path": "full", "bytes": 0, "seconds": 1.25,
      "reason": "fetch_failed", "message": "source unreachable", "at": 1}, 1,
     "update failed (fetch_failed): source unreachable; version v3, path full, 0 bytes, 1.25 s\n"),
])
def test_update_now_prints_the_appliances_result_as_the_local_mode_does(
        monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any], code: int, out: str) -> None:
    stub = Stub({"/api/updates/now": [answer, answer]})
    monkeypatch.setattr("proxy.cli.update.remote_for", lambda run, *local: stub)
    r = CliRunner().invoke(cli, ["update", "now"])
    assert r.exit_code == code and r.output == out
    r = CliRunner().invoke(cli, ["update", "now", "--json"])
    assert r.exit_code == code and json.loads(r.output) == answer


def test_update_now_refuses_an_answer_without_its_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = Stub({"/api/updates/now": [{"ok": "yes"}]})
    monkeypatch.setattr("proxy.cli.update.remote_for", lambda run, *local: stub)
    r = CliRunner().invoke(cli, ["update", "now"])
    assert r.exit_code == 1 and "field 'ok' missing or not bool" in r.output
