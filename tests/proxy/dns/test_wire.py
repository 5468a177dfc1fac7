"""proxy.dns.wire: queries read the same by hand and by dnspython, responses dnspython reads back."""

from __future__ import annotations

import random
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from proxy.dns import wire

NAMES = ["7.2.0.192.ip.rampart.local", "Bad.Example.DN.rampart.local", "x" * 63 + ".dn.rampart.local",
         ".".join(["a" * 61] * 4), "dn.rampart.local", ".", "a\\.b.example"]


def shapes() -> list[bytes]:
    """The queries DNSBL clients send, in every variation the fast path accepts."""
    rng = random.Random(5)
    out = []
    for name in NAMES:
        for rdtype in ("A", "TXT", "ANY", "SOA", "NS", "AAAA", "TYPE65280"):
            for edns in (-1, 0):
                payload = rng.choice([512, 1232, 4096, 100])
                q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload,
                                           want_dnssec=rng.random() < 0.5)
                q.id = rng.randrange(65536)
                q.flags = dns.flags.RD if rng.random() < 0.5 else 0
                if rng.random() < 0.3:
                    q.flags |= dns.flags.CD
                if edns == 0 and rng.random() < 0.5:
                    q.use_edns(0, q.ednsflags, q.payload, options=[
                        dns.edns.GenericOption(dns.edns.OptionType.make(65001), b"opaque"),
                        dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)])
                out.append(q.to_wire())
    return out


@pytest.mark.parametrize("packet", shapes())
def test_the_fast_path_reads_every_common_shape_as_dnspython_does(packet: bytes) -> None:
    fast = wire.parse_fast(packet)
    assert fast is not None
    assert fast == wire.parse_plain(packet)
    msg = dns.message.from_wire(packet)
    assert fast.labels == tuple(label.lower() for label in msg.question[0].name.labels[:-1])
    assert fast.question == packet[12:12 + len(fast.question)]  # echoed byte for byte, case kept
    assert fast.edns == (msg.payload if msg.edns == 0 else None)


def query(name: str = "7.2.0.192.ip.rampart.local", rdtype: str = "A", **kw: object) -> bytes:
    return dns.message.make_query(name, rdtype, **kw).to_wire()  # type: ignore[arg-type]


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, ar: int = 0) -> bytes:
    return struct.pack("!6H", qid, flags, qd, 0, 0, ar)


QUESTION = b"\x01a\x02dn\x07rampart\x05local\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    ("packet", "rcode"),
    [
        (header() + b"\xc0\x0c\x00\x01\x00\x01", "FORMERR"),  # the name is a pointer to itself
        (header() + b"\xc0\xff\x00\x01\x00\x01", "FORMERR"),  # a pointer out of range
        (header() + b"\x3f" + b"a" * 10, "FORMERR"),  # truncated label
        (header() + QUESTION[:-2], "FORMERR"),  # truncated question
        (header() + QUESTION + b"junk", "FORMERR"),  # trailing bytes
        (header(qd=2) + QUESTION * 2, "FORMERR"),  # two questions
        (header(qd=0), "FORMERR"),  # none
        (header(qd=1) + b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00\x00\x01\x00\x01", "FORMERR"),
        (header(flags=0x2100) + QUESTION, "NOTIMP"),  # opcode STATUS
        (header(flags=0x2800) + QUESTION, "NOTIMP"),  # opcode UPDATE
    ],
)
def test_malformed_queries_get_their_error_with_the_id_and_no_question(packet: bytes, rcode: str) -> None:
    assert wire.parse_fast(packet) is None
    got = wire.parse(packet)
    assert isinstance(got, bytes)
    msg = dns.message.from_wire(got)
    assert (msg.id, dns.rcode.to_text(msg.rcode()), msg.question) == (0x1234, rcode, [])
    assert msg.flags & dns.flags.QR and not msg.flags & dns.flags.RA
    assert wire.refused(packet) == got  # the door's REFUSED helper answers it the same way


def test_an_edns_version_other_than_0_is_badvers() -> None:
    got = wire.parse(query(use_edns=1))
    assert isinstance(got, bytes)
    msg = dns.message.from_wire(got)
    assert (msg.rcode(), msg.edns) == (dns.rcode.BADVERS, 0)
    assert wire.rcode_of(got) == wire.BADVERS


