"""List rules as products meet them through the query door: a rule scoped to a client network
answers only its clients (the GET memo never hands one client's answer to another), and a
running server picks up a change of every kind, made by another store (the CLI's), and an
expiry, within 2 s. Real SQLite, real sockets: clients bind 127.0.0.1 and 127.0.0.2."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from proxy.config import Config
from proxy.decide.list_rules import parse_clients
from proxy.decide.lists import Entry, EntryKind, ListName, ListSnapshot, ListStore
from proxy.serve.app import App
from proxy.wire.http import Request, Response
from tests.conftest import free_port

B = ListName.BLOCKED


def source(app: App, target: str, client: str) -> str:
    result = app.routes(Request("GET", target.encode(), [], b"", client))
    assert isinstance(result, Response) and result.status == 200
    import json

    return str(json.loads(result.body)["results"][0]["source"])


def test_a_scoped_rule_answers_its_clients_only_and_the_memo_keeps_them_apart(app: App) -> None:
    app.engine.lists = ListSnapshot([Entry(B, EntryKind.DOMAIN, "games.example",
                                           clients=parse_clients(["10.0.0.0/8"]))])
    target = "/v1/domain/www.games.example"
    for _ in range(2):  # the second round is served from the memo
        assert source(app, target, "10.1.2.3") == "blocked-list"
        assert source(app, target, "192.168.1.9") == "local"
        assert source(app, target, "::ffff:10.9.9.9") == "blocked-list"
    app.engine.lists = ListSnapshot([Entry(B, EntryKind.DOMAIN, "games.example")])
    assert source(app, target, "192.168.1.9") == "blocked-list"  # unscoped: every client


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


async def test_the_running_door_follows_every_kind_scope_and_expiry(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    app = App(Config(data_dir=data, listen="127.0.0.1", query_port=free_port(), query_tls_port=0,
                     lists_poll=0.05))
    await app.start()
    cli = ListStore.open(data)
    base = f"http://127.0.0.1:{app.ports()['http']}"
    here = httpx.AsyncClient(base_url=base)
    there = httpx.AsyncClient(base_url=base, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"))
    try:
        async def web(client: httpx.AsyncClient, url: str) -> Any:
            r = await client.post("/v1/web", json={"urls": [url]})
            return r.json()["results"][0]

        url = "http://www.shop.example/cart/setup.exe?ref=casino"
        # least specific first, so each new rule is the one reported
        for kind, value in [(EntryKind.REGEX, r"setup\.exe"), (EntryKind.KEYWORD, "casino"),
                            (EntryKind.DOMAIN, "shop.example"), (EntryKind.URL, "www.shop.example/cart/")]:
            cli.add(B, [(kind, value)], clients=["127.0.0.2"])

            async def blocked_there_only(v: str = value) -> bool:
                a, b = await web(there, url), await web(here, url)
                return a["source"] == "blocked-list" and a["matched"] == v and b["source"] != "blocked-list"

            assert await eventually(blocked_there_only), f"a new {kind.value} rule within 2 s"

        cli.edit(EntryKind.URL, "www.shop.example/cart/", clients=[], expires=time.time() + 0.5)

        async def for_everyone() -> bool:
            return (await web(here, url)).get("matched") == "www.shop.example/cart/"

        assert await eventually(for_everyone)

        async def expired() -> bool:
            return (await web(here, url))["source"] != "blocked-list"

        assert await eventually(expired, within=3.0), "an expired rule stops matching within 2 s of it"
        assert (await web(there, url))["matched"] == "shop.example"
    finally:
        await here.aclose()
        await there.aclose()
        cli.close()
        await app.stop()
