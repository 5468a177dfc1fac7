"""Answerer.answer under 10,000 random and mutated packets: it never raises, never answers more
than the query allows, never answers a response, and keeps answering afterwards."""

from __future__ import annotations

import inspect
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from proxy.config import Config
from proxy.dns.answers import Answerer
from proxy.serve.app import App

NAMES = ["7.2.0.192.ip.rampart.local", "malware.example.test.dn.rampart.local", "dn.rampart.local",
         "2.0.0.127.ip.rampart.local", "example.com", ".".join("b" * 32) + ".ip.rampart.local"]


@pytest.fixture
def answerer(tmp_path: Path) -> Iterator[Answerer]:
    app = App(Config(data_dir=tmp_path, query_port=8080, query_tls_port=0))
    app.open()
    yield Answerer(lambda: app.engine, app.cfg)
    app.lists_store.close()
    app.engine.patterns.close()


def valid(rng: random.Random) -> bytes:
    q = dns.message.make_query(rng.choice(NAMES), rng.choice(["A", "TXT", "ANY", "SOA", "NS", "MX"]),
                               use_edns=rng.choice([-1, 0]), payload=rng.choice([0, 300, 512, 1232, 65535]))
    q.id = rng.randrange(1 << 16)
    return q.to_wire()


def header(rng: random.Random, qd: int = 1, ar: int = 0) -> bytes:
    return struct.pack("!6H", rng.randrange(1 << 16), 0x0100, qd, 0, 0, ar)


def hostile(rng: random.Random) -> bytes:
    """The shapes the issue names: label loops, pointers out of range, oversized names, truncation."""
    kind = rng.randrange(6)
    if kind == 0:  # a pointer to itself, or a loop of two
        loop = rng.choice([b"\xc0\x0c", b"\x01a\xc0\x0c", b"\x01a\xc0\x0f\xc0\x0c"])
        return header(rng) + loop + b"\x00\x01\x00\x01"
    if kind == 1:  # a pointer out of range, or forward
        return header(rng) + struct.pack("!H", 0xC000 | rng.randrange(13, 0x3FFF)) + b"\x00\x01\x00\x01"
    if kind == 2:  # a name over 255 octets
        return header(rng) + (b"\x3f" + b"a" * 63) * rng.randrange(4, 9) + b"\x00\x00\x10\x00\x01"
    if kind == 3:  # extended label types, huge counts
        return struct.pack("!6H", rng.randrange(1 << 16), 0, *(rng.randrange(1 << 16) for _ in range(4))) + \
            bytes([rng.choice([0x40, 0x41, 0x80, 0xBF])]) + rng.randbytes(rng.randrange(20))
    if kind == 4:  # an OPT record that lies about its length
        return valid(rng)[:-2] + struct.pack("!H", rng.randrange(1 << 16)) if rng.random() < 0.5 else \
            header(rng, ar=1) + b"\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\xff\xff"
    return valid(rng)[:rng.randrange(30)]  # truncated


def mutated(rng: random.Random) -> bytes:
    data = bytearray(valid(rng))
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(3)
        at = rng.randrange(len(data))
        if op == 0:
            data[at] = rng.randrange(256)
        elif op == 1:
            del data[at:at + rng.randrange(1, 8)]
        else:
            data[at:at] = rng.randbytes(rng.randrange(1, 8))
        if not data:
            break
    return bytes(data)


def allowed(packet: bytes, transport: str) -> int:
    """What the query allows, as dnspython reads it: its EDNS(0) size (512 at least), else 512."""
    if transport == "tcp":
        return 65535
    try:
        msg = dns.message.from_wire(packet)
    except Exception:
        return 512
    return max(512, msg.payload) if msg.edns == 0 else 512


def test_ten_thousand_bad_packets(answerer: Answerer, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(12)
    makers = [lambda r: r.randbytes(r.randrange(64)), hostile, mutated, valid]
    answered = 0
    rcodes: dict[int, int] = {}
    for i in range(10_000):
        packet = makers[i % 4](rng)
        transport = "tcp" if i % 7 == 0 else "udp"
        got = answerer.answer(packet, "127.0.0.1", transport)
        assert not inspect.isawaitable(got)  # no cloud: everything is local
        if len(packet) < 12 or packet[2] & 0x80:
            assert got is None, packet  # no header, or a response: never answered
            continue
        assert isinstance(got, bytes), packet
        assert len(got) <= allowed(packet, transport), packet
        msg = dns.message.from_wire(got)
        assert msg.id == int.from_bytes(packet[:2], "big") and msg.flags & dns.flags.QR
        assert not msg.flags & dns.flags.RA
        assert msg.rcode() != dns.rcode.SERVFAIL, packet  # no cloud: only a bug would give one
        rcodes[msg.rcode()] = rcodes.get(msg.rcode(), 0) + 1
        if msg.rcode() != dns.rcode.NOERROR:  # an error is never an A record
            assert not any(r.rdtype == dns.rdatatype.A for r in msg.answer), packet
        answered += 1
    assert answered > 5000 and set(rcodes) >= {0, 1, 3, 4, 5}, rcodes  # every kind of answer met
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    still = answerer.answer(dns.message.make_query(NAMES[0], "A").to_wire(), "127.0.0.1", "udp")
    assert isinstance(still, bytes)
    assert [rd.to_text() for rrset in dns.message.from_wire(still).answer for rd in rrset] == ["127.0.0.4"]
