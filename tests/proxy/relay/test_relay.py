"""Tests for proxy.relay.relay: a fake transport and clock, plus one real TLS round trip."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from proxy.errors import ConfigError, RelayError, RelayUnavailable, TlsError
from proxy.model import Service
from proxy.relay.relay import Relay
from proxy.relay.upstream import check_answer as parse_results
from tests.proxy.relay.test_http_client import Pki, make_pki

A = "https://a.cloud.test:9443"
B = "https://b.cloud.test"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Call:
    endpoint: str
    path: str
    doc: Any
    headers: Mapping[str, str]
    deadline: float

    @property
    def items(self) -> list[Any]:
        return list(self.doc.get("items") or self.doc.get("urls") or [])


Handler = Callable[[Call], Awaitable[tuple[int, bytes]]]


def answer(items: list[Any]) -> bytes:
    """One result per item, in order, each naming its item."""
    return json.dumps({"protocol": 1, "results": [{"echo": i, "source": "cloud"} for i in items]}).encode()


async def answer_all(call: Call) -> tuple[int, bytes]:
    if call.path == "/v1/inspect":
        return 200, answer([call.doc])
    return 200, answer(call.items)


async def unavailable(call: Call) -> tuple[int, bytes]:
    return 503, b"busy"


@dataclass
class FakeCloud:
    """The Transport seam: records calls; per-endpoint handlers (default: answer all)."""

    handlers: dict[str, Handler] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0

    async def request(
        self,
        endpoint: str,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        deadline: float,
    ) -> tuple[int, bytes]:
        assert method == "POST"
        call = Call(endpoint, path, json.loads(body), headers, deadline)
        self.calls.append(call)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self.handlers.get(endpoint, answer_all)(call)
        finally:
            self.in_flight -= 1

    def to(self, endpoint: str) -> list[Call]:
        return [c for c in self.calls if c.endpoint == endpoint]


@dataclass
class Observed:
    events: list[tuple[str, Service, int, str | None]] = field(default_factory=list)

    def on_upstream(
        self, endpoint: str, service: Service, items: int, seconds: float, error: RelayError | None
    ) -> None:
        self.events.append((endpoint, service, items, None if error is None else error.message))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cloud() -> FakeCloud:
    return FakeCloud()


@pytest.fixture
def observed() -> Observed:
    return Observed()


@pytest.fixture
async def make_relay(
    cloud: FakeCloud, clock: FakeClock, observed: Observed
) -> AsyncIterator[Callable[..., Relay]]:
    relays: list[Relay] = []

    def make(endpoints: tuple[str, ...] = (A, B), **kw: Any) -> Relay:
        kw.setdefault("batch_window", 0)
        relay = Relay(endpoints, transport=cloud, clock=clock, observer=observed, **kw)
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        await relay.close()


def sha(i: int) -> tuple[str, dict[str, str]]:
    digest = f"{i:064x}"
    return f"sha256:{digest}", {"sha256": digest}


def state_of(relay: Relay, url: str) -> dict[str, object]:
    return next(s for s in relay.status() if s["url"] == url)


# ---------------------------------------------------------------- batching


async def test_concurrent_asks_are_one_upstream_request(make_relay, cloud: FakeCloud) -> None:
    relay = make_relay()
    pairs = [sha(i) for i in range(50)]
    results = await asyncio.gather(*(relay.ask(Service.FILE, k, item) for k, item in pairs))
    assert len(cloud.calls) == 1
    call = cloud.calls[0]
    assert (call.endpoint, call.path) == (A, "/v1/file")
    assert call.doc == {"items": [item for _, item in pairs]}
    assert call.headers["Content-Type"] == "application/json"
    assert [r["echo"] for r in results] == [item for _, item in pairs]


async def test_idle_upstream_is_asked_at_once_and_a_busy_one_gathers(make_relay, cloud: FakeCloud) -> None:
    """Adaptive batching: no wait when nothing is in flight; while a request is in flight,
    later asks (across loop turns) gather into one batch for ``batch_window``."""
    release = asyncio.Event()

    async def slow_first(call: Call) -> tuple[int, bytes]:
        if len(cloud.calls) == 1:
            await release.wait()
        return await answer_all(call)

    cloud.handlers[A] = slow_first
    relay = make_relay(batch_window=0.05)
    first = asyncio.ensure_future(relay.ask(Service.DOMAIN, "d0", "d0.example"))
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(cloud.calls) == 1  # went out at once, without waiting for the window

    async def ask_later(i: int) -> dict[str, Any]:
        for _ in range(i % 3):
            await asyncio.sleep(0)
        return await relay.ask(Service.DOMAIN, f"d{i}", f"d{i}.example")

    rest = asyncio.gather(*(ask_later(i) for i in range(1, 9)))
    release.set()
    results = [await first, *await rest]
    assert len(cloud.calls) == 2
    assert sorted(cloud.calls[1].items) == sorted(f"d{i}.example" for i in range(1, 9))
    assert [r["echo"] for r in results] == [f"d{i}.example" for i in range(9)]


async def test_services_are_batched_separately(make_relay, cloud: FakeCloud) -> None:
    relay = make_relay()
    file_result, web_result, domain_result = await asyncio.gather(
        relay.ask(Service.FILE, *sha(1)),
        relay.ask(Service.WEB, "http://x.test/", "http://x.test/"),
        relay.ask(Service.DOMAIN, "x.test", "x.test"),
    )
    bodies = {c.path: c.doc for c in cloud.calls}
    assert bodies == {
        "/v1/file": {"items": [sha(1)[1]]},
        "/v1/web": {"urls": ["http://x.test/"]},
        "/v1/domain": {"items": ["x.test"]},
    }
    assert web_result["echo"] == "http://x.test/"
    assert domain_result["echo"] == "x.test"
    assert file_result["echo"] == sha(1)[1]


async def test_identical_keys_are_asked_once(make_relay, cloud: FakeCloud) -> None:
    relay = make_relay()
    same_key, same_item = sha(7)
    results = await asyncio.gather(
        *(relay.ask(Service.FILE, same_key, same_item) for _ in range(10)),
        *(relay.ask(Service.FILE, *sha(i)) for i in range(3)),
    )
    assert len(cloud.calls) == 1
    assert cloud.calls[0].items == [same_item, sha(0)[1], sha(1)[1], sha(2)[1]]
    assert all(r == {"echo": same_item, "source": "cloud"} for r in results[:10])
    results[0]["source"] = "mutated by one caller"
    assert results[1]["source"] == "cloud"


async def test_identical_key_joins_a_request_already_in_flight(make_relay, cloud: FakeCloud) -> None:
    release = asyncio.Event()

    async def slow(call: Call) -> tuple[int, bytes]:
        await release.wait()
        return await answer_all(call)

    cloud.handlers[A] = slow
    relay = make_relay()
    first = asyncio.ensure_future(relay.ask(Service.FILE, *sha(1)))
    while not cloud.calls:
        await asyncio.sleep(0)
    second = asyncio.ensure_future(relay.ask(Service.FILE, *sha(1)))
    await asyncio.sleep(0)
    release.set()
    assert await first == await second
    assert len(cloud.calls) == 1
    # once answered, the key is no longer in flight: a later ask goes upstream again
    await relay.ask(Service.FILE, *sha(1))
    assert len(cloud.calls) == 2


async def test_ask_many_keeps_order_and_duplicates(make_relay, cloud: FakeCloud) -> None:
    relay = make_relay()
    pairs = [sha(3), sha(1), sha(3), sha(2)]
    results = await relay.ask_many(Service.FILE, pairs)
    assert [r["echo"] for r in results if isinstance(r, dict)] == [item for _, item in pairs]
    assert cloud.calls[0].items == [sha(3)[1], sha(1)[1], sha(2)[1]]


async def test_results_matched_by_position_not_content(make_relay, cloud: FakeCloud) -> None:
    async def numbered(call: Call) -> tuple[int, bytes]:
        results = [{"n": n} for n in range(len(call.items))]
        return 200, json.dumps({"protocol": 1, "results": results}).encode()

    cloud.handlers[A] = numbered
    relay = make_relay()
    results = await relay.ask_many(Service.WEB, [(f"u{i}", f"http://{i}.test/") for i in range(5)])
    assert results == [{"n": n} for n in range(5)]


async def test_max_batch_splits_and_flushes_early(make_relay, cloud: FakeCloud) -> None:
    relay = make_relay(max_batch=20, batch_window=60.0)  # only fullness may flush the first two
    tasks = [asyncio.ensure_future(relay.ask(Service.FILE, *sha(i))) for i in range(50)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [len(c.items) for c in cloud.calls] == [20, 20]
    await relay.close()  # the last 10 wait for the window; closing fails them
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [r["echo"] for r in results[:40]] == [sha(i)[1] for i in range(40)]
    assert all(isinstance(r, RelayError) for r in results[40:])


async def test_max_batch_split_all_answered(make_relay, cloud: FakeCloud) -> None:
    relay = make_relay(max_batch=20)
    results = await relay.ask_many(Service.FILE, [sha(i) for i in range(50)])
    assert [len(c.items) for c in cloud.calls] == [20, 20, 10]
    assert [r["echo"] for r in results if isinstance(r, dict)] == [sha(i)[1] for i in range(50)]


async def test_inspect_is_not_batched_but_deduplicated(make_relay, cloud: FakeCloud) -> None:
    relay = make_relay()
    one = {"url": "http://x.test/", "content": "aGk="}
    two = {"url": "http://y.test/"}
    results = await asyncio.gather(
        relay.ask(Service.INSPECT, "d1", one),
        relay.ask(Service.INSPECT, "d1", one),
        relay.ask(Service.INSPECT, "d2", two),
        relay.ask(Service.INSPECT, "d3", b'{"url":"http://z.test/"}'),
    )
    assert [(c.path, c.doc) for c in cloud.calls] == [
        ("/v1/inspect", one),
        ("/v1/inspect", two),
        ("/v1/inspect", {"url": "http://z.test/"}),
    ]
    assert [r["echo"] for r in results] == [one, one, two, {"url": "http://z.test/"}]


async def test_concurrent_upstream_requests_are_bounded(make_relay, cloud: FakeCloud) -> None:
    release = asyncio.Event()

    async def slow(call: Call) -> tuple[int, bytes]:
        await release.wait()
        return await answer_all(call)

    cloud.handlers[A] = slow
    relay = make_relay(max_concurrent=2)
    tasks = [asyncio.ensure_future(relay.ask(Service.INSPECT, f"d{i}", {"n": i})) for i in range(6)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert cloud.in_flight == 2
    release.set()
    results = await asyncio.gather(*tasks)
    assert [r["echo"] for r in results] == [{"n": i} for i in range(6)]
    assert cloud.peak_in_flight == 2


# ---------------------------------------------------------------- failover and breakers


async def test_failover_to_second_endpoint(make_relay, cloud: FakeCloud, observed: Observed) -> None:
    cloud.handlers[A] = unavailable
    relay = make_relay()
    result = await relay.ask(Service.FILE, *sha(1))
    assert result["echo"] == sha(1)[1]
    assert [c.endpoint for c in cloud.calls] == [A, B]
    assert observed.events == [
        (A, Service.FILE, 1, "HTTP status 503"),
        (B, Service.FILE, 1, None),
    ]
    a = state_of(relay, A)
    assert (a["state"], a["consecutive_failures"], a["failures"], a["requests"]) == (
        "closed",
        1,
        1,
        1,
    )
    assert a["last_error"] == "HTTP status 503"
    assert state_of(relay, B)["requests"] == 1


async def test_transport_exception_is_an_endpoint_failure(make_relay, cloud: FakeCloud) -> None:
    async def broken(call: Call) -> tuple[int, bytes]:
        raise TlsError("a.cloud.test:9443", "certificate not trusted")

    cloud.handlers[A] = broken
    relay = make_relay()
    assert (await relay.ask(Service.FILE, *sha(1)))["echo"] == sha(1)[1]
    assert "certificate not trusted" in str(state_of(relay, A)["last_error"])


async def test_breaker_opens_half_opens_and_closes(make_relay, cloud: FakeCloud, clock: FakeClock) -> None:
    cloud.handlers[A] = unavailable
    relay = make_relay(breaker_failures=3, breaker_cooldown=15.0)
    for i in range(3):
        await relay.ask(Service.FILE, *sha(i))
    assert len(cloud.to(A)) == 3
    assert state_of(relay, A)["state"] == "open"

    await relay.ask(Service.FILE, *sha(10))  # A is skipped while open
    assert len(cloud.to(A)) == 3
    assert len(cloud.to(B)) == 4

    clock.now += 14.9
    await relay.ask(Service.FILE, *sha(11))
    assert len(cloud.to(A)) == 3

    clock.now += 0.1
    assert state_of(relay, A)["state"] == "half-open"
    cloud.handlers[A] = answer_all  # A has recovered
    result = await relay.ask(Service.FILE, *sha(12))
    assert result["echo"] == sha(12)[1]
    assert len(cloud.to(A)) == 4
    a = state_of(relay, A)
    assert (a["state"], a["consecutive_failures"]) == ("closed", 0)

    await relay.ask(Service.FILE, *sha(13))
    assert len(cloud.to(A)) == 5  # back in normal use


async def test_failed_trial_reopens_for_a_full_cooldown(
    make_relay, cloud: FakeCloud, clock: FakeClock
) -> None:
    cloud.handlers[A] = unavailable
    relay = make_relay(breaker_failures=1, breaker_cooldown=15.0)
    await relay.ask(Service.FILE, *sha(1))
    clock.now += 15
    await relay.ask(Service.FILE, *sha(2))  # the trial, which fails
    assert len(cloud.to(A)) == 2
    assert state_of(relay, A)["state"] == "open"
    clock.now += 14
    await relay.ask(Service.FILE, *sha(3))
    assert len(cloud.to(A)) == 2


async def test_half_open_lets_one_trial_through(make_relay, cloud: FakeCloud, clock: FakeClock) -> None:
    cloud.handlers[A] = unavailable
    relay = make_relay(breaker_failures=1, breaker_cooldown=5.0)
    await relay.ask(Service.FILE, *sha(1))
    clock.now += 5
    release = asyncio.Event()

    async def slow_recovery(call: Call) -> tuple[int, bytes]:
        await release.wait()
        return await answer_all(call)

    cloud.handlers[A] = slow_recovery
    trial = asyncio.ensure_future(relay.ask(Service.FILE, *sha(2)))
    while not cloud.to(A)[1:]:
        await asyncio.sleep(0)
    others = await asyncio.gather(
        relay.ask(Service.WEB, "u", "http://u.test/"), relay.ask(Service.DOMAIN, "d", "d.test")
    )
    assert [r["echo"] for r in others] == ["http://u.test/", "d.test"]
    assert len(cloud.to(A)) == 2  # the failure, then only the trial
    release.set()
    assert (await trial)["echo"] == sha(2)[1]
    assert state_of(relay, A)["state"] == "closed"


async def test_every_endpoint_failing_fails_every_waiter(make_relay, cloud: FakeCloud) -> None:
    cloud.handlers[A] = unavailable

    async def garbage(call: Call) -> tuple[int, bytes]:
        return 200, b"<html>"

    cloud.handlers[B] = garbage
    relay = make_relay()
    results = await relay.ask_many(Service.FILE, [sha(1), sha(2)])
    assert all(isinstance(r, RelayUnavailable) for r in results)
    message = str(results[0])
    assert "a.cloud.test:9443: HTTP status 503" in message
    assert "b.cloud.test: bad JSON" in message
    assert sha(1)[1]["sha256"] not in message  # item contents are never in errors
    with pytest.raises(RelayUnavailable):
        await relay.ask(Service.FILE, *sha(1))


async def test_all_circuits_open_fails_fast_with_retry_hint(
    make_relay, cloud: FakeCloud, clock: FakeClock
) -> None:
    cloud.handlers[A] = cloud.handlers[B] = unavailable
    relay = make_relay(breaker_failures=1, breaker_cooldown=15.0)
    with pytest.raises(RelayUnavailable):
        await relay.ask(Service.FILE, *sha(1))
    assert not relay.available
    clock.now += 5
    calls = len(cloud.calls)
    with pytest.raises(RelayUnavailable, match="circuit open") as info:
        await relay.ask(Service.FILE, *sha(2))
    assert len(cloud.calls) == calls
    assert info.value.retry_after == 10


async def test_deadline_stops_failover(
    make_relay, cloud: FakeCloud, clock: FakeClock, observed: Observed
) -> None:
    async def too_slow(call: Call) -> tuple[int, bytes]:
        clock.now += 9  # longer than total_timeout
        raise RelayError("a.cloud.test:9443: no progress")

    cloud.handlers[A] = too_slow
    relay = make_relay(total_timeout=8.0)
    start = clock.now
    with pytest.raises(RelayUnavailable, match="deadline passed"):
        await relay.ask(Service.FILE, *sha(1))
    assert [c.endpoint for c in cloud.calls] == [A]
    assert cloud.calls[0].deadline == start + 8.0
    assert observed.events[0][3] == "a.cloud.test:9443: no progress"


async def test_hung_transport_is_cut_at_the_deadline(make_relay, cloud: FakeCloud) -> None:
    async def hang(call: Call) -> tuple[int, bytes]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    cloud.handlers[A] = hang
    relay = Relay((A, B), transport=cloud, total_timeout=0.05, batch_window=0)  # real clock
    try:
        with pytest.raises(RelayUnavailable, match=r"a\.cloud\.test:9443: deadline passed"):
            await relay.ask(Service.FILE, *sha(1))
    finally:
        await relay.close()
    assert [c.endpoint for c in cloud.calls] == [A]  # no time was left for B


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        (503, answer([1]), "HTTP status 503"),
        (200, b"not json", "bad JSON"),
        (200, b"\xff\xfe", "bad JSON"),
        (200, b"[1]", "not a JSON object"),
        (200, b'{"protocol": 2, "results": [{}]}', "protocol 2"),
        (200, b'{"protocol": 1}', "no results list"),
        (200, b'{"protocol": 1, "results": {}}', "no results list"),
        (200, b'{"protocol": 1, "results": []}', "0 results for 1 items"),
        (200, b'{"protocol": 1, "results": [{}, {}]}', "2 results for 1 items"),
        (200, b'{"protocol": 1, "results": ["clean"]}', "result 0 is not"),
    ],
)
def test_parse_results_rejects(status: int, body: bytes, problem: str) -> None:
    with pytest.raises(RelayError, match=problem):
        parse_results(status, body, 1)


def test_parse_results_accepts_one_object_per_item() -> None:
    body = b'{"protocol": 1, "pattern": "x", "results": [{"a": 1}, {"b": 2}]}'
    assert parse_results(200, body, 2) == [{"a": 1}, {"b": 2}]


async def test_count_mismatch_fails_the_whole_batch(make_relay, cloud: FakeCloud) -> None:
    async def short(call: Call) -> tuple[int, bytes]:
        return 200, answer(call.items[:-1])

    cloud.handlers[A] = cloud.handlers[B] = short
    relay = make_relay()
    results = await relay.ask_many(Service.WEB, [("u1", "http://1/"), ("u2", "http://2/")])
    assert all(isinstance(r, RelayError) for r in results)
    assert "1 results for 2 items" in str(results[0])


# ---------------------------------------------------------------- lifecycle and config


async def test_item_that_is_not_json_fails_only_its_caller(make_relay, cloud: FakeCloud) -> None:
    relay = make_relay()
    good = asyncio.ensure_future(relay.ask(Service.WEB, "u1", "http://\u00e9.test/"))
    with pytest.raises(TypeError):
        await relay.ask(Service.WEB, "u2", {"not", "json"})
    assert (await good)["echo"] == "http://\u00e9.test/"
    assert cloud.calls[0].items == ["http://\u00e9.test/"]


async def test_close_fails_waiters_and_refuses_new_asks(make_relay, cloud: FakeCloud) -> None:
    async def hang(call: Call) -> tuple[int, bytes]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    cloud.handlers[A] = hang
    relay = make_relay()
    waiting = asyncio.ensure_future(relay.ask(Service.FILE, *sha(1)))
    while not cloud.calls:
        await asyncio.sleep(0)
    await relay.close()
    with pytest.raises(RelayError, match="closed"):
        await waiting
    with pytest.raises(RelayError, match="closed"):
        await relay.ask(Service.FILE, *sha(2))
    assert state_of(relay, A)["state"] == "closed"


async def test_a_cancelled_waiter_does_not_cancel_the_others(make_relay, cloud: FakeCloud) -> None:
    release = asyncio.Event()

    async def slow(call: Call) -> tuple[int, bytes]:
        await release.wait()
        return await answer_all(call)

    cloud.handlers[A] = slow
    relay = make_relay()
    first = asyncio.ensure_future(relay.ask(Service.FILE, *sha(1)))
    second = asyncio.ensure_future(relay.ask(Service.FILE, *sha(1)))
    while not cloud.calls:
        await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert (await second)["echo"] == sha(1)[1]


@pytest.mark.parametrize(
    ("endpoints", "kw", "problem"),
    [
        ((), {}, "at least one"),
        (("cloud.example",), {}, "scheme"),
        ((A, A), {}, "twice"),
        ((A,), {"max_batch": 0}, "max_batch"),
        ((A,), {"total_timeout": 0}, "total_timeout"),
        ((A,), {"ca_file": "/nonexistent/ca.pem"}, "CA file"),
    ],
)
def test_bad_config(endpoints: tuple[str, ...], kw: dict[str, Any], problem: str) -> None:
    transport = None if "ca_file" in kw else FakeCloud()
    with pytest.raises(ConfigError, match=problem):
        Relay(endpoints, transport=transport, **kw)


async def test_status_lists_endpoints_by_priority(make_relay) -> None:
    relay = make_relay()
    assert [(s["url"], s["priority"], s["state"]) for s in relay.status()] == [
        (A, 1, "closed"),
        (B, 2, "closed"),
    ]


# ---------------------------------------------------------------- real TLS round trip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("other-pki"))


@dataclass
class MiniCloud:
    """A tiny HTTPS cloud: one result per item, in order."""

    ssl_context: ssl.SSLContext
    accepted: int = 0
    bodies: list[Any] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                length = int(head.split("content-length:")[1].split("\r\n")[0])
                doc = json.loads(await reader.readexactly(length))
                self.bodies.append(doc)
                results = [
                    {
                        "sha256": i["sha256"],
                        "verdict": "malicious" if i["sha256"][0] == "f" else "clean",
                        "source": "cloud",
                        "ttl": 600,
                    }
                    for i in doc["items"]
                ]
                body = json.dumps({"protocol": 1, "results": results}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


async def test_relay_over_real_tls(pki: Pki, other_pki: Pki) -> None:
    impostor = MiniCloud(other_pki.server_context())  # a certificate our CA did not sign
    cloud = MiniCloud(pki.server_context())
    impostor_url, cloud_url = await impostor.start(), await cloud.start()
    observed = Observed()
    relay = Relay([impostor_url, cloud_url], ca_file=pki.ca_file, observer=observed)
    try:
        bad, good = "f" * 64, "0" * 64
        first = await asyncio.gather(
            relay.ask(Service.FILE, f"sha256:{bad}", {"sha256": bad}),
            relay.ask(Service.FILE, f"sha256:{good}", {"sha256": good}),
        )
        second = await relay.ask_many(Service.FILE, [(f"sha256:{good}", {"sha256": good})])
    finally:
        await relay.close()
        for server in (impostor.server, cloud.server):
            assert server is not None
            server.close()
    assert [r["verdict"] for r in first] == ["malicious", "clean"]
    assert second == [{"sha256": good, "verdict": "clean", "source": "cloud", "ttl": 600}]
    assert cloud.bodies == [
        {"items": [{"sha256": bad}, {"sha256": good}]},
        {"items": [{"sha256": good}]},
    ]
    assert cloud.accepted == 1  # the pooled connection was reused
    assert impostor.bodies == []  # nothing was ever sent to the untrusted endpoint
    impostor_errors = [e[3] for e in observed.events if e[0] == impostor_url]
    assert impostor_errors and "certificate not trusted" in str(impostor_errors[0])
