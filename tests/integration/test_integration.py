"""The whole chain on loopback: `rampart cloud` and `rampart serve` as real processes, real TLS."""

from __future__ import annotations

import hashlib
import re
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    EICAR_MD5,
    EICAR_SHA1,
    EICAR_SHA256,
    RAMPART,
    Proc,
    free_port,
    metric,
    start_appliance,
    start_cloud,
)

pytestmark = pytest.mark.integration


def unknown_hash(tag: str) -> str:
    return hashlib.sha256(f"rampart-integration-{tag}-{time.time_ns()}".encode()).hexdigest()


def cloud_sample_hash() -> tuple[str, str]:
    """A hash the cloud's sample knows and the appliance's does not, with its threat."""
    sample = Path(__file__).parents[2] / "proxy" / "samples" / "cloud" / "hashes.txt"
    for line in sample.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 3 or parts[2] == "malicious":
                return parts[0], parts[1]
    raise AssertionError("no malicious hash in the cloud sample")


def base(p: Proc) -> str:
    return f"http://127.0.0.1:{p.ports['http']}"


def files(p: Proc, *hashes: str) -> list[dict]:
    items = [{{32: "md5", 40: "sha1", 64: "sha256"}[len(h)]: h} for h in hashes]
    r = httpx.post(f"{base(p)}/v1/file", json={"items": items}, timeout=15)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def lists(p: Proc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RAMPART, "lists", *args, "--data-dir", str(p.data_dir)] if args[0] == "show" else
        [*RAMPART, "lists", args[0], "--data-dir", str(p.data_dir), *args[1:]],
        capture_output=True, text=True, timeout=60,
    )


