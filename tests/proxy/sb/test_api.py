"""The v4 API against a real engine (the sample pattern): what a v4 client gets from each
method in JSON and protobuf, updates full then partial with checksums it can verify, and a
clear 400 for whatever it sent wrong."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.config import Config
from proxy.decide.list_rules import EntryKind, ListName
from proxy.sb import messages as m
from proxy.sb import prefixes as px
from proxy.sb.api import MAX_PREFIXES, SafeBrowsing
from proxy.serve.app import App
from proxy.wire import urls

MALWARE = "http://testsafebrowsing.appspot.com/s/malware.html"
PHISHING = "http://testsafebrowsing.appspot.com/s/phishing.html"
CLEAN = "http://clean.example.test/"
LISTS = [{"threatType": t, "platformType": "ANY_PLATFORM", "threatEntryType": "URL"}
         for t in px.THREAT_TYPES]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    tmp: Path = tmp_path_factory.mktemp("sb")
    app = App(Config(data_dir=tmp, query_port=0, query_tls_port=0))
    app.open()
    yield app
    app.lists_store.close()
    app.engine.patterns.close()


@pytest.fixture
def sb(app: App) -> SafeBrowsing:
    return SafeBrowsing(lambda: app.engine, app.cfg)


def post(sb: SafeBrowsing, path: str, doc: Any, **query: str) -> tuple[int, Any]:
    status, body, ctype = sb.handle("POST", path, query, json.dumps(doc).encode(), "application/json")
    assert ctype == "application/json"
    return status, json.loads(body)


def fetch(sb: SafeBrowsing, states: dict[str, str] | None = None, rice: bool = False) -> dict[str, Any]:
    reqs = []
    for lst in LISTS:
        r = dict(lst, state=(states or {}).get(lst["threatType"], ""))
        r["constraints"] = {"supportedCompressions": ["RAW", "RICE"] if rice else ["RAW"]}
        reqs.append(r)
    status, doc = post(sb, "/v4/threatListUpdates:fetch", {"listUpdateRequests": reqs})
    assert status == 200, doc
    return {u["threatType"]: u for u in doc["listUpdateResponses"]}


def apply(old: list[bytes], update: dict[str, Any]) -> list[bytes]:
    """A client's side: the v4 update applied to its sorted prefixes, checksum verified."""
    if update["responseType"] == "FULL_UPDATE":
        old = []
    gone = set()
    for r in update.get("removals", []):
        if "riceIndices" in r:
            ri = r["riceIndices"]
            gone |= set(px.rice_decode(int(ri.get("firstValue", 0)), ri.get("riceParameter", 0),
                                       ri.get("numEntries", 0), base64.b64decode(ri.get("encodedData", ""))))
        else:
            gone |= set(r["rawIndices"]["indices"])
    new = [p for i, p in enumerate(old) if i not in gone]
    for a in update.get("additions", []):
        if "riceHashes" in a:
            rh = a["riceHashes"]
            values = px.rice_decode(int(rh.get("firstValue", 0)), rh.get("riceParameter", 0),
                                    rh.get("numEntries", 0), base64.b64decode(rh.get("encodedData", "")))
            new += [v.to_bytes(4, "little") for v in values]
        else:
            raw, size = base64.b64decode(a["rawHashes"]["rawHashes"]), a["rawHashes"]["prefixSize"]
            new += [raw[i:i + size] for i in range(0, len(raw), size)]
    new.sort()
    assert hashlib.sha256(b"".join(new)).digest() == base64.b64decode(update["checksum"]["sha256"])
    return new


def test_threat_lists_names_the_three_lists(sb: SafeBrowsing) -> None:
    status, body, ctype = sb.handle("GET", "/v4/threatLists", {"key": "x"}, b"", "")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body) == {"threatLists": LISTS}


def test_a_full_update_then_full_hashes_for_a_listed_url(sb: SafeBrowsing) -> None:
    for rice in (False, True):
        updates = fetch(sb, rice=rice)
        assert {u["responseType"] for u in updates.values()} == {"FULL_UPDATE"}
        malware = apply([], updates["MALWARE"])
        full = urls.digest("testsafebrowsing.appspot.com/s/malware.html")
        assert full[:4] in malware
    status, doc = post(sb, "/v4/fullHashes:find", {
        "client": {"clientId": "t", "clientVersion": "1"},
        "clientStates": [updates["MALWARE"]["newClientState"]],
        "threatInfo": {"threatTypes": ["MALWARE", "SOCIAL_ENGINEERING"],
                       "platformTypes": ["WINDOWS"], "threatEntryTypes": ["URL"],
                       "threatEntries": [{"hash": base64.b64encode(full[:4]).decode()}]}})
    assert status == 200
    assert doc["matches"] == [{"threatType": "MALWARE", "platformType": "WINDOWS",
                               "threatEntryType": "URL",
                               "threat": {"hash": base64.b64encode(full).decode()},
                               "threatEntryMetadata": {}, "cacheDuration": "3600s"}]
    assert doc["negativeCacheDuration"] == "3600s"  # local_ttl
    assert "minimumWaitDuration" in doc


