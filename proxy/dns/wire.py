"""DNS messages in and out: one query parsed, one response built and sized for its transport.

The door receives raw datagrams from anyone, so everything here is bounded and nothing
raises on bad input: :func:`parse` returns a :class:`Query`, a finished error response
(FORMERR, NOTIMP, BADVERS) or None (not worth an answer: too short for a header, or itself
a response, which answering would turn two servers into a loop).

Two readings of a query, held equal by tests/proxy/dns/test_wire.py:

- :func:`parse_fast`, by hand, for the shape nearly every DNSBL client sends (one question,
  opcode QUERY, no compression in it, nothing else but an optional EDNS(0) OPT record):
  it is the door's hot path, where dnspython's general parser (a Message object, rdata
  classes, name objects) costs several times the rest of the answer;
- :func:`parse_plain`, dnspython's, for every other shape; what it refuses is FORMERR.

Responses are built by hand too (:func:`response`): owner names are compression pointers
into the echoed question (every owner is the query name or its zone apex, a suffix of it),
the question is echoed byte for byte (mixed-case 0x20 queries need their own case back), and
a response larger than the transport allows is cut to its header, question and OPT with TC
set, so the client asks again over TCP.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import dns.flags
import dns.message

# Header flag bits and codes (RFC 1035 §4.1.1, RFC 6891, RFC 4035).
QR, AA, TC, RD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0010
OPCODE_MASK = 0x7800
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended: 1 in the OPT record's upper bits, 0 in the header
RCODE_NAMES = {
    NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL", NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP", REFUSED: "REFUSED", BADVERS: "BADVERS",
}
A, NS, SOA, TXT, OPT, AAAA, ANY = 1, 2, 6, 16, 41, 28, 255
IN = 1
DO = 0x8000  # the DNSSEC OK bit of the OPT record's flags

UDP_PLAIN = 512  # without EDNS (RFC 1035 §4.2.1)
UDP_MAX = 1232  # the most this server sends or advertises over UDP (DNS flag day 2020)
TCP_MAX = 65535
MAX_NAME = 255  # wire octets of a name, root label included
HEADER = struct.Struct("!6H")
_OPT_FIXED = struct.Struct("!HHBBHH")  # type, payload size, ext rcode, version, flags, rdlength
_RR_FIXED = struct.Struct("!HHHIH")  # owner pointer, type, class, ttl, rdlength


@dataclass(frozen=True, slots=True)
class Query:
    """One question as asked: what the answer needs and nothing else."""

    id: int
    flags: int  # the RD and CD bits of the query, echoed in the response
    question: bytes  # the question section as received: name, type, class
    labels: tuple[bytes, ...]  # the query name's labels, lower case, root left out
    qtype: int
    qclass: int
    edns: int | None  # the client's UDP payload size; None: no OPT record
    do: bool = False

    def limit(self, transport: str) -> int:
        """The largest response this query allows over ``transport`` ("udp" or "tcp")."""
        if transport == "tcp":
            return TCP_MAX
        if self.edns is None:
            return UDP_PLAIN
        return max(UDP_PLAIN, min(self.edns, UDP_MAX))  # below 512 reads as 512 (RFC 6891 §6.2.5)


@dataclass(frozen=True, slots=True)
class Record:
    """One answer or authority record. ``skip``: leading labels of the query name left out
    to make its owner (0: the query name itself; the zone apex is a suffix of it)."""

    skip: int
    rtype: int
    ttl: int
    rdata: bytes


def parse(packet: bytes) -> Query | bytes | None:
    """The query in ``packet``; or the error response to send; or None to send nothing."""
    if len(packet) < HEADER.size or packet[2] & 0x80:  # no header, or a response (QR)
        return None
    return parse_fast(packet) or parse_plain(packet)


def parse_fast(packet: bytes) -> Query | None:
    """The common shape read by hand; None for anything else (then :func:`parse_plain`).

    Shaped as one pass over the bytes with no objects but the labels: it accepts only
    what it can check completely (exact lengths, no pointers, OPT version 0, options that
    fill the rdata exactly, their contents unread: nothing here uses them), so whatever
    it returns is what dnspython reads.
    """
    n = len(packet)
    if n < 17 or n > TCP_MAX:
        return None
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(packet)
    if flags & (QR | OPCODE_MASK) or qd != 1 or an or ns or ar > 1:
        return None
    labels: list[bytes] = []
    pos = 12
    while True:
        if pos >= n:
            return None
        length = packet[pos]
        if length == 0:
            pos += 1
            break
        end = pos + 1 + length
        if length > 63 or end > n or end - 12 >= MAX_NAME:  # pointer, extended, or too long
            return None
        labels.append(packet[pos + 1:end].lower())
        pos = end
    qend = pos + 4
    if qend > n:
        return None
    qtype, qclass = struct.unpack_from("!HH", packet, pos)
    edns: int | None = None
    do = False
    if ar:
        if qend + 11 > n or packet[qend] != 0:
            return None
        rtype, payload, ext, version, eflags, rdlen = _OPT_FIXED.unpack_from(packet, qend + 1)
        if rtype != OPT or version or ext or qend + 11 + rdlen != n or not _options_fill(
            packet, qend + 11, n
        ):
            return None
        edns, do = payload, bool(eflags & DO)
    elif qend != n:
        return None
    return Query(qid, flags & (RD | CD), packet[12:qend], tuple(labels), qtype, qclass, edns, do)


A_IN, ANY_IN = struct.pack("!HH", A, IN), struct.pack("!HH", ANY, IN)
ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT and NSCOUNT 0
COUNTS = struct.Struct("!5H")  # the header after its ID: flags, the four counts
RR_FIXED = struct.Struct("!HIH")  # class, ttl, rdlength (after an owner pointer and a type)


def opt_echo(packet: bytes, at: int) -> bytes | None:
    """The OPT record a response carries for the query's own at ``at`` (the end of its
    question, which ends the packet when there is none): b"" without EDNS, None when
    ``parse_fast`` would refuse it. Its extended rcode is 0: what the fast path answers
    (NOERROR, NXDOMAIN, SERVFAIL) fits the header."""
    n = len(packet)
    if not packet[11]:
        return b"" if at == n else None
    if at + 11 > n or packet[at] != 0:
        return None
    rtype, _, ext, version, eflags, rdlen = _OPT_FIXED.unpack_from(packet, at + 1)
    if rtype != OPT or version or ext or at + 11 + rdlen != n or not _options_fill(packet, at + 11, n):
        return None
    return _OPT_DO if eflags & DO else _OPT_PLAIN


def _options_fill(packet: bytes, pos: int, end: int) -> bool:
    """EDNS options (code, length, data) exactly fill ``packet[pos:end]``."""
    while pos < end:
        if pos + 4 > end:
            return False
        pos += 4 + int.from_bytes(packet[pos + 2:pos + 4], "big")
    return pos == end


def parse_plain(packet: bytes) -> Query | bytes | None:
    """Any shape, read by dnspython: what it refuses is FORMERR, other opcodes NOTIMP,
    EDNS versions other than 0 BADVERS (RFC 6891 §6.1.3)."""
    if len(packet) < HEADER.size or packet[2] & 0x80:
        return None
    qid, flags = struct.unpack_from("!HH", packet)
    if flags & OPCODE_MASK:  # read before dnspython, which parses UPDATE's sections its own way
        return _header_only(qid, flags, NOTIMP)
    try:
        msg = dns.message.from_wire(packet, ignore_trailing=False)
    except Exception:  # dnspython's errors are many (and some are ValueError, IndexError): all FORMERR
        return _header_only(qid, flags, FORMERR)
    if len(msg.question) != 1:
        return _header_only(qid, flags, FORMERR)
    if msg.edns > 0:
        return _header_only(qid, flags, BADVERS, edns=True)
    rrset = msg.question[0]
    name_wire = rrset.name.to_wire() or b"\x00"  # bytes when no file is given
    question = name_wire + struct.pack("!HH", rrset.rdtype, rrset.rdclass)
    labels = tuple(label.lower() for label in rrset.name.labels[:-1])
    edns = msg.payload if msg.edns == 0 else None
    do = bool(msg.ednsflags & dns.flags.DO)
    return Query(qid, flags & (RD | CD), question, labels, int(rrset.rdtype), int(rrset.rdclass), edns, do)


def _header_only(qid: int, flags: int, rcode: int, *, edns: bool = False) -> bytes:
    """An error response with no question: all a malformed query allows echoing."""
    head = HEADER.pack(qid, QR | (flags & (OPCODE_MASK | RD | CD)) | (rcode & 0xF), 0, 0, 0, int(edns))
    return head + (_opt(0, rcode) if edns else b"")


def _opt(flags: int, rcode: int) -> bytes:
    return b"\x00" + _OPT_FIXED.pack(OPT, UDP_MAX, rcode >> 4, 0, flags, 0)


_OPT_PLAIN, _OPT_DO = _opt(0, NOERROR), _opt(DO, NOERROR)
OPT_ECHOES = (_OPT_PLAIN, _OPT_DO)  # what opt_echo gives: without and with the DO bit


def name_offset(q: Query, skip: int) -> int:
    """Where in the response the query name without its first ``skip`` labels begins."""
    pos = 12
    for label in q.labels[:skip]:
        pos += 1 + len(label)
    return pos


def response(
    q: Query, rcode: int, answer: Sequence[Record] = (), authority: Sequence[Record] = (), *,
    aa: bool = True, limit: int = UDP_PLAIN,
) -> bytes:
    """The response to ``q``: at most ``limit`` bytes, cut to no records with TC when larger."""
    records = [*answer, *authority]
    body = b"".join(_record(q, r) for r in records)
    tail = _opt(DO if q.do else 0, rcode) if q.edns is not None else b""
    flags = QR | (AA if aa else 0) | q.flags | (rcode & 0xF)
    counts = (len(answer), len(authority))
    if HEADER.size + len(q.question) + len(body) + len(tail) > limit:
        flags, counts, body = flags | TC, (0, 0), b""
    head = HEADER.pack(q.id, flags, 1, *counts, int(bool(tail)))
    return head + q.question + body + tail


def _record(q: Query, r: Record) -> bytes:
    owner = 0xC000 | name_offset(q, r.skip)
    return _RR_FIXED.pack(owner, r.rtype, IN, r.ttl, len(r.rdata)) + r.rdata


def pointer(q: Query, skip: int) -> bytes:
    """A compressed name (for rdata): the query name without its first ``skip`` labels."""
    return struct.pack("!H", 0xC000 | name_offset(q, skip))


def txt_rdata(text: str) -> bytes:
    """TXT rdata: ``text`` (UTF-8) as character-strings of at most 255 octets each."""
    raw = text.encode()
    chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    return b"".join(bytes([len(c)]) + c for c in chunks)


def refused(packet: bytes) -> bytes | None:
    """REFUSED for ``packet`` (a rate-limited or unknown client, overload), question echoed;
    an error response if it is malformed, None if it deserves none."""
    parsed = parse(packet)
    if isinstance(parsed, Query):
        return response(parsed, REFUSED, aa=False)
    return parsed


def rcode_of(response_bytes: bytes) -> int:
    """The response's rcode, extended by its OPT record when it ends with one of ours."""
    rcode = response_bytes[3] & 0xF
    if response_bytes[11] and len(response_bytes) >= 23 and response_bytes[-11] == 0:
        rcode |= response_bytes[-6] << 4
    return rcode