def eventually(check, timeout: float = 2.5):
    """A list change must show within 2 seconds (plus a little for the request itself)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_eicar_is_answered_from_the_pattern_over_http_and_https(chain):
    _, appliance = chain
    results = files(appliance, EICAR_SHA256, EICAR_SHA1, EICAR_MD5)
    assert [r["verdict"] for r in results] == ["malicious"] * 3
    assert {r["threat"] for r in results} == {"EICAR-Test-File"}
    assert {r["source"] for r in results} == {"pattern"}
    assert results[0]["sha256"] == EICAR_SHA256 and results[2]["md5"] == EICAR_MD5

    ca = str(appliance.data_dir / "ca.pem")
    for host in ("localhost", "127.0.0.1"):
        url = f"https://{host}:{appliance.ports['https']}/v1/file/{EICAR_SHA256}"
        r = httpx.get(url, verify=ssl.create_default_context(cafile=ca))
        assert r.status_code == 200
        assert r.json()["results"][0]["source"] == "pattern"
    with pytest.raises(httpx.ConnectError):  # not trusted without the appliance CA
        httpx.get(f"https://localhost:{appliance.ports['https']}/healthz")


def test_unknown_item_is_relayed_once_then_cached(chain):
    cloud, appliance = chain
    known, threat = cloud_sample_hash()
    fresh = unknown_hash("relay")
    ca = str(cloud.data_dir / "ca.pem")
    cloud_metrics = f"https://localhost:{cloud.ports['https']}/metrics"
    tls = ssl.create_default_context(cafile=ca)
    before = metric(httpx.get(cloud_metrics, verify=tls).text, "rampart_items_total", service="file")

    first = files(appliance, known, fresh)
    assert first[0] == {**first[0], "verdict": "malicious", "threat": threat, "source": "cloud"}
    assert first[1]["verdict"] == "unknown" and first[1]["source"] == "cloud"
    again = files(appliance, known, fresh)
    assert [r["source"] for r in again] == ["cache", "cache"]
    assert again[0]["threat"] == threat and 0 < again[0]["ttl"] <= first[0]["ttl"]

    after = metric(httpx.get(cloud_metrics, verify=tls).text, "rampart_items_total", service="file")
    assert after - before == 2  # asked once for the two items, never again


def test_approved_and_blocked_lists_override_and_take_effect_while_running(chain):
    _, appliance = chain
    blocked = unknown_hash("blocked")
    assert lists(appliance, "add", "--blocked", blocked, "bad.example.test").returncode == 0
    assert lists(appliance, "add", "--approved", EICAR_SHA1).returncode == 0
    got = eventually(lambda: [r["source"] for r in files(appliance, blocked, EICAR_SHA1)]
                     == ["blocked-list", "approved-list"])
    assert got, "list changes must take effect in the running server within 2 s"
    r = files(appliance, blocked, EICAR_SHA1, EICAR_SHA256)
    assert r[0] == {**r[0], "verdict": "malicious", "source": "blocked-list", "matched": blocked}
    assert r[1] == {**r[1], "verdict": "clean", "source": "approved-list"}
    assert r[2]["source"] == "pattern"  # approving the SHA-1 does not approve other digests

    # Blocked wins over approved, even when both could match (a domain and its subdomain).
    assert lists(appliance, "add", "--approved", "good.bad.example.test").returncode == 0
    d = httpx.post(f"{base(appliance)}/v1/domain",
                   json={"items": ["x.good.bad.example.test"]}).json()["results"][0]
    assert eventually(lambda: httpx.post(
        f"{base(appliance)}/v1/domain", json={"items": ["x.good.bad.example.test"]}
    ).json()["results"][0]["source"] == "blocked-list")
    del d
    w = httpx.post(f"{base(appliance)}/v1/web",
                   json={"urls": ["http://www.bad.example.test/page"], "policy": "low"}).json()
    assert w["results"][0]["rating"] == "dangerous" and w["results"][0]["action"] == "block"

    shown = lists(appliance, "show")
    assert blocked in shown.stdout and "bad.example.test" in shown.stdout
    assert lists(appliance, "remove", blocked).returncode == 0
    assert eventually(lambda: files(appliance, blocked)[0]["source"] != "blocked-list")


def test_a_batch_mixing_every_source_is_answered_in_request_order(chain):
    _, appliance = chain
    known, _ = cloud_sample_hash()
    cached = unknown_hash("cached")
    files(appliance, cached)  # now in the cache
    blocked = unknown_hash("mix-blocked")
    assert lists(appliance, "add", "--blocked", blocked).returncode == 0
    approved = hashlib.md5(b"mix-approved").hexdigest()
    assert lists(appliance, "add", "--approved", approved).returncode == 0
    fresh = unknown_hash("mix-fresh")
    order = [EICAR_MD5, blocked, cached, approved, fresh, EICAR_SHA256]
    want = ["pattern", "blocked-list", "cache", "approved-list", "cloud", "pattern"]
    assert eventually(lambda: [r["source"] for r in files(appliance, *order)][:4] == want[:4])
    got = files(appliance, *order, known)
    assert [next(iter(r.values())) for r in got] == [*order, known]
    assert [r["source"] for r in got[:4]] == want[:4]
    assert got[4]["source"] in ("cloud", "cache")  # asked by the loop above
    assert got[6]["source"] in ("cloud", "cache") and got[6]["verdict"] == "malicious"


def test_web_and_domain_answers_come_from_pattern_and_cloud(chain):
    _, appliance = chain
    r = httpx.post(f"{base(appliance)}/v1/web", json={
        "urls": ["http://testsafebrowsing.appspot.com/s/malware.html",
                 "http://unknown-site.example.test/path"],
        "policy": "medium",
    }).json()["results"]
    assert r[0]["rating"] == "dangerous" and r[0]["source"] == "pattern" and r[0]["action"] == "block"
    assert r[0]["url"] == "http://testsafebrowsing.appspot.com/s/malware.html"
    assert r[1]["source"] == "cloud" and r[1]["rating"] == "untested" and r[1]["action"] == "allow"
    d = httpx.post(f"{base(appliance)}/v1/domain", json={"items": ["192.0.2.7", "2001:db8::1"]})
    assert d.status_code == 200 and [x.get("ip") for x in d.json()["results"]] == ["192.0.2.7",
                                                                                     "2001:db8::1"]
    assert d.json()["results"][0]["source"] == "pattern"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/file", b"{not json", 400, "bad_json"),
        ("POST", "/v1/file", b'{"items": [{"sha256": "abc"}]}', 400, "bad_hash"),
        ("POST", "/v1/file", b'{"items": [{"sha256": "' + b"z" * 64 + b'"}]}', 400, "bad_hash"),
        ("POST", "/v1/file", b'{"items": [{"crc32": "abcd"}]}', 400, "bad_item"),
        ("POST", "/v1/file", b'{"items": [' + b",".join([b'{"md5":"' + b"a" * 32 + b'"}'] * 1001)
         + b"]}", 413, "batch_too_large"),
        ("POST", "/v1/file", b'{"items": ["' + b"a" * (2 << 20) + b'"]}', 413, "body_too_large"),
        ("POST", "/v1/web", b'{"urls": ["http://x.test/' + b"a" * 5000 + b'"]}', 400, "url_too_long"),
        ("POST", "/v1/web", b'{"urls": ["http://x.test/"], "policy": "extreme"}', 400, "bad_policy"),
        ("POST", "/v1/domain", b'{"items": ["bad..name..' + b"x" * 300 + b'"]}', 400, "bad_domain"),
        ("GET", "/v1/file", b"", 405, "method_not_allowed"),
        ("DELETE", "/v1/web", b"", 405, "method_not_allowed"),
        ("GET", "/v2/anything", b"", 404, "not_found"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(chain, method, path, body, status,
                                                                 code):
    _, appliance = chain
    r = httpx.request(method, base(appliance) + path, content=body or None, timeout=15)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    if code == "bad_hash":
        assert err["item"] == 0
    assert files(appliance, EICAR_MD5)[0]["source"] == "pattern"


def test_health_readiness_and_metrics(chain):
    _, appliance = chain
    assert httpx.get(base(appliance) + "/healthz").json() == {"status": "alive"}
    ready = httpx.get(base(appliance) + "/readyz")
    assert ready.status_code == 200 and ready.json()["pattern"]["version"]
    assert ready.json()["cloud"][0]["state"] in ("closed", "half-open", "open")
    files(appliance, EICAR_SHA256)
    text = httpx.get(base(appliance) + "/metrics").text
    assert metric(text, "rampart_items_total", service="file", source="pattern") >= 1
    for name in ("rampart_relay_latency_seconds_bucket", "rampart_cache_entries",
                 "rampart_pattern_age_seconds", "rampart_pattern_info"):
        assert name in text
    assert re.search(r'rampart_relay_requests_total\{endpoint="[^"]+",outcome="ok"\}', text)


def test_cloud_down_makes_only_unanswered_items_degraded(tmp_path):
    cloud = start_cloud(tmp_path)
    appliance = start_appliance(tmp_path, cloud)
    try:
        cached = unknown_hash("before")
        assert files(appliance, cached)[0]["source"] == "cloud"
        cloud.stop()
        fresh = unknown_hash("after")
        r = files(appliance, EICAR_SHA256, fresh, cached)
        assert r[0]["source"] == "pattern" and r[0]["verdict"] == "malicious"
        assert r[1] == {**r[1], "verdict": "unknown", "source": "degraded"} and r[1]["retry_after"] > 0
        assert r[2]["source"] == "cache"
        w = httpx.post(f"{base(appliance)}/v1/web", json={"urls": ["http://new.example.test/"]})
        assert w.status_code == 200 and w.json()["results"][0]["source"] == "degraded"
    finally:
        appliance.stop()
        cloud.stop()


def test_zero_config_serve_refuses_a_bad_config_naming_the_key(tmp_path):
    bad = tmp_path / "rampart.toml"
    bad.write_text("query_port = 70000\n")
    r = subprocess.run([*RAMPART, "serve", "--config", str(bad), "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "query_port" in r.stderr


def test_an_unusable_data_directory_is_refused_with_its_name(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory should be")
    r = subprocess.run([*RAMPART, "serve", "--data-dir", str(blocker / "data"), "--query-port",
                        str(free_port()), "--query-tls-port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "cannot use" in r.stderr and "not-a-dir" in r.stderr and "Traceback" not in r.stderr


def test_rate_limit_and_client_networks_from_flags_and_config(tmp_path):
    cfg = tmp_path / "rampart.toml"
    cfg.write_text("rate_burst = 3\n")
    appliance = start_appliance(tmp_path, None, "--config", str(cfg), "--rate-limit", "1")
    try:
        with httpx.Client(base_url=base(appliance)) as client:
            codes = [client.get(f"/v1/file/{EICAR_MD5}").status_code for _ in range(8)]
            assert codes[0] == 200 and 429 in codes
            limited = client.get(f"/v1/file/{EICAR_MD5}")
            assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    finally:
        appliance.stop()
    blocked = subprocess.run(
        [*RAMPART, "serve", "--data-dir", str(tmp_path / "other"), "--query-client", "not-a-network"],
        capture_output=True, text=True, timeout=60)
    assert blocked.returncode == 2 and "query_clients" in blocked.stderr
