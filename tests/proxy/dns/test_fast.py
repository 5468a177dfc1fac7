"""The DNS door's fast lane (``Answerer._fast``, ``Zones.fast_item``, ``Engine.begin_domain_one``)
answers, counts and logs exactly as the plain path does, for every shape it takes and every
shape it passes on."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest

from proxy.config import Config
from proxy.decide.lists import ListName
from proxy.dns.answers import Answerer
from proxy.dns.memo import AnswerMemo
from proxy.dns.zones import Zones
from proxy.model import Service
from proxy.serve.app import App

IP, DN = "ip.rampart.local", "dn.rampart.local"
NAMES = [
    f"7.2.0.192.{IP}", f"7.100.51.198.{IP}", f"9.9.9.9.{IP}", f"1.2.0.10.{IP}", f"0.0.0.0.{IP}",
    f"255.255.255.255.{IP}", f"07.2.0.192.{IP}", f"300.2.0.192.{IP}", f"2.0.0.127.{IP}",
    f"1.0.0.127.{IP}", f"2.0.192.{IP}", f"x.7.2.0.192.{IP}", f"malware.example.test.{DN}",
    f"WWW.Malware.Example.Test.{DN}", f"example.org.{DN}", f"sub.blocked.example.{DN}",
    f"approved.example.{DN}", f"good.example.test.{DN}", f"1password.example.{DN}",
    f"192.0.2.7.{DN}", f"test.{DN}", f"invalid.{DN}", f"under_score.example.{DN}", IP, DN,
    f"bad!.example.{DN}", "example.com", f"{'a' * 63}.{'b' * 63}.{'c' * 63}.{'d' * 40}.{DN}",
    "1.1.1.1." + ".".join("0" * 28) + f".{IP}",
]
TYPES = ["A", "A", "A", "ANY", "TXT", "AAAA", "SOA"]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    app = App(Config(data_dir=tmp_path, query_port=0, query_tls_port=0))
    app.open()
    app.lists_store.add(ListName.BLOCKED, [(None, "blocked.example"), (None, "10.0.2.1")])
    app.lists_store.add(ListName.APPROVED, [(None, "approved.example")])
    app.engine.lists = app.lists_store.snapshot()
    yield app
    app.lists_store.close()
    app.engine.patterns.close()


class Recorder:
    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def stat(self, zone: str, rcode: str, source: str) -> None:
        self.rows.append(("stat", zone, rcode, source))

    def log(self, client: str, item: str, answer: Any, rcode: str, seconds: float,
            matched: str | None = None) -> None:
        """What the door's log reads of an answer (the compiled lane passes its matched
        entry apart from the answer, which it makes once per kind of answer)."""
        read = None if answer is None else (answer.rating, answer.source, answer.category,
                                            answer.matched if matched is None else matched)
        self.rows.append(("log", client, item, read, rcode))


def answerers(app: App, off: str = "fast") -> tuple[Answerer, Recorder, Answerer, Recorder]:
    """Two answerers without a memo, the second with lane ``off`` turned off (``fast``: both
    fast lanes; ``compiled``: the compiled one alone, tests/proxy/dns/test_lane.py)."""
    fast, plain = Recorder(), Recorder()
    a = Answerer(lambda: app.engine, app.cfg, stats=fast.stat, log=fast.log)
    b = Answerer(lambda: app.engine, app.cfg, stats=plain.stat, log=plain.log)
    a.memo, b.memo = AnswerMemo(size=0), AnswerMemo(size=0)
    setattr(b, off, False)
    return a, fast, b, plain


def query(rng: random.Random, name: str) -> bytes:
    q = dns.message.make_query(name, rng.choice(TYPES), use_edns=rng.choice([-1, 0]),
                               want_dnssec=rng.random() < 0.3, payload=rng.choice([512, 1232, 4096]))
    if rng.random() < 0.3:
        q.flags &= ~dns.flags.RD
    if rng.random() < 0.2:
        q.flags |= dns.flags.CD
    q.id = rng.randrange(1 << 16)
    return q.to_wire()


def test_the_fast_lane_answers_counts_and_logs_as_the_plain_path(app: App) -> None:
    a, fast, b, plain = answerers(app)
    probe = Answerer(lambda: app.engine, app.cfg)  # asks _fast alone, hooks unrecorded
    rng = random.Random(12)
    taken = 0
    for _ in range(1500):
        packet = query(rng, rng.choice(NAMES))
        transport = rng.choice(["udp", "tcp"])
        before = dict(app.stats.items)
        got = a.answer(packet, "10.0.0.1", transport)
        counted = {k: v - before.get(k, 0) for k, v in app.stats.items.items() if v != before.get(k, 0)}
        before = dict(app.stats.items)
        want = b.answer(packet, "10.0.0.1", transport)
        assert got == want, dns.message.from_wire(packet).question
        assert counted == {k: v - before.get(k, 0) for k, v in app.stats.items.items()
                           if v != before.get(k, 0)}
        taken += probe._fast(packet, "10.0.0.1", transport, app.engine) is not None
    assert fast.rows == plain.rows
    assert taken > 300  # the common shapes did go through the fast lane


def test_what_the_fast_lane_answers_is_what_a_mail_server_reads(app: App) -> None:
    a, _, _, _ = answerers(app)
    for name, rcode, address in ((f"7.100.51.198.{IP}", "NOERROR", "127.0.0.2"),
                                 (f"1.2.0.10.{IP}", "NOERROR", "127.0.0.10"),
                                 (f"Malware.Example.Test.{DN}", "NOERROR", "127.0.0.2"),
                                 (f"sub.blocked.example.{DN}", "NOERROR", "127.0.0.10"),
                                 (f"approved.example.{DN}", "NXDOMAIN", None),
                                 (f"example.org.{DN}", "NXDOMAIN", None)):
        packet = dns.message.make_query(name, "A", use_edns=0).to_wire()
        assert a._fast(packet, "10.0.0.1", "udp", app.engine) is not None
        got = dns.message.from_wire(a.answer(packet, "10.0.0.1", "udp"))  # type: ignore[arg-type]
        assert dns.rcode.to_text(got.rcode()) == rcode
        assert got.flags & dns.flags.AA and not got.flags & dns.flags.RA
        assert str(got.question[0].name).rstrip(".") == name  # its case echoed (0x20)
        if address:
            assert [r.to_text() for r in got.answer[0]] == [address]
        else:
            assert got.authority[0].rdtype == 6 and got.authority[0].ttl == app.cfg.local_ttl


def test_fast_item_reads_what_classify_reads() -> None:
    zones = Zones(IP, DN)
    rng = random.Random(5)
    parts = ["7", "2", "0", "192", "255", "256", "07", "00", "a", "x-y", "_dmarc", "Z", "1e",
             "ip", "dn", "rampart", "local", "test", "invalid", "", "b" * 63, "f"]
    names = [name.lower().split(".") for name in NAMES] + [
        [rng.choice(parts) for _ in range(rng.randrange(1, 7))] + rng.choice([IP, DN, "x"]).split(".")
        for _ in range(3000)]
    read = 0
    for name in names:
        labels = [label.encode() for label in name if label]
        fast = zones.fast_item(labels)
        if fast is None:
            continue
        read += 1
        zone, wire_len, item = fast
        asked = zones.classify(labels)
        assert (asked.zone, asked.query) == (zone, item)
        assert wire_len == len(zone.name) + 2  # its labels, their lengths and the root
    assert read > 300


def test_begin_domain_one_is_begin_domains_for_one_item(app: App) -> None:
    engine = app.engine
    zones = Zones(IP, DN)
    cached = zones.classify([b"cached", b"example", b"dn", b"rampart", b"local"]).query
    assert cached is not None
    engine.cache.put(f"domain:{cached.name}", engine.begin_domains([cached])[0][0], 60)
    for relay in (None, object()):  # no cloud: the final fallback; a cloud: what to ask it
        engine.relay = relay  # type: ignore[assignment]
        for name in [*NAMES, f"cached.example.{DN}"]:
            asked = zones.classify([label.encode() for label in name.lower().split(".")])
            if asked.query is None:
                continue
            for client in ("10.0.0.1", None):
                answers, ask = engine.begin_domains([asked.query], client)
                assert engine.begin_domain_one(asked.query, client) == (answers[0], ask)
    engine.relay = None
    engine.count_one(Service.DOMAIN, answers[0])  # counted as count() counts it
    assert app.stats.items[("domain", answers[0].source.value)] >= 1


class Writer:
    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def submit(self, table: str, row: tuple[Any, ...]) -> bool:
        self.rows.append(row)
        return True


def test_the_door_logs_each_answer_as_entries_template_reads_it(tmp_path: Path) -> None:
    """The door's row shapes (one per rating, source, category) give the rows the log's own
    reading of a /v1/domain result gives, for any name and matched entry."""
    from proxy.dns.door import DnsDoor
    from proxy.logs import entries
    from proxy.model import Rating, Source, WebAnswer

    cfg = Config(data_dir=tmp_path, query_port=0, query_tls_port=0, dns_port=0)
    writer = Writer()
    logs = type("Logs", (), {"writer": writer})()
    door = DnsDoor(cfg, Answerer(lambda: None, cfg), logs_of=lambda: logs)  # type: ignore[arg-type,return-value]
    rng = random.Random(3)
    names = ["bad.example", "x" * 300, "tab\there.example", "192.0.2.7", "2001:db8::1", ""]
    for _ in range(400):
        answer = WebAnswer(rng.choice(list(Rating)), rng.choice(list(Source)), category=rng.choice(
            [None, "malware", "spam\nline", "c" * 250]), matched=rng.choice([None, "bad.example", "m" * 260,
                                                                       "10.0.0.0/8", "a\x00b"]))
        name = rng.choice(names)
        door.log("10.0.0.1", name, answer, "NOERROR", 0.0015)
        door.flush_log()
        result: dict[str, Any] = {"domain": name, "rating": answer.rating.value,
                                  "source": answer.source.value}
        if answer.matched is not None:
            result["matched"] = answer.matched
        if answer.category is not None:
            result["category"] = answer.category
        assert writer.rows[-1][4:] == entries.template("domain", result)
        assert writer.rows[-1][1:4] == ("10.0.0.1", 1.5, 1)


def _door_with_writer(tmp_path: Path) -> tuple[Any, Writer]:
    from proxy.dns.door import DnsDoor

    cfg = Config(data_dir=tmp_path, query_port=0, query_tls_port=0, dns_port=0)
    writer = Writer()
    logs = type("Logs", (), {"writer": writer})()
    door = DnsDoor(cfg, Answerer(lambda: None, cfg), logs_of=lambda: logs)  # type: ignore[arg-type,return-value]
    return door, writer


def test_the_same_answer_to_a_client_in_a_second_is_one_row(tmp_path: Path, monkeypatch: Any) -> None:
    """Held until the second ends: a count and the mean latency per client, item and answer;
    the next second's first answer writes the last second's rows; bounded per second."""
    from proxy.dns import door as door_module
    from proxy.model import Rating, Source, WebAnswer

    door, writer = _door_with_writer(tmp_path)
    bad = WebAnswer(Rating.DANGEROUS, Source.PATTERN, category="malware", matched="bad.example")
    other = WebAnswer(Rating.DANGEROUS, Source.PATTERN, category="malware", matched="example")
    clock = [1000.2]
    door._wall = lambda: clock[0]
    for t, client, answer, ms in [(1000.2, "10.0.0.1", bad, 1), (1000.5, "10.0.0.1", bad, 2),
                                  (1000.6, "10.0.0.2", bad, 4), (1000.7, "10.0.0.1", other, 5),
                                  (1000.9, "10.0.0.1", bad, 3)]:
        clock[0] = t
        door.log(client, "x.bad.example", answer, "NOERROR", ms / 1000)
    assert writer.rows == []  # held for the second
    clock[0] = 1001.05
    door.log("10.0.0.1", "x.bad.example", bad, "NOERROR", 0.001)  # the next second
    assert [(r[0], r[1], r[2], r[3], r[5], r[10]) for r in writer.rows] == [
        (1000.2, "10.0.0.1", 2.0, 3, "x.bad.example", "bad.example"),
        (1000.6, "10.0.0.2", 4.0, 1, "x.bad.example", "bad.example"),
        (1000.7, "10.0.0.1", 5.0, 1, "x.bad.example", "example")]
    door.flush_log()
    assert writer.rows[-1][:4] == (1001.05, "10.0.0.1", 1.0, 1) and len(writer.rows) == 4
    monkeypatch.setattr(door_module, "MAX_GROUPS", 2)
    for i in range(5):
        door.log("10.0.0.1", f"n{i}.example", bad, "NOERROR", 0.001)
    assert len(writer.rows) == 4 + 4  # two flushes of two rows; the fifth is held
    door.flush_log()
    assert [r[5] for r in writer.rows[4:]] == [f"n{i}.example" for i in range(5)]


async def test_rows_held_are_written_when_their_second_ends(tmp_path: Path) -> None:
    import asyncio

    from proxy.model import Rating, Source, WebAnswer

    door, writer = _door_with_writer(tmp_path)
    door.log("10.0.0.1", "x.bad.example", WebAnswer(Rating.DANGEROUS, Source.PATTERN), "NOERROR", 0.001)
    assert writer.rows == []
    await asyncio.sleep(1.1)  # no other answer came: the timer wrote it
    assert [(r[1], r[3], r[5]) for r in writer.rows] == [("10.0.0.1", 1, "x.bad.example")]


TAILS = [  # A IN without and with OPT, ANY IN, A IN with an OPT holding an option
    b"\x00\x01\x00\x01", b"\x00\x01\x00\x01\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00", b"\x00\xff\x00\x01",
    b"\x00\x01\x00\x01\x00\x00\x29\x02\x00\x00\x00\x80\x00\x00\x08\x00\x0a\x00\x04\x02dn\x00"]


def _wire(labels: list[bytes], tail: bytes) -> bytes:
    ar = b"\x00\x01" if len(tail) > 4 else b"\x00\x00"  # an OPT record after the question
    return b"\x12\x34\x01\x00" + b"\x00\x01\x00\x00\x00\x00" + ar + b"".join(
        bytes([len(label)]) + label for label in labels) + b"\x00" + tail


def test_fast_wire_reads_what_fast_item_and_classify_read() -> None:
    """``Zones.fast_wire`` (the zone found in the packet's bytes) gives what ``fast_item``
    gives for the same labels, for many generated names, with or without an OPT record;
    and None for any name it cannot read exactly (the plain path reads those)."""
    zones = Zones(IP, DN)
    nested = Zones("ip.rampart.local", "rampart.local")  # one zone inside the other
    rng = random.Random(7)
    parts = ["7", "2", "0", "192", "255", "256", "07", "00", "a", "x-y", "_dmarc", "z", "1e",
             "ip", "dn", "rampart", "local", "test", "invalid", "", "b" * 63, "f", "1", "10",
             "a.b", "x\x00", "\x02dn", "-", "0x1"]
    read = 0
    for i in range(6000):
        z = zones if i % 3 else nested
        zone = rng.choice([IP, DN, "rampart.local", "x", "local"])
        name = [rng.choice(parts) for _ in range(rng.randrange(0, 6))] + zone.split(".")
        if rng.random() < 0.5:  # plain random octets as a whole IPv4 address
            name = [str(rng.randrange(300)) for _ in range(4)] + zone.split(".")
        labels = [label.encode() for label in name if label]
        tail = rng.choice(TAILS)
        packet = _wire(labels, tail)
        fast = z.fast_wire(packet.lower())
        want = z.fast_item(labels) if all(0 < len(x) < 64 for x in labels) else None
        if want is None:
            assert fast is None, name
            continue
        read += 1
        assert fast is not None, name
        zone_of, apex, qend, item = fast
        assert (zone_of, item) == (want[0], want[2])
        assert z.classify(labels).query == item
        assert packet[apex:qend - 4] == b"".join(bytes([len(x)]) + x for x in zone_of.labels) + b"\x00"
        assert qend == 12 + sum(len(x) + 1 for x in labels) + 5
    assert read > 1000