@pytest.mark.parametrize("packet", [b"", b"\x12\x34", header()[:11], header(flags=0x8000) + QUESTION])
def test_no_header_or_a_response_gets_nothing(packet: bytes) -> None:
    assert wire.parse(packet) is None
    assert wire.refused(packet) is None


def test_other_shapes_go_the_plain_way_and_still_answer() -> None:
    msg = dns.message.make_query("Bad.Example.dn.rampart.local", "TXT")
    msg.additional.append(dns.rrset.from_text("extra.example.", 60, "IN", "A", "192.0.2.1"))
    packet = msg.to_wire()
    assert wire.parse_fast(packet) is None
    got = wire.parse(packet)
    assert isinstance(got, wire.Query)
    assert got.labels == (b"bad", b"example", b"dn", b"rampart", b"local")
    assert (got.qtype, got.edns) == (wire.TXT, None)


@pytest.mark.parametrize(("edns", "transport", "limit"), [
    (-1, "udp", 512), (0, "udp", 1232), (0, "tcp", 65535), (-1, "tcp", 65535)])
def test_limits(edns: int, transport: str, limit: int) -> None:
    q = wire.parse(query(use_edns=edns, payload=4096))
    assert isinstance(q, wire.Query) and q.limit(transport) == limit
    small = wire.parse(query(use_edns=0, payload=100))
    assert isinstance(small, wire.Query) and small.limit("udp") == 512  # below 512 reads as 512


def test_a_response_reads_back_in_dnspython_with_compressed_owners() -> None:
    packet = query("7.2.0.192.IP.rampart.local", "TXT", use_edns=0, want_dnssec=True, payload=4096)
    q = wire.parse(packet)
    assert isinstance(q, wire.Query)
    soa = wire.pointer(q, 4) + b"\x0ahostmaster" + wire.pointer(q, 4) + struct.pack("!5I", 7, 1, 2, 3, 60)
    got = wire.response(q, wire.NOERROR, [wire.Record(0, wire.TXT, 300, wire.txt_rdata("x" * 300))],
                        [wire.Record(4, wire.SOA, 60, soa)], limit=q.limit("udp"))
    msg = dns.message.from_wire(got)
    expected = dns.message.make_response(dns.message.from_wire(packet), our_payload=1232)
    assert msg.id == expected.id and msg.question == expected.question
    assert msg.question[0].name.labels[4] == b"IP"  # the case asked, echoed
    assert msg.flags == dns.flags.QR | dns.flags.AA | dns.flags.RD
    assert (msg.edns, msg.payload, msg.ednsflags) == (0, 1232, dns.flags.DO)
    (txt,) = msg.answer
    assert (txt.name, txt.rdtype, txt.ttl) == (expected.question[0].name, dns.rdatatype.TXT, 300)
    assert [b"".join(r.strings) for r in txt] == [b"x" * 300]
    (auth,) = msg.authority
    assert auth.name == dns.name.from_text("ip.rampart.local")
    assert auth[0].rname == dns.name.from_text("hostmaster.ip.rampart.local") and auth[0].minimum == 60
    assert len(got) < len(msg.to_wire()) + 40  # the owners are pointers, not names written again


def test_a_response_larger_than_the_query_allows_is_cut_with_tc() -> None:
    for edns, payload in ((-1, 0), (0, 700)):
        q = wire.parse(query("a" * 60 + ".dn.rampart.local", "TXT", use_edns=edns, payload=payload))
        assert isinstance(q, wire.Query)
        big = [wire.Record(0, wire.TXT, 60, wire.txt_rdata("why " * 200))]
        udp = wire.response(q, wire.NOERROR, big, limit=q.limit("udp"))
        assert len(udp) <= max(512, payload)
        msg = dns.message.from_wire(udp)
        assert msg.flags & dns.flags.TC and msg.answer == [] and len(msg.question) == 1
        assert (msg.edns == 0) == (edns == 0)  # the OPT record survives the cut
        tcp = dns.message.from_wire(wire.response(q, wire.NOERROR, big, limit=q.limit("tcp")))
        assert not tcp.flags & dns.flags.TC and len(tcp.answer) == 1


def test_refused_echoes_the_question_without_authority() -> None:
    packet = query("example.com", "A")
    msg = dns.message.from_wire(wire.refused(packet) or b"")
    assert msg.rcode() == dns.rcode.REFUSED and not msg.flags & (dns.flags.AA | dns.flags.RA)
    asked = dns.message.from_wire(packet)
    assert (msg.question, msg.id) == (asked.question, asked.id)
