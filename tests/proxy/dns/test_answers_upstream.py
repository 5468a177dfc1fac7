"""dns_upstream_zone: names nothing here knows are asked of another DNSBL zone (here a second
appliance's Answerer on a real UDP socket on 127.0.0.1) and answered as it answers."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest

from proxy.config import Config
from proxy.decide.lists import ListName
from proxy.dns.answers import Answerer
from proxy.errors import ConfigError
from proxy.serve.app import App

UP = "zen.upstream.test"


def make_app(path: Path) -> App:
    path.mkdir(mode=0o700)
    app = App(Config(data_dir=path, query_port=0, query_tls_port=0))
    app.open()
    return app


class Served(asyncio.DatagramProtocol):
    """The upstream: an Answerer behind a UDP socket."""

    def __init__(self, answerer: Answerer) -> None:
        self.answerer = answerer
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        got = self.answerer.answer(data, addr[0], "udp")
        if isinstance(got, bytes):
            self.transport.sendto(got, addr)


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[tuple[App, App]]:
    here, there = make_app(tmp_path / "here"), make_app(tmp_path / "there")
    there.lists_store.add(ListName.BLOCKED, [(None, "192.0.3.77"), (None, "spammer.example.test")])
    there.engine.lists = there.lists_store.snapshot()
    yield here, there
    for app in (here, there):
        app.lists_store.close()
        app.engine.patterns.close()


@pytest.fixture
async def upstream(apps: tuple[App, App]) -> AsyncIterator[int]:
    there = apps[1]
    answerer = Answerer(lambda: there.engine, there.cfg.replace(dns_ip_zone=UP, dns_domain_zone="dn." + UP))
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Served(answerer), local_addr=("127.0.0.1", 0))
    yield transport.get_extra_info("sockname")[1]
    transport.close()


async def ask(a: Answerer, name: str, rdtype: str = "A") -> dns.message.Message:
    got = a.answer(dns.message.make_query(name, rdtype).to_wire(), "127.0.0.1", "udp")
    raw = await got if inspect.isawaitable(got) else got
    assert isinstance(raw, bytes)
    return dns.message.from_wire(raw)


def texts(msg: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in msg.answer for rd in rrset]


async def test_names_nothing_here_knows_are_answered_as_the_upstream_zone_answers(
    apps: tuple[App, App], upstream: int
) -> None:
    here = apps[0]
    a = Answerer(lambda: here.engine, here.cfg.replace(dns_upstream_zone=UP,
                                                       dns_upstream_server=f"127.0.0.1:{upstream}"))
    assert texts(await ask(a, "77.3.0.192.ip.rampart.local")) == ["127.0.0.10"]
    (txt,) = texts(await ask(a, "77.3.0.192.ip.rampart.local", "TXT"))
    assert "blocked by the administrator" in txt
    nx = await ask(a, "78.3.0.192.ip.rampart.local")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.flags & dns.flags.AA and nx.authority
    # what this appliance knows is answered here, at once, without asking
    local = a.answer(dns.message.make_query("7.2.0.192.ip.rampart.local", "A").to_wire(), "127.0.0.1", "udp")
    assert isinstance(local, bytes) and texts(dns.message.from_wire(local)) == ["127.0.0.4"]


async def test_an_upstream_that_does_not_answer_is_servfail(apps: tuple[App, App]) -> None:
    silent = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))  # receives, never answers
    try:
        port = silent[0].get_extra_info("sockname")[1]
        here = apps[0]
        a = Answerer(lambda: here.engine, here.cfg.replace(
            dns_upstream_zone=UP, dns_upstream_server=f"127.0.0.1:{port}", dns_timeout=0.2))
        msg = await ask(a, "1.3.0.192.ip.rampart.local")
        assert msg.rcode() == dns.rcode.SERVFAIL and msg.answer == []
    finally:
        silent[0].close()


@pytest.mark.parametrize("server", ["nowhere", "127.0.0.1:0", "127.0.0.1:99999", "[::1"])
def test_a_bad_upstream_server_is_a_config_error(apps: tuple[App, App], server: str) -> None:
    with pytest.raises(ConfigError, match="dns_upstream_server"):
        cfg = apps[0].cfg.replace(dns_upstream_zone=UP, dns_upstream_server=server)
        Answerer(lambda: apps[0].engine, cfg)

