"""The writer's fast path (``Answers.batch``) against the plain one: for a varied set of
answers (files, URLs, domains and IPs, one item and batches, every source, inspections,
errors, escaped and odd items) the rows it writes equal a per-answer reading of each body
in full, with no memo."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import pytest

from proxy.logs.clients import ClientMask
from proxy.logs.entries import Answers, Entry, Logged, Row, service_of, templates
from proxy.model import (
    DomainQuery,
    FileAnswer,
    FileQuery,
    HashKind,
    Policy,
    Rating,
    Source,
    Verdict,
    WebAnswer,
    WebQuery,
)
from proxy.wire import replies
from tests.proxy.logs.conftest import EICAR_SHA256, MALWARE_URL, Ask

V = "2026120115"
T0 = 1.8e9


def plain(entries: list[Entry], mask: ClientMask) -> list[Row]:
    """The rows as the slow, obvious reading gives them: group identical answers (the same
    body object to the same client in the same second), then read each body in full."""
    groups: dict[tuple[int, str, int], list[Any]] = {}
    for t, client, target, body, seconds, *count in entries:
        group = groups.setdefault((int(t), client, id(body)), [t, client, target, body, 0.0, 0])
        group[4] += seconds
        group[5] += count[0] if count else 1
    rows: list[Row] = []
    for t, client, target, body, seconds, count in groups.values():
        service = service_of(target)
        if service is None:
            continue
        head = (t, mask(client), round(seconds / count * 1e6) / 1000, count)
        rows += [head + tmpl for tmpl in templates(service, bytes(body))]
    return rows


def file_bodies() -> list[tuple[bytes, bytes]]:
    """One-item and batch file answers, every verdict and source."""
    answers = [
        FileAnswer(Verdict.MALICIOUS, Source.BLOCKED_LIST, "Blocked-By-Administrator", 3600,
                   matched="sha256:ab"),
        FileAnswer(Verdict.CLEAN, Source.APPROVED_LIST, ttl=3600, matched="md5:cd"),
        FileAnswer(Verdict.MALICIOUS, Source.PATTERN, "Eicar_test_file", 3600),
        FileAnswer(Verdict.SUSPICIOUS, Source.CACHE, "Heur.Susp", 120),
        FileAnswer(Verdict.CLEAN, Source.CLOUD, ttl=600),
        FileAnswer(Verdict.UNKNOWN, Source.LOCAL, ttl=3600),
        FileAnswer(Verdict.UNKNOWN, Source.DEGRADED, retry_after=60),
        FileAnswer(Verdict.MALICIOUS, Source.CLOUD, 'Tro"jan\\x\n{[]}', 60),  # escapes, brackets
    ]
    out = []
    for kind in HashKind:
        for answer in answers:
            for _ in range(3):  # distinct items, one shape
                q = FileQuery(kind, os.urandom(kind.size))
                out.append((f"/v1/file/{q.hex}".encode(), replies.render_files(V, [q], [answer])))
    queries = [FileQuery(k, os.urandom(k.size)) for k in HashKind]
    out.append((b"/v1/file", replies.render_files(V, queries, answers[:3])))
    return out


def web_bodies() -> list[tuple[bytes, bytes]]:
    answers = [
        WebAnswer(Rating.DANGEROUS, Source.BLOCKED_LIST, 100, "blocked-by-administrator", 3600,
                  matched="bad.example.test"),
        WebAnswer(Rating.SAFE, Source.APPROVED_LIST, 0, "approved-by-administrator", 3600,
                  matched="example.test/ok/"),
        WebAnswer(Rating.DANGEROUS, Source.PATTERN, 100, "malware", 3600, matched="x.example.test/bad/"),
        WebAnswer(Rating.SUSPICIOUS, Source.PATTERN, 60, "spam", 3600, matched="x.example.test/free/"),
        WebAnswer(Rating.HIGHLY_SUSPICIOUS, Source.PATTERN, 80, "phishing", 3600, matched="192.0.2.0/24"),
        WebAnswer(Rating.UNTESTED, Source.CACHE, 50, None, 30),
        WebAnswer(Rating.SAFE, Source.CLOUD, 0, "news", 600),
        WebAnswer(Rating.UNTESTED, Source.LOCAL, 50, None, 3600),
        WebAnswer(Rating.UNTESTED, Source.DEGRADED, 50, None, retry_after=60),
    ]
    urls = ["http://a.example.test/p", "https://user:secret@b.example.test:8443/x?token=1#f",
            "http://c.example.test/" + "long/" * 100, 'http://d.example.test/q"uote\\back',
            "http://e.example.test/caf\u00e9", "http://f.example.test/ctl\x01x", "g.example.test"]
    out = []
    for answer in answers:
        for url in urls:
            q = WebQuery(url, url, "x")
            out.append((b"/v1/web?url=x", replies.render_web(V, [q], [answer], None)))
            for policy in (Policy.LOW, Policy.HIGH):
                out.append((b"/v1/web", replies.render_web(V, [q], [answer], policy,
                                                           block_degraded=True)))
    queries = [WebQuery(u, u, "x") for u in urls[:3]]
    out.append((b"/v1/web", replies.render_web(V, queries, answers[:3], Policy.MEDIUM)))
    return out


def domain_bodies() -> list[tuple[bytes, bytes]]:
    import ipaddress

    answers = [WebAnswer(Rating.DANGEROUS, Source.PATTERN, 100, "botnet", 3600, matched="example.test"),
               WebAnswer(Rating.SAFE, Source.APPROVED_LIST, 0, "approved-by-administrator", 3600),
               WebAnswer(Rating.UNTESTED, Source.LOCAL, 50, None, 3600)]
    queries = [DomainQuery("Malware.Example.Test.", "malware.example.test"),
               DomainQuery("192.0.2.7", "192.0.2.7", ipaddress.ip_address("192.0.2.7")),
               DomainQuery("2001:db8::1", "2001:db8::1", ipaddress.ip_address("2001:db8::1")),
               DomainQuery("x" * 400 + ".test", "x" * 400 + ".test")]
    out = [(f"/v1/domain/{q.item}".encode(), replies.render_domains(V, [q], [a]))
           for a in answers for q in queries]
    out.append((b"/v1/domain", replies.render_domains(V, queries[:3], answers)))
    return out


def odd_bodies() -> list[tuple[bytes, bytes]]:
    """Bodies near the fast path's shape, each to be read in full (or give no row)."""
    one = replies.render_files(V, [FileQuery(HashKind.MD5, b"\x44" * 16)],
                               [FileAnswer(Verdict.CLEAN, Source.CLOUD, ttl=60)])
    return [
        (b"/v1/file/x", one.replace(b'"md5":"', b'"md5":"\\u0041')),  # an escape in the item
        (b"/v1/file/x", one.replace(b'"md5":"', b'"md5":"\x01')),  # a raw control character
        (b"/v1/file/x", one[:-3] + b',"md5":"ff"}]}'),  # the subject again, later: the later wins
        (b"/v1/file/x", one[:-1]),  # cut short
        (b"/v1/file/x", b""),
        (b"/v1/file/x", b'{"error":{"code":"bad_item","message":"no"}}'),
        (b"/v1/file/x", b'{"protocol":1,"pattern":"' + V.encode() + b'","results":[{"md5":"'),
        (b"/healthz", b'{"ok":true}'),
        (b"/v1/inspect", json.dumps({"protocol": 1, "pattern": V, "results": [
            {"url": "http://x.example.test/", "rating": "safe", "source": "cloud",
             "detail": {"a": [1]}}]}).encode()),
    ]