def test_unchanged_state_gets_an_empty_partial_update_and_unknown_a_full_one(sb: SafeBrowsing) -> None:
    first = fetch(sb)
    again = fetch(sb, {t: u["newClientState"] for t, u in first.items()})
    for t, u in again.items():
        assert u["responseType"] == "PARTIAL_UPDATE" and "additions" not in u and "removals" not in u
        assert u["checksum"] == first[t]["checksum"]
    bogus = fetch(sb, {t: base64.b64encode(b"old-state").decode() for t in first})
    assert {u["responseType"] for u in bogus.values()} == {"FULL_UPDATE"}


def test_a_list_change_is_a_partial_update_the_client_can_verify(app: App, sb: SafeBrowsing) -> None:
    for rice in (False, True):
        first = fetch(sb, rice=rice)
        held = {t: apply([], u) for t, u in first.items()}
        names = [f"rule{i}-{int(rice)}.example.test" for i in range(30)]
        app.lists_store.add(ListName.BLOCKED, [(EntryKind.DOMAIN, n) for n in names])
        app.engine.lists = app.lists_store.snapshot()
        sb.prepare()  # what the first request after the change starts in a thread
        second = fetch(sb, {t: u["newClientState"] for t, u in first.items()}, rice=rice)
        assert second["MALWARE"]["responseType"] == "PARTIAL_UPDATE"
        malware = apply(held["MALWARE"], second["MALWARE"])
        assert urls.digest(names[0] + "/")[:4] in malware
        app.lists_store.remove([(EntryKind.DOMAIN, n) for n in names[:10]], name=ListName.BLOCKED)
        app.engine.lists = app.lists_store.snapshot()
        sb.prepare()
        third = fetch(sb, {t: u["newClientState"] for t, u in second.items()}, rice=rice)
        assert "removals" in third["MALWARE"]
        malware = apply(malware, third["MALWARE"])
        assert urls.digest(names[0] + "/")[:4] not in malware
        assert urls.digest(names[10] + "/")[:4] in malware


def test_threat_matches_finds_the_listed_urls_and_not_a_clean_one(sb: SafeBrowsing) -> None:
    status, doc = post(sb, "/v4/threatMatches:find", {
        "client": {"clientId": "t", "clientVersion": "1"},
        "threatInfo": {"threatTypes": ["MALWARE", "SOCIAL_ENGINEERING", "UNWANTED_SOFTWARE",
                                       "POTENTIALLY_HARMFUL_APPLICATION"],
                       "platformTypes": ["ANY_PLATFORM"], "threatEntryTypes": ["URL"],
                       "threatEntries": [{"url": MALWARE}, {"url": PHISHING}, {"url": CLEAN}]}})
    assert status == 200
    assert {(x["threat"]["url"], x["threatType"]) for x in doc["matches"]} == {
        (MALWARE, "MALWARE"), (PHISHING, "SOCIAL_ENGINEERING")}
    status, doc = post(sb, "/v4/threatMatches:find", {"threatInfo": {
        "threatTypes": ["MALWARE"], "threatEntries": [{"url": CLEAN}]}})
    assert (status, doc) == (200, {})


def test_protobuf_in_and_out(sb: SafeBrowsing) -> None:
    req = m.FindThreatMatchesRequest()
    req.threat_info.threat_types.append(m.ThreatType["MALWARE"])
    req.threat_info.threat_entries.add(url=MALWARE)
    status, body, ctype = sb.handle("POST", "/v4/threatMatches:find", {"alt": "proto"},
                                    req.SerializeToString(), "application/x-protobuf")
    assert (status, ctype) == (200, "application/x-protobuf")
    answer = m.FindThreatMatchesResponse.FromString(body)
    assert [x.threat.url for x in answer.matches] == [MALWARE]


def bad(sb: SafeBrowsing, path: str, body: bytes, ctype: str = "application/json",
        method: str = "POST", **query: str) -> str:
    status, out, kind = sb.handle(method, path, query, body, ctype)
    error = json.loads(out)["error"]
    assert (status, kind, error["code"], error["status"]) == (400, "application/json", 400,
                                                              "INVALID_ARGUMENT"), out
    return str(error["message"])


