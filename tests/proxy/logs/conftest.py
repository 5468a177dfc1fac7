"""Shared by the log tests: real answers from a real App's routes, a real log store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.config import Config
from proxy.logs.store import LogStore
from proxy.logs.writer import LogWriter
from proxy.serve.app import App
from proxy.wire.http import Request, Response, respond

EICAR_SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
EICAR_MD5 = "44d88612fea8a8f36de82e1278abb02f"
MALWARE_URL = "http://testsafebrowsing.appspot.com/s/malware.html"
Ask = Callable[..., tuple[Request, Response]]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """An App answering from the shipped sample (no doors listening, no cloud)."""
    data = tmp_path_factory.mktemp("app")
    data.chmod(0o700)
    app = App(Config(data_dir=data, query_port=0, query_tls_port=0))
    app.open()
    yield app
    app.lists_store.close()
    app.engine.patterns.close()


@pytest.fixture
def ask(app: App) -> Ask:
    """``ask(method, target, body=None, client=...)``: the request and the App's answer."""

    def ask(method: str, target: str, body: Any = None,
            client: str = "192.0.2.10") -> tuple[Request, Response]:
        raw = json.dumps(body).encode() if body is not None else b""
        request = Request(method, target.encode(), [], raw, client)
        got = respond(app.routes, request)  # as the door does: an error becomes its answer
        response = got if isinstance(got, Response) else asyncio.run(_wait(got))
        return request, response

    return ask


async def _wait(pending: Any) -> Response:
    return await pending  # type: ignore[no-any-return]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    data = tmp_path / "data"
    s = LogStore.open(data)
    yield s
    s.close()


@pytest.fixture
def make_writer(store: LogStore) -> Iterator[Callable[..., LogWriter]]:
    """Started writers on ``store``, stopped (flushed) at the end of the test."""
    made: list[LogWriter] = []

    def make(**options: Any) -> LogWriter:
        w = LogWriter(store, **options)
        w.start()
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()
