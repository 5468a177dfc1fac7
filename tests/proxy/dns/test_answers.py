"""proxy.dns.answers: what a DNSBL client reads back, from a real engine on the sample pattern."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from proxy.config import Config
from proxy.decide.lists import ListName
from proxy.dns.answers import Answerer
from proxy.errors import ConfigError, RelayError
from proxy.serve.app import App

IP, DN = "ip.rampart.local", "dn.rampart.local"


def v4(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + "." + IP


def v6(ip: str) -> str:
    """32 reversed nibbles (by hand: dnspython writes an IPv4-mapped address as in-addr.arpa)."""
    return ".".join(reversed(ipaddress.IPv6Address(ip).exploded.replace(":", ""))) + "." + IP


def answerer(app: App, **cfg: Any) -> Answerer:
    return Answerer(lambda: app.engine, app.cfg.replace(**cfg))


def ask(a: Answerer, name: str, rdtype: str = "A", *, transport: str = "udp", edns: int = -1,
        rdclass: str = "IN") -> dns.message.Message:
    """The response to one query, which must come at once (a local answer)."""
    query = dns.message.make_query(name, rdtype, rdclass, use_edns=edns)
    got = a.answer(query.to_wire(), "127.0.0.1", transport)
    assert isinstance(got, bytes), "a local answer must not need awaiting"
    msg = dns.message.from_wire(got)
    assert (msg.id, msg.question) == (query.id, query.question)
    assert not msg.flags & dns.flags.RA  # never offers recursion
    return msg


def listed(msg: dns.message.Message) -> list[str]:
    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
    return [rd.to_text() for rrset in msg.answer for rd in rrset]


def nxdomain(msg: dns.message.Message, ttl: int = 3600) -> None:
    assert msg.rcode() == dns.rcode.NXDOMAIN and msg.flags & dns.flags.AA and msg.answer == []
    (soa,) = msg.authority  # the negative TTL (RFC 2308)
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == ttl and soa[0].minimum == ttl


@pytest.mark.parametrize(("name", "code"), [
    (v4("192.0.2.7"), "127.0.0.4"),  # suspicious (spam)
    (v4("198.51.100.7"), "127.0.0.2"),  # dangerous
    (v4("203.0.113.5"), "127.0.0.3"),  # highly suspicious
    (v6("2001:db8:bad::1"), "127.0.0.2"),
    (f"malware.example.test.{DN}", "127.0.0.2"),
    (f"deep.sub.malware.example.test.{DN}", "127.0.0.2"),  # a subdomain of a listed domain
    (f"adware.example.{DN}", "127.0.0.3"),
    (f"parked.invalid.{DN}", "127.0.0.4"),
    ("MalWare.EXAMPLE.test.DN.Rampart.Local", "127.0.0.2"),  # any case
])
def test_listed_names_answer_their_code(app: App, name: str, code: str) -> None:
    a = answerer(app)
    msg = ask(a, name)
    assert listed(msg) == [code] and msg.answer[0].ttl == app.cfg.local_ttl
    assert listed(ask(a, name, "ANY")) == [code]  # ANY: the A alone
    nodata = ask(a, name, "AAAA")
    assert listed(nodata) == [] and nodata.authority[0].rdtype == dns.rdatatype.SOA


def test_txt_says_why_and_where_to_look_it_up(app: App) -> None:
    a = answerer(app, query_port=8080, tls_names=["rampart.example"])
    (txt,) = listed(ask(a, v4("192.0.2.7"), "TXT"))
    assert txt == '"Rampart: 192.0.2.7 is suspicious (spam), from pattern;' \
                  ' see http://rampart.example:8080/v1/domain/192.0.2.7"'
    (txt,) = listed(ask(answerer(app), f"phish.example.test.{DN}", "TXT"))
    assert txt == '"Rampart: phish.example.test is dangerous (phishing), from pattern"'  # no query door


@pytest.mark.parametrize("name", [
    v4("192.0.3.1"), v6("2001:db8:900d::1"), f"nobody-knows.example.test.{DN}",
    f"good.example.test.{DN}",  # rated safe
])
def test_names_not_listed_are_nxdomain(app: App, name: str) -> None:
    for rdtype in ("A", "TXT", "ANY", "MX"):
        nxdomain(ask(answerer(app), name, rdtype))


def test_the_lists_win_blocked_is_its_own_code_approved_is_nxdomain(app: App) -> None:
    app.lists_store.add(ListName.BLOCKED, [(None, "evil.example.test"), (None, "192.0.3.9")])
    app.lists_store.add(ListName.APPROVED, [(None, "malware.example.test"), (None, "198.51.100.7")])
    app.engine.lists = app.lists_store.snapshot()
    a = answerer(app)
    assert listed(ask(a, f"www.evil.example.test.{DN}")) == ["127.0.0.10"]
    assert listed(ask(a, v4("192.0.3.9"))) == ["127.0.0.10"]
    (txt,) = listed(ask(a, v4("192.0.3.9"), "TXT"))
    assert "blocked by the administrator" in txt and "blocked-list" in txt
    nxdomain(ask(a, f"malware.example.test.{DN}"))
    nxdomain(ask(a, v4("198.51.100.7")))


def test_the_codes_table_is_configurable(app: App) -> None:
    a = answerer(app, dns_codes=["category:malware=127.0.0.20", "suspicious=127.0.0.5", "blocked=127.0.1.1"])
    assert listed(ask(a, f"malware.example.test.{DN}")) == ["127.0.0.20"]  # category before rating
    assert listed(ask(a, f"phish.example.test.{DN}")) == ["127.0.0.2"]
    assert listed(ask(a, v4("192.0.2.7"))) == ["127.0.0.5"]


@pytest.mark.parametrize("entry", [
    "safe=127.0.0.9", "untested=127.0.0.9", "dangerous=10.0.0.1", "dangerous=127.0.0.1", "dangerous",
    "category:=127.0.0.9", "nonsense=127.0.0.9", "dangerous=127.0.0.256"])
def test_a_bad_code_is_a_config_error_naming_the_key(app: App, entry: str) -> None:
    with pytest.raises(ConfigError, match="dns_codes"):
        answerer(app, dns_codes=[entry])


@pytest.mark.parametrize("zones", [{"dns_ip_zone": DN}, {"dns_domain_zone": "bad zone"},
                                   {"dns_ip_zone": "192.0.2.1"}])
def test_bad_zones_are_config_errors(app: App, zones: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="dns_"):
        answerer(app, **zones)


def test_rfc5782_test_entries(app: App) -> None:
    a = answerer(app)
    for name in (v4("127.0.0.2"), v6("::ffff:127.0.0.2"), f"TEST.{DN}"):
        assert listed(ask(a, name)) == ["127.0.0.2"], name
        assert listed(ask(a, name, "TXT")) == ['"Rampart: RFC 5782 test entry"']
    for name in (v4("127.0.0.1"), v6("::ffff:127.0.0.1"), f"invalid.{DN}"):
        nxdomain(ask(a, name))


@pytest.mark.parametrize("name", [
    f"300.2.0.192.{IP}", f"07.2.0.192.{IP}", f"x.7.2.0.192.{IP}", f"2.0.192.{IP}", f"-1.2.0.192.{IP}",
    ".".join("0" * 31) + f".{IP}", ".".join("g" * 32) + f".{IP}",
    f"7.2.0.192.{DN}",  # an address in the domain zone
    f"a*b.example.{DN}", f"caf\\195\\169.example.{DN}", f"a\\.b.example.{DN}", f"-bad-.example.{DN}",
])
def test_names_in_a_zone_that_name_nothing_are_nxdomain_never_an_a(app: App, name: str) -> None:
    nxdomain(ask(answerer(app), name))


@pytest.mark.parametrize(("name", "rdtype", "rdclass"), [
    ("example.com", "A", "IN"), ("rampart.local", "SOA", "IN"), ("version.bind", "TXT", "CH"),
    (v4("192.0.2.7"), "A", "CH"), (DN, "AXFR", "IN"), (IP, "IXFR", "IN"),
])
def test_outside_the_zones_other_classes_and_transfers_are_refused(
    app: App, name: str, rdtype: str, rdclass: str
) -> None:
    msg = ask(answerer(app), name, rdtype, rdclass=rdclass, transport="tcp")
    assert msg.rcode() == dns.rcode.REFUSED and msg.answer == msg.authority == []
    assert not msg.flags & dns.flags.AA


def test_the_apex_has_soa_and_ns(app: App) -> None:
    a = answerer(app)
    for zone in (IP, DN):
        (soa,) = ask(a, zone, "SOA").answer
        assert soa.name.to_text() == zone + "." and soa[0].serial == int(app.engine.version)
        assert (soa[0].mname.to_text(), soa[0].rname.to_text()) == (zone + ".", f"hostmaster.{zone}.")
        assert soa[0].minimum == app.cfg.local_ttl
        assert listed(ask(a, zone, "NS")) == [zone + "."]
        assert [r.rdtype for r in ask(a, zone, "ANY").answer] == [dns.rdatatype.SOA]  # minimal
        empty = ask(a, zone, "A")
        assert listed(empty) == [] and empty.authority[0].rdtype == dns.rdatatype.SOA


def test_a_large_txt_is_cut_with_tc_over_udp_and_whole_over_tcp(app: App) -> None:
    app.lists_store.add(ListName.BLOCKED, [(None, "evil.example.test")])
    app.engine.lists = app.lists_store.snapshot()
    a = answerer(app, query_port=8080, tls_names=["rampart.example"])
    name = ".".join(["x" * 50] * 3) + f".evil.example.test.{DN}"
    query = dns.message.make_query(name, "TXT").to_wire()
    udp = a.answer(query, "127.0.0.1", "udp")
    assert isinstance(udp, bytes) and len(udp) <= 512
    cut = dns.message.from_wire(udp)
    assert cut.flags & dns.flags.TC and cut.answer == []
    whole = ask(a, name, "TXT", transport="tcp")
    assert not whole.flags & dns.flags.TC and len(listed(whole)) == 1
    assert "blocked by the administrator" in listed(ask(a, name, "TXT", edns=0))[0]  # fits in 1232


def test_the_engine_is_read_per_query_so_swaps_show_without_a_new_answerer(app: App, tmp_path: Path) -> None:
    other = App(Config(data_dir=tmp_path / "other", query_port=0, query_tls_port=0))
    (tmp_path / "other").mkdir(mode=0o700)
    other.open()
    try:
        other.lists_store.add(ListName.BLOCKED, [(None, "swapped.example.test")])
        other.engine.lists = other.lists_store.snapshot()
        current = [app.engine]
        a = Answerer(lambda: current[0], app.cfg)
        nxdomain(ask(a, f"swapped.example.test.{DN}"))
        current[0] = other.engine
        assert listed(ask(a, f"swapped.example.test.{DN}")) == ["127.0.0.10"]
    finally:
        other.lists_store.close()
        other.engine.patterns.close()


def test_hooks_count_every_answer_and_log_the_items(app: App) -> None:
    counted: list[tuple[str, ...]] = []
    logged: list[tuple[Any, ...]] = []
    a = Answerer(lambda: app.engine, app.cfg, stats=lambda *x: counted.append(x),
                 log=lambda *x: logged.append(x))
    ask(a, v4("192.0.2.7"))
    ask(a, f"nobody.example.test.{DN}")
    ask(a, "example.com")
    ask(a, DN, "SOA")
    assert a.answer(b"\x00\x01" + b"\x00" * 10, "127.0.0.1", "udp") is not None  # FORMERR (no question)
    assert counted == [("ip", "NOERROR", "pattern"), ("domain", "NXDOMAIN", "local"),
                       ("none", "REFUSED", "none"), ("domain", "NOERROR", "zone"),
                       ("none", "FORMERR", "none")]
    assert [(c, item, ans.source.value, rcode) for c, item, ans, rcode, *_ in logged] == [
        ("127.0.0.1", "192.0.2.7", "pattern", "NOERROR"),
        ("127.0.0.1", "nobody.example.test", "local", "NXDOMAIN")]
    assert all(row[4] >= 0 for row in logged)


# ---------------------------------------------------------------- the cloud


class Cloud:
    """A configured cloud: rates every name it is asked about dangerous, or never answers."""

    def __init__(self, *, down: bool = False, hang: bool = False) -> None:
        self.down, self.hang, self.asked = down, hang, 0

    async def ask_many(self, service: Any, pairs: Any) -> list[Any]:
        self.asked += len(pairs)
        if self.hang:
            await asyncio.Event().wait()
        if self.down:
            return [RelayError("connection refused") for _ in pairs]
        return [{"rating": "dangerous", "score": 90, "category": "c2", "ttl": 600} for _ in pairs]


async def relayed(a: Answerer, name: str, rdtype: str = "A") -> dns.message.Message:
    got = a.answer(dns.message.make_query(name, rdtype).to_wire(), "127.0.0.1", "udp")
    assert inspect.isawaitable(got), "an unknown name with a cloud configured is relayed"
    raw = await got
    assert isinstance(raw, bytes)
    return dns.message.from_wire(raw)


async def test_unknown_names_are_relayed_to_the_cloud_and_cached(app: App) -> None:
    app.engine.relay = cloud = Cloud()
    counted: list[tuple[str, ...]] = []
    a = Answerer(lambda: app.engine, app.cfg, stats=lambda *x: counted.append(x))
    msg = await relayed(a, v4("192.0.3.44"))
    assert listed(msg) == ["127.0.0.2"] and msg.answer[0].ttl == 600
    again = ask(a, v4("192.0.3.44"), "TXT")  # from the cache: at once
    assert "from cache" in listed(again)[0] and cloud.asked == 1
    assert [c[2] for c in counted] == ["cloud", "cache"]
    assert listed(ask(a, v4("192.0.2.7"))) == ["127.0.0.4"]  # the pattern still answers at once


@pytest.mark.parametrize("cloud", [Cloud(down=True), Cloud(hang=True)])
async def test_a_cloud_that_does_not_answer_in_time_is_servfail(app: App, cloud: Cloud) -> None:
    app.engine.relay = cloud
    counted: list[tuple[str, ...]] = []
    a = Answerer(lambda: app.engine, app.cfg.replace(dns_timeout=0.05), stats=lambda *x: counted.append(x))
    msg = await relayed(a, f"unknown.example.test.{DN}")
    assert msg.rcode() == dns.rcode.SERVFAIL and msg.answer == [] and not msg.flags & dns.flags.AA
    assert counted == [("domain", "SERVFAIL", "degraded")]
