"""Unit tests: what an answer's results become as query-log rows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.logs.clients import truncate
from proxy.logs.entries import (
    MAX_ITEM,
    Answers,
    origin_of,
    service_of,
    template,
    templates,
    url_item,
)


@pytest.mark.parametrize(("url", "kept"), [
    ("http://example.test/a/b?token=secret#frag", "http://example.test/a/b"),
    ("https://user:password@example.test:8443/x", "https://example.test:8443/x"),
    ("example.test/path?q=1", "example.test/path"),
    ("http://[2001:db8::1/x?y", "http://[2001:db8::1/x"),  # urlsplit refuses it; still no query
])
def test_a_url_is_kept_without_secrets(url: str, kept: str) -> None:
    assert url_item(url) == kept


def test_an_item_is_bounded_and_one_line() -> None:
    assert len(url_item("http://example.test/" + "a" * 5000)) == MAX_ITEM
    (row,) = templates("domain", json.dumps({"results": [
        {"domain": "x\ny" + "z" * 1000, "rating": "safe", "source": "pattern",
         "matched": "m" * 1000}]}).encode())
    assert "\n" not in row[1] and len(row[1]) == MAX_ITEM
    assert len(row[6]) == 200


@pytest.mark.parametrize(("service", "source", "rating", "matched", "origin"), [
    ("file", "blocked-list", "malicious", "", "blocked-list"),
    ("web", "approved-list", "safe", "example.test", "approved-list"),
    ("file", "pattern", "malicious", "", "smart-scan"),
    ("web", "pattern", "dangerous", "example.test/bad/", "web-blocking"),
    ("web", "pattern", "safe", "example.test/", "web-blocking"),
    ("web", "pattern", "suspicious", "example.test/free/", "suspicious-urls"),
    ("web", "pattern", "untested", "short.example.test/", "suspicious-urls"),
    ("web", "pattern", "dangerous", "malware.example.test", "domain-ip"),
    ("web", "pattern", "suspicious", "192.0.2.0/24", "domain-ip"),
    ("domain", "pattern", "dangerous", "malware.example.test", "domain-ip"),
    ("web", "cloud", "dangerous", "", "cloud"),
    ("file", "cache", "malicious", "", "cloud"),
    ("file", "local", "unknown", "", "local"),
    ("web", "degraded", "untested", "", "degraded"),
])
def test_origin(service: str, source: str, rating: str, matched: str, origin: str) -> None:
    assert origin_of(service, source, rating, matched) == origin


@pytest.mark.parametrize(("result", "blocked"), [
    ({"sha256": "ab", "verdict": "malicious", "source": "pattern"}, 1),
    ({"sha256": "ab", "verdict": "suspicious", "source": "pattern"}, 0),
    ({"url": "http://x/", "rating": "highly_suspicious", "source": "pattern"}, 1),
    ({"url": "http://x/", "rating": "highly_suspicious", "source": "pattern", "action": "allow"}, 0),
    ({"url": "http://x/", "rating": "untested", "source": "degraded", "action": "block"}, 1),
    ({"domain": "x", "rating": "suspicious", "source": "pattern"}, 0),
])
def test_blocked(result: dict[str, str], blocked: int) -> None:
    found = template("web", result)
    assert found is not None and found[-1] == blocked


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"results": 5}', b'{"results": [1, "x"]}'])
def test_a_body_that_is_not_an_answer_gives_no_rows(body: bytes) -> None:
    assert templates("file", body) == []


def test_an_answer_repeated_as_the_same_object_is_read_once() -> None:
    answers = Answers("full")
    body = json.dumps({"results": [{"md5": "44" * 16, "verdict": "clean", "source": "pattern"}]})
    raw = body.encode()
    first = answers.rows(1.0, "192.0.2.1", b"/v1/file/" + b"44" * 16, raw, 0.001)
    again = answers.rows(2.0, "192.0.2.2", b"/v1/nothing-read-again", raw, 0.002)
    assert first[0][3:] == again[0][3:]
    assert again[0][:3] == (2.0, "192.0.2.2", 2.0)


@pytest.mark.parametrize(("client", "network"), [
    ("10.1.2.3", "10.1.2.0/24"), ("fe80::1%eth0", "fe80::/48"), ("[2001:db8::1]", "2001:db8::/48"),
    ("", ""), ("unix", ""),
])
def test_truncate(client: str, network: str) -> None:
    assert truncate(client) == network


@pytest.mark.parametrize(("target", "body"), [
    ("GET", f"/v1/file/{'ab' * 32}"),
    ("GET", "/v1/file/44d88612fea8a8f36de82e1278abb02f"),
    ("GET", "/v1/web?url=http://testsafebrowsing.appspot.com/s/malware.html?q=1"),
    ("GET", "/v1/web?url=http://example.test/a%22b%5Cc"),
    ("GET", "/v1/domain/malware.example.test"),
    ("GET", "/v1/domain/192.0.2.7"),
    ("POST /v1/file", {"items": [{"md5": "44d88612fea8a8f36de82e1278abb02f"}]}),
    ("POST /v1/web", {"urls": ["http://downloads.example.test/free/x"], "policy": "high"}),
    ("POST /v1/inspect", {"url": "http://x.example.test/"}),
])
def test_the_quick_reading_of_one_result_matches_the_full_one(
        ask: Any, target: str, body: Any) -> None:
    method, _, path = target.partition(" ") if target.startswith("POST") else ("GET", "", body)
    request, response = ask(method, path, body if method == "POST" else None)
    assert response.status == 200
    answers = Answers("full")
    quick = answers.rows(1.0, "c", request.target, response.body, 0.001)
    again = Answers("full").rows(1.0, "c", request.target, bytes(response.body), 0.001)  # no memo
    service = service_of(request.target)
    assert service is not None
    full = [(1.0, "c", 1.0, 1, *t) for t in templates(service, response.body)]
    assert quick == again == full
    assert len(full) == 1
    full_only = service == "inspect" or b"\\" in response.body  # both read in full
    assert (Answers("full")._single(service, response.body) is None) == full_only
