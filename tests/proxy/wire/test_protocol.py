"""Wire protocol v1 (docs/protocol.md): parsing requests, rendering answers, reading cloud results."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from typing import Any

import pytest

from proxy.errors import ProtocolError
from proxy.model import (
    DomainQuery,
    FileAnswer,
    FileQuery,
    HashKind,
    InspectAnswer,
    Policy,
    Rating,
    Service,
    Source,
    Verdict,
    WebAnswer,
)
from proxy.relay import upstream
from proxy.wire import protocol, replies

LIMITS = protocol.Limits()
MD5 = hashlib.md5(b"x").hexdigest()
SHA1 = hashlib.sha1(b"x").hexdigest()
SHA256 = hashlib.sha256(b"x").hexdigest()


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def refused(parse: Any, raw: bytes, limits: protocol.Limits = LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(raw, limits)
    return info.value


# ---------------------------------------------------------------- file requests


@pytest.mark.parametrize(
    "items, expected",
    [
        ([{"sha256": SHA256}], [(HashKind.SHA256, SHA256)]),
        ([{"sha1": SHA1}], [(HashKind.SHA1, SHA1)]),
        ([{"md5": MD5}], [(HashKind.MD5, MD5)]),
        (
            [{"md5": MD5}, {"sha256": SHA256}, {"sha1": SHA1}, {"md5": MD5}],
            [(HashKind.MD5, MD5), (HashKind.SHA256, SHA256), (HashKind.SHA1, SHA1), (HashKind.MD5, MD5)],
        ),
        # upper case is accepted and read as the same digest
        ([{"sha256": SHA256.upper()}], [(HashKind.SHA256, SHA256)]),
        # a digest ending in NUL bytes keeps them
        ([{"sha256": "ab" * 30 + "0000"}], [(HashKind.SHA256, "ab" * 30 + "0000")]),
    ],
)
def test_parse_file_request_good(items: list[dict[str, str]], expected: list[tuple[HashKind, str]]) -> None:
    queries = protocol.parse_file_request(body({"items": items}), LIMITS).queries()
    assert [(q.kind, q.hex) for q in queries] == expected
    assert all(len(q.digest) == q.kind.size for q in queries)


@pytest.mark.parametrize(
    "raw, code, status, item",
    [
        (b"not json", "bad_json", 400, None),
        (b"\xff\xfe{}", "bad_json", 400, None),
        (b"", "bad_json", 400, None),
        # nested too deeply: still a 400, not a crash
        pytest.param(b"[" * 100_000, "bad_json", 400, None, id="deeply-nested"),
        (body([{"sha256": SHA256}]), "bad_request", 400, None),
        (body("items"), "bad_request", 400, None),
        (body({}), "bad_request", 400, None),
        (body({"hashes": [{"sha256": SHA256}]}), "bad_request", 400, None),
        (body({"items": []}), "bad_request", 400, None),
        (body({"items": {"sha256": SHA256}}), "bad_request", 400, None),
        (body({"items": SHA256}), "bad_request", 400, None),
        (body({"items": None}), "bad_request", 400, None),
        (body({"items": [SHA256]}), "bad_item", 400, 0),
        (body({"items": [{"sha256": SHA256}, [SHA256]]}), "bad_item", 400, 1),
        (body({"items": [{"sha256": SHA256}, {"sha256": SHA256}, None]}), "bad_item", 400, 2),
        (body({"items": [{}]}), "bad_item", 400, 0),
        (body({"items": [{"sha256": SHA256, "md5": MD5}]}), "bad_item", 400, 0),
        (body({"items": [{"md5": MD5}, {"sha512": "ab" * 64}]}), "bad_item", 400, 1),
        (body({"items": [{"SHA256": SHA256}]}), "bad_item", 400, 0),
        # wrong length for the named kind, including another kind's length
        (body({"items": [{"sha256": SHA256[:-1]}]}), "bad_hash", 400, 0),
        (body({"items": [{"sha256": SHA1}]}), "bad_hash", 400, 0),
        (body({"items": [{"md5": SHA256}]}), "bad_hash", 400, 0),
        (body({"items": [{"sha1": MD5 + "0"}]}), "bad_hash", 400, 0),
        (body({"items": [{"md5": ""}]}), "bad_hash", 400, 0),
        # right length, not hex
        (body({"items": [{"md5": MD5}, {"sha256": "g" * 64}]}), "bad_hash", 400, 1),
        (body({"items": [{"sha1": "0x" + SHA1[2:]}]}), "bad_hash", 400, 0),
        (body({"items": [{"md5": "é" * 32}]}), "bad_hash", 400, 0),
        # right length with spaces: bytes.fromhex would skip them
        (body({"items": [{"sha256": "ab " * 21 + "c"}]}), "bad_hash", 400, 0),
        (body({"items": [{"md5": " " + MD5[1:]}]}), "bad_hash", 400, 0),
        (body({"items": [{"sha1": SHA1[:38] + "\t\n"}]}), "bad_hash", 400, 0),
        # not a string
        (body({"items": [{"sha256": 12345}]}), "bad_hash", 400, 0),
        (body({"items": [{"md5": None}]}), "bad_hash", 400, 0),
        (body({"items": [{"md5": [MD5]}]}), "bad_hash", 400, 0),
    ],
)
def test_parse_file_request_refused(raw: bytes, code: str, status: int, item: int | None) -> None:
    e = refused(protocol.parse_file_request, raw)
    assert (e.code, e.status, e.item) == (code, status, item)
    assert e.message


def test_parse_file_request_batch_limit() -> None:
    limits = protocol.Limits(max_batch=3)
    assert len(protocol.parse_file_request(body({"items": [{"md5": MD5}] * 3}), limits)) == 3
    e = refused(protocol.parse_file_request, body({"items": [{"md5": MD5}] * 4}), limits)
    assert (e.code, e.status, e.item) == ("batch_too_large", 413, None)
    assert "4" in e.message and "3" in e.message


def test_parse_file_request_default_batch_is_1000() -> None:
    assert len(protocol.parse_file_request(body({"items": [{"md5": MD5}] * 1000}), LIMITS)) == 1000
    e = refused(protocol.parse_file_request, body({"items": [{"md5": MD5}] * 1001}))
    assert e.status == 413


def test_bad_hash_message_names_the_hash_and_is_clipped() -> None:
    e = refused(protocol.parse_file_request, body({"items": [{"sha256": "z" * 64}]}))
    assert "z" * 20 in e.message
    e = refused(protocol.parse_file_request, body({"items": [{"sha256": "a" * 5000}]}))
    assert len(e.message) < 300


@pytest.mark.parametrize(
    "text, kind, expected_kind",
    [
        (MD5, None, HashKind.MD5),
        (SHA1, None, HashKind.SHA1),
        (SHA256, None, HashKind.SHA256),
        (SHA256, HashKind.SHA256, HashKind.SHA256),
    ],
)
def test_parse_hash_kind_by_length(text: str, kind: HashKind | None, expected_kind: HashKind) -> None:
    q = protocol.parse_hash(text, kind)
    assert q == FileQuery(expected_kind, bytes.fromhex(text))


@pytest.mark.parametrize(
    "text, kind",
    [
        ("abc", None),
        ("a" * 63, None),
        (MD5, HashKind.SHA1),
        (SHA256, HashKind.MD5),
        (None, None),
        (b"ab", None),
    ],
)
def test_parse_hash_refused(text: object, kind: HashKind | None) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_hash(text, kind, item=7)
    assert (info.value.code, info.value.item) == ("bad_hash", 7)


# ---------------------------------------------------------------- web requests


@pytest.mark.parametrize(
    "policy, expected",
    [(None, None), ("low", Policy.LOW), ("medium", Policy.MEDIUM), ("high", Policy.HIGH)],
)
def test_parse_web_request_policy(policy: str | None, expected: Policy | None) -> None:
    doc: dict[str, Any] = {"urls": ["http://example.test/x"]}
    if policy is not None:
        doc["policy"] = policy
    queries, got = protocol.parse_web_request(body(doc), LIMITS)
    assert got is expected
    assert [q.url for q in queries] == ["http://example.test/x"]


@pytest.mark.parametrize("policy", ["HIGH", "strict", "", 1, True, ["low"], {"level": "low"}])
def test_parse_web_request_bad_policy(policy: object) -> None:
    e = refused(protocol.parse_web_request, body({"urls": ["http://a.test/"], "policy": policy}))
    assert (e.code, e.status) == ("bad_policy", 400)


def test_parse_web_request_echoes_and_canonicalizes_in_order() -> None:
    urls = ["http://EXAMPLE.test/a/../b", "example.test", "https://x.test:8443/p?q=1"]
    queries, _ = protocol.parse_web_request(body({"urls": urls}), LIMITS)
    assert [q.url for q in queries] == urls
    assert queries[0].canonical == "http://example.test/b"
    assert [q.host for q in queries] == ["example.test", "example.test", "x.test"]


@pytest.mark.parametrize(
    "doc, code, status, item",
    [
        ({"urls": []}, "bad_request", 400, None),
        ({"urls": "http://a.test/"}, "bad_request", 400, None),
        ({"url": ["http://a.test/"]}, "bad_request", 400, None),
        ({"urls": ["http://a.test/", 5]}, "bad_url", 400, 1),
        ({"urls": [None]}, "bad_url", 400, 0),
        ({"urls": [{"url": "http://a.test/"}]}, "bad_url", 400, 0),
        ({"urls": ["http://a.test/", "http://a.test/", ""]}, "bad_url", 400, 2),
        ({"urls": ["http://a.test/", "http://b.test/" + "x" * 5000]}, "url_too_long", 400, 1),
        ({"urls": ["http://a.test/"] * 1001}, "batch_too_large", 413, None),
    ],
)
def test_parse_web_request_refused(doc: Any, code: str, status: int, item: int | None) -> None:
    e = refused(protocol.parse_web_request, body(doc))
    assert (e.code, e.status, e.item) == (code, status, item)


def test_url_length_limit_is_configurable() -> None:
    limits = protocol.Limits(max_url=100)
    ok = "http://a.test/" + "x" * 86
    assert len(ok) == 100
    protocol.parse_web_request(body({"urls": [ok]}), limits)
    e = refused(protocol.parse_web_request, body({"urls": [ok + "x"]}), limits)
    assert (e.code, e.item) == ("url_too_long", 0)
    assert "101" in e.message and "100" in e.message


# ---------------------------------------------------------------- domain requests


@pytest.mark.parametrize(
    "item, name, ip, key",
    [
        ("example.com", "example.com", None, "domain"),
        ("Example.COM.", "example.com", None, "domain"),
        ("a.b-c.example_x.test", "a.b-c.example_x.test", None, "domain"),
        ("bücher.example", "xn--bcher-kva.example", None, "domain"),
        ("192.0.2.7", "192.0.2.7", ipaddress.ip_address("192.0.2.7"), "ip"),
        ("2001:db8::1", "2001:db8::1", ipaddress.ip_address("2001:db8::1"), "ip"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1", ipaddress.ip_address("2001:db8::1"), "ip"),
        ("[::1]", "::1", ipaddress.ip_address("::1"), "ip"),
    ],
)
def test_parse_domain_request_good(item: str, name: str, ip: object, key: str) -> None:
    (q,) = protocol.parse_domain_request(body({"items": [item]}), LIMITS)
    assert q == DomainQuery(item, name, ip)  # type: ignore[arg-type]
    assert q.key == key


@pytest.mark.parametrize(
    "items, index",
    [
        (["example.com", ""], 1),
        (["exa mple.com"], 0),
        (["a..b.example"], 0),
        (["*.example.com"], 0),
        (["example.com/path"], 0),
        (["a" * 64 + ".example"], 0),
        (["a." * 130 + "example"], 0),
        (["ok.example", "ok.example", 7], 2),
        ([None], 0),
        ([["example.com"]], 0),
    ],
)
def test_parse_domain_request_refused(items: list[Any], index: int) -> None:
    e = refused(protocol.parse_domain_request, body({"items": items}))
    assert (e.code, e.status, e.item) == ("bad_domain", 400, index)


def test_parse_domain_request_keeps_order_and_batch_limit() -> None:
    items = ["b.example", "10.0.0.1", "a.example", "::2"]
    assert [q.item for q in protocol.parse_domain_request(body({"items": items}), LIMITS)] == items
    e = refused(protocol.parse_domain_request, body({"items": items}), protocol.Limits(max_batch=3))
    assert (e.code, e.status) == ("batch_too_large", 413)


# ---------------------------------------------------------------- inspect requests


def test_parse_inspect_request_good() -> None:
    content = base64.b64encode(b"<html>hello</html>").decode()
    q = protocol.parse_inspect_request(body({"url": "http://a.test/p", "content": content}), LIMITS)
    assert q.url == "http://a.test/p"
    assert json.loads(q.body) == {"url": "http://a.test/p", "content": content}
    assert q.digest == hashlib.sha256(q.body).hexdigest()


def test_inspect_digest_is_stable_regardless_of_key_order() -> None:
    a = b'{"url": "http://a.test/", "content": "aGk=", "meta": {"x": 1, "y": [1, 2]}}'
    b = b'{"meta":{"y":[1,2],"x":1},"content":"aGk=","url":"http://a.test/"}'
    qa = protocol.parse_inspect_request(a, LIMITS)
    qb = protocol.parse_inspect_request(b, LIMITS)
    assert qa.digest == qb.digest and qa.body == qb.body
    qc = protocol.parse_inspect_request(b.replace(b"aGk=", b"aGo="), LIMITS)
    assert qc.digest != qa.digest


@pytest.mark.parametrize(
    "doc, code, status",
    [
        ({}, "bad_url", 400),
        ({"url": 5}, "bad_url", 400),
        ({"url": "http://a.test/" + "x" * 5000}, "url_too_long", 400),
        ({"url": "http://a.test/", "content": 5}, "bad_content", 400),
        ({"url": "http://a.test/", "content": ["aGk="]}, "bad_content", 400),
        ({"url": "http://a.test/", "content": "not base64!"}, "bad_content", 400),
        ({"url": "http://a.test/", "content": "aGk"}, "bad_content", 400),  # bad padding
        ({"url": "http://a.test/", "content": "aG k="}, "bad_content", 400),
    ],
)
def test_parse_inspect_request_refused(doc: Any, code: str, status: int) -> None:
    e = refused(protocol.parse_inspect_request, body(doc))
    assert (e.code, e.status) == (code, status)


@pytest.mark.parametrize(
    "size, ok",
    # 301 and 302 bytes encode to no more characters than a loose bound on 300 would allow
    [(0, True), (1, True), (299, True), (300, True), (301, False), (302, False), (1000, False)],
)
def test_inspect_content_size_limit(size: int, ok: bool) -> None:
    limits = protocol.Limits(max_inspect_content=300)
    raw = body({"url": "http://a.test/", "content": base64.b64encode(b"\0" * size).decode()})
    if ok:
        protocol.parse_inspect_request(raw, limits)
    else:
        e = refused(protocol.parse_inspect_request, raw, limits)
        assert (e.code, e.status) == ("content_too_large", 413)


# ---------------------------------------------------------------- rendering


def rendered(raw: bytes) -> dict[str, Any]:
    doc = json.loads(raw)
    assert isinstance(doc, dict)
    return doc


def test_render_files_matches_design() -> None:
    qs = [
        protocol.parse_hash(SHA256),
        protocol.parse_hash(MD5),
        protocol.parse_hash(SHA1),
        protocol.parse_hash(SHA256),
    ]
    answers = [
        FileAnswer(Verdict.MALICIOUS, Source.PATTERN, threat="EICAR-Test-File", ttl=3600),
        FileAnswer(Verdict.CLEAN, Source.APPROVED_LIST, ttl=900, matched="approved md5"),
        FileAnswer(Verdict.SUSPICIOUS, Source.CLOUD, threat="Heur.Gen", ttl=60),
        FileAnswer(Verdict.UNKNOWN, Source.DEGRADED, retry_after=60),
    ]
    doc = rendered(replies.render_files("2026112213", qs, answers))
    assert doc == {
        "protocol": 1,
        "pattern": "2026112213",
        "results": [
            {
                "sha256": SHA256,
                "verdict": "malicious",
                "threat": "EICAR-Test-File",
                "source": "pattern",
                "ttl": 3600,
            },
            {
                "md5": MD5,
                "verdict": "clean",
                "matched": "approved md5",
                "source": "approved-list",
                "ttl": 900,
            },
            {"sha1": SHA1, "verdict": "suspicious", "threat": "Heur.Gen", "source": "cloud", "ttl": 60},
            {"sha256": SHA256, "verdict": "unknown", "source": "degraded", "retry_after": 60},
        ],
    }


def test_render_files_hex_is_lower_case_as_digest() -> None:
    q = protocol.parse_hash(SHA256.upper())
    doc = rendered(replies.render_files("v", [q], [FileAnswer(Verdict.CLEAN, Source.CACHE, ttl=5)]))
    assert doc["results"][0]["sha256"] == SHA256


@pytest.mark.parametrize(
    "policy, rating, action",
    [
        (Policy.LOW, Rating.DANGEROUS, "block"),
        (Policy.LOW, Rating.HIGHLY_SUSPICIOUS, "allow"),
        (Policy.LOW, Rating.SUSPICIOUS, "allow"),
        (Policy.LOW, Rating.UNTESTED, "allow"),
        (Policy.LOW, Rating.SAFE, "allow"),
        (Policy.MEDIUM, Rating.DANGEROUS, "block"),
        (Policy.MEDIUM, Rating.HIGHLY_SUSPICIOUS, "block"),
        (Policy.MEDIUM, Rating.SUSPICIOUS, "allow"),
        (Policy.MEDIUM, Rating.UNTESTED, "allow"),
        (Policy.MEDIUM, Rating.SAFE, "allow"),
        (Policy.HIGH, Rating.DANGEROUS, "block"),
        (Policy.HIGH, Rating.HIGHLY_SUSPICIOUS, "block"),
        (Policy.HIGH, Rating.SUSPICIOUS, "block"),
        (Policy.HIGH, Rating.UNTESTED, "block"),
        (Policy.HIGH, Rating.SAFE, "allow"),
        (None, Rating.DANGEROUS, None),
        (None, Rating.SAFE, None),
    ],
)
def test_render_web_action_by_policy(policy: Policy | None, rating: Rating, action: str | None) -> None:
    (q,), _ = protocol.parse_web_request(body({"urls": ["http://a.test/x"]}), LIMITS)
    answer = WebAnswer(rating, Source.PATTERN, score=rating.default_score, ttl=900)
    (result,) = rendered(replies.render_web("v", [q], [answer], policy))["results"]
    assert result.get("action") == action
    assert ("action" in result) is (policy is not None)


def test_render_web_matches_design() -> None:
    urls = ["http://example.test/x", "https://safe.test/", "http://down.test/"]
    qs, policy = protocol.parse_web_request(body({"urls": urls, "policy": "medium"}), LIMITS)
    answers = [
        WebAnswer(
            Rating.DANGEROUS,
            Source.BLOCKED_LIST,
            score=91,
            category="malware",
            ttl=900,
            matched="example.test/x",
        ),
        WebAnswer(Rating.SAFE, Source.CACHE, score=5, category="news", ttl=12),
        WebAnswer(Rating.UNTESTED, Source.DEGRADED, score=50, retry_after=60),
    ]
    doc = rendered(replies.render_web("2026112213", qs, answers, policy))
    assert doc == {
        "protocol": 1,
        "pattern": "2026112213",
        "results": [
            {
                "url": "http://example.test/x",
                "rating": "dangerous",
                "category": "malware",
                "score": 91,
                "action": "block",
                "matched": "example.test/x",
                "source": "blocked-list",
                "ttl": 900,
            },
            {
                "url": "https://safe.test/",
                "rating": "safe",
                "category": "news",
                "score": 5,
                "action": "allow",
                "source": "cache",
                "ttl": 12,
            },
            {
                "url": "http://down.test/",
                "rating": "untested",
                "score": 50,
                "action": "allow",
                "source": "degraded",
                "retry_after": 60,
            },
        ],
    }


def test_render_web_echoes_the_url_as_sent() -> None:
    sent = 'http://a.test/"quoted"\\path?ü=1'
    qs, _ = protocol.parse_web_request(body({"urls": [sent]}), LIMITS)
    doc = rendered(replies.render_web("v", qs, [WebAnswer(Rating.SAFE, Source.CLOUD, 5)], None))
    assert doc["results"][0]["url"] == sent


def test_render_domains_matches_design() -> None:
    items = ["Bad.Example", "192.0.2.7", "2001:db8::1"]
    qs = protocol.parse_domain_request(body({"items": items}), LIMITS)
    answers = [
        WebAnswer(Rating.DANGEROUS, Source.PATTERN, score=95, category="phishing", ttl=3600),
        WebAnswer(Rating.SUSPICIOUS, Source.CLOUD, score=55, ttl=300),
        WebAnswer(Rating.SAFE, Source.APPROVED_LIST, score=5, matched="2001:db8::/32", ttl=3600),
    ]
    doc = rendered(replies.render_domains("p1", qs, answers))
    assert doc == {
        "protocol": 1,
        "pattern": "p1",
        "results": [
            {
                "domain": "Bad.Example",
                "rating": "dangerous",
                "score": 95,
                "category": "phishing",
                "source": "pattern",
                "ttl": 3600,
            },
            {"ip": "192.0.2.7", "rating": "suspicious", "score": 55, "source": "cloud", "ttl": 300},
            {
                "ip": "2001:db8::1",
                "rating": "safe",
                "score": 5,
                "matched": "2001:db8::/32",
                "source": "approved-list",
                "ttl": 3600,
            },
        ],
    }


def test_render_preserves_request_order_with_many_items() -> None:
    qs = [protocol.parse_hash(hashlib.sha256(str(i).encode()).hexdigest()) for i in range(300)]
    answers = [
        FileAnswer(Verdict.MALICIOUS if i % 3 == 0 else Verdict.CLEAN, Source.PATTERN, ttl=i)
        for i in range(300)
    ]
    results = rendered(replies.render_files("v", qs, answers))["results"]
    assert [r["sha256"] for r in results] == [q.hex for q in qs]
    assert [r["ttl"] for r in results] == list(range(300))
    assert [r["verdict"] for r in results] == [a.verdict.value for a in answers]


@pytest.mark.parametrize(
    "text",
    [
        'Troj"an\\Gen',
        "Würm.ünicode-名前",
        "tab\tnew\nline\r\x00\x1f",
        "emoji 🦠 \u2028\u2029",
        "</script><script>",
        "",
    ],
)
def test_render_escapes_odd_strings(text: str) -> None:
    fq = protocol.parse_hash(MD5)
    fa = FileAnswer(Verdict.MALICIOUS, Source.CLOUD, threat=text, matched=text, ttl=1)
    raw = replies.render_files(text, [fq], [fa])
    assert raw.isascii()  # escaped, never raw bytes of another encoding
    doc = rendered(raw)
    assert doc["pattern"] == text
    assert doc["results"][0]["threat"] == text
    assert doc["results"][0]["matched"] == text
    wq = protocol.parse_url("http://a.test/", LIMITS)
    wa = WebAnswer(Rating.SUSPICIOUS, Source.CLOUD, score=60, category=text, matched=text)
    (w,) = rendered(replies.render_web("v", [wq], [wa], Policy.HIGH))["results"]
    assert (w["category"], w["matched"], w["action"]) == (text, text, "block")


def test_render_same_answer_for_different_subjects() -> None:
    # answers are memoised by value; the subject must still be each item's own
    a = FileAnswer(Verdict.CLEAN, Source.PATTERN, ttl=10)
    qs = [protocol.parse_hash(MD5), protocol.parse_hash(SHA1)]
    results = rendered(replies.render_files("v", qs, [a, a]))["results"]
    assert results == [
        {"md5": MD5, "verdict": "clean", "source": "pattern", "ttl": 10},
        {"sha1": SHA1, "verdict": "clean", "source": "pattern", "ttl": 10},
    ]
    # a file answer and a web answer never share a rendering
    w = WebAnswer(Rating.SAFE, Source.PATTERN, score=5, ttl=10)
    (r,) = rendered(replies.render_domains("v", [DomainQuery("a.test", "a.test")], [w]))["results"]
    assert r == {"domain": "a.test", "rating": "safe", "score": 5, "source": "pattern", "ttl": 10}


def test_render_inspect() -> None:
    q = protocol.parse_inspect_request(body({"url": "http://a.test/p", "content": "aGk="}), LIMITS)
    a = replies.inspect_answer_from_result(
        {
            "verdict": "malicious",
            "url": "http://spoof.test/",
            "source": "pattern",
            "ttl": 30,
            "retry_after": 5,
            "detail": {"engine": "x"},
        },
        Source.CLOUD,
    )
    doc = rendered(replies.render_inspect("v9", q, a))
    assert doc == {
        "protocol": 1,
        "pattern": "v9",
        "results": [
            {
                "verdict": "malicious",
                "detail": {"engine": "x"},
                "url": "http://a.test/p",
                "source": "cloud",
                "ttl": 30,
            }
        ],
    }
    degraded = InspectAnswer(b"", Source.DEGRADED, retry_after=60)
    doc = rendered(replies.render_inspect("v9", q, degraded))
    assert doc["results"] == [{"url": "http://a.test/p", "source": "degraded", "retry_after": 60}]


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            ProtocolError("bad_hash", "hash 'x' is bad", item=3),
            {"error": {"code": "bad_hash", "message": "hash 'x' is bad", "item": 3}},
        ),
        (
            ProtocolError("bad_item", "first", item=0),
            {"error": {"code": "bad_item", "message": "first", "item": 0}},
        ),
        (
            ProtocolError("bad_json", 'not "JSON" – ü'),
            {"error": {"code": "bad_json", "message": 'not "JSON" – ü'}},
        ),
        (
            ProtocolError("batch_too_large", "too many", status=413),
            {"error": {"code": "batch_too_large", "message": "too many"}},
        ),
    ],
)
def test_render_error(error: ProtocolError, expected: dict[str, Any]) -> None:
    assert json.loads(replies.render_error(error)) == expected


def test_render_error_of_a_real_refusal() -> None:
    e = refused(protocol.parse_file_request, body({"items": [{"md5": MD5}, {"md5": "zz"}]}))
    doc = json.loads(replies.render_error(e))
    assert doc["error"]["code"] == "bad_hash" and doc["error"]["item"] == 1
    assert "zz" in doc["error"]["message"]


def test_render_request_round_trips_through_the_parser() -> None:
    _, raw = upstream.render_request(Service.FILE, [upstream.encode({"sha256": SHA256}),
                                                    upstream.encode({"md5": MD5})])
    assert [q.hex for q in protocol.parse_file_request(raw, LIMITS).queries()] == [SHA256, MD5]


# ---------------------------------------------------------------- cloud results


@pytest.mark.parametrize(
    "result, expected",
    [
        (
            {"verdict": "malicious", "threat": "EICAR", "ttl": 3600},
            FileAnswer(Verdict.MALICIOUS, Source.CLOUD, threat="EICAR", ttl=3600),
        ),
        ({"verdict": "clean"}, FileAnswer(Verdict.CLEAN, Source.CLOUD)),
        (
            {"verdict": "unknown", "ttl": 0, "source": "pattern"},
            FileAnswer(Verdict.UNKNOWN, Source.CLOUD, ttl=0),
        ),
        (
            {"verdict": "suspicious", "matched": "x" * 200, "sha256": SHA256, "extra": [1]},
            FileAnswer(Verdict.SUSPICIOUS, Source.CLOUD, matched="x" * 200),
        ),
        (
            {"verdict": "clean", "threat": None, "ttl": 7 * 86400},
            FileAnswer(Verdict.CLEAN, Source.CLOUD, ttl=7 * 86400),
        ),
    ],
)
def test_file_answer_from_result_good(result: dict[str, Any], expected: FileAnswer) -> None:
    assert replies.file_answer_from_result(result, Source.CLOUD) == expected


@pytest.mark.parametrize(
    "result",
    [
        {},
        {"verdict": "evil"},
        {"verdict": "MALICIOUS"},
        {"verdict": None},
        {"verdict": 1},
        {"verdict": ["malicious"]},
        {"verdict": {"v": 1}},
        {"verdict": "malicious", "threat": "x" * 201},
        {"verdict": "malicious", "threat": 5},
        {"verdict": "malicious", "threat": ["EICAR"]},
        {"verdict": "malicious", "matched": "m" * 10_000},
        {"verdict": "clean", "ttl": -1},
        {"verdict": "clean", "ttl": 7 * 86400 + 1},
        {"verdict": "clean", "ttl": "60"},
        {"verdict": "clean", "ttl": 60.0},
        {"verdict": "clean", "ttl": True},
    ],
)
def test_file_answer_from_result_bad(result: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replies.file_answer_from_result(result, Source.CLOUD)


@pytest.mark.parametrize(
    "result, expected",
    [
        (
            {"rating": "dangerous", "score": 91, "category": "malware", "ttl": 900},
            WebAnswer(Rating.DANGEROUS, Source.CLOUD, score=91, category="malware", ttl=900),
        ),
        ({"rating": "safe"}, WebAnswer(Rating.SAFE, Source.CLOUD, score=Rating.SAFE.default_score)),
        ({"rating": "untested", "score": 0}, WebAnswer(Rating.UNTESTED, Source.CLOUD, score=0)),
        (
            {"rating": "suspicious", "score": 100, "matched": "a.test/"},
            WebAnswer(Rating.SUSPICIOUS, Source.CLOUD, score=100, matched="a.test/"),
        ),
        (
            {"rating": "highly_suspicious", "action": "block", "url": "x"},
            WebAnswer(Rating.HIGHLY_SUSPICIOUS, Source.CLOUD, score=75),
        ),
    ],
)
def test_web_answer_from_result_good(result: dict[str, Any], expected: WebAnswer) -> None:
    assert replies.web_answer_from_result(result, Source.CLOUD) == expected


@pytest.mark.parametrize(
    "result",
    [
        {},
        {"rating": "bad"},
        {"rating": "Dangerous"},
        {"rating": ["safe"]},
        {"rating": None},
        {"rating": "safe", "score": -1},
        {"rating": "safe", "score": 101},
        {"rating": "safe", "score": 50.5},
        {"rating": "safe", "score": "50"},
        {"rating": "safe", "score": False},
        {"rating": "safe", "category": "c" * 201},
        {"rating": "safe", "category": 3},
        {"rating": "safe", "matched": {"a": 1}},
        {"rating": "safe", "ttl": -5},
        {"rating": "safe", "ttl": 10**9},
    ],
)
def test_web_answer_from_result_bad(result: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replies.web_answer_from_result(result, Source.CLOUD)


def test_inspect_answer_from_result() -> None:
    a = replies.inspect_answer_from_result({"verdict": "clean", "ttl": 10, "url": "u"}, Source.CLOUD)
    assert (json.loads(a.result), a.source, a.ttl) == ({"verdict": "clean"}, Source.CLOUD, 10)
    with pytest.raises(ValueError):
        replies.inspect_answer_from_result({"detail": "x" * (64 * 1024)}, Source.CLOUD)
    with pytest.raises(ValueError):
        replies.inspect_answer_from_result({"ttl": -1}, Source.CLOUD)


@pytest.mark.parametrize(
    "raw, count",
    [
        (b'{"protocol":1,"pattern":"p","results":[{"verdict":"clean"}]}', 2),
        (b'{"protocol":1,"pattern":"p","results":[{"verdict":"clean"},{}]}', 1),
        (b'{"protocol":1,"results":[]}', 1),
        (b'{"protocol":1,"results":{}}', 0),
        (b'{"protocol":1}', 1),
        (b'{"protocol":2,"results":[{}]}', 1),
        (b'{"results":[{}]}', 1),
        (b'[{"verdict":"clean"}]', 1),
        (b'{"protocol":1,"results":[{},"x"]}', 2),
        (b"<html>502 Bad Gateway</html>", 1),
        (b"\xff", 1),
        pytest.param(b"[" * 100_000, 1, id="deeply-nested"),
    ],
)
def test_parse_results_refused(raw: bytes, count: int) -> None:
    with pytest.raises(ValueError):
        replies.parse_results(raw, count)


def test_parse_results_good() -> None:
    raw = b'{"protocol":1,"pattern":"p","results":[{"verdict":"clean"},{"verdict":"malicious"}]}'
    assert replies.parse_results(raw, 2) == [{"verdict": "clean"}, {"verdict": "malicious"}]


def test_render_then_parse_results_round_trip() -> None:
    qs = [protocol.parse_hash(SHA256), protocol.parse_hash(MD5)]
    answers = [
        FileAnswer(Verdict.MALICIOUS, Source.PATTERN, threat="T", ttl=60),
        FileAnswer(Verdict.CLEAN, Source.PATTERN, ttl=60),
    ]
    results = replies.parse_results(replies.render_files("p", qs, answers), 2)
    back = [replies.file_answer_from_result(r, Source.CLOUD) for r in results]
    assert back == [
        FileAnswer(Verdict.MALICIOUS, Source.CLOUD, threat="T", ttl=60),
        FileAnswer(Verdict.CLEAN, Source.CLOUD, ttl=60),
    ]


@pytest.mark.parametrize("value", [s.value for s in Source])
def test_source_of(value: str) -> None:
    source = replies.source_of(value)
    assert source is not None and source.value == value


def test_source_of_unknown() -> None:
    assert replies.source_of("somewhere") is None


# ------------------------------------------------------------------ the columnar batch path


def test_uniform_batch_is_columnar_and_lower_case() -> None:
    upper = SHA256.upper()
    batch = protocol.parse_file_request(body({"items": [{"sha256": upper}, {"sha256": SHA256}]}), LIMITS)
    assert batch.names == ["sha256", "sha256"]
    assert batch.hexes == [SHA256.lower(), SHA256.lower()]
    (positions, raw), = batch.groups.values()
    assert positions is None and raw == bytes.fromhex(SHA256) * 2


@pytest.mark.parametrize(
    ("bad", "code"),
    [({"sha256": "a" * 63 + " "}, "bad_hash"), ({"sha256": "g" * 64}, "bad_hash"),
     ({"sha256": 7}, "bad_hash"), ({"sha256": SHA256, "md5": MD5}, "bad_item"), ([SHA256], "bad_item")],
)
def test_one_bad_item_in_a_large_batch_is_named(bad: object, code: str) -> None:
    items: list[object] = [{"sha256": SHA256}] * 500
    items = [*items[:317], bad, *items[318:]]
    e = refused(protocol.parse_file_request, body({"items": items}))
    assert (e.code, e.item) == (code, 317)


def test_mixed_kinds_keep_their_positions() -> None:
    batch = protocol.parse_file_request(
        body({"items": [{"md5": MD5}, {"sha256": SHA256}, {"md5": MD5}]}), LIMITS)
    assert batch.names == ["md5", "sha256", "md5"]
    assert batch.groups[HashKind.MD5][0] == [0, 2]
    assert batch.groups[HashKind.SHA256] == ([1], bytes.fromhex(SHA256))


# ------------------------------------------------------------------ text that is not Unicode

LONE = "\ud800"  # a lone surrogate: JSON can spell it ("\ud800"), UTF-8 cannot


@pytest.mark.parametrize(
    "raw",
    [body({"urls": ["http://a.test/", f"http://{LONE}.example/"]}),  # the \ud800 escape
     b'{"urls": ["http://a.test/", "http://\xed\xa0\x80.example/"]}',  # its UTF-8-like bytes
     body({"urls": ["http://a.test/", f"http://a.test/p{LONE}"]}),
     body({"urls": ["http://a.test/", "http://a.test/?q=\udcff"]})],
)
def test_a_url_with_a_lone_surrogate_is_a_bad_url_naming_the_item(raw: bytes) -> None:
    e = refused(protocol.parse_web_request, raw)
    assert (e.code, e.status, e.item) == ("bad_url", 400, 1)
    assert "lone surrogate" in e.message


def test_a_domain_with_a_lone_surrogate_is_a_bad_domain_naming_the_item() -> None:
    e = refused(protocol.parse_domain_request, body({"items": ["a.test", f"{LONE}.example"]}))
    assert (e.code, e.status, e.item) == ("bad_domain", 400, 1)
    assert "lone surrogate" in e.message


@pytest.mark.parametrize(
    "doc, where",
    [({"url": f"http://{LONE}.example/"}, "URL"),
     ({"url": "http://a.test/", "x": LONE}, "['x']"),
     ({"url": "http://a.test/", "meta": {"tags": ["ok", f"bad{LONE}"]}}, "['meta']['tags'][1]"),
     ({"url": "http://a.test/", f"k{LONE}": 1}, "(a key)")],
)
def test_an_inspect_request_with_a_lone_surrogate_anywhere_is_refused(doc: Any, where: str) -> None:
    """The whole document is relayed to the cloud as UTF-8, so all of it must be Unicode."""
    e = refused(protocol.parse_inspect_request, body(doc))
    assert e.status == 400 and e.code in ("bad_url", "bad_request")
    assert "lone surrogate" in e.message and where in e.message


def test_a_surrogate_pair_is_one_character_and_fine() -> None:
    (q,) = protocol.parse_web_request(b'{"urls": ["http://a.test/\\ud83d\\ude00"]}', LIMITS)[0]
    assert q.canonical == "http://a.test/%F0%9F%98%80"
    q2 = protocol.parse_inspect_request(b'{"url": "http://a.test/", "x": "\\ud83d\\ude00"}', LIMITS)
    assert json.loads(q2.body)["x"] == "\U0001f600"


# ------------------------------------------------------------------ hosts that are no host names


@pytest.mark.parametrize(
    "url, why",
    [("http://%ff%fe.example/", "not UTF-8"),
     ("http://%ED%A0%80.example/", "not UTF-8"),  # a surrogate, percent-encoded
     ("http://a.%C0%AE.example/", "not UTF-8"),  # an overlong '.'
     ("http://exa%20mple.example/", "not a host name"),
     ("http://a%2525b.example/", "not a host name"),
     ("http://a%01b.example/", "not a host name"),
     ("http://exa mple.example/", "not a host name")],
)
def test_a_host_that_is_no_host_name_once_percent_decoded_is_a_bad_url(url: str, why: str) -> None:
    for parse, doc in ((protocol.parse_web_request, {"urls": ["http://a.test/", url]}),
                       (protocol.parse_inspect_request, {"url": url})):
        e = refused(parse, body(doc))
        assert (e.code, e.status) == ("bad_url", 400) and why in e.message
        assert e.item == (1 if parse is protocol.parse_web_request else None)


@pytest.mark.parametrize(
    "url, canonical",
    [("http://%65xample.test/", "http://example.test/"),
     ("http://b%C3%BCcher.example/", "http://xn--bcher-kva.example/"),
     ("http://a.test/%ff%fe", "http://a.test/%FF%FE"),  # paths may hold any byte
     ("http://a.test/?q=%ED%A0%80", "http://a.test/?q=%ED%A0%80")],
)
def test_percent_escapes_that_decode_to_a_host_name_or_sit_in_the_path_are_fine(
    url: str, canonical: str
) -> None:
    (q,) = protocol.parse_web_request(body({"urls": [url]}), LIMITS)[0]
    assert q.canonical == canonical


# ------------------------------------------------------------------ what goes out is Unicode too


@pytest.mark.parametrize(
    "convert, result",
    [(replies.file_answer_from_result, {"verdict": "malicious", "threat": f"Eicar{LONE}"}),
     (replies.web_answer_from_result, {"rating": "dangerous", "category": LONE}),
     (replies.web_answer_from_result, {"rating": "dangerous", "matched": f"a.test/{LONE}"}),
     (replies.inspect_answer_from_result, {"verdict": "clean", "detail": {"why": [LONE]}})],
)
def test_a_cloud_result_with_a_lone_surrogate_is_unusable(convert: Any, result: dict[str, Any]) -> None:
    """Relayed, it would become an answer a strict JSON parser refuses; the engine answers the
    item degraded instead (a ValueError is an unusable result)."""
    with pytest.raises(ValueError, match="lone surrogate"):
        convert(result, Source.CLOUD)


def test_an_error_quoting_a_lone_surrogate_renders_as_valid_unicode() -> None:
    e = refused(protocol.parse_file_request, body({"items": [{LONE: SHA256}]}))
    message = json.loads(replies.render_error(e))["error"]["message"]
    message.encode("utf-8")  # no lone surrogate left in what the client decodes
    assert "\\ud800" in message
