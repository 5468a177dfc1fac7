"""The DNS door's sockets, with real UDP and TCP clients on 127.0.0.1 and a stub Answerer
(the seam): answers over both transports, TCP framing, timeouts and caps, the client
networks, the rate limit, the overload bound, the UDP size guard, metrics, query-log
rows, the port-in-use error, and stop()."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from proxy.config import Config
from proxy.dns.door import DnsDoor
from proxy.dns.transports import reply
from proxy.errors import RampartError
from proxy.logs.hub import Logs
from proxy.logs.search import Search, search
from proxy.logs.store import LogStore
from proxy.logs.writer import LogWriter
from proxy.model import DomainQuery, Rating, Source, WebAnswer
from proxy.serve import metrics
from proxy.serve.conns import ConnectionCaps

HOST = "127.0.0.1"
ZONE = "dn.rampart.local"


class Stub:
    """Answers any name with 127.0.0.2, as an Answerer would a listed one. ``slow.`` names
    never finish, ``late.`` names finish after a loop turn, ``boom.`` names raise, ``big.``
    names get an answer too large for plain UDP (an Answerer that forgot to size it)."""

    def __init__(self) -> None:
        self.door: DnsDoor | None = None
        self.asked: list[tuple[str, str, str]] = []
        self.waiting = 0
        self.never = asyncio.Event()
        self.late = asyncio.Event()
        self.late.set()
        self.defer = False  # every answer through an awaitable (the door's slow path)

    def answer(self, packet: bytes, client: str, transport: str) -> Any:
        try:
            query = dns.message.from_wire(packet)
            name = query.question[0].name.to_text()
        except Exception:
            return None
        self.asked.append((name, client, transport))
        if name.startswith("boom."):
            raise ValueError("a bug in the Answerer")
        if name.startswith("slow."):
            return self._never()
        if name.startswith("late.") or self.defer:
            return self._late(query, name, client)
        return self._respond(query, name, client)

    async def _never(self) -> bytes:
        self.waiting += 1
        await self.never.wait()
        return b""

    async def _late(self, query: dns.message.Message, name: str, client: str) -> bytes:
        await self.late.wait()
        return self._respond(query, name, client)

    def _respond(self, query: dns.message.Message, name: str, client: str) -> bytes:
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "127.0.0.2"))
        if name.startswith("big."):
            texts = [f'"{c * 200}"' for c in "abcde"]
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "TXT", *texts))
        if self.door is not None:  # the hooks, as the Answerer calls them
            self.door.count(ZONE, "NOERROR", "pattern")
            item = name.removesuffix(f".{ZONE}.")
            self.door.log(client, DomainQuery(item, item), WebAnswer(
                Rating.DANGEROUS, Source.PATTERN, matched=item, category="Malware"), "NOERROR", 0.0005)
        return response.to_wire()


def config(tmp_path: Path, **changes: Any) -> Config:
    data = tmp_path / "data"
    data.mkdir(mode=0o700, exist_ok=True)
    return Config(data_dir=data, listen=HOST, dns_port=0, **changes)


@asynccontextmanager
async def running(tmp_path: Path, cfg: dict[str, Any] | None = None, **options: Any
                  ) -> AsyncIterator[tuple[DnsDoor, Stub]]:
    stub = Stub()
    door = DnsDoor(config(tmp_path, **(cfg or {})), stub, port=0, **options)
    stub.door = door
    await door.start()
    try:
        yield door, stub
    finally:
        stub.never.set()
        await door.stop()


def query(name: str, *, qtype: str = "A", **options: Any) -> dns.message.Message:
    return dns.message.make_query(name, qtype, **options)


async def udp(door: DnsDoor, q: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.udp(q, HOST, port=door.port, timeout=5)


async def tcp(door: DnsDoor, q: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.tcp(q, HOST, port=door.port, timeout=5)


async def udp_raw(door: DnsDoor, packet: bytes, *, wait: float = 5.0) -> bytes | None:
    """Send one datagram; the answer, or None when none came within ``wait`` seconds."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Catch(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not got.done():
                got.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Catch, remote_addr=(HOST, door.port))
    try:
        transport.sendto(packet)
        return await asyncio.wait_for(got, wait)
    except TimeoutError:
        return None
    finally:
        transport.close()


