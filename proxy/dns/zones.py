"""What a DNSBL query name asks, what code a listed answer gets, and the reason it says.

Two zones (``dns_ip_zone``, ``dns_domain_zone``): ``7.2.0.192.<ip zone>`` asks about
192.0.2.7, an IPv6 address is its 32 nibbles reversed (RFC 5782 §2.4), and
``bad.example.<domain zone>`` asks about bad.example (a listed domain covers its
subdomains, as everywhere in Rampart). The RFC 5782 §5 test entries answer without the
engine: 127.0.0.2 (and ::ffff:127.0.0.2, and ``TEST`` in the domain zone) listed,
127.0.0.1 (::ffff:127.0.0.1, ``INVALID``) not.

A name in a zone that names nothing (``x.7.2.0.192.<ip zone>``, ``300.2.0.192…``, a
label with bytes no host name has) is NXDOMAIN, never an error A record: mail servers
read any A in 127.0.0.0/8 as "listed". Names outside both zones are REFUSED.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.config import Config
from proxy.errors import ConfigError, ProtocolError, UrlError
from proxy.model import DomainQuery, Rating, Source, WebAnswer
from proxy.wire import protocol, urls

DEFAULT_CODES = {
    "dangerous": "127.0.0.2",
    "highly_suspicious": "127.0.0.3",
    "suspicious": "127.0.0.4",
    "blocked": "127.0.0.10",
}
LISTED = frozenset({Rating.DANGEROUS, Rating.HIGHLY_SUSPICIOUS, Rating.SUSPICIOUS})
TEST_CODE = ipaddress.IPv4Address("127.0.0.2").packed
_LABEL = re.compile(rb"[a-z0-9_-]{1,63}")
_OCTET = re.compile(rb"0|[1-9][0-9]{0,2}")
_NIBBLE = re.compile(rb"[0-9a-f]")


class Kind(enum.Enum):
    APEX = "apex"  # the zone itself: SOA and NS
    ITEM = "item"  # an address or domain for the engine
    TEST_LISTED = "test_listed"
    TEST_UNLISTED = "test_unlisted"
    MALFORMED = "malformed"  # in a zone, naming nothing: NXDOMAIN
    OUTSIDE = "outside"  # in neither zone: REFUSED


@dataclass(frozen=True, slots=True)
class Zone:
    name: str  # normalised, no trailing dot
    labels: tuple[bytes, ...]
    kind: str  # "ip" or "domain": the metrics' zone label


@dataclass(frozen=True, slots=True)
class Asked:
    kind: Kind
    zone: Zone | None = None
    skip: int = 0  # labels before the zone's apex
    query: DomainQuery | None = None


OUTSIDE = Asked(Kind.OUTSIDE)


def _zone(key: str, text: str, kind: str) -> Zone:
    try:
        name = urls.normalize_domain(text)
    except UrlError as e:
        raise ConfigError(f"config key {key!r}: {e}") from None
    if urls.parse_ip(name) is not None:
        raise ConfigError(f"config key {key!r}: {text!r} is an address, not a zone name")
    return Zone(name, tuple(label.encode() for label in name.split(".")), kind)


class Zones:
    """The two zones, and what a query name's labels (lower case, root left out) ask."""

    def __init__(self, ip_zone: str, domain_zone: str) -> None:
        ip = _zone("dns_ip_zone", ip_zone, "ip")
        domain = _zone("dns_domain_zone", domain_zone, "domain")
        if ip.name == domain.name:
            raise ConfigError(f"config keys 'dns_ip_zone' and 'dns_domain_zone' must differ (both {ip.name})")
        # The longer first: one zone may lie inside the other (ip.example and example).
        self.zones = sorted((ip, domain), key=lambda z: -len(z.labels))
        # for fast_item: each zone's labels as a list (compared with a list slice), their
        # count, and its wire length (labels and root: where the apex begins, from the end)
        self._fast = [(list(z.labels), len(z.labels), sum(len(x) + 1 for x in z.labels) + 1, z)
                      for z in self.zones]
        # for fast_wire: each zone's name as it is on the wire, root included
        self._wires = [(b"".join(bytes([len(x)]) + x for x in z.labels) + b"\x00", z.kind == "ip", z)
                       for z in self.zones]

    def fast_wire(self, low: bytes) -> tuple[Zone, int, int, DomainQuery] | None:
        """:meth:`fast_item` read from the message itself (lower-cased), its question's name
        beginning at offset 12: the zone, where its name begins in the message, where the
        question ends (its type and class included), and the item. None for every name
        :meth:`fast_item` passes on, and for any name not read here exactly (a zone's bytes
        found past the name's end, a label walk that does not land on the zone): ``classify``
        then reads it.

        Why it is shaped so: the door's hot path. The zone is found by ``bytes.find`` of its
        wire form (the root octet included: a host label holds no zero octet, so the first
        place it ends a name is where this name ends), four octets by one regular expression
        over the wire bytes and a dictionary of the 256 length-prefixed octets, a domain by
        a walk over its few labels and one expression over the dotted name: no per-label
        list of the zone, no per-label match. tests/proxy/dns/test_fast.py holds it equal
        to ``fast_item`` and ``classify``.
        """
        for wire_name, is_ip, zone in self._wires:
            at = low.find(wire_name, 12)
            if at < 0:
                continue
            if at == 12:
                return None  # the apex: classify answers it
            qend = at + len(wire_name) + 4
            if is_ip:
                m = _IP4_WIRE.fullmatch(low, 12, at)
                if m is None:
                    return None
                get = _OCTETS_WIRE.get
                d, c, b, a = map(get, m.groups())
                q = _ip4_query(a, b, c, d)
                return None if q is None else (zone, at, qend, q)
            labels = []
            pos = 12
            while pos < at:
                end = pos + 1 + low[pos]
                labels.append(low[pos + 1:end])
                pos = end
            if pos != at:
                return None
            raw = b".".join(labels)
            if (len(labels) == 1 and raw in (b"test", b"invalid")) or _HOST_NAME.fullmatch(raw) is None \
                    or raw.count(b".") != len(labels) - 1 or len(raw) > urls.MAX_DOMAIN_LENGTH:
                return None  # a test entry, a label no host name has (or holding a dot), too long
            name = raw.decode("ascii")
            if name[0].isdigit() and urls.parse_ip(name):
                return None  # an address (asked in the IP zone): classify says
            return zone, at, qend, DomainQuery(name, name)
        return None

    def fast_item(self, labels: list[bytes]) -> tuple[Zone, int, DomainQuery] | None:
        """What :meth:`classify` reads as an item, for the common names only: four plain
        octets in the IP zone, or host-name labels in the domain zone; with the wire length
        of the zone's name (root included). None for every other name, which ``classify``
        then reads (IPv6 nibbles, test entries, apexes, malformed, outside).

        Shaped as list compares, a dictionary of the 256 octets and one regular expression
        per label, with no ``Asked`` and no address text parsed: the door's hot path.
        tests/proxy/dns/test_fast.py holds it equal to ``classify``.
        """
        for zone_labels, n, wire_len, zone in self._fast:
            if labels[-n:] != zone_labels:
                continue
            if len(labels) == n:
                return None  # the apex (of the inner zone, when one lies in the other)
            front = labels[:-n]
            if zone.kind == "ip":
                if len(front) != 4:
                    return None
                get = _OCTETS.get
                q = _ip4_query(get(front[3]), get(front[2]), get(front[1]), get(front[0]))
                return None if q is None else (zone, wire_len, q)
            if (len(front) == 1 and front[0] in (b"test", b"invalid")) or not all(
                    map(_LABEL.fullmatch, front)):
                return None
            name = b".".join(front).decode("ascii")
            if len(name) > urls.MAX_DOMAIN_LENGTH or (name[0].isdigit() and urls.parse_ip(name)):
                return None  # too long, or an address (asked in the IP zone): classify says
            return zone, wire_len, DomainQuery(name, name)
        return None

    def classify(self, labels: Sequence[bytes]) -> Asked:
        for zone in self.zones:
            n = len(zone.labels)
            if len(labels) >= n and tuple(labels[len(labels) - n:]) == zone.labels:
                front = labels[:len(labels) - n]
                if not front:
                    return Asked(Kind.APEX, zone)
                read = _ip_item if zone.kind == "ip" else _domain_item
                kind, query = read(front)
                return Asked(kind, zone, len(front), query)
        return OUTSIDE


