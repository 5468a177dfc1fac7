"""The DNS answer memo holds the door's answers equal to the plain path's, counted and
logged alike, and lets go of them when the lists, the pattern or an expiry change them."""

from __future__ import annotations

import random
from typing import Any

import dns.message

from proxy.decide.lists import ListName
from proxy.dns.answers import Answerer
from proxy.dns.memo import AnswerMemo
from proxy.serve.app import App

IP, DN = "ip.rampart.local", "dn.rampart.local"
NAMES = [f"7.2.0.192.{IP}", f"7.100.51.198.{IP}", f"9.9.9.9.{IP}", f"malware.example.test.{DN}",
         f"WWW.Malware.Example.Test.{DN}", f"example.org.{DN}", f"good.example.test.{DN}", IP, DN,
         f"2.0.0.127.{IP}", f"test.{DN}", "example.com", f"300.2.0.192.{IP}"]
TYPES = ["A", "TXT", "ANY", "AAAA", "SOA", "NS"]


class Recorder:
    def __init__(self) -> None:
        self.stats: list[tuple[str, str, str]] = []
        self.logs: list[tuple[str, str, str, str]] = []

    def stat(self, zone: str, rcode: str, source: str) -> None:
        self.stats.append((zone, rcode, source))

    def log(self, client: str, item: str, answer: Any, rcode: str, seconds: float,
            matched: str | None = None) -> None:
        self.logs.append((client, item, getattr(answer, "source", None) and answer.source.value, rcode))


def pair(app: App) -> tuple[Answerer, Recorder, Answerer, Recorder]:
    fast, plain = Recorder(), Recorder()
    a = Answerer(lambda: app.engine, app.cfg, stats=fast.stat, log=fast.log)
    b = Answerer(lambda: app.engine, app.cfg, stats=plain.stat, log=plain.log)
    b.memo = AnswerMemo(size=0)
    return a, fast, b, plain


def packets(seed: int, n: int = 400) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = dns.message.make_query(rng.choice(NAMES), rng.choice(TYPES), use_edns=rng.choice([-1, 0]))
        out.append(q.to_wire())
    return out


def test_the_memo_answers_what_the_plain_path_answers_and_counts_alike(app: App) -> None:
    a, fast, b, plain = pair(app)
    items_before = dict(app.stats.items)
    for packet in packets(1):
        for transport in ("udp", "tcp"):
            assert a.answer(packet, "10.0.0.1", transport) == b.answer(packet, "10.0.0.1", transport)
    assert a.memo.hits > 300  # the same questions came back: most were replayed
    assert fast.stats == plain.stats and fast.logs == plain.logs
    counted = {k: v - items_before.get(k, 0) for k, v in app.stats.items.items()}
    assert all(n % 2 == 0 for n in counted.values())  # each answer counted twice: once per path


def test_a_list_change_is_answered_at_once(app: App) -> None:
    a, _, b, _ = pair(app)
    packet = dns.message.make_query(f"example.org.{DN}", "A").to_wire()
    assert a.answer(packet, "10.0.0.1", "udp") == b.answer(packet, "10.0.0.1", "udp")
    app.lists_store.add(ListName.BLOCKED, [(None, "example.org")])
    app.engine.lists = app.lists_store.snapshot()
    got = dns.message.from_wire(a.answer(packet, "10.0.0.1", "udp"))  # type: ignore[arg-type]
    assert [r.to_text() for r in got.answer[0]] == ["127.0.0.10"]


def test_scoped_rules_are_answered_per_client(app: App) -> None:
    a, _, b, _ = pair(app)
    app.lists_store.add(ListName.BLOCKED, [(None, "scoped.example.org")], clients=["10.1.0.0/16"])
    app.engine.lists = app.lists_store.snapshot()
    packet = dns.message.make_query(f"scoped.example.org.{DN}", "A").to_wire()
    for client in ("10.1.2.3", "10.2.2.2", "10.1.2.3", "10.2.2.2"):
        assert a.answer(packet, client, "udp") == b.answer(packet, client, "udp")
    inside = dns.message.from_wire(a.answer(packet, "10.1.2.3", "udp"))  # type: ignore[arg-type]
    outside = dns.message.from_wire(a.answer(packet, "10.2.2.2", "udp"))  # type: ignore[arg-type]
    assert inside.answer and not outside.answer


def test_an_expiring_rule_is_not_replayed_past_its_expiry(app: App) -> None:
    a, _, _, _ = pair(app)
    now = [1_000.0]
    a.memo.clock = lambda: now[0]
    snapshot = app.lists_store.snapshot()
    app.engine.lists = snapshot
    packet = dns.message.make_query(f"example.org.{DN}", "A").to_wire()
    a.answer(packet, "10.0.0.1", "udp")
    a.answer(packet, "10.0.0.1", "udp")
    hits = a.memo.hits
    a.memo._until = 1_500.0  # as a snapshot whose next rule expires then sets it
    now[0] = 2_000.0
    a.answer(packet, "10.0.0.1", "udp")
    assert a.memo.hits == hits  # past the expiry: answered afresh, not replayed