def framed(q: dns.message.Message) -> bytes:
    wire = q.to_wire()
    return len(wire).to_bytes(2) + wire


async def read_message(reader: asyncio.StreamReader) -> dns.message.Message:
    size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5))
    return dns.message.from_wire(await asyncio.wait_for(reader.readexactly(size), 5))


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the door closes the connection (EOF or a reset)."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


def a_record(m: dns.message.Message) -> str:
    return str(m.find_rrset(m.answer, m.question[0].name, dns.rdataclass.IN, dns.rdatatype.A)[0])


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never became true")


# ---------------------------------------------------------------- answers


async def test_udp_and_tcp_answers(tmp_path: Path) -> None:
    async with running(tmp_path) as (door, stub):
        over_udp = await udp(door, query(f"bad.example.{ZONE}"))
        over_tcp = await tcp(door, query(f"bad.example.{ZONE}"))
        late = await udp(door, query(f"late.example.{ZONE}"))
        late_tcp = await tcp(door, query(f"late.example.{ZONE}"))
    for m in (over_udp, over_tcp, late, late_tcp):
        assert m.rcode() == dns.rcode.NOERROR and a_record(m) == "127.0.0.2"
    assert [t for _, _, t in stub.asked] == ["udp", "tcp", "udp", "tcp"]
    assert {c for _, c, _ in stub.asked} == {HOST}


async def test_a_burst_from_many_clients_gets_every_answer_to_its_own_socket(tmp_path: Path) -> None:
    """Datagrams read in one wake-up are answered together (``Datagrams._flush``): each of
    many sockets, sending at once with some answers awaited, gets its own answers, IDs
    and names matching, and nothing else."""
    loop = asyncio.get_running_loop()
    async with running(tmp_path) as (door, stub):
        clients = []
        for _ in range(8):
            got: list[bytes] = []

            class Catch(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any, got: list[bytes] = got) -> None:
                    got.append(data)

            transport, _ = await loop.create_datagram_endpoint(Catch, remote_addr=(HOST, door.port))
            clients.append((transport, got, {}))
        for i in range(20):  # 160 datagrams: within even a default receive buffer
            for c, (transport, _, sent) in enumerate(clients):
                name = f"{'late.' if i % 7 == 0 else ''}n{i}.c{c}.{ZONE}"
                q = query(name)
                q.id = (c * 1000 + i) & 0xFFFF
                sent[q.id] = name + "."
                transport.sendto(q.to_wire())
        await eventually(lambda: all(len(got) == 20 for _, got, _ in clients))
        for transport, got, sent in clients:
            answers = {m.id: str(m.question[0].name) for m in map(dns.message.from_wire, got)}
            assert answers == sent
            transport.close()
    assert len(stub.asked) == 160


async def test_an_ipv6_listen_address_answers_both_transports(tmp_path: Path) -> None:
    stub = Stub()
    door = DnsDoor(config(tmp_path).replace(listen="::1"), stub, port=0)
    await door.start()
    try:
        q = query(f"six.{ZONE}")
        got = [await dns.asyncquery.udp(q, "::1", port=door.port, timeout=5),
               await dns.asyncquery.tcp(q, "::1", port=door.port, timeout=5)]
    finally:
        await door.stop()
    assert [a_record(m) for m in got] == ["127.0.0.2"] * 2
    assert [(c, t) for _, c, t in stub.asked] == [("::1", "udp"), ("::1", "tcp")]


