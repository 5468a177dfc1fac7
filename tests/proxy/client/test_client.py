"""Client, AgentPattern and Scanner over a scripted Transport (the library's I/O seam), a
real ClientState and real files: what is asked, what is cached, flagged and refreshed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from proxy.client.agent import AgentPattern
from proxy.client.client import Client
from proxy.client.digests import Digests
from proxy.client.errors import ClientError
from proxy.client.scan import Scanner
from proxy.client.servers import ServerPool, parse_server
from proxy.client.state import ClientState
from proxy.patterns.agent import build_agent, make_diff

BAD = hashlib.sha256(b"bad").hexdigest()
BAD2 = hashlib.sha256(b"bad 2").hexdigest()


def sha(text: str) -> Digests:
    return Digests(hashlib.sha256(text.encode()).hexdigest())


class Script:
    """A Transport answering from ``answer(method, path, doc)``; every request recorded."""

    def __init__(self, answer: Callable[[str, str, Any, Mapping[str, str]], tuple[int, dict[str, str], bytes]]
                 ) -> None:
        self.answer = answer
        self.sent: list[tuple[str, str, str, Any]] = []
        self.down: set[str] = set()

    async def request(self, server_url: str, method: str, path: str, body: bytes,
                      headers: Mapping[str, str], deadline: float) -> tuple[int, Mapping[str, str], bytes]:
        if server_url in self.down:
            raise ConnectionRefusedError(111, "refused")
        doc = json.loads(body) if body else None
        self.sent.append((server_url, method, path, doc))
        if path == "/healthz":
            return 200, {}, b"ok"
        return self.answer(method, path, doc, headers)

    def asked(self, path: str = "/v1/file") -> list[Any]:
        return [doc for _, _, p, doc in self.sent if p == path]


Reply = tuple[int, dict[str, str], bytes]


def files_answer(malicious: set[str], *, source: str = "pattern", ttl: int | None = 3600
                 ) -> Callable[..., Reply]:
    def answer(method: str, path: str, doc: Any, headers: Mapping[str, str]) -> Reply:
        results = []
        for item in doc["items"]:
            (kind, value), = item.items()
            r: dict[str, Any] = {kind: value, "source": source}
            if value in malicious:
                r.update(verdict="malicious", threat="Bad-Thing")
            else:
                r["verdict"] = "unknown"
            if ttl is None:
                r["retry_after"] = 60
            else:
                r["ttl"] = ttl
            results.append(r)
        return 200, {}, json.dumps({"protocol": 1, "results": results}).encode()
    return answer


@pytest.fixture
def state(tmp_path: Path) -> ClientState:
    s = ClientState.open(tmp_path / "state")
    yield s  # type: ignore[misc]
    s.close()


def make(tmp_path: Path, state: ClientState, script: Script, *, agent_digests: list[str] | None = None,
         servers: tuple[str, ...] = ("http://a.test:8080",), **options: Any) -> Client:
    agent = AgentPattern(tmp_path / "state", state)
    if agent_digests is not None:
        data = build_agent([bytes.fromhex(d) for d in agent_digests])
        (tmp_path / "state" / "agent.pattern").write_bytes(data)
        agent = AgentPattern(tmp_path / "state", state)
    pool = ServerPool([parse_server(s) for s in servers])
    return Client(pool, state, script, agent, **options)


async def test_the_agent_pattern_spares_queries_for_files_it_clears(
        tmp_path: Path, state: ClientState) -> None:
    script = Script(files_answer({BAD}))
    client = make(tmp_path, state, script, agent_digests=[BAD])
    files = [Digests(BAD), sha("clean 1"), sha("clean 2")]
    got = await client.check_files(files)
    assert [(v.verdict, v.source) for v in got] == [
        ("malicious", "pattern"), ("unknown", "agent-pattern"), ("unknown", "agent-pattern")]
    assert script.asked() == [{"items": [{"sha256": BAD}]}]
    assert client.counters.cleared == 2 and client.counters.asked == 1


async def test_query_all_asks_every_file_and_the_cache_answers_the_second_time(
        tmp_path: Path, state: ClientState) -> None:
    script = Script(files_answer({BAD}))
    client = make(tmp_path, state, script, agent_digests=[BAD], query="all")
    files = [Digests(BAD), sha("clean 1")]
    first = await client.check_files(files)
    second = await client.check_files(files)
    assert len(script.asked()) == 1 and len(script.asked()[0]["items"]) == 2
    assert [v.cached for v in first] == [False, False] and [v.cached for v in second] == [True, True]
    assert second[0].threat == "Bad-Thing"


async def test_no_agent_pattern_means_every_file_is_asked(tmp_path: Path, state: ClientState) -> None:
    script = Script(files_answer(set()))
    client = make(tmp_path, state, script)
    await client.check_files([sha("a"), sha("b")])
    assert len(script.asked()[0]["items"]) == 2


async def test_many_files_go_in_batches_the_server_accepts(tmp_path: Path, state: ClientState) -> None:
    script = Script(files_answer(set()))
    client = make(tmp_path, state, script, batch=1000)
    files = [Digests(hashlib.sha256(str(i).encode()).hexdigest(),
                     md5=hashlib.md5(str(i).encode()).hexdigest()) for i in range(700)]
    got = await client.check_files(files)
    sizes = [len(doc["items"]) for doc in script.asked()]
    assert len(got) == 700 and sum(sizes) == 1400 and max(sizes) <= 1000


async def test_no_server_flags_and_a_degraded_answer_flags_without_caching(
        tmp_path: Path, state: ClientState) -> None:
    script = Script(files_answer(set(), source="degraded", ttl=None))
    client = make(tmp_path, state, script, fail_closed=True)
    (v,) = await client.check_files([sha("x")])
    assert v.flagged and "did not answer in time" in v.reason and client.action(v) == "block"
    assert state.answer_count() == 0
    script.down.add("http://a.test:8080")
    (w,) = await client.check_files([sha("y")])
    assert w.flagged and "no server answered" in w.reason


async def test_a_failed_server_is_passed_over_for_the_next(tmp_path: Path, state: ClientState) -> None:
    script = Script(files_answer({BAD}))
    script.down.add("http://a.test:8080")
    client = make(tmp_path, state, script, servers=("http://a.test:8080", "http://b.test:8080@1"))
    (v,) = await client.check_files([Digests(BAD)])
    assert v.malicious and state.get_meta("last_server") == "http://b.test:8080"


async def test_agent_refresh_full_then_current_then_a_diff(tmp_path: Path, state: ClientState) -> None:
    v2 = build_agent([bytes.fromhex(BAD), bytes.fromhex(BAD2)], prefix_bits=32)
    v1 = build_agent([bytes.fromhex(BAD)], prefix_bits=32)
    served = {"file": v1, "version": "2026120100"}

    def answer(method: str, path: str, doc: Any, headers: Mapping[str, str]) -> Reply:
        etag = hashlib.sha256(served["file"]).hexdigest()  # type: ignore[arg-type]
        head = {"content-type": "application/x-rampart-agent", "x-pattern-version": str(served["version"])}
        if headers.get("If-None-Match") == f'"{etag}"':
            return 304, head, b""
        if "?from=" in path:
            base = path.split("?from=")[1]
            if base == hashlib.sha256(v1).hexdigest():
                return 200, {**head, "content-type": "application/x-rampart-agent-diff"}, make_diff(v1, v2)
        return 200, head, served["file"]  # type: ignore[return-value]

    script = Script(answer)
    client = make(tmp_path, state, script)
    assert (await client.refresh_agent()).how == "full"
    assert client.agent.needs_query(Digests(BAD)) and not client.agent.needs_query(Digests(BAD2))
    assert (await client.refresh_agent()).how == "not due"
    assert (await client.refresh_agent(force=True)).how == "current"
    served.update(file=v2, version="2026120101")
    done = await client.refresh_agent(force=True)
    assert (done.how, done.version) == ("diff", "2026120101")
    assert client.agent.needs_query(Digests(BAD2))
    # the file on disk is the new one, and a client started later loads it
    again = AgentPattern(tmp_path / "state", state)
    assert again.filter is not None and again.filter.sha256 == hashlib.sha256(v2).hexdigest()


def test_a_damaged_agent_file_is_dropped_and_fetched_again(tmp_path: Path, state: ClientState,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "state" / "agent.pattern").write_bytes(b"RAMPART-AGENT but not really")
    agent = AgentPattern(tmp_path / "state", state)
    assert agent.filter is None and agent.due() and "unusable" in caplog.text
    assert not (tmp_path / "state" / "agent.pattern").exists()


async def test_a_bad_server_answer_is_an_error_not_a_verdict(tmp_path: Path, state: ClientState) -> None:
    script = Script(lambda *_: (200, {}, b'{"results": []}'))
    client = make(tmp_path, state, script)
    with pytest.raises(ClientError, match="does not hold 1 results"):
        await client.check_files([sha("z")])


async def test_scanner_flags_then_rescan_acts_and_unchanged_files_are_not_read_again(
        tmp_path: Path, state: ClientState) -> None:
    root = tmp_path / "files"
    root.mkdir()
    (root / "bad.bin").write_bytes(b"bad")
    (root / "ok.txt").write_bytes(b"fine")
    script = Script(files_answer({BAD}))
    script.down.add("http://a.test:8080")
    scanner = Scanner(make(tmp_path, state, script), state)
    reports = [r async for r in scanner.scan([root])]
    assert [r.action for r in reports] == ["flagged", "flagged"]
    assert scanner.summary.exit_code == 0 and scanner.summary.bytes_read == 7
    script.down.clear()
    rescanner = Scanner(make(tmp_path, state, script), state)
    again = {Path(r.path).name: r.action async for r in rescanner.rescan()}
    assert again == {"bad.bin": "found", "ok.txt": "ok"}
    assert state.flag_count() == 0 and rescanner.summary.exit_code == 1
    assert rescanner.summary.bytes_read == 0  # size and mtime unchanged: digests from the index


async def test_the_first_server_stopping_mid_scan_hands_over_to_the_second(
        tmp_path: Path, state: ClientState) -> None:
    root = tmp_path / "files"
    root.mkdir()
    for i in range(40):
        (root / f"f{i:02}").write_bytes(f"file {i}".encode())
    answer = files_answer(set())
    script = Script(answer)

    def first_then_down(method: str, path: str, doc: Any, headers: Mapping[str, str]) -> Reply:
        script.down.add("http://a.test:8080")  # a answers this one, then is gone
        return answer(method, path, doc, headers)

    script.answer = first_then_down
    client = make(tmp_path, state, script, servers=("http://a.test:8080", "http://b.test:8080@1"),
                  query="all")
    scanner = Scanner(client, state, chunk=10)
    reports = [r async for r in scanner.scan([root])]
    assert [r.action for r in reports] == ["ok"] * 40
    by = [url for url, _, p, _ in script.sent if p == "/v1/file"]
    assert by[0] == "http://a.test:8080" and set(by[1:]) == {"http://b.test:8080"} and len(by) == 4