def odd_batches() -> list[tuple[bytes, bytes]]:
    """Batches near ``_many``'s shape: each to be read in full where a result is not plain."""
    answers = [FileAnswer(Verdict.MALICIOUS, Source.PATTERN, "Eicar_test_file", 3600),
               FileAnswer(Verdict.CLEAN, Source.CLOUD, ttl=600),
               FileAnswer(Verdict.MALICIOUS, Source.CLOUD, "x},{", 60)]  # a cut in a string
    queries = [FileQuery(HashKind.MD5, bytes([i]) * 16) for i in range(3)]
    batch = replies.render_files(V, queries, answers[:2] * 1 + answers[:1])
    first, cut = batch.index(b'},{"') + 1, batch.rindex(b'},{"') + 1
    urls = [WebQuery(u, u, "x") for u in ("http://a.example.test/},{", "http://b.example.test/")]
    web = WebAnswer(Rating.SAFE, Source.CLOUD, 0, "news", 600)
    return [
        (b"/v1/file", replies.render_files(V, queries, answers)),
        (b"/v1/file", batch.replace(b'"md5":"01', b'"md5":"\\u0041', 1)),  # an escaped item
        (b"/v1/file", batch[:first] + b',{"md5":"aa","detail":{"a":[1]}}' + batch[first:]),  # nested
        (b"/v1/file", batch[:cut] + b',{"verdict":"clean","md5":"bb"}' + batch[cut:]),  # subject later
        (b"/v1/file", batch[:cut] + b',{"md5":"cc","source":"x","md5":"dd"}' + batch[cut:]),  # again
        (b"/v1/file", batch[:cut] + b",{}" + batch[cut:]),  # an empty result
        (b"/v1/file", batch[:cut] + b",7" + batch[cut:]),  # not an object
        (b"/v1/file", batch[:cut] + b"x" + batch[cut:]),  # not JSON
        (b"/v1/file", batch[:-2] + b",]}"),
        (b"/v1/web", replies.render_web(V, urls, [web, web], None)),  # an item with a cut
        (b"/v1/web", replies.render_web(V, urls[1:] * 3, [web] * 3, Policy.HIGH)),
    ]