async def test_an_answer_sent_at_once_equals_the_same_answer_awaited(tmp_path: Path) -> None:
    async with running(tmp_path) as (door, stub):
        small, big = query(f"same.{ZONE}").to_wire(), query(f"big.{ZONE}").to_wire()
        at_once = [await udp_raw(door, small), await udp_raw(door, big)]
        stub.defer = True
        awaited = [await udp_raw(door, small), await udp_raw(door, big)]
        assert door.pending == 0
    assert at_once == awaited and all(at_once)


async def test_several_tcp_messages_on_one_connection_answered_in_any_order(tmp_path: Path) -> None:
    async with running(tmp_path) as (door, stub):
        stub.late.clear()  # the late answer waits: the ones after it are not held behind it
        reader, writer = await asyncio.open_connection(HOST, door.port)
        qs = [query(f"late.one.{ZONE}"), query(f"two.{ZONE}"), query(f"three.{ZONE}")]
        writer.write(b"".join(framed(q) for q in qs))
        first, second = await read_message(reader), await read_message(reader)
        assert {first.id, second.id} == {qs[1].id, qs[2].id}
        stub.late.set()
        third = await read_message(reader)
        assert third.id == qs[0].id and a_record(third) == "127.0.0.2"
        writer.write(framed(query(f"four.{ZONE}")))  # still open for more
        assert (await read_message(reader)).rcode() == dns.rcode.NOERROR
        writer.close()


async def test_a_tcp_message_split_across_reads(tmp_path: Path) -> None:
    async with running(tmp_path) as (door, _):
        reader, writer = await asyncio.open_connection(HOST, door.port)
        q = query(f"split.example.{ZONE}")
        data = framed(q) + framed(query(f"next.{ZONE}"))
        for cut in (1, 2, 7, len(data) - 3):  # in the length, after it, inside the question, the next
            writer.write(data[:cut])
            await writer.drain()
            await asyncio.sleep(0.02)
            data = data[cut:]
        writer.write(data)
        got, nxt = await read_message(reader), await read_message(reader)
        assert got.id == q.id and a_record(got) == "127.0.0.2" and nxt.rcode() == dns.rcode.NOERROR
        writer.close()


async def test_a_connection_is_closed_after_max_messages(tmp_path: Path) -> None:
    async with running(tmp_path, max_messages=3) as (door, _):
        reader, writer = await asyncio.open_connection(HOST, door.port)
        writer.write(b"".join(framed(query(f"n{i}.{ZONE}")) for i in range(5)))
        answers = [await read_message(reader) for _ in range(3)]
        assert all(a.rcode() == dns.rcode.NOERROR for a in answers)
        assert await closed_by_peer(reader)
        writer.close()


# ---------------------------------------------------------------- TCP bounds


async def test_a_slow_tcp_client_is_cut_at_the_read_timeout(tmp_path: Path) -> None:
    caps = ConnectionCaps(100, 10)
    async with running(tmp_path, caps=caps, read_timeout=0.3) as (door, _):
        reader, writer = await asyncio.open_connection(HOST, door.port)
        data = framed(query(f"slowloris.{ZONE}"))
        writer.write(data[:5])  # begun, never finished
        for byte in data[5:9]:  # more bytes do not extend the time it has
            await asyncio.sleep(0.05)
            writer.write(bytes([byte]))
        assert await closed_by_peer(reader)
        writer.close()
        assert caps.refused[("dns", "read_timeout")] == 1
        assert (await tcp(door, query(f"next.{ZONE}"))).rcode() == dns.rcode.NOERROR
        await eventually(lambda: caps.open == 0)


async def test_an_idle_tcp_connection_is_closed(tmp_path: Path) -> None:
    async with running(tmp_path, idle_timeout=0.2) as (door, _):
        reader, writer = await asyncio.open_connection(HOST, door.port)
        writer.write(framed(query(f"one.{ZONE}")))
        assert (await read_message(reader)).rcode() == dns.rcode.NOERROR
        assert await closed_by_peer(reader)
        writer.close()


