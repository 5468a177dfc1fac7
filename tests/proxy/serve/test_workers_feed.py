"""proxy.serve.feed: the workers' query-door flows reach the main process's capture only while
one is on, over a real unix socket; frames that are not exchanges end a feed, not the main."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import pytest

from proxy.serve import feed
from proxy.wire.http import Request, Response

REQ = Request("POST", b"/v1/file", [(b"Host", b"a:8080"), (b"X-\xff", b"\x00\xfe")],
              b'{"items":[]}\xff', "192.0.2.9")
RESP = Response(200, b'{"results":[]}', headers=(("X-Rampart-Source", "pattern"),))


def test_an_exchange_survives_the_frame_byte_for_byte() -> None:
    frame = feed.encode(REQ, RESP, 0.25)
    (size,) = struct.unpack(">I", frame[:4])
    request, response, seconds = feed.decode(frame[4:4 + size])
    assert request == REQ
    assert (response.status, response.body, response.content_type, response.headers) == (
        RESP.status, RESP.body, RESP.content_type, RESP.headers)
    assert seconds == 0.25


@pytest.mark.parametrize("payload", [b"[]", b'{"a":1}', b"[1,2,3,4,5,6,7,8,9,10]", b"not json"])
def test_what_is_not_an_exchange_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        feed.decode(payload)


async def _until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.02)


def test_flows_are_forwarded_only_while_a_capture_is_on(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "RETRY_SECONDS", 0.05)
    monkeypatch.setattr(feed, "POLL_SECONDS", 0.02)
    got: list[tuple[Request, Response, float]] = []
    on = [False]

    async def scenario() -> None:
        server = feed.FeedServer(tmp_path / "feed.sock", lambda *x: got.append(x), lambda: on[0])
        await server.start()
        observers: list[feed.Observer] = []
        client = feed.FeedClient(tmp_path / "feed.sock", observers)
        client.start()
        try:
            await asyncio.sleep(0.2)
            assert observers == []  # nobody captures: the worker's answers cost nothing
            on[0] = True
            await _until(lambda: observers == [client.observe])
            client.observe(REQ, RESP, 0.1)
            client.observe(Request("GET", b"/healthz", [], b"", "x"), RESP, 0.1)  # not an engine path
            await _until(lambda: len(got) == 1)
            assert got[0][0] == REQ
            on[0] = False
            await _until(lambda: observers == [])

            # a frame over the bound ends that feed; the worker connects again
            on[0] = True
            await _until(lambda: observers == [client.observe])
            assert client._writer is not None
            client._writer.write(struct.pack(">I", feed.MAX_FRAME + 1))
            await _until(lambda: observers == [])
            await _until(lambda: observers == [client.observe])
            client.observe(REQ, RESP, 0.2)
            await _until(lambda: len(got) == 2)
        finally:
            await client.close()
            await server.close()
        assert not (tmp_path / "feed.sock").exists()

    asyncio.run(scenario())
