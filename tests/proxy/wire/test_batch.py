"""The file batch's fast paths held equal to the plain ones over generated batches.

Reading: ``parse_file_request`` (orjson and column checks, ``proxy.wire.batch``) gives
the same batch, or the same error (code, message, item, status), as
``parse_file_request_plain`` (json.loads, one query per item) for every body.
Rendering: ``render_files`` gives byte for byte what an independent rendering (a dict per
result, ``json.dumps``) gives, for every mix of answers.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.errors import ProtocolError
from proxy.model import PROTOCOL_VERSION, FileAnswer, FileQuery, HashKind, Source, Verdict
from proxy.wire import protocol, replies
from proxy.wire.batch import FileBatch, columns

LIMITS = protocol.Limits()
KINDS = {"md5": 16, "sha1": 20, "sha256": 32}


def outcome(parse: Any, body: bytes, limits: protocol.Limits) -> Any:
    try:
        return parse(body, limits)
    except ProtocolError as e:
        return ("refused", e.code, e.message, e.item, e.status)


def same_reading(body: bytes, limits: protocol.Limits = LIMITS) -> Any:
    fast = outcome(protocol.parse_file_request, body, limits)
    assert fast == outcome(protocol.parse_file_request_plain, body, limits)
    return fast


# ---------------------------------------------------------------- generated items and bodies

def _case(text: str, how: int) -> str:
    return text if how == 0 else text.upper() if how == 1 else text[:7].upper() + text[7:]


good_items = st.builds(
    lambda kind, seed, how: {kind: _case(hashlib.sha256(seed).digest()[:KINDS[kind]].hex(), how)},
    st.sampled_from(sorted(KINDS)), st.binary(max_size=3), st.integers(0, 2),
)
odd_items = st.one_of(
    st.builds(lambda k, n: {k: "a" * n}, st.sampled_from(sorted(KINDS)), st.integers(0, 70)),  # lengths
    st.builds(lambda k, c: {k: "a" * (KINDS[k] * 2 - 1) + c}, st.sampled_from(sorted(KINDS)),
              st.sampled_from(["g", " ", "\t", "٣", "ａ", "\u00e9", "\n", "-", "+"])),  # one odd digit
    st.sampled_from([{}, {"sha256": 7}, {"sha256": None}, {"sha256": ["ab"] * 32}, {"md5": {"a": 1}},
                     {"SHA256": "ab" * 32}, {"sha512": "ab" * 64}, {"sha256": "ab" * 32, "md5": "ab" * 16},
                     "ab" * 32, ["sha256"], [], None, 7, 1.5, True, {"": ""}, {"sha1": "ab " * 13 + "a"},
                     {"md5": " " + "ab" * 16}, {"md5": "ab" * 15 + " ab"}]),
)
item_lists = st.builds(  # mostly well-formed batches (the fast path's), some with one odd item
    lambda good, odd, at: good if odd is None else [*good[:at], odd, *good[at:]],
    st.lists(good_items, max_size=40), st.one_of(st.none(), odd_items), st.integers(0, 40),
)


def encode(doc: Any, style: int) -> bytes:
    """The document as different clients write it (spacing, escapes, other members)."""
    if style == 0:
        return json.dumps(doc).encode()
    if style == 1:
        return json.dumps(doc, separators=(",", ":")).encode()
    if style == 2:
        return json.dumps(doc, indent=2, ensure_ascii=False).encode()
    if style == 3:  # a key spelled with an escape
        return json.dumps(doc).replace('"sha1"', '"\\u0073ha1"').encode()
    if style == 4:  # another member before the items
        return json.dumps({"client": {"n": [1, 2.5, None]}, **doc}).encode()
    if style == 5:  # the items twice: the last one counts
        return b'{"items": [{"md5": 1}], ' + json.dumps(doc)[1:].encode()
    return b" \r\n\t" + json.dumps(doc).encode() + b"\n"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(item_lists, st.integers(0, 6), st.sampled_from([1000, 5]))
@example([{"sha256": "ab" * 32}] * 6, 0, 5)  # over a small limit: 413 from both
def test_fast_reading_equals_the_plain_one(items: list[Any], style: int, max_batch: int) -> None:
    same_reading(encode({"items": items}, style), protocol.Limits(max_batch=max_batch))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_read_alike(raw: bytes) -> None:
    same_reading(raw)


@pytest.mark.parametrize("raw", [
    b'{"items": [{"sha256": "' + b"ab" * 32 + b'"}], "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    b'{"items": ' + b"[" * 1010 + b"]" * 1010 + b"}",
    b'{"items": [{"md5": "' + b"ab" * 16 + b'"}, {"md5": NaN}]}',
    b'{"items": [{"md5": "' + b"ab" * 16 + b'"}, {"md5": 1' + b"0" * 30 + b"}]}",
    b'\xef\xbb\xbf{"items": [{"md5": "' + b"ab" * 16 + b'"}]}',  # a byte order mark: json takes it
    '{"items": [{"md5": "abababababababababababababababab"}]}'.encode("utf-16"),
    b'{"items": [{"md5": "\\ud800' + b"ab" * 15 + b'a"}]}',
    b'{"items": [{"md5": "\xed\xa0\x80' + b"ab" * 15 + b'a"}]}',
    b'{"items": []}', b'{"items": {}}', b"[]", b'"items"', b"", b"{}",
])
def test_bodies_orjson_refuses_or_reads_otherwise_are_read_alike(raw: bytes) -> None:
    same_reading(raw)


def test_a_thousand_mixed_items_are_read_fast_and_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [{name: hashlib.sha256(b"%d" % i).digest()[:size].hex()}
             for i in range(1000) for name, size in [sorted(KINDS.items())[i % 3]]]
    batch = same_reading(json.dumps({"items": items}).encode())
    assert isinstance(batch, FileBatch) and len(batch) == 1000
    assert batch == columns(items)
    assert [q.digest for q in batch.queries()] == [bytes.fromhex(next(iter(i.values()))) for i in items]
    monkeypatch.setattr(protocol, "_object", None)  # the fast path reads it without json
    assert protocol.parse_file_request(json.dumps({"items": items}).encode(), LIMITS) == batch


# ---------------------------------------------------------------- rendering


def plain_render(version: str, queries: list[FileQuery], answers: list[FileAnswer]) -> bytes:
    """Each result as a dict in the protocol's member order, dumped by json."""
    results = []
    for q, a in zip(queries, answers):
        r: dict[str, Any] = {q.kind.value: q.digest.hex(), "verdict": a.verdict.value}
        if a.threat is not None:
            r["threat"] = a.threat
        if a.matched is not None:
            r["matched"] = a.matched
        r["source"] = a.source.value
        if a.source is Source.LOCAL:
            r["note"] = replies.NO_CLOUD_NOTE
        for key in ("ttl", "retry_after"):
            if getattr(a, key) is not None:
                r[key] = getattr(a, key)
        results.append(r)
    doc = {"protocol": PROTOCOL_VERSION, "pattern": version, "results": results}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()


