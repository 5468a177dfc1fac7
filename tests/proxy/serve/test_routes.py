"""The query door's routes, called directly on an App built from the shipped sample pattern.

No listeners: ``App.open()`` builds the engine, lists, cache and routes, and each
test hands ``app.routes`` a ``Request`` and reads the ``Response`` a client would
get (or the ``ProtocolError`` the server turns into one).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from proxy.config import Config
from proxy.decide.cache import AnswerCache
from proxy.decide.lists import Entry, EntryKind, ListName, ListSnapshot
from proxy.errors import ProtocolError, RelayError
from proxy.model import FileAnswer, Source, Verdict
from proxy.patterns.pattern import PatternSet
from proxy.serve.app import App
from proxy.wire.http import Request, Response

EICAR_SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
UNKNOWN_SHA256 = "ab" * 32  # in no sample pattern
BAD_URL = "http://testsafebrowsing.appspot.com/s/malware.html"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    app = App(Config(data_dir=tmp_path, query_port=0, query_tls_port=0))
    app.open()
    # open() starts no task: the keeper only watches the store once start()ed, and with no
    # update source it builds no updater (so nothing needs awaiting on the way out).
    assert app.relay is None and app.keeper.updater is None
    opened = [app.engine.patterns]
    yield app
    app.lists_store.close()
    for patterns in {id(p): p for p in [*opened, app.engine.patterns]}.values():
        patterns.close()


def call(app: App, method: str, target: str, body: bytes = b"") -> Response:
    result = app.routes(Request(method, target.encode(), [], body, "127.0.0.1"))
    assert isinstance(result, Response), "a locally answered request must not need awaiting"
    return result


def refused(app: App, method: str, target: str, body: bytes = b"") -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        app.routes(Request(method, target.encode(), [], body, "127.0.0.1"))
    return caught.value


def result(response: Response) -> dict[str, Any]:
    assert response.status == 200
    doc = json.loads(response.body)
    (only,) = doc["results"]
    return only  # type: ignore[no-any-return]


def items_total(app: App, service: str, source: str) -> float:
    """rampart_items_total for one service and source, as /metrics reports it."""
    text = call(app, "GET", "/metrics").body.decode()
    pattern = rf'^rampart_items_total{{service="{service}",source="{source}"}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def entry(name: ListName, kind: EntryKind, value: str) -> Entry:
    return Entry(name, kind, value, "set by a test", 0.0)


class Renamed:
    """A PatternSet served under another version name: what a pattern swap looks like."""

    def __init__(self, inner: PatternSet, version: str) -> None:
        self._inner = inner
        self.version = version

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# ---------------------------------------------------------------- paths and methods


@pytest.mark.parametrize(
    ("method", "target", "body", "expected"),
    [
        ("GET", f"/v1/file/{EICAR_SHA256}", b"", {"verdict": "malicious", "source": "pattern"}),
        ("HEAD", f"/v1/file/{EICAR_SHA256}", b"", {"verdict": "malicious", "source": "pattern"}),
        (
            "POST", "/v1/file", json.dumps({"items": [{"sha256": EICAR_SHA256}]}).encode(),
            {"verdict": "malicious", "threat": "EICAR-Test-File"},
        ),
        ("GET", "/v1/domain/malware.example.test", b"", {"rating": "dangerous", "source": "pattern"}),
        (
            "POST", "/v1/domain", b'{"items": ["phish.example.test"]}',
            {"rating": "dangerous", "category": "phishing"},
        ),
        ("GET", f"/v1/web?url={quote(BAD_URL, safe='')}", b"", {"rating": "dangerous"}),
        (
            "POST", "/v1/web", json.dumps({"urls": [BAD_URL], "policy": "high"}).encode(),
            {"rating": "dangerous", "action": "block"},
        ),
    ],
)
def test_each_service_path_answers_from_the_pattern(
    app: App, method: str, target: str, body: bytes, expected: dict[str, str]
) -> None:
    response = call(app, method, target, body)
    assert response.content_type == "application/json"
    assert json.loads(response.body)["pattern"] == app.engine.patterns.version
    assert result(response).items() >= expected.items()


def test_inspect_with_no_cloud_is_answered_here_and_says_no_cloud_was_asked(app: App) -> None:
    body = json.dumps({"url": "http://example.org/page"}).encode()
    answer = result(call(app, "POST", "/v1/inspect", body))
    assert answer.items() >= {"rating": "untested", "source": "local",
                              "note": "no cloud configured", "ttl": 3600}.items()
    assert "retry_after" not in answer


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        ("GET", "/v1/file", "POST"),
        ("DELETE", f"/v1/file/{EICAR_SHA256}", "GET, HEAD"),
        ("PUT", "/v1/web", "POST, GET"),
        ("GET", "/v1/domain", "POST"),
        ("POST", "/v1/domain/example.org", "GET, HEAD"),
        ("GET", "/v1/inspect", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
        ("POST", "/readyz", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("POST", "/v1/agent-pattern", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405_with_allow(app: App, method: str, target: str, allow: str) -> None:
    error = refused(app, method, target)
    assert (error.status, error.code) == (405, "method_not_allowed")
    assert dict(error.headers)["Allow"] == allow
    assert method in error.message


@pytest.mark.parametrize("target", ["/nope", "/v1/files", "/v2/file/x", "/"])
def test_unknown_path_is_404_naming_it(app: App, target: str) -> None:
    error = refused(app, "GET", target + "?q=1")
    assert (error.status, error.code) == (404, "not_found")
    assert repr(target) in error.message
    assert "q=1" not in error.message


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/v1/file/xyz", "bad_hash"),
        ("/v1/web", "bad_request"),
        ("/v1/web?url=http://a.test/&policy=extreme", "bad_policy"),
        ("/v1/domain/" + "a" * 300, "bad_domain"),
    ],
)
def test_bad_get_items_are_400_naming_the_problem(app: App, target: str, code: str) -> None:
    error = refused(app, "GET", target)
    assert (error.status, error.code) == (400, code)


def test_healthz(app: App) -> None:
    response = call(app, "GET", "/healthz")
    assert (response.status, json.loads(response.body)) == (200, {"status": "alive"})


def test_readyz_reports_the_served_pattern(app: App) -> None:
    response = call(app, "GET", "/readyz")
    doc = json.loads(response.body)
    assert response.status == 200 and response.content_type == "application/json"
    assert doc["status"] == "ready"
    assert doc["doors"] == []  # opened without listeners
    versions = {p["version"] for p in doc["pattern"]["patterns"].values()}
    assert app.engine.patterns.version in versions
    assert "cloud" not in doc  # no cloud configured


def test_metrics_is_prometheus_text_counting_answers(app: App) -> None:
    call(app, "GET", f"/v1/file/{EICAR_SHA256}")
    response = call(app, "GET", "/metrics")
    assert response.content_type.startswith("text/plain")
    assert "# TYPE rampart_items_total counter" in response.body.decode()
    assert items_total(app, "file", "pattern") == 1


# ---------------------------------------------------------------- the GET memo


@pytest.mark.parametrize(
    "target",
    [
        f"/v1/file/{EICAR_SHA256}",
        "/v1/domain/malware.example.test",
        f"/v1/web?url={quote(BAD_URL, safe='')}",
    ],
)
def test_repeated_get_decided_locally_is_the_same_response(app: App, target: str) -> None:
    first = call(app, "GET", target)
    assert call(app, "GET", target) is first
    assert call(app, "GET", target) is first


def test_memo_is_per_target(app: App) -> None:
    eicar = call(app, "GET", f"/v1/file/{EICAR_SHA256}")
    other = call(app, "GET", "/v1/domain/malware.example.test")
    assert other is not eicar
    assert result(call(app, "GET", f"/v1/file/{EICAR_SHA256}"))["sha256"] == EICAR_SHA256


def test_memo_hits_are_still_counted_in_metrics(app: App) -> None:
    target = f"/v1/file/{EICAR_SHA256}"
    for n in range(1, 4):
        call(app, "GET", target)
        assert items_total(app, "file", "pattern") == n


def test_new_lists_snapshot_approving_the_hash_invalidates_the_memo(app: App) -> None:
    target = f"/v1/file/{EICAR_SHA256}"
    assert result(call(app, "GET", target))["verdict"] == "malicious"
    app.engine.lists = ListSnapshot([entry(ListName.APPROVED, EntryKind.HASH, EICAR_SHA256)])
    approved = call(app, "GET", target)
    assert result(approved).items() >= {"verdict": "clean", "source": "approved-list"}.items()
    assert call(app, "GET", target) is approved  # memoised again under the new lists
    assert items_total(app, "file", "approved-list") == 2


def test_new_lists_snapshot_blocking_an_unknown_hash_invalidates_the_memo(app: App) -> None:
    target = f"/v1/file/{UNKNOWN_SHA256}"
    assert result(call(app, "GET", target))["source"] == "local"
    app.engine.lists = ListSnapshot([entry(ListName.BLOCKED, EntryKind.HASH, UNKNOWN_SHA256)])
    blocked = result(call(app, "GET", target))
    assert (blocked["verdict"], blocked["source"]) == ("malicious", "blocked-list")
    app.engine.lists = ListSnapshot()  # the rule removed again
    assert result(call(app, "GET", target))["source"] == "local"


def test_equal_but_new_lists_snapshot_is_not_served_from_the_memo(app: App) -> None:
    target = "/v1/domain/www.example.org"
    rules = [entry(ListName.BLOCKED, EntryKind.DOMAIN, "example.org")]
    app.engine.lists = ListSnapshot(rules)
    first = call(app, "GET", target)
    assert result(first)["source"] == "blocked-list"
    app.engine.lists = ListSnapshot(rules)
    second = call(app, "GET", target)
    assert second is not first and second.body == first.body


def test_pattern_swap_invalidates_the_memo(app: App) -> None:
    target = f"/v1/file/{EICAR_SHA256}"
    before = call(app, "GET", target)
    old = app.engine.patterns
    app.engine.patterns = Renamed(old, "2099010100")  # type: ignore[assignment]
    after = call(app, "GET", target)
    assert after is not before
    assert json.loads(after.body)["pattern"] == "2099010100"
    assert result(after)["verdict"] == "malicious"
    assert call(app, "GET", target) is after


def test_reopened_pattern_is_a_new_object_and_not_served_from_the_memo(app: App) -> None:
    target = f"/v1/file/{EICAR_SHA256}"
    before = call(app, "GET", target)
    app.engine.patterns = PatternSet.open(app.pattern_path)
    after = call(app, "GET", target)
    assert after is not before and after.body == before.body


def test_post_is_never_memoised(app: App) -> None:
    body = json.dumps({"items": [{"sha256": EICAR_SHA256}]}).encode()
    first = call(app, "POST", "/v1/file", body)
    assert call(app, "POST", "/v1/file", body) is not first
    assert items_total(app, "file", "pattern") == 2


# ---------------------------------------------------------------- answers that change over time


class DownCloud:
    """A configured cloud that never answers: every item relayed to it comes back degraded."""

    async def ask_many(self, service: Any, pairs: Any) -> list[Any]:
        return [RelayError("cloud down") for _ in pairs]


def relayed(app: App, method: str, target: str) -> Response:
    """The response to a request the engine has to relay (an awaitable response)."""
    pending = app.routes(Request(method, target.encode(), [], b"", "127.0.0.1"))
    assert not isinstance(pending, Response)
    return asyncio.run(_wait(pending))


async def _wait(pending: Any) -> Response:
    return await pending  # type: ignore[no-any-return]


def test_degraded_answer_is_not_memoised_so_a_later_cloud_answer_shows(app: App) -> None:
    app.engine.relay = DownCloud()
    target = f"/v1/file/{UNKNOWN_SHA256}"
    first = relayed(app, "GET", target)
    second = relayed(app, "GET", target)
    assert result(first)["source"] == result(second)["source"] == "degraded"
    assert second is not first
    assert items_total(app, "file", "degraded") == 2
    # The cloud answers it later (e.g. through the intercept door): the next GET shows it.
    app.engine.cache.put(UNKNOWN_SHA256, FileAnswer(Verdict.CLEAN, Source.CLOUD, ttl=300), 300)
    third = result(call(app, "GET", target))
    assert (third["verdict"], third["source"]) == ("clean", "cache")


def test_cached_answer_ttl_counts_down_and_is_not_memoised(app: App) -> None:
    now = [1000.0]
    cache: AnswerCache[Any] = AnswerCache(100, clock=lambda: now[0])
    app.engine.cache = cache
    cache.put(UNKNOWN_SHA256, FileAnswer(Verdict.CLEAN, Source.CLOUD, ttl=300), 300)
    target = f"/v1/file/{UNKNOWN_SHA256}"
    first = result(call(app, "GET", target))
    now[0] += 100
    second = result(call(app, "GET", target))
    assert (first["source"], first["ttl"]) == ("cache", 300)
    assert (second["source"], second["ttl"]) == ("cache", 200)
    now[0] += 200  # expired: no cloud to ask, so answered here
    assert result(call(app, "GET", target))["source"] == "local"
    assert items_total(app, "file", "cache") == 2


# ---------------------------------------------------------------- what a probe sends


@pytest.mark.parametrize("path", ["/v1/web?url=http://a.test/&", "/v1/agent-pattern?"])
@pytest.mark.parametrize("count", [5, 6, 40])
def test_too_many_query_parameters_are_a_400_naming_the_count(
    app: App, path: str, count: int
) -> None:
    target = path + "&".join(f"p{i}=x" for i in range(count - path.endswith("&")))
    error = refused(app, "GET", target)
    assert (error.status, error.code) == (400, "bad_request")
    assert "at most 4 query parameters" in error.message and str(count) in error.message


def test_four_query_parameters_and_unknown_ones_are_fine(app: App) -> None:
    plain = call(app, "GET", f"/v1/web?url={quote(BAD_URL, safe='')}")
    extra = call(app, "GET", f"/v1/web?a=1&url={quote(BAD_URL, safe='')}&b=2&url=http://x.test/")
    assert result(extra) == result(plain)  # a repeated parameter counts once: its first value


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/v1/web?url=http://%ED%A0%80.example/", "bad_url"),  # a surrogate, percent-encoded
        ("/v1/web?url=http://%ff%fe.example/", "bad_url"),
        ("/v1/web?url=http://a.test/&policy=%ff", "bad_request"),
        ("/v1/domain/%ED%A0%80.example", "bad_domain"),
        ("/v1/domain/%ff%fe.example", "bad_domain"),
        ("/v1/file/%ff" + "a" * 62, "bad_hash"),
    ],
)
def test_a_target_that_is_not_utf8_once_percent_decoded_is_a_400_naming_it(
    app: App, target: str, code: str
) -> None:
    error = refused(app, "GET", target)
    assert (error.status, error.code) == (400, code)
    assert "not UTF-8" in error.message


def test_raw_utf8_in_a_target_reads_as_the_same_text_as_its_escapes(app: App) -> None:
    name = "b\u00fccher.example"
    raw = result(call(app, "GET", f"/v1/domain/{name}"))  # call() sends the target as UTF-8
    assert raw == result(call(app, "GET", f"/v1/domain/{quote(name)}")) and raw["domain"] == name
    url = f"http://{name}/\u00e9"
    assert result(call(app, "GET", f"/v1/web?url={url}"))["url"] == url


@pytest.mark.parametrize(
    ("method", "target", "body", "code", "item"),
    [
        ("GET", "/v1/web?url=http://%2525ff%2525fe.example/", b"", "bad_url", 0),
        ("POST", "/v1/web", b'{"urls": ["http://a.test/", "http://%ff%fe.example/"]}', "bad_url", 1),
        ("POST", "/v1/inspect", b'{"url": "http://%ff%fe.example/"}', "bad_url", None),
        ("GET", "/v1/domain/%25ff%25fe.example", b"", "bad_domain", 0),
        ("POST", "/v1/domain", b'{"items": ["a.test", "%ff%fe.example"]}', "bad_domain", 1),
    ],
)
def test_a_host_that_is_no_host_name_once_percent_decoded_is_a_400_on_every_service(
    app: App, method: str, target: str, body: bytes, code: str, item: int | None
) -> None:
    """One rule for every way into the web and domain services: such a host is never relayed."""
    error = refused(app, method, target, body)
    assert (error.status, error.code, error.item) == (400, code, item)


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/v1/web", b'{"urls": ["http://\\ud800.example/"]}'),
        ("/v1/inspect", b'{"url": "http://a.test/", "x": "\\ud800"}'),
        ("/v1/inspect", b'{"url": "http://\\ud800.example/"}'),
        ("/v1/domain", b'{"items": ["\\ud800.example"]}'),
    ],
)
def test_a_lone_surrogate_in_a_body_is_a_400_naming_it(app: App, target: str, body: bytes) -> None:
    error = refused(app, "POST", target, body)
    assert error.status == 400 and "lone surrogate" in error.message