def test_bad_requests_are_a_clear_400(sb: SafeBrowsing) -> None:
    fetch_path, hashes_path = "/v4/threatListUpdates:fetch", "/v4/fullHashes:find"
    assert "JSON" in bad(sb, fetch_path, b"{not json")
    assert "JSON" in bad(sb, fetch_path, b"[" * 100_000 + b"]" * 100_000)
    assert "protobuf" in bad(sb, fetch_path, b"\xff\xff\xff", "application/x-protobuf")
    assert "JSON" in bad(sb, fetch_path, b'{"listUpdateRequests": [{"threatType": "NOPE"}]}')
    assert "JSON" in bad(sb, fetch_path, b'{"surprise": 1}')
    assert "empty" in bad(sb, fetch_path, b"{}")
    assert "not served" in bad(sb, fetch_path, json.dumps({"listUpdateRequests": [
        {"threatType": "CSD_WHITELIST", "platformType": "ANY_PLATFORM"}]}).encode())
    assert "platformType" in bad(sb, fetch_path, b'{"listUpdateRequests": [{"threatType": "MALWARE"}]}')
    assert "alt" in bad(sb, "/v4/threatLists", b"", method="GET", alt="xml")

    def hashes(entries: list[bytes]) -> bytes:
        return json.dumps({"threatInfo": {"threatTypes": ["MALWARE"], "threatEntries": [
            {"hash": base64.b64encode(e).decode()} for e in entries]}}).encode()

    assert "4 to 32" in bad(sb, hashes_path, hashes([b"\x01\x02"]))
    assert "4 to 32" in bad(sb, hashes_path, hashes([b"\x01" * 33]))
    assert "maximum" in bad(sb, hashes_path, hashes([i.to_bytes(4, "big") for i in range(10_000)]))
    assert str(MAX_PREFIXES) in bad(sb, hashes_path, hashes([b"\x00" * 4] * (MAX_PREFIXES + 1)))
    assert "threatTypes" in bad(sb, hashes_path, b'{"threatInfo": {}}')
    assert "url" in bad(sb, "/v4/threatMatches:find", json.dumps({"threatInfo": {
        "threatTypes": ["MALWARE"], "threatEntries": [{"url": "http://[bad"}]}}).encode())


def test_unknown_paths_and_methods_are_v4_errors(sb: SafeBrowsing) -> None:
    status, body, _ = sb.handle("GET", "/v4/nothing", {}, b"", "")
    assert status == 404 and json.loads(body)["error"]["code"] == 404
    status, body, _ = sb.handle("GET", "/v4/fullHashes:find", {}, b"", "")
    assert status == 405 and json.loads(body)["error"]["status"] == "METHOD_NOT_ALLOWED"


FETCH, HASHES, MATCHES = "/v4/threatListUpdates:fetch", "/v4/fullHashes:find", "/v4/threatMatches:find"


def lu(**fields: Any) -> dict[str, Any]:
    return {"listUpdateRequests": [dict({"threatType": "MALWARE", "platformType": "LINUX"}, **fields)]}


@pytest.mark.parametrize(("path", "doc"), [
    (HASHES, {"threatInfo": "x"}),
    (FETCH, {"listUpdateRequests": [{"threatType": 1.5}]}),
    (FETCH, lu(threatType=99999)),
    (FETCH, lu(platformType=4242)),
    (FETCH, lu(constraints={"supportedCompressions": [77]})),
    (FETCH, lu(constraints={"maxUpdateEntries": -1})),
    (FETCH, lu(state=base64.b64encode(b"s" * 1000).decode())),
    (FETCH, lu(threatEntryType="EXECUTABLE")),
    (FETCH, {"listUpdateRequests": lu()["listUpdateRequests"] * 33}),
    (HASHES, {"threatInfo": {"threatTypes": [99999], "threatEntries": [{"hash": "AAAAAA=="}]}}),
    (HASHES, {"clientStates": ["AAAA"] * 100, "threatInfo": {"threatTypes": ["MALWARE"]}}),
    (MATCHES, {"threatInfo": {"threatTypes": ["MALWARE"], "threatEntries": [{"url": "x" * 100_000}]}}),
    (MATCHES, {"threatInfo": {"threatTypes": ["MALWARE"],
                              "threatEntries": [{"url": "http://a.test/"}] * 501}}),
    (MATCHES, {"threatInfo": {"threatTypes": ["MALWARE"], "threatEntries": [{"hash": "AAAAAA=="}]}}),
])
def test_odd_requests_are_a_400_naming_the_problem(sb: SafeBrowsing, path: str, doc: Any) -> None:
    assert bad(sb, path, json.dumps(doc).encode())
    for other in (FETCH, HASHES, MATCHES):  # the same body on another method: never a 5xx
        assert sb.handle("POST", other, {}, json.dumps(doc).encode(), "application/json")[0] in (200, 400)


def test_random_bytes_never_get_more_than_a_400(sb: SafeBrowsing) -> None:
    rng = random.Random(14)
    for i in range(300):
        body = rng.randbytes(rng.randrange(0, 200))
        for path in ("/v4/threatListUpdates:fetch", "/v4/fullHashes:find", "/v4/threatMatches:find"):
            for ctype in ("application/x-protobuf", "application/json"):
                status, out, _ = sb.handle("POST", path, {"alt": "proto"}, body, ctype)
                assert status in (200, 400), (i, path, ctype, out)


def test_prepare_builds_what_the_next_update_serves(app: App) -> None:
    sb = SafeBrowsing(lambda: app.engine, app.cfg)
    sb.prepare()
    made = sb.cache.current(app.engine)
    updates = fetch(sb, rice=True)
    assert base64.b64decode(updates["MALWARE"]["newClientState"]) == made.state
    apply([], updates["MALWARE"])
