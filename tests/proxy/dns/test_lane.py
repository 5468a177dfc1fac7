"""The DNS door's compiled lane (proxy/dns/_lane.c) answers, counts and logs exactly as the
Python fast lane (``Answerer._fast``) does, takes the common queries, and passes on every
query it must not answer (list entries, cached answers, a cloud to ask, bad packets)."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import dns.message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import Config
from proxy.decide.lists import ListName
from proxy.dns.answers import Answerer
from proxy.dns.lane import LANE
from proxy.model import Rating, Source, WebAnswer
from proxy.serve.app import App
from tests.proxy.dns.test_fast import DN, IP, NAMES, Recorder, answerers, query
from tests.proxy.dns.test_fast import app as app  # the same App: sample pattern, two lists

compiled = pytest.mark.skipif(LANE is None, reason="the compiled lane (proxy.dns._lane) is not built")


def test_the_lane_is_built_where_required() -> None:
    if LANE is None and os.environ.get("RAMPART_REQUIRE_COMPILED") != "1":
        pytest.skip("proxy.dns._lane not built (no C compiler at install): the DNS door answers in Python")
    assert LANE is not None, "RAMPART_REQUIRE_COMPILED=1 but the _lane module is not built"

MORE = [f"{a}.{b}.51.198.{IP}" for a in (0, 7, 99, 255) for b in (0, 100)] + [
    f"x{i}.malware.example.test.{DN}" for i in range(5)] + [f"nothing{i}.example.{DN}" for i in range(5)]


def pair(app: App) -> tuple[Answerer, Recorder, Answerer, Recorder]:
    """One answerer with the compiled lane, one with the Python fast lane only; no memo."""
    return answerers(app, off="compiled")


def taken(a: Answerer, app: App, packet: bytes, client: str = "10.0.0.1") -> bool:
    """Whether the compiled lane answers ``packet`` itself."""
    lane = a._lane_of(app.engine)[3]
    return lane.answer(packet, client) is not None


@compiled
def test_sha256_is_sha256() -> None:
    from proxy.dns import _lane  # type: ignore[attr-defined]

    rng = random.Random(3)
    for n in [*range(0, 130), 253, 300, 1000]:
        data = rng.randbytes(n)
        assert _lane.sha256(data) == hashlib.sha256(data).digest(), n


@compiled
def test_the_lane_answers_counts_and_logs_as_the_python_lane(app: App) -> None:
    a, lane, b, python = pair(app)
    rng = random.Random(21)
    took = 0
    for _ in range(2000):
        packet = query(rng, rng.choice(NAMES + MORE))
        transport = rng.choice(["udp", "tcp"])
        client = rng.choice(["10.0.0.1", "192.168.7.7"])
        before = dict(app.stats.items)
        got = a.answer(packet, client, transport)
        counted = {k: v - before.get(k, 0) for k, v in app.stats.items.items() if v != before.get(k, 0)}
        before = dict(app.stats.items)
        assert got == b.answer(packet, client, transport), dns.message.from_wire(packet).question
        assert counted == {k: v - before.get(k, 0) for k, v in app.stats.items.items()
                           if v != before.get(k, 0)}
        took += taken(a, app, packet, client)
    assert lane.rows == python.rows
    assert took > 400  # the common shapes did go through the compiled lane


@compiled
def test_what_the_lists_decide_is_left_to_python(app: App) -> None:
    a, _, _, _ = pair(app)
    for name in (f"sub.blocked.example.{DN}", f"approved.example.{DN}", f"1.2.0.10.{IP}"):
        assert not taken(a, app, dns.message.make_query(name, "A").to_wire())
    assert taken(a, app, dns.message.make_query(f"malware.example.test.{DN}", "A").to_wire())


@compiled
def test_a_miss_is_left_to_python_while_the_cache_holds_anything(app: App) -> None:
    a, _, b, _ = pair(app)
    packet = dns.message.make_query(f"cached.example.org.{DN}", "A").to_wire()
    assert taken(a, app, packet)
    app.engine.cache.put("domain:cached.example.org",
                         WebAnswer(Rating.DANGEROUS, Source.CLOUD, score=90, ttl=300), 300)
    assert not taken(a, app, packet)
    got = dns.message.from_wire(a.answer(packet, "10.0.0.1", "udp"))  # type: ignore[arg-type]
    assert got.answer and got.answer[0][0].to_text() == "127.0.0.2"  # the cached answer, listed
    assert a.answer(packet, "10.0.0.1", "udp") == b.answer(packet, "10.0.0.1", "udp")


@compiled
def test_a_lane_follows_its_engine_s_pattern_and_lists(app: App) -> None:
    a, _, _, _ = pair(app)
    packet = dns.message.make_query(f"later.example.{DN}", "A").to_wire()
    assert taken(a, app, packet)
    app.lists_store.add(ListName.BLOCKED, [(None, "later.example")])
    app.engine.lists = app.lists_store.snapshot()
    got = dns.message.from_wire(a.answer(packet, "10.0.0.1", "udp"))  # type: ignore[arg-type]
    assert got.answer[0][0].to_text() == "127.0.0.10"  # blocked by the administrator, at once


@compiled
def test_with_an_upstream_zone_or_a_cloud_misses_are_left_to_python(tmp_path: Path) -> None:
    for extra in ({"dns_upstream_zone": "zen.example", "dns_upstream_server": "127.0.0.1:1"},
                  {"cloud": ("https://127.0.0.1:1",)}):
        app = App(Config(data_dir=tmp_path / str(len(extra)), query_port=0, query_tls_port=0, **extra))
        app.open()
        try:
            a = Answerer(lambda app=app: app.engine, app.cfg)
            lane = a._lane_of(app.engine)[3]
            miss = dns.message.make_query(f"unknown.example.{DN}", "A").to_wire()
            hit = dns.message.make_query(f"malware.example.test.{DN}", "A").to_wire()
            assert lane.answer(miss, "10.0.0.1") is None
            assert lane.answer(hit, "10.0.0.1") is not None  # the pattern still answers here
        finally:
            app.lists_store.close()
            app.engine.patterns.close()


@compiled
def test_a_closed_pattern_is_left_to_python(app: App) -> None:
    a, _, _, _ = pair(app)
    lane = a._lane_of(app.engine)[3]
    packet = dns.message.make_query(f"malware.example.test.{DN}", "A").to_wire()
    assert lane.answer(packet, "10.0.0.1") is not None
    app.engine.patterns.close()
    assert lane.answer(packet, "10.0.0.1") is None


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    flips = st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), max_size=4)
    return st.tuples(flips, st.integers(0, len(base) + 8), st.binary(max_size=8)).map(
        lambda t: (bytes(_apply(base, t[0])) + t[2])[:t[1]])


def _apply(base: bytes, flips: list[tuple[int, int]]) -> bytearray:
    out = bytearray(base)
    for at, value in flips:
        out[at] = value
    return out


@compiled
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.sampled_from(NAMES + MORE).flatmap(
    lambda name: _mutations(dns.message.make_query(name, "A", use_edns=0).to_wire())))
def test_damaged_queries_are_answered_as_the_python_lane_answers_them(app: App, packet: bytes) -> None:
    a, _, b, _ = pair(app)
    assert a.answer(packet, "10.0.0.1", "udp") == b.answer(packet, "10.0.0.1", "udp")