def _ip_item(front: Sequence[bytes]) -> tuple[Kind, DomainQuery | None]:
    """Reversed octets (no leading zeros) or 32 reversed nibbles.

    The address is made from integers and its DomainQuery directly, not by parsing its text
    again through ``protocol.parse_domain`` (three address parses, the larger part of a local
    answer's cost); tests/proxy/dns/test_zones.py holds the two equal.
    """
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if len(front) == 4 and all(map(_OCTET.fullmatch, front)):
        octets = [int(o) for o in front]
        if max(octets) > 255:
            return Kind.MALFORMED, None
        ip = ipaddress.IPv4Address(octets[3] << 24 | octets[2] << 16 | octets[1] << 8 | octets[0])
    elif len(front) == 32 and all(map(_NIBBLE.fullmatch, front)):
        ip = ipaddress.IPv6Address(int(b"".join(reversed(front)), 16))
    else:
        return Kind.MALFORMED, None
    test = _test_entry(ip)
    if test is not None:
        return test, None
    text = ip.compressed
    return Kind.ITEM, DomainQuery(text, text, ip)


def _test_entry(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Kind | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.2 is the IPv6 test entry (RFC 5782 §5)
    if ip == _TEST_LISTED:
        return Kind.TEST_LISTED
    if ip == _TEST_UNLISTED:
        return Kind.TEST_UNLISTED
    return None


_TEST_LISTED, _TEST_UNLISTED = ipaddress.IPv4Address("127.0.0.2"), ipaddress.IPv4Address("127.0.0.1")
_TEST_VALUES = frozenset({int(_TEST_LISTED), int(_TEST_UNLISTED)})
_OCTETS = {str(i).encode(): i for i in range(256)}  # no leading zeros, as _OCTET reads them
_OCTETS_WIRE = {bytes([len(k)]) + k: v for k, v in _OCTETS.items()}  # as labels on the wire
_IP4_WIRE = re.compile(rb"(\x01[0-9]|\x02[0-9]{2}|\x03[0-9]{3})" * 4)  # four labels of 1-3 digits
_HOST_NAME = re.compile(rb"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")


def _domain_item(front: Sequence[bytes]) -> tuple[Kind, DomainQuery | None]:
    if len(front) == 1 and front[0] in (b"test", b"invalid"):
        return (Kind.TEST_LISTED if front[0] == b"test" else Kind.TEST_UNLISTED), None
    if not all(map(_LABEL.fullmatch, front)):
        return Kind.MALFORMED, None
    name = b".".join(front).decode("ascii")
    if urls.parse_ip(name) is not None:  # addresses are asked in the IP zone
        return Kind.MALFORMED, None
    return _item(name)


def _item(text: str) -> tuple[Kind, DomainQuery | None]:
    try:
        return Kind.ITEM, protocol.parse_domain(text)
    except ProtocolError:
        return Kind.MALFORMED, None


# ---------------------------------------------------------------- codes


class Codes:
    """The A record a listed answer gets: blocked list first, then its category, then its
    rating (``dns_codes`` entries NAME=127.0.0.X over :data:`DEFAULT_CODES`)."""

    def __init__(self, entries: Sequence[str] = ()) -> None:
        table = {name: ipaddress.IPv4Address(value).packed for name, value in DEFAULT_CODES.items()}
        for entry in entries:
            name, value = _code_entry(entry)
            table[name] = value
        self.blocked = table.pop("blocked")
        self.ratings = {Rating(name): code for name, code in table.items() if ":" not in name}
        self.categories = {name[9:]: code for name, code in table.items() if ":" in name}

    def code(self, answer: WebAnswer) -> bytes | None:
        """The 4 bytes of the A record for ``answer``; None: not listed (NXDOMAIN)."""
        if answer.source is Source.BLOCKED_LIST:
            return self.blocked
        if answer.source is Source.APPROVED_LIST or answer.rating not in LISTED:
            return None
        found = self.categories.get(answer.category or "")
        return found if found is not None else self.ratings.get(answer.rating)


def _code_entry(entry: str) -> tuple[str, bytes]:
    name, eq, value = entry.partition("=")
    name = name.strip().lower()
    where = f"config key 'dns_codes': {entry!r}"
    if not eq:
        raise ConfigError(f"{where} is not NAME=127.0.0.X")
    ratings = {r.value for r in LISTED}
    if name not in ratings and name != "blocked" and not (name.startswith("category:") and name[9:]):
        raise ConfigError(f"{where}: NAME must be one of {', '.join(sorted(ratings))}, blocked"
                          " or category:NAME (safe and untested are never listed)")
    try:
        ip = ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise ConfigError(f"{where}: {value.strip()!r} is not an IPv4 address") from None
    if ip not in ipaddress.IPv4Network("127.0.0.0/8") or int(ip) & 0xFFFFFF in (0, 1, 0xFFFFFF):
        raise ConfigError(f"{where}: a code must be in 127.0.0.0/8, other than 127.0.0.0,"
                          " 127.0.0.1 (RFC 5782 §2.3) and 127.255.255.255")
    return name, ip.packed


# ---------------------------------------------------------------- reasons


def lookup_base(cfg: Config) -> str | None:
    """Where the query door answers on this appliance (for the TXT reason's URL), or None
    with the query door off: the first TLS name, else the listen address, else the host name."""
    if cfg.query_port:
        scheme, port = "http", cfg.query_port
    elif cfg.query_tls_port:
        scheme, port = "https", cfg.query_tls_port
    else:
        return None
    host = cfg.tls_names[0] if cfg.tls_names else (
        cfg.listen if cfg.listen not in ("", "0.0.0.0", "::") else socket.gethostname())
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/v1/domain/"


def reason(answer: WebAnswer, item: str, base: str | None) -> str:
    """The TXT text of a listed answer: rating, category, source, and where to look it up."""
    what = "blocked by the administrator" if answer.source is Source.BLOCKED_LIST else answer.rating.value
    category = f" ({answer.category})" if answer.category and answer.source is not Source.BLOCKED_LIST else ""
    text = f"Rampart: {item} is {what}{category}, from {answer.source.value}"
    return f"{text}; see {base}{item}" if base else text


TEST_REASON = "Rampart: RFC 5782 test entry"


def _ip4_query(a: int | None, b: int | None, c: int | None, d: int | None) -> DomainQuery | None:
    """The query for the address a.b.c.d read from reversed octets (None: an octet that is
    not one, or an RFC 5782 test entry, which ``classify`` answers)."""
    if a is None or b is None or c is None or d is None:
        return None
    value = a << 24 | b << 16 | c << 8 | d
    if value in _TEST_VALUES:
        return None
    text = f"{a}.{b}.{c}.{d}"
    return DomainQuery(text, text, ipaddress.IPv4Address(value))
