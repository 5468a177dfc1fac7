"""The Safe Browsing v4 API of a real appliance on loopback, asked by unmodified clients from
PyPI (google-api-python-client with its static discovery document, pysafebrowsing) and by a
local-database client written from the v4 specification (tests/integration/sb_local.py),
which must converge with the appliance across a list change and a pattern update. Bad input
of every kind is a v4 400, never a 5xx."""

from __future__ import annotations

import base64
import hashlib
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RAMPART, Proc, free_port, start_appliance
from tests.integration.sb_local import (
    ENUM,
    LISTS,
    ChecksumMismatch,
    LocalDatabase,
    field_values,
    one,
    pb,
    rice_decode,
)

pytestmark = pytest.mark.integration

MALWARE = "http://testsafebrowsing.appspot.com/s/malware.html"
PHISHING = "http://testsafebrowsing.appspot.com/s/phishing.html"
CLEAN = "http://clean.example.test/nothing/here.html"


def rampart(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAMPART, *args], capture_output=True, text=True, timeout=60)


def eventually(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def full_hash(expression: str) -> bytes:
    return hashlib.sha256(expression.encode()).digest()


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    p = start_appliance(tmp_path_factory.mktemp("sb"), None)  # the sample pattern, no cloud
    yield p
    p.stop()


def base(p: Proc) -> str:
    return f"http://127.0.0.1:{p.ports['http']}"


# ---------------------------------------------------------------- google-api-python-client


@pytest.fixture(scope="module")
def google(appliance: Proc) -> Any:
    from googleapiclient.discovery import build

    return build("safebrowsing", "v4", developerKey="any-key", static_discovery=True,
                 client_options={"api_endpoint": base(appliance)})


def test_google_client_lists_the_threat_lists(google: Any) -> None:
    got = google.threatLists().list().execute()["threatLists"]
    names = {(t["threatType"], t["platformType"], t["threatEntryType"]) for t in got}
    assert {(t, "ANY_PLATFORM", "URL") for t in LISTS} <= names


def test_google_client_fetches_updates_then_finds_the_full_hash_of_a_listed_url(google: Any) -> None:
    update = google.threatListUpdates().fetch(body={
        "client": {"clientId": "google-client-test", "clientVersion": "1"},
        "listUpdateRequests": [{"threatType": "MALWARE", "platformType": "ANY_PLATFORM",
                                "threatEntryType": "URL",
                                "constraints": {"supportedCompressions": ["RAW"]}}]}).execute()
    (answer,) = update["listUpdateResponses"]
    assert answer["responseType"] == "FULL_UPDATE" and answer["newClientState"]
    want = full_hash("testsafebrowsing.appspot.com/s/malware.html")
    prefixes = []
    for a in answer["additions"]:
        raw = a["rawHashes"]
        blob, size = base64.b64decode(raw["rawHashes"]), raw["prefixSize"]
        prefixes += [blob[i:i + size] for i in range(0, len(blob), size)]
    prefix = next(p for p in prefixes if want.startswith(p))
    found = google.fullHashes().find(body={
        "client": {"clientId": "google-client-test", "clientVersion": "1"},
        "clientStates": [answer["newClientState"]],
        "threatInfo": {"threatTypes": ["MALWARE"], "platformTypes": ["ANY_PLATFORM"],
                       "threatEntryTypes": ["URL"],
                       "threatEntries": [{"hash": base64.b64encode(prefix).decode()}]}}).execute()
    hashes = {base64.b64decode(m["threat"]["hash"]) for m in found["matches"]}
    assert want in hashes
    assert found["negativeCacheDuration"].endswith("s")
    assert all(m["cacheDuration"].endswith("s") and "threatEntryMetadata" in m for m in found["matches"])


def test_google_client_threat_matches_finds_the_test_urls_and_not_a_clean_one(google: Any) -> None:
    body = {"client": {"clientId": "google-client-test", "clientVersion": "1"},
            "threatInfo": {"threatTypes": list(LISTS), "platformTypes": ["ANY_PLATFORM"],
                           "threatEntryTypes": ["URL"],
                           "threatEntries": [{"url": u} for u in (MALWARE, PHISHING, CLEAN)]}}
    matches = google.threatMatches().find(body=body).execute()["matches"]
    by_url = {m["threat"]["url"]: m["threatType"] for m in matches}
    assert by_url == {MALWARE: "MALWARE", PHISHING: "SOCIAL_ENGINEERING"}
    body["threatInfo"]["threatEntries"] = [{"url": CLEAN}]
    assert google.threatMatches().find(body=body).execute() == {}


# ---------------------------------------------------------------- pysafebrowsing


def test_pysafebrowsing_reports_the_listed_urls_and_not_a_clean_one(appliance: Proc) -> None:
    from pysafebrowsing import SafeBrowsing

    sb = SafeBrowsing("any-key", api_url=f"{base(appliance)}/v4/threatMatches:find")
    got = sb.lookup_urls([MALWARE, PHISHING, CLEAN])
    assert got[MALWARE]["malicious"] and got[MALWARE]["threats"] == ["MALWARE"]
    assert got[PHISHING]["malicious"] and got[PHISHING]["threats"] == ["SOCIAL_ENGINEERING"]
    assert got[CLEAN] == {"malicious": False}


# ---------------------------------------------------------------- a local-database client


@pytest.mark.parametrize("compression", ["RAW", "RICE"])
def test_a_local_database_client_converges_across_a_list_change(appliance: Proc, compression: str) -> None:
    db = LocalDatabase(base(appliance), compression)
    db.update()
    assert set(db.responses) == {"FULL_UPDATE"}
    assert db.lookup(MALWARE) == {"MALWARE"} and db.lookup(PHISHING) == {"SOCIAL_ENGINEERING"}
    assert db.lookup(CLEAN) == set()
    db.update()  # nothing changed: a partial update with nothing in it, the checksum still right
    assert set(db.responses) == {"PARTIAL_UPDATE"}

    listed = f"http://blocked-{compression.lower()}.example.test/bad/"
    data = ["--data-dir", str(appliance.data_dir)]
    domain = f"whole-{compression.lower()}.example.test"  # a blocked domain covers its subdomains
    r = rampart("lists", "add", "--blocked", *data, listed, domain)
    assert r.returncode == 0, r.stderr

    def sees(present: bool) -> bool:
        db.update()
        found = [db.lookup(listed + "page.html"), db.lookup(f"http://www.{domain}/any/page")]
        return all((f == {"MALWARE"}) == present for f in found)

    assert eventually(lambda: sees(True)), "the blocked URL never reached the local database"
    assert "PARTIAL_UPDATE" in db.responses
    assert db.forms == ({"rawHashes"} if compression == "RAW" else {"riceHashes"}), db.forms
    assert db.lookup(MALWARE) == {"MALWARE"}  # the rest kept across the partial update
    r = rampart("lists", "remove", *data, listed, domain)
    assert r.returncode == 0, r.stderr
    assert eventually(lambda: sees(False)), "the removed URL stayed in the local database"


def test_an_unknown_state_gets_a_full_update(appliance: Proc) -> None:
    db = LocalDatabase(base(appliance))
    for ll in db.lists.values():
        ll.state = base64.b64encode(b"not a state of this appliance").decode()
        ll.prefixes = [b"\x00\x00\x00\x01"]  # what the client held must be thrown away
    db.update()
    assert set(db.responses) == {"FULL_UPDATE"}
    assert db.lookup(MALWARE) == {"MALWARE"}


def test_a_wrong_local_database_fails_the_checksum(appliance: Proc) -> None:
    db = LocalDatabase(base(appliance))
    db.update()
    db.lists["MALWARE"].prefixes.append(b"\xff\xff\xff\xfe")  # a prefix the server never sent
    with pytest.raises(ChecksumMismatch):
        db.update()


# ---------------------------------------------------------------- protobuf (alt=proto)

PROTO = {"Content-Type": "application/x-protobuf"}


def post_proto(p: Proc, path: str, body: bytes) -> bytes:
    r = httpx.post(f"{base(p)}{path}?alt=proto&key=k", content=body, headers=PROTO)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"].startswith("application/x-protobuf")
    return r.content


def test_protobuf_update_then_full_hashes_by_the_wire_form_alone(appliance: Proc) -> None:
    client = pb(1, pb(1, "proto-test"))
    request = client + pb(3, pb(1, ENUM["MALWARE"]) + pb(2, ENUM["ANY_PLATFORM"]) + pb(5, ENUM["URL"])
                          + pb(4, pb(4, ENUM["RICE"])))
    (answer,) = field_values(post_proto(appliance, "/v4/threatListUpdates:fetch", request), 1)
    assert one(answer, 1) == ENUM["MALWARE"] and one(answer, 4) == ENUM["FULL_UPDATE"]
    prefixes: list[bytes] = []
    for entry_set in field_values(answer, 5):
        raw, rice = one(entry_set, 2), one(entry_set, 4)
        if rice is not None:
            assert one(entry_set, 1) == ENUM["RICE"]
            values = rice_decode(one(rice, 1, 0), one(rice, 2, 0), one(rice, 3, 0), one(rice, 4, b""))
            prefixes += [v.to_bytes(4, "little") for v in values]
        if raw is not None:
            size, blob = one(raw, 1), one(raw, 2, b"")
            prefixes += [blob[i:i + size] for i in range(0, len(blob), size)]
    prefixes.sort()
    assert hashlib.sha256(b"".join(prefixes)).digest() == one(one(answer, 8), 1)
    state = one(answer, 7)
    assert state

    want = full_hash("testsafebrowsing.appspot.com/s/malware.html")
    prefix = next(p for p in prefixes if want.startswith(p))
    info = (pb(1, ENUM["MALWARE"]) + pb(2, ENUM["ANY_PLATFORM"]) + pb(4, ENUM["URL"])
            + pb(3, pb(1, prefix)))
    found = post_proto(appliance, "/v4/fullHashes:find", client + pb(2, state) + pb(3, info))
    matches = field_values(found, 1)
    assert want in {one(one(m, 3), 1) for m in matches}
    assert all(one(one(m, 5), 1, 0) > 0 for m in matches)  # cacheDuration in seconds
    assert one(one(found, 3), 1, 0) > 0  # negativeCacheDuration


def test_protobuf_threat_matches_finds_a_listed_url_and_not_a_clean_one(appliance: Proc) -> None:
    info = (pb(1, ENUM["MALWARE"]) + pb(1, ENUM["SOCIAL_ENGINEERING"]) + pb(2, ENUM["ANY_PLATFORM"])
            + pb(4, ENUM["URL"]) + pb(3, pb(2, MALWARE)) + pb(3, pb(2, CLEAN)))
    out = post_proto(appliance, "/v4/threatMatches:find", pb(1, pb(1, "proto-test")) + pb(2, info))
    matches = field_values(out, 1)
    assert [(one(m, 1), one(one(m, 3), 2).decode()) for m in matches] == [(ENUM["MALWARE"], MALWARE)]


def test_the_https_door_serves_v4_too(appliance: Proc) -> None:
    r = httpx.post(f"https://127.0.0.1:{appliance.ports['https']}/v4/threatMatches:find?key=k",
                   verify=ssl.create_default_context(cafile=str(appliance.data_dir / "ca.pem")),
                   json={"client": {"clientId": "t"}, "threatInfo": {
                       "threatTypes": ["MALWARE"], "platformTypes": ["ANY_PLATFORM"],
                       "threatEntryTypes": ["URL"], "threatEntries": [{"url": MALWARE}]}})
    assert r.status_code == 200 and r.json()["matches"][0]["threat"]["url"] == MALWARE


# ---------------------------------------------------------------- bad input


def v4_400(r: httpx.Response, says: str = "") -> None:
    assert r.status_code == 400, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT" and error["message"]
    assert says.lower() in error["message"].lower(), error["message"]


def _fetch(threat: str = "MALWARE", **extra: Any) -> dict[str, Any]:
    return {"client": {"clientId": "t"}, "listUpdateRequests": [
        {"threatType": threat, "platformType": "ANY_PLATFORM", "threatEntryType": "URL", **extra}]}


def _find(hashes: list[bytes]) -> dict[str, Any]:
    return {"client": {"clientId": "t"}, "threatInfo": {
        "threatTypes": ["MALWARE"], "platformTypes": ["ANY_PLATFORM"], "threatEntryTypes": ["URL"],
        "threatEntries": [{"hash": base64.b64encode(h).decode()} for h in hashes]}}


@pytest.mark.parametrize("path", ["/v4/threatListUpdates:fetch", "/v4/fullHashes:find",
                                  "/v4/threatMatches:find"])
@pytest.mark.parametrize("body", [b"{", b"[]", b"\xff\xfe", b'{"client": 7}', b"null"])
def test_malformed_json_is_a_400(appliance: Proc, path: str, body: bytes) -> None:
    r = httpx.post(base(appliance) + path, content=body, headers={"Content-Type": "application/json"})
    v4_400(r)


@pytest.mark.parametrize("path", ["/v4/threatListUpdates:fetch", "/v4/fullHashes:find",
                                  "/v4/threatMatches:find"])
@pytest.mark.parametrize("body", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x08" + b"\xff" * 11])
def test_malformed_protobuf_is_a_400(appliance: Proc, path: str, body: bytes) -> None:
    r = httpx.post(base(appliance) + path + "?alt=proto", content=body,
                   headers={"Content-Type": "application/x-protobuf"})
    v4_400(r)


def test_an_unknown_list_is_a_400_naming_it(appliance: Proc) -> None:
    r = httpx.post(base(appliance) + "/v4/threatListUpdates:fetch", json=_fetch("NO_SUCH_LIST"))
    v4_400(r, "NO_SUCH_LIST")


@pytest.mark.parametrize("size", [0, 1, 3, 33, 1000])
def test_an_absurd_prefix_size_is_a_400(appliance: Proc, size: int) -> None:
    r = httpx.post(base(appliance) + "/v4/fullHashes:find", json=_find([b"\x01" * size]))
    v4_400(r)


def test_ten_thousand_prefixes_in_one_request_is_a_400(appliance: Proc) -> None:
    hashes = [i.to_bytes(4, "big") for i in range(10_000)]
    r = httpx.post(base(appliance) + "/v4/fullHashes:find", json=_find(hashes), timeout=30)
    v4_400(r)


def test_the_door_still_answers_after_the_bad_input(appliance: Proc) -> None:
    r = httpx.get(base(appliance) + "/v4/threatLists?key=k")
    assert r.status_code == 200 and r.json()["threatLists"]
    metrics = httpx.get(base(appliance) + "/metrics").text
    assert 'rampart_http_requests_total{path="/v4/fullHashes:find",status="400"}' in metrics
    assert 'path="/v4/threatLists",status="200"' in metrics


# ---------------------------------------------------------------- across a pattern update

V1, V2 = "2026020100", "2026020101"
URLS = {V1: ["kept.example.test/a.html", "gone.example.test/b.html"],
        V2: ["kept.example.test/a.html", "new.example.test/c.html"]}


def test_a_local_database_client_converges_across_a_pattern_update(tmp_path: Path) -> None:
    assert rampart("pattern", "keygen", "--out", str(tmp_path / "key")).returncode == 0
    builds = {}
    for version, base_version in ((V1, None), (V2, V1)):
        src = tmp_path / f"urls-{version}.txt"
        src.write_text("".join(f"{u},dangerous,malware\n" for u in URLS[version]))
        builds[version] = tmp_path / f"build-{version}"
        args = ["pattern", "build", "--out", str(builds[version]), "--urls", str(src),
                "--version", version]
        if base_version:
            args += ["--base", str(builds[base_version])]
        r = rampart(*args)
        assert r.returncode == 0, r.stderr

    def publish(version: str) -> None:
        r = rampart("pattern", "publish", "--from", str(builds[version]), "--repo",
                    str(tmp_path / "repo"), "--key", str(tmp_path / "key"))
        assert r.returncode == 0, r.stderr

    publish(V1)
    port = free_port()
    source = Proc([*RAMPART, "pattern", "serve", str(tmp_path / "repo"), "--port", str(port)],
                  tmp_path, tmp_path / "serve.log", {"http": port})
    source.start(f"http://127.0.0.1:{port}/manifest.json")
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(f'update_source = "http://127.0.0.1:{port}/"\n'
                   f'update_key = "{tmp_path / "key.pub"}"\n')
    appliance = start_appliance(tmp_path / "a", None, "--config", str(cfg))
    try:
        def version() -> str:
            return str(httpx.get(base(appliance) + "/readyz").json()["pattern"]["version"])

        assert eventually(lambda: version() == V1), version()
        db = LocalDatabase(base(appliance), "RICE")

        def has_v1() -> bool:  # the set for V1 is built in a thread once V1 is served
            db.update()
            return db.lookup("http://gone.example.test/b.html") == {"MALWARE"}

        assert eventually(has_v1), "V1 never reached the local database"
        assert db.lookup("http://new.example.test/c.html") == set()

        publish(V2)
        r = rampart("update", "now", "--data-dir", str(appliance.data_dir), "--config", str(cfg))
        assert r.returncode == 0, r.stdout + r.stderr
        assert eventually(lambda: version() == V2), version()
        before = set(db.lists["MALWARE"].prefixes)

        def changed() -> bool:  # a client asks again after minimumWaitDuration; the new
            db.update()         # prefix set is built in a thread after the swap
            assert db.responses[LISTS.index("MALWARE")] == "PARTIAL_UPDATE"
            return set(db.lists["MALWARE"].prefixes) != before

        assert eventually(changed), "the pattern update never reached the local database"
        after = set(db.lists["MALWARE"].prefixes)
        assert before - after and after - before  # one removed, one added, checksum checked
        assert {"riceHashes", "riceIndices"} <= db.forms
        assert db.lookup("http://kept.example.test/a.html") == {"MALWARE"}
        assert db.lookup("http://new.example.test/c.html") == {"MALWARE"}
        assert db.lookup("http://gone.example.test/b.html") == set()
    finally:
        appliance.stop()
        source.stop()