answers = st.builds(
    FileAnswer,
    st.sampled_from(list(Verdict)),
    st.sampled_from(list(Source)),
    threat=st.one_of(st.none(), st.text(max_size=12)),
    ttl=st.one_of(st.none(), st.integers(0, 7 * 86400)),
    matched=st.one_of(st.none(), st.sampled_from(["ab" * 32, 'a"b\\c', "é\u2028"])),
    retry_after=st.one_of(st.none(), st.integers(1, 600)),
)
queries = st.builds(lambda kind, seed: FileQuery(kind, hashlib.sha256(seed).digest()[:kind.size]),
                    st.sampled_from(list(HashKind)), st.binary(max_size=4))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(queries, st.integers(0, 5)), min_size=1, max_size=60),
       st.lists(answers, min_size=6, max_size=6), st.sampled_from(["2026120118", 'v"1\\']))
def test_render_files_equals_a_plain_rendering(items: list[tuple[FileQuery, int]],
                                               pool: list[FileAnswer], version: str) -> None:
    qs = [q for q, _ in items]
    chosen = [pool[i] for _, i in items]  # answers repeat, as they do in a batch
    want = plain_render(version, qs, chosen)
    assert replies.render_files(version, FileBatch.of(qs), chosen) == want
    assert replies.render_files(version, qs, chosen) == want  # queries given as a list
    again = [FileAnswer(a.verdict, a.source, threat=a.threat, ttl=a.ttl, matched=a.matched,
                        retry_after=a.retry_after) for a in chosen]  # equal answers, new objects
    assert replies.render_files(version, qs, again) == want


def test_render_files_past_its_memo_bound_stays_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replies, "MAX_TAILS", 7)
    qs = [FileQuery(HashKind.MD5, bytes([i]) * 16) for i in range(20)]
    for ttl in range(1, 6):
        chosen = [FileAnswer(Verdict.UNKNOWN, Source.CACHE, ttl=ttl + i % 10) for i in range(20)]
        assert replies.render_files("v", qs, chosen) == plain_render("v", qs, chosen)