async def test_a_client_that_never_reads_its_answers_is_dropped(tmp_path: Path) -> None:
    caps = ConnectionCaps(100, 10)
    async with running(tmp_path, caps=caps, idle_timeout=0.3, read_timeout=0.3) as (door, stub):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((HOST, door.port))
        sock.setblocking(False)
        _, writer = await asyncio.open_connection(sock=sock)
        one = framed(query(f"{'x' * 60}.{ZONE}"))
        writer.write(one * 40_000)  # ~4 MB of questions, answers never read
        await eventually(lambda: caps.open == 0)
        assert len(stub.asked) < 40_000  # it was cut before it had asked them all
        writer.transport.abort()
        assert (await tcp(door, query(f"next.{ZONE}"))).rcode() == dns.rcode.NOERROR


async def test_too_many_tcp_connections_are_refused_by_the_caps(tmp_path: Path) -> None:
    caps = ConnectionCaps(100, 2)
    async with running(tmp_path, caps=caps) as (door, _):
        held = [await asyncio.open_connection(HOST, door.port) for _ in range(2)]
        for reader, writer in held:  # both admitted and answering
            writer.write(framed(query(f"held.{ZONE}")))
            assert (await read_message(reader)).rcode() == dns.rcode.NOERROR
        assert caps.open_by_door["dns"] == 2
        reader, writer = await asyncio.open_connection(HOST, door.port)
        assert await closed_by_peer(reader)
        writer.close()
        assert caps.refused[("dns", "client_cap")] == 1
        assert (await udp(door, query(f"udp.{ZONE}"))).rcode() == dns.rcode.NOERROR  # UDP still answers
        held[0][1].close()
        await eventually(lambda: caps.open_by_door["dns"] == 1)
        assert (await tcp(door, query(f"again.{ZONE}"))).rcode() == dns.rcode.NOERROR
        held[1][1].close()
        await eventually(lambda: caps.open == 0)


# ---------------------------------------------------------------- who may ask, how often


async def test_a_client_outside_dns_clients_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path, {"dns_clients": ["10.0.0.0/8"]}) as (door, stub):
        q = query(f"bad.example.{ZONE}")
        for got in (await udp(door, q), await tcp(door, q)):
            assert got.rcode() == dns.rcode.REFUSED and got.id == q.id
            assert got.question == q.question and not got.answer
            assert not got.flags & dns.flags.RA
        assert stub.asked == [] and door.refused["client"] == 2


async def test_a_client_over_its_rate_is_refused_until_its_bucket_refills(tmp_path: Path) -> None:
    now = [1000.0]
    async with running(tmp_path, {"dns_rate_limit": 1.0, "dns_rate_burst": 2},
                       clock=lambda: now[0]) as (door, _):
        codes = [(await udp(door, query(f"n{i}.{ZONE}"))).rcode() for i in range(3)]
        assert codes == [dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.REFUSED]
        assert (await tcp(door, query(f"t.{ZONE}"))).rcode() == dns.rcode.REFUSED
        now[0] += 1.0
        assert (await tcp(door, query(f"t.{ZONE}"))).rcode() == dns.rcode.NOERROR
        assert door.refused["rate"] == 2


async def test_answers_waiting_for_the_cloud_are_bounded(tmp_path: Path) -> None:
    async with running(tmp_path, max_pending=2) as (door, stub):
        for name in ("slow.a", "slow.b"):
            assert await udp_raw(door, query(f"{name}.{ZONE}").to_wire(), wait=0.2) is None
        await eventually(lambda: stub.waiting == 2)
        assert door.pending == 2
        over = await udp(door, query(f"slow.c.{ZONE}"))
        assert over.rcode() == dns.rcode.REFUSED and door.refused["overload"] == 1
        assert (await tcp(door, query(f"slow.d.{ZONE}"))).rcode() == dns.rcode.REFUSED
        assert (await udp(door, query(f"local.{ZONE}"))).rcode() == dns.rcode.NOERROR  # still answered
        assert stub.waiting == 2  # the refused ones never started
        stub.never.set()
        await eventually(lambda: door.pending == 0)


