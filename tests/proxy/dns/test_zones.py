"""proxy.dns.zones: what a name asks, the codes table, the reason text."""

from __future__ import annotations

import ipaddress
import random

import pytest

from proxy.config import Config
from proxy.dns.zones import Codes, Kind, Zones, lookup_base, reason
from proxy.errors import ConfigError
from proxy.model import Rating, Source, WebAnswer
from proxy.wire import protocol


def labels(name: str) -> list[bytes]:
    return [label.encode() for label in name.split(".")]


ZONES = Zones("ip.rampart.local", "dn.rampart.local")


def test_reversed_octets_and_nibbles_name_their_address() -> None:
    asked = ZONES.classify(labels("7.2.0.192.ip.rampart.local"))
    assert (asked.kind, asked.skip, asked.zone and asked.zone.kind) == (Kind.ITEM, 4, "ip")
    assert asked.query is not None and (asked.query.item, asked.query.ip) == (
        "192.0.2.7", ipaddress.ip_address("192.0.2.7"))
    six = ipaddress.IPv6Address("2001:db8:bad::1")
    nibbles = ".".join(reversed(six.exploded.replace(":", "")))
    asked = ZONES.classify(labels(nibbles + ".ip.rampart.local"))
    assert asked.kind is Kind.ITEM and asked.skip == 32
    assert asked.query is not None and asked.query.ip == six and asked.query.name == "2001:db8:bad::1"


def test_domains_and_subdomains() -> None:
    asked = ZONES.classify(labels("www.bad.example.dn.rampart.local"))
    assert asked.kind is Kind.ITEM and asked.query is not None and asked.query.name == "www.bad.example"
    assert asked.skip == 3 and asked.zone is not None and asked.zone.kind == "domain"


@pytest.mark.parametrize(("name", "kind"), [
    ("ip.rampart.local", Kind.APEX), ("dn.rampart.local", Kind.APEX),
    ("2.0.0.127.ip.rampart.local", Kind.TEST_LISTED), ("1.0.0.127.ip.rampart.local", Kind.TEST_UNLISTED),
    ("test.dn.rampart.local", Kind.TEST_LISTED), ("invalid.dn.rampart.local", Kind.TEST_UNLISTED),
    ("x.test.dn.rampart.local", Kind.ITEM),  # only the single label TEST is the test entry
    ("256.0.0.1.ip.rampart.local", Kind.MALFORMED), ("00.0.0.1.ip.rampart.local", Kind.MALFORMED),
    ("1.1.1.1.1.ip.rampart.local", Kind.MALFORMED), ("example.ip.rampart.local", Kind.MALFORMED),
    ("1.2.3.4.dn.rampart.local", Kind.MALFORMED), ("a_b.example.dn.rampart.local", Kind.ITEM),
    ("rampart.local", Kind.OUTSIDE), ("ip.rampart.local.evil", Kind.OUTSIDE), ("", Kind.OUTSIDE),
    ("xip.rampart.local", Kind.OUTSIDE),
])
def test_what_a_name_asks(name: str, kind: Kind) -> None:
    assert ZONES.classify(labels(name) if name else []).kind is kind


def test_odd_bytes_in_labels_never_reach_the_engine() -> None:
    for label in (b"a.b", b"caf\xc3\xa9", b"a b", b"", b"x" * 64, b"*"):
        assert ZONES.classify([label, b"example", b"dn", b"rampart", b"local"]).kind is Kind.MALFORMED


def test_a_zone_inside_the_other_is_matched_longest_first() -> None:
    zones = Zones("ip.example.org", "example.org")
    assert zones.classify(labels("7.2.0.192.ip.example.org")).kind is Kind.ITEM
    asked = zones.classify(labels("bad.example.org"))
    assert asked.kind is Kind.ITEM and asked.zone is not None and asked.zone.kind == "domain"


def web(rating: Rating, source: Source = Source.PATTERN, category: str | None = None) -> WebAnswer:
    return WebAnswer(rating, source, category=category, ttl=3600)


def test_codes_blocked_then_category_then_rating_and_never_for_safe_untested_approved() -> None:
    codes = Codes(["category:phishing=127.0.0.7", "category:business=127.0.0.8"])
    ip = ipaddress.IPv4Address
    assert codes.code(web(Rating.DANGEROUS, Source.BLOCKED_LIST)) == ip("127.0.0.10").packed
    assert codes.code(web(Rating.DANGEROUS, category="phishing")) == ip("127.0.0.7").packed
    assert codes.code(web(Rating.DANGEROUS, Source.CACHE, "malware")) == ip("127.0.0.2").packed
    assert codes.code(web(Rating.HIGHLY_SUSPICIOUS)) == ip("127.0.0.3").packed
    assert codes.code(web(Rating.SUSPICIOUS, Source.CLOUD)) == ip("127.0.0.4").packed
    for answer in (web(Rating.SAFE, category="business"), web(Rating.UNTESTED, Source.LOCAL),
                   web(Rating.SAFE, Source.APPROVED_LIST)):
        assert codes.code(answer) is None


def test_a_code_entry_may_be_spaced_and_in_any_case() -> None:
    assert Codes([" Dangerous = 127.0.0.22 "]).code(web(Rating.DANGEROUS)) == bytes([127, 0, 0, 22])
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1 \(RFC 5782"):
        Codes(["blocked=127.0.0.1"])


def test_lookup_base_names_the_query_door() -> None:
    assert lookup_base(Config(tls_names=["spn.example"])) == "http://spn.example:8080/v1/domain/"
    assert lookup_base(Config(listen="192.0.2.1", query_port=0)) == "https://192.0.2.1:8443/v1/domain/"
    assert lookup_base(Config(listen="2001:db8::1")) == "http://[2001:db8::1]:8080/v1/domain/"
    assert lookup_base(Config(query_port=0, query_tls_port=0)) is None


def test_reason() -> None:
    answer = web(Rating.DANGEROUS, category="c2")
    assert reason(answer, "198.51.100.7", "http://a:8080/v1/domain/") == (
        "Rampart: 198.51.100.7 is dangerous (c2), from pattern; see http://a:8080/v1/domain/198.51.100.7")


def test_an_address_is_read_as_the_query_door_reads_its_text() -> None:
    """The zone makes a DomainQuery from integers; protocol.parse_domain from the address's text."""
    rng = random.Random(7)
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(300)]
    addresses += [ipaddress.IPv6Address(rng.getrandbits(128) >> rng.choice([0, 64, 100])) for _ in range(300)]
    addresses += [ipaddress.IPv6Address("::ffff:192.0.2.7"), ipaddress.IPv4Address("0.0.0.0"),
                  ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1")]
    for ip in addresses:
        if ip.version == 4:
            front = str(ip).split(".")[::-1]
        else:
            front = list(ip.exploded.replace(":", ""))[::-1]
        asked = ZONES.classify([*(x.encode() for x in front), b"ip", b"rampart", b"local"])
        if asked.kind is not Kind.ITEM:
            continue  # the test entries
        plain = protocol.parse_domain(str(ip))
        assert asked.query is not None
        assert (asked.query.name, asked.query.ip) == (plain.name, plain.ip), ip