def everything() -> list[tuple[bytes, bytes]]:
    return file_bodies() + web_bodies() + domain_bodies() + odd_bodies() + odd_batches()


def entries_of(bodies: list[tuple[bytes, bytes]]) -> list[Entry]:
    """Each body asked by two clients, some again at once (the same object: grouped), some
    in the next second, in a varied order."""
    out: list[Entry] = []
    for i, (target, body) in enumerate(bodies):
        t = T0 + i * 0.01
        out.append((t, "192.0.2.1", target, body, 0.0012345 * (i % 7 + 1)))
        if i % 3 == 0:
            out.append((t + 0.001, "192.0.2.1", target, body, 0.002))  # grouped
            out.append((t, "10.1.2.3", target, body, 0.003))  # another client
        if i % 5 == 0:
            out.append((t + 1.0, "192.0.2.1", target, body, 0.004))  # the next second
    return out


@pytest.mark.parametrize("mask", [ClientMask("full"), ClientMask("truncated"),
                                  ClientMask("full", ["10.0.0.0/8=none"])], ids=str)
def test_the_fast_rows_equal_a_full_reading_of_each_answer(mask: ClientMask) -> None:
    entries = entries_of(everything())
    answers = Answers(mask)
    first = answers.batch(entries)
    assert first == plain(entries, mask)
    assert answers.batch(entries) == first  # again, from the memo and the shapes learnt
    assert len(first) > len(entries) // 2


def test_a_batch_equals_the_plain_rows_of_each_group() -> None:
    entries = entries_of(everything())
    grouped: dict[tuple[int, str, int], list[Any]] = {}
    for t, client, target, body, seconds in entries:
        g = grouped.setdefault((int(t), client, id(body)), [t, client, target, body, 0.0, 0])
        g[4] += seconds
        g[5] += 1
    one_by_one = Answers("full")
    expected = [row for t, client, target, body, seconds, count in grouped.values()
                for row in one_by_one.rows(t, client, target, body, seconds / count, count)]
    assert Answers("full").batch(entries) == expected


def test_a_shape_learnt_is_not_applied_to_an_item_that_is_not_plain() -> None:
    answers = Answers("full")
    (target, body), *_ = file_bodies()
    answers.batch([(T0, "c", target, body, 0.001)])  # the shape is learnt
    assert body.count(b'"md5":"') == 1
    escaped = body.replace(b'"md5":"', b'"md5":"\\u0041')
    (row,) = answers.batch([(T0, "c", target, escaped, 0.001)])
    assert row[5] == "A" + body.split(b'"md5":"')[1][:32].decode()  # read in full: decoded
    other = body.replace(b'"pattern":"', b'"pattern":"\\u0041')  # an envelope not learnt
    assert answers.batch([(T0, "c", target, other, 0.001)]) == plain(
        [(T0, "c", target, other, 0.001)], ClientMask("full"))


def test_the_real_routes_answers_take_the_fast_path_alike(ask: Ask) -> None:
    asked = [ask("GET", f"/v1/file/{EICAR_SHA256}"), ask("GET", f"/v1/file/{os.urandom(32).hex()}"),
             ask("GET", f"/v1/web?url={MALWARE_URL}"), ask("GET", "/v1/domain/192.0.2.7"),
             ask("POST", "/v1/web", {"urls": [MALWARE_URL], "policy": "high"}),
             ask("POST", "/v1/file", {"items": [{"md5": "zz"}]}),  # a 400
             ask("GET", "/healthz")]
    entries = [(T0, r.client, r.target, a.body, 0.001) for r, a in asked]
    rows = Answers("full").batch(entries)
    assert rows == plain(entries, ClientMask("full"))
    assert [r[4] for r in rows] == ["file", "file", "web", "domain", "web"]