async def test_an_answer_never_finishing_is_servfail_after_the_deadline(tmp_path: Path) -> None:
    async with running(tmp_path, {"dns_timeout": 0.05}) as (door, _):
        door.deadline = 0.2
        got = await udp(door, query(f"slow.forever.{ZONE}"))
        assert got.rcode() == dns.rcode.SERVFAIL and door.pending == 0
        assert door.queries[("none", "SERVFAIL", "timeout")] == 1


# ---------------------------------------------------------------- bad input, bad answers


async def test_garbage_gets_nothing_and_the_door_keeps_answering(tmp_path: Path) -> None:
    rng = random.Random(12)
    async with running(tmp_path) as (door, _):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for n in range(300):
            size = rng.choice((0, 1, 11, 12, 13, 40, 512, 1400))
            packet = bytes(rng.getrandbits(8) for _ in range(size))
            if n % 3 == 0 and size >= 12:
                packet = packet[:2] + b"\x80" + packet[3:]  # a response: never answered
            sock.sendto(packet, (HOST, door.port))
        sock.close()
        assert await udp_raw(door, b"\x12\x34\x81\x00" + bytes(8), wait=0.2) is None
        assert (await udp(door, query(f"after.{ZONE}"))).rcode() == dns.rcode.NOERROR
        reader, writer = await asyncio.open_connection(HOST, door.port)
        writer.write(b"\x00\x03abc")  # not a DNS message: the stream is closed
        assert await closed_by_peer(reader)
        writer.close()
        assert (await tcp(door, query(f"after.{ZONE}"))).rcode() == dns.rcode.NOERROR


async def test_an_answerer_that_raises_gives_servfail(tmp_path: Path) -> None:
    async with running(tmp_path) as (door, _):
        assert (await udp(door, query(f"boom.{ZONE}"))).rcode() == dns.rcode.SERVFAIL
        assert (await tcp(door, query(f"boom.{ZONE}"))).rcode() == dns.rcode.SERVFAIL
        assert (await udp(door, query(f"fine.{ZONE}"))).rcode() == dns.rcode.NOERROR
        assert door.queries[("none", "SERVFAIL", "error")] == 2


async def test_a_udp_answer_is_never_larger_than_the_query_allows(tmp_path: Path) -> None:
    async with running(tmp_path) as (door, _):
        plain = query(f"big.{ZONE}")
        got = await udp_raw(door, plain.to_wire())
        assert got is not None and len(got) <= 512
        cut = dns.message.from_wire(got)
        assert cut.flags & dns.flags.TC and cut.id == plain.id and not cut.answer
        edns = query(f"big.{ZONE}", use_edns=0, payload=4096)
        full = await udp_raw(door, edns.to_wire())
        assert full is not None and len(full) > 512
        assert not dns.message.from_wire(full).flags & dns.flags.TC
        assert len((await tcp(door, plain)).answer) == 2  # and TCP carries it whole


def test_the_doors_own_replies_echo_the_question() -> None:
    q = query("x.example.", want_dnssec=False)
    q.flags |= dns.flags.CD
    r = dns.message.from_wire(reply(q.to_wire(), 5) or b"")
    assert (r.id, r.rcode(), r.question, r.flags & dns.flags.RD, r.flags & dns.flags.CD) == (
        q.id, dns.rcode.REFUSED, q.question, dns.flags.RD, dns.flags.CD)
    assert r.flags & dns.flags.QR and not r.flags & dns.flags.RA
    assert reply(b"\x00" * 11, 5) is None
    assert reply(r.to_wire(), 5) is None  # a response is never answered


# ---------------------------------------------------------------- metrics and the query log


