"""A request repeated byte for byte is answered again without parsing (the server's fast
path, ``HttpConnection._again_answered``, with ``App.repeat``). Each test drives two real
servers on 127.0.0.1 over one real App each: one with the fast path, one without (the
plain path), and holds what a client, /metrics and the query log see equal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.config import Config
from proxy.decide.lists import Entry, EntryKind, ListName, ListSnapshot
from proxy.logs.search import Search, search
from proxy.serve.app import App
from proxy.serve.server import ServerLimits, start_server

EICAR_SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
GET = f"GET /v1/file/{EICAR_SHA256} HTTP/1.1\r\nHost: door\r\n\r\n".encode()
TIMEOUT = 5.0


class Door:
    """An App and a server in front of its routes."""

    def __init__(self, app: App, port: int) -> None:
        self.app = app
        self.port = port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    def counts(self) -> tuple[dict[object, int], dict[object, int]]:
        stats = self.app.stats
        return dict(stats.items), dict(stats.requests)

    async def logged(self) -> dict[tuple[str, str, str], int]:
        """The query log's answers by (client, item, source): its rows' counts added up
        (a second's boundary may fall elsewhere in the two doors' runs, splitting a row)."""
        logs = self.app.logs
        assert logs is not None
        await asyncio.to_thread(logs.writer.stop)  # writes what is held and queued
        out: dict[tuple[str, str, str], int] = {}
        for r in search(logs.store, Search()).rows:
            key = (r["client"], r["item"], r["source"])
            out[key] = out.get(key, 0) + r["count"]
        return out


async def _door(data: Path, fast: bool) -> tuple[Door, object]:
    data.mkdir(mode=0o700)
    app = App(Config(data_dir=data, query_port=0, query_tls_port=0, cloud=None))
    await app.start()  # no listener of its own (port 0); the logs and the engine
    server = await start_server(app.routes, "127.0.0.1", 0, limits=ServerLimits(),
                                observe=app._observe, gate=app.gate, caps=app.caps,
                                repeat=app.repeat if fast else None)
    return Door(app, server.sockets[0].getsockname()[1]), server


@pytest.fixture
async def doors(tmp_path: Path) -> AsyncIterator[tuple[Door, Door]]:
    fast, fast_server = await _door(tmp_path / "fast", True)
    plain, plain_server = await _door(tmp_path / "plain", False)
    yield fast, plain
    for door, server in ((fast, fast_server), (plain, plain_server)):
        server.close()  # type: ignore[attr-defined]
        await door.app.stop()


async def answer(reader: asyncio.StreamReader) -> bytes:
    """One whole response: its head, then Content-Length bytes."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head + await asyncio.wait_for(reader.readexactly(length), TIMEOUT)


async def ask_again(door: Door, request: bytes, times: int) -> list[bytes]:
    """``request`` sent ``times`` times on one connection, each once the last is answered."""
    reader, writer = await door.connect()
    try:
        out = []
        for _ in range(times):
            writer.write(request)
            out.append(await answer(reader))
        return out
    finally:
        writer.close()


async def test_repeats_get_the_same_answer_counts_and_log_as_parsed_requests(
        doors: tuple[Door, Door]) -> None:
    fast, plain = doors
    got = [await ask_again(d, GET, 50) for d in (fast, plain)]
    assert got[0] == got[1] and len(set(got[0])) == 1
    assert json.loads(got[0][0].split(b"\r\n\r\n", 1)[1])["results"][0]["source"] == "pattern"
    assert fast.counts() == plain.counts()
    assert fast.app.stats.items[("file", "pattern")] == 50
    latency = fast.app.stats.request_latency, plain.app.stats.request_latency
    assert latency[0].count == latency[1].count == 50
    # sent again in no time: the first bucket (the plain path's own take µs, but a busy
    # machine may delay one past it, so they are not compared bucket by bucket)
    assert latency[0].counts[0] >= 49  # the 49 repeats at least
    logged = await fast.logged()
    assert logged == await plain.logged() and sum(logged.values()) == 50


async def test_connections_of_one_client_asking_together_are_all_counted(
        doors: tuple[Door, Door]) -> None:
    """Repeats are added up per answer and client over all connections, per loop turn."""
    for door in doors:
        conns = [await door.connect() for _ in range(8)]
        for _ in range(10):  # every connection's request out before any answer is read
            for _, writer in conns:
                writer.write(GET)
            for reader, _ in conns:
                await answer(reader)
        for _, writer in conns:
            writer.close()
    fast, plain = doors
    assert fast.counts() == plain.counts()
    assert fast.app.stats.items[("file", "pattern")] == 80
    logged = await fast.logged()
    assert logged == await plain.logged() and sum(logged.values()) == 80


async def test_a_change_of_lists_is_answered_at_once_on_a_repeated_request(
        doors: tuple[Door, Door]) -> None:
    for door in doors:
        reader, writer = await door.connect()
        sources = []
        for i in range(6):
            if i == 3:  # the administrator approves the hash between two identical requests
                door.app.engine.lists = ListSnapshot(
                    [Entry(ListName.APPROVED, EntryKind.HASH, EICAR_SHA256)])
            writer.write(GET)
            body = (await answer(reader)).split(b"\r\n\r\n", 1)[1]
            sources.append(json.loads(body)["results"][0]["source"])
        writer.close()
        assert sources == ["pattern"] * 3 + ["approved-list"] * 3
    assert doors[0].counts() == doors[1].counts()


async def test_pipelined_head_and_closing_requests_take_the_plain_path_and_answer_alike(
        doors: tuple[Door, Door]) -> None:
    head = GET.replace(b"GET ", b"HEAD ", 1)
    closing = GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    seen = []
    for door in doors:
        reader, writer = await door.connect()
        writer.write(GET)
        first = await answer(reader)
        writer.write(GET + GET)  # two in one read: both answered, in order
        two = [await answer(reader), await answer(reader)]
        writer.write(GET)  # the repeat after them
        again = await answer(reader)
        writer.write(head)
        head_answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        writer.write(head)  # a HEAD repeated: still no body
        head_again = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        writer.write(closing)
        last = await asyncio.wait_for(reader.read(), TIMEOUT)  # answered, then closed
        writer.close()
        assert two == [first, first] and again == first and head_again == head_answer
        assert b"Connection: close" in last and last.endswith(first.split(b"\r\n\r\n", 1)[1])
        seen.append((first, head_answer, last))
    assert seen[0] == seen[1]
    assert doors[0].counts() == doors[1].counts()


async def test_the_rate_limit_holds_for_repeated_requests(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    app = App(Config(data_dir=data, query_port=0, query_tls_port=0, cloud=None,
                     rate_limit=0.001, rate_burst=3))
    await app.start()
    server = await start_server(app.routes, "127.0.0.1", 0, limits=ServerLimits(),
                                observe=app._observe, gate=app.gate, caps=app.caps,
                                repeat=app.repeat)
    try:
        door = Door(app, server.sockets[0].getsockname()[1])
        statuses = [int(a.split(b" ", 2)[1]) for a in await ask_again(door, GET, 5)]
        assert statuses == [200, 200, 200, 429, 429]
        assert app.stats.items[("file", "pattern")] == 3
    finally:
        server.close()
        await app.stop()
