"""Where the intercept door may connect: the destination rule as tables (no traffic is sent;
names are resolved by a fake, addresses of "this machine" are a fixed set)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from proxy.config import Config
from proxy.errors import ConfigError
from proxy.serve.destinations import Address, Allowed, Destinations, literal, special, this_machine

OURS = {ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("fd00::2")}
OWN_PORTS = (8080, 8443, 3128, 4344)


def rule(*allowed: str, cloud: tuple[str, ...] = ()) -> Destinations:
    cfg = Config(intercept_allow_destinations=list(allowed), cloud=list(cloud), listen="10.9.9.9",
                 query_port=8080, query_tls_port=8443, proxy_port=3128, transparent_port=0,
                 capture_port=4344)
    d = Destinations.from_config(cfg)
    d.is_local = lambda ip: ip in OURS
    return d


def refused(d: Destinations, host: str, port: int) -> str | None:
    """The verdict the door acts on, names resolved by a fixed table."""
    names = {"localhost": ["::1", "127.0.0.1"], "aliased.test": ["198.51.100.1", "127.0.1.1"],
             "cloud.test": ["198.51.100.9"], "myself.test": ["192.0.2.2"]}

    async def lookup(name: str, _port: int) -> list[Address]:
        if name not in names:
            raise OSError("no such name")
        return [ipaddress.ip_address(a) for a in names[name]]

    d.lookup = lookup
    verdict = d.check(host, port)
    if verdict is None or isinstance(verdict, str):
        return verdict
    return asyncio.run(_wait(verdict))


async def _wait(verdict):  # type: ignore[no-untyped-def]
    return await verdict


@pytest.mark.parametrize(
    "host, address",
    [
        ("127.0.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
        ("0x7F000001", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"), ("[::1]", "::1"), ("::1", "::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"), ("[::ffff:7f00:1]", "127.0.0.1"),
        ("fe80::1%eth0", "fe80::1"), ("0", "0.0.0.0"), ("127.0.0.1.", "127.0.0.1"),
        ("localhost", None), ("cafe.de", None), ("deadbeef", None), ("1.2.3.4.5", None),
        ("127.0.0.1 junk", None), ("", None),
    ],
)
def test_literal_reads_every_form_the_resolver_takes(host: str, address: str | None) -> None:
    got = literal(host)
    assert (str(got) if got is not None else None) == address


@pytest.mark.parametrize(
    "address, why",
    [
        ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
        ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast or broadcast"), ("255.255.255.255", "multicast or broadcast"),
        ("ff02::1", "multicast or broadcast"), ("::7f00:1", "an IPv4-compatible IPv6 address"),
        ("10.1.2.3", None), ("192.168.1.1", None), ("198.51.100.1", None), ("fd00::5", None),
        ("2001:db8::1", None),
    ],
)
def test_special_addresses(address: str, why: str | None) -> None:
    assert special(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize(
    "host, port, why",
    [
        # the capture stream, the query door, any local server: every way of naming them
        ("127.0.0.1", 4344, "127.0.0.1 is loopback and 4344 is one of the appliance's ports"),
        ("127.0.0.1", 9000, "127.0.0.1 is loopback"),
        ("2130706433", 8080, "2130706433 (127.0.0.1) is loopback and 8080 is one of"),
        ("0x7f.1", 9000, "0x7f.1 (127.0.0.1) is loopback"),
        ("0177.0.0.1", 9000, "0177.0.0.1 (127.0.0.1) is loopback"),
        ("[::1]", 9000, "::1 is loopback"),
        ("::ffff:127.0.0.1", 9000, "::ffff:127.0.0.1 (127.0.0.1) is loopback"),
        ("localhost", 9000, "localhost (::1) is loopback"),
        ("aliased.test", 443, "aliased.test (127.0.1.1) is loopback"),  # one bad answer is enough
        ("0.0.0.0", 8080, "0.0.0.0 is unspecified"),
        ("[::]", 80, ":: is unspecified"),
        ("169.254.169.254", 80, "169.254.169.254 is link-local"),
        ("192.0.2.2", 443, "192.0.2.2 is an address of this appliance"),
        ("fd00::2", 443, "fd00::2 is an address of this appliance"),
        ("myself.test", 443, "myself.test (192.0.2.2) is an address of this appliance"),
        ("10.9.9.9", 443, "10.9.9.9 is an address of this appliance"),  # the listen address
        # products' real destinations
        ("198.51.100.1", 443, None), ("10.1.2.3", 8080, None), ("cloud.test", 443, None),
        ("2001:db8::1", 443, None),
        ("unresolvable.test", 443, None),  # the connect fails on its own, saying so
    ],
)
def test_refused_destinations(host: str, port: int, why: str | None) -> None:
    got = refused(rule(), host, port)
    if why is None:
        assert got is None
    else:
        assert got is not None and got.startswith(why)


@pytest.mark.parametrize(
    "allowed, host, port, ok",
    [
        (["127.0.0.1:9000"], "127.0.0.1", 9000, True),
        (["127.0.0.1:9000"], "127.0.0.1", 9001, False),
        (["127.0.0.1:9000"], "2130706433", 9000, True),  # the address, however it is written
        (["127.0.0.1:9000"], "localhost", 9000, False),  # localhost is also ::1
        (["127.0.0.1:9000", "[::1]:9000"], "localhost", 9000, True),
        (["localhost:9000"], "localhost", 9000, True),  # a name entry: the name as given
        (["localhost:9000"], "LOCALHOST.", 9000, True),
        (["localhost:9000"], "127.0.0.1", 9000, False),
        (["localhost"], "localhost", 1234, True),
        (["127.0.0.0/8"], "127.0.0.2", 9000, True),
        (["127.0.0.0/8"], "::1", 9000, False),
        (["::1"], "[::1]", 9000, True),
        (["169.254.169.254:80"], "169.254.169.254", 80, True),
        (["192.0.2.2"], "192.0.2.2", 443, True),
        # the appliance's own ports need the port named, not only the address or network
        (["127.0.0.0/8"], "127.0.0.1", 4344, False),
        (["127.0.0.1"], "127.0.0.1", 8080, False),
        (["192.0.2.2"], "192.0.2.2", 3128, False),
        (["127.0.0.1:4344"], "127.0.0.1", 4344, True),
        (["localhost:8080"], "localhost", 8080, True),
    ],
)
def test_allowed_destinations(allowed: list[str], host: str, port: int, ok: bool) -> None:
    assert (refused(rule(*allowed), host, port) is None) is ok


def test_cloud_endpoints_are_allowed_as_they_are_named() -> None:
    d = rule(cloud=("https://localhost:9443", "http://127.0.0.1:9080", "https://[::1]"))
    assert refused(d, "localhost", 9443) is None
    assert refused(d, "127.0.0.1", 9080) is None
    assert refused(d, "::1", 443) is None
    assert refused(d, "localhost", 9444) is not None  # another port of that host is not the cloud
    assert refused(d, "127.0.0.1", 9443) is not None  # nor the address for another name


@pytest.mark.parametrize(
    "entry, name, network, port",
    [
        ("localhost:9000", "localhost", None, 9000), ("Cloud.Test.", "cloud.test", None, None),
        ("127.0.0.1", None, "127.0.0.1/32", None), ("[::1]:80", None, "::1/128", 80),
        ("fe80::/10", None, "fe80::/10", None), ("0x7f.1:80", None, "127.0.0.1/32", 80),
        ("10.0.0.0/8", None, "10.0.0.0/8", None),
    ],
)
def test_allow_entries(entry: str, name: str | None, network: str | None, port: int | None) -> None:
    a = Allowed.parse(entry)
    assert (a.name, str(a.network) if a.network else None, a.port) == (name, network, port)


@pytest.mark.parametrize(
    "bad", ["", "host:", "host:0", "host:70000", "host:http", "[::1", "[::1]x", "bad host", "a..b",
            "-a.test", "10.0.0.0/33", "http://x/", "*.test"],
)
def test_bad_allow_entries_are_refused_naming_the_key(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"intercept_allow_destinations.*HOST\[:PORT\]"):
        Config().replace(intercept_allow_destinations=[bad])


def test_this_machine_knows_its_loopback_and_not_a_documentation_address() -> None:
    assert this_machine(ipaddress.ip_address("127.0.0.1"))
    assert not this_machine(ipaddress.ip_address("198.51.100.254"))