def test_single_answers_with_plain_items_are_read_by_their_shape() -> None:
    """Not vacuous: the fast reading is the one taken for one plain item, not the full one."""
    answers = Answers("full")
    singles = [(t, b) for t, b in file_bodies() + domain_bodies()
               if b.count(b'"source"') == 1 and b"{[]}" not in b]  # brackets: read in full
    read = [answers._single(service_of(t) or "", b) for t, b in singles]
    assert all(r is not None for r in read)
    assert len(answers._shapes) < len(singles) // 2  # shapes repeat; items do not
    for _target, body in odd_bodies()[:4]:
        assert answers._single("file", body) is None


def test_batches_with_plain_results_are_read_by_their_shapes() -> None:
    """Not vacuous: a batch of plain results is read by ``_many``, whose rows are the full
    reading's; a batch with any result not plain is left to the full reading."""
    answers = Answers("full")
    batches = [(t, b) for t, b in file_bodies() + web_bodies() + domain_bodies()
               if b.count(b'"source"') > 1 and b"{[]}" not in b and b"\\" not in b]
    assert len(batches) >= 3
    for target, body in batches:
        service = service_of(target) or ""
        assert answers._many(service, body) == tuple(templates(service, body))
    odd = odd_batches()
    assert answers._many("file", odd[0][1]) is None  # a threat with a cut in it
    assert all(answers._many("file", body) is None for _, body in odd[1:9])
    assert answers._many("web", odd[9][1]) is None
    assert answers._many("web", odd[10][1]) == tuple(templates("web", odd[10][1]))


def by_column_bodies() -> list[tuple[bytes, Logged]]:
    """File batches as the routes queue them: body and items by column (``Response.items``),
    every kind, verdict and source, and threats the body must be read for (brackets)."""
    answers = [FileAnswer(Verdict.MALICIOUS, Source.PATTERN, "Eicar_test_file", 3600),
               FileAnswer(Verdict.CLEAN, Source.CACHE, ttl=120),
               FileAnswer(Verdict.UNKNOWN, Source.DEGRADED, retry_after=60),
               FileAnswer(Verdict.MALICIOUS, Source.CLOUD, 'Tro"jan\\x\n', 60),  # escapes: learnt
               FileAnswer(Verdict.SUSPICIOUS, Source.CLOUD, "caf\u00e9", 60)]
    odd = FileAnswer(Verdict.MALICIOUS, Source.CLOUD, "x{[]}", 60)  # brackets: the body is read
    rng = random.Random(5)
    out = []
    for n, pool in ((2, answers), (40, answers), (300, answers), (30, [*answers, odd])):
        queries = [FileQuery(k, os.urandom(k.size)) for k in rng.choices(list(HashKind), k=n)]
        body, batch, tails = replies.render_file_parts(V, queries, rng.choices(pool, k=n))
        out.append((b"/v1/file", Logged(body, ("file", batch.names, batch.hexes, tails))))
    return out


def test_a_batch_by_column_gives_the_rows_of_its_body() -> None:
    answers = Answers("full")
    logged = by_column_bodies()
    entries = [(T0 + i, "192.0.2.1", target, body, 0.001) for i, (target, body) in enumerate(logged)]
    read = [(t, c, target, body.body, s) for t, c, target, body, s in entries]
    assert answers.batch(entries) == plain(read, ClientMask("full"))
    assert Answers("full").rows(*entries[1]) == plain(read[1:2], ClientMask("full"))
    fresh = Answers("full")  # not vacuous: the items are what is read, not the body
    assert all(fresh._by_column("file", body.items) is not None for _, body in logged[:3])
    assert fresh._by_column("file", logged[3][1].items) is None
    assert fresh._by_column("web", logged[0][1].items) is None
    assert len(Logged(b"abc", ("file", [], [], []))) == 6  # weighed with its items


def test_the_routes_queue_a_batch_by_column(ask: Ask) -> None:
    request, answer = ask("POST", "/v1/file", {"items": [{"sha256": EICAR_SHA256}, {"md5": "0" * 32}]})
    assert answer.items is not None and answer.items[0] == "file"
    assert ask("GET", f"/v1/file/{EICAR_SHA256}")[1].items is None  # one item: read by its shape
    entry = (T0, request.client, request.target, Logged(answer.body, answer.items), 0.001)
    assert Answers("full").batch([entry]) == plain(
        [(T0, request.client, request.target, answer.body, 0.001)], ClientMask("full"))
