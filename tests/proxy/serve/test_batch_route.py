"""POST /v1/file through the routes, held byte for byte to a plain answer over generated batches.

The App is real (the shipped sample pattern's tables, the list store in SQLite, the answer
cache); no cloud, so an item nothing knew is answered ``local``. The plain answer decides
each item of ``parse_file_request_plain``'s reading on its own (lists, then
``lookup_file``, then ``AnswerCache.get``, then unknown) and renders a dict per result
with ``json.dumps``; a refused body must be refused with the plain reading's error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.decide.engine import BLOCKED_THREAT
from proxy.decide.lists import EntryKind, ListName
from proxy.errors import ProtocolError
from proxy.model import FileAnswer, FileQuery, Source, Verdict
from proxy.serve.app import App
from proxy.wire import protocol
from proxy.wire.http import Request, Response
from tests.proxy.wire.test_batch import plain_render

PATTERN = ["44d88612fea8a8f36de82e1278abb02f", "3395856ce81f2b7382dee72602f798b642f14140",
           "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f",
           "e3cdd2e8de4be34893f09ad30b29e3ad94a84d5014416beca475dbbbd57a90d5",
           "6e448262d5e28f1637398f7215de860a4c986fa32a78bdeab4d733a57d506b63"]
CACHED = [hashlib.sha256(b"cached-%d" % i).hexdigest() for i in range(6)] + [hashlib.md5(b"c").hexdigest()]
BLOCKED = [hashlib.sha1(b"blocked").hexdigest(), PATTERN[3], CACHED[0]]  # lists outrank both
APPROVED = [hashlib.md5(b"approved").hexdigest(), PATTERN[1]]
MISSES = [hashlib.sha256(b"miss-%d" % i).hexdigest() for i in range(4)] + [hashlib.sha1(b"m").hexdigest()]
NOW = 5000.0
NAME = {32: "md5", 40: "sha1", 64: "sha256"}


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.conftest import opened_app

    with opened_app(tmp_path_factory.mktemp("batch-route")) as app:
        app.lists_store.add(ListName.BLOCKED, [(EntryKind.HASH, h) for h in BLOCKED])
        app.lists_store.add(ListName.APPROVED, [(EntryKind.HASH, h) for h in APPROVED])
        app.engine.lists = app.lists_store.snapshot()
        app.cache._clock = lambda: NOW  # the TTL left is the same for the route and the plain answer
        for i, h in enumerate(CACHED):
            verdict = Verdict.SUSPICIOUS if i % 2 else Verdict.UNKNOWN
            app.cache.put(h, FileAnswer(verdict, Source.CLOUD, threat="T\"1" if i % 2 else None,
                                        ttl=300 + i), 300 + i * 7.5)
        yield app


def plain_answer(app: App, q: FileQuery) -> FileAnswer:
    hexed, ttl = q.digest.hex(), app.engine.local_ttl
    match = app.engine.lists.match_hexes([hexed]).get(hexed)
    if match is not None:
        if match[0] is ListName.BLOCKED:
            return FileAnswer(Verdict.MALICIOUS, Source.BLOCKED_LIST, threat=BLOCKED_THREAT, ttl=ttl,
                              matched=hexed)
        return FileAnswer(Verdict.CLEAN, Source.APPROVED_LIST, ttl=ttl, matched=hexed)
    hit = app.engine.patterns.lookup_file(q)
    if hit is not None:
        return FileAnswer(hit.verdict, Source.PATTERN, threat=hit.threat, ttl=ttl)
    cached = app.cache.get(hexed)
    if cached is not None:
        return dataclasses.replace(cached[0], source=Source.CACHE, ttl=cached[1])
    return FileAnswer(Verdict.UNKNOWN, Source.LOCAL, ttl=ttl)


def plain_response(app: App, body: bytes) -> Any:
    try:
        queries = protocol.parse_file_request_plain(body, app.limits).queries()
    except ProtocolError as e:
        return ("refused", e.code, e.message, e.item, e.status)
    return plain_render(app.engine.version, queries, [plain_answer(app, q) for q in queries])


def routed(app: App, body: bytes) -> Any:
    try:
        response = app.routes(Request("POST", b"/v1/file", [], body, "127.0.0.1"))
    except ProtocolError as e:
        return ("refused", e.code, e.message, e.item, e.status)
    assert isinstance(response, Response) and response.status == 200
    return response.body


every_hash = st.sampled_from(PATTERN + CACHED + BLOCKED + APPROVED + MISSES)
items = st.builds(lambda h, upper: {NAME[len(h)]: h.upper() if upper else h}, every_hash, st.booleans())
odd = st.sampled_from([{"md5": "zz" * 16}, {"sha1": PATTERN[0]}, {"sha256": 1}, {}, "x", None])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(items, min_size=1, max_size=60), st.one_of(st.none(), odd), st.integers(0, 60),
       st.sampled_from([{}, {"separators": (",", ":")}, {"indent": 1}]))
def test_a_batch_is_answered_as_the_plain_path_answers_it(opened: App, chosen: list[Any], bad: Any,
                                                          at: int, dump: dict[str, Any]) -> None:
    if bad is not None:
        chosen = [*chosen[:at], bad, *chosen[at:]]
    body = json.dumps({"items": chosen}, **dump).encode()
    assert routed(opened, body) == plain_response(opened, body)


def test_a_full_batch_of_every_source_and_kind(opened: App) -> None:
    pool = PATTERN + CACHED + BLOCKED + APPROVED + MISSES
    chosen = [{NAME[len(h)]: h} for h in (pool * 40)[:1000]]
    body = json.dumps({"items": chosen}).encode()
    answered = routed(opened, body)
    assert answered == plain_response(opened, body)
    sources = {r["source"] for r in json.loads(answered)["results"]}
    assert sources == {"pattern", "cache", "blocked-list", "approved-list", "local"}