async def test_counters_in_metrics(tmp_path: Path) -> None:
    stats = metrics.Stats()
    async with running(tmp_path, {"dns_clients": ["127.0.0.0/8"]}, stats=stats) as (door, _):
        await udp(door, query(f"one.{ZONE}"))
        await tcp(door, query(f"two.{ZONE}"))
        door.gate.clients = type(door.gate.clients).parse(["10.0.0.0/8"])  # type: ignore[union-attr]
        door.gate._admitted.clear()  # type: ignore[union-attr]
        await udp(door, query(f"three.{ZONE}"))
    text = metrics.render(metrics.registry_for(stats)).decode()
    assert f'rampart_dns_queries_total{{rcode="NOERROR",source="pattern",zone="{ZONE}"}} 2.0' in text
    assert 'rampart_dns_refused_total{reason="client"} 1.0' in text
    assert 'rampart_dns_refused_total{reason="overload"} 0.0' in text
    assert "rampart_dns_pending 0.0" in text


async def test_answers_become_query_log_rows(tmp_path: Path) -> None:
    store = LogStore.open(tmp_path / "logs")
    logs = Logs(store, LogWriter(store))
    logs.writer.start()
    current = [config(tmp_path)]
    try:
        async with running(tmp_path, logs_of=lambda: logs, cfg_of=lambda: current[0]) as (door, _):
            await udp(door, query(f"bad.example.{ZONE}"))
            current[0] = current[0].replace(log_clients="truncated")  # a setting changed live
            await tcp(door, query(f"worse.example.{ZONE}"))
            current[0] = current[0].replace(dns_query_log=False)  # the DNS door's rows alone off
            await udp(door, query(f"quiet.example.{ZONE}"))
            current[0] = current[0].replace(dns_query_log=True, query_log=False)
            await udp(door, query(f"unlogged.example.{ZONE}"))
    finally:
        logs.close()
    store = LogStore.open(tmp_path / "logs")
    try:
        rows = search(store, Search()).rows
    finally:
        store.close()
    assert [(r["service"], r["item"], r["verdict"], r["source"], r["origin"], r["threat"],
             r["blocked"], r["client"], r["count"]) for r in rows] == [
        ("domain", "worse.example", "dangerous", "pattern", "domain-ip", "Malware", 1, "127.0.0.0/24", 1),
        ("domain", "bad.example", "dangerous", "pattern", "domain-ip", "Malware", 1, HOST, 1),
    ]
    assert rows[0]["latency_ms"] == 0.5


# ---------------------------------------------------------------- ports, stop


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
async def test_a_port_in_use_is_an_error_naming_dns_port(tmp_path: Path, kind: int) -> None:
    taken = socket.socket(socket.AF_INET, kind)
    taken.bind((HOST, 0))
    if kind == socket.SOCK_STREAM:
        taken.listen()
    port = taken.getsockname()[1]
    try:
        door = DnsDoor(config(tmp_path), Stub(), port=port)
        with pytest.raises(RampartError) as e:
            await door.start()
    finally:
        taken.close()
    name = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    assert f"{HOST}:{port}" in e.value.message and f"({name})" in e.value.message
    assert "--dns-port" in e.value.message


async def test_stop_closes_everything(tmp_path: Path) -> None:
    caps = ConnectionCaps(100, 10)
    async with running(tmp_path, caps=caps) as (door, stub):
        reader, writer = await asyncio.open_connection(HOST, door.port)
        writer.write(framed(query(f"slow.pending.{ZONE}")))  # an answer waiting
        await eventually(lambda: door.pending == 1)
        port = door.port
        await door.stop()
        assert await closed_by_peer(reader)
        writer.close()
        assert door.pending == 0 and caps.open == 0 and stub.waiting == 1
        with pytest.raises(OSError):
            await asyncio.open_connection(HOST, port)
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # both ports free again
            with socket.socket(socket.AF_INET, kind) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((HOST, port))

