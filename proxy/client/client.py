"""The client a product embeds: file digests and URLs in, verdicts out, asking as little
as it can.

For each file (its ``Digests``), in order:

1. the answer cache (``ClientState``): an answer a server gave, for the TTL it gave;
2. the agent pattern, under the ``filtered`` query policy (the default): a file none of
   whose digests may be in the Smart Scan Pattern is not asked about at all (verdict
   ``unknown``, source ``agent-pattern``: no pattern knows it; the cloud's Community File
   Reputation is not consulted). Under ``all`` every file not in the cache is asked, so
   the cloud decides files no local pattern knows, at the cost of one query per new file;
3. the servers, in batches of up to ``batch`` items per request (``POST /v1/file``),
   over kept-alive connections, failing over by priority and location within one
   deadline (``proxy.client.transport``).

A file no server answered (none reachable, or a ``degraded`` answer from a server whose
cloud did not answer) is *flagged*: kept in the state with its digests, allowed for now
(as the products do) or blocked with ``fail_closed``, and asked about again by
``rescan`` once a server answers. URLs go the same way without agent pattern or flags
(``POST /v1/web`` with the policy level, answers cached by URL and policy).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.client.agent import AgentPattern, Refreshed
from proxy.client.digests import Digests
from proxy.client.errors import ClientError, NoServer
from proxy.client.transport import ask, batches

QUERIES = ("filtered", "all")
SEVERITY = {"malicious": 3, "suspicious": 2, "unknown": 1, "clean": 0}
MAX_TTL = 7 * 86400.0  # an answer is kept at most a week, whatever TTL it came with
BATCH = 1000


@dataclass(frozen=True)
class FileVerdict:
    digests: Digests
    verdict: str  # malicious, suspicious, clean or unknown
    source: str  # the server's source, agent-pattern, or none (flagged)
    threat: str | None = None
    cached: bool = False  # from this client's cache
    flagged: bool = False  # no server answered: asked again by rescan
    reason: str = ""  # why it is flagged

    @property
    def malicious(self) -> bool:
        return self.verdict == "malicious"

    def to_json(self) -> dict[str, Any]:
        return {"digests": dict(self.digests.items()), "verdict": self.verdict,
                "threat": self.threat, "source": self.source, "cached": self.cached,
                "flagged": self.flagged, **({"reason": self.reason} if self.reason else {})}


@dataclass
class Counters:
    """What the client did, for status lines, tests and benchmarks."""

    asked: int = 0  # items sent to servers
    requests: int = 0
    cached: int = 0
    cleared: int = 0  # spared by the agent pattern
    flagged: int = 0
    by_server: dict[str, int] = field(default_factory=dict)


class Client:
    def __init__(self, pool: Any, state: Any, transport: Any, agent: AgentPattern, *,
                 query: str = "filtered", fail_closed: bool = False, batch: int = BATCH,
                 deadline: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        if query not in QUERIES:
            raise ClientError(f"query policy {query!r} is not one of {', '.join(QUERIES)}")
        self.pool, self.state, self.transport, self.agent = pool, state, transport, agent
        self.query, self.fail_closed = query, fail_closed
        self.batch, self.deadline, self.clock = max(1, min(batch, BATCH)), deadline, clock
        self.counters = Counters()

    # ------------------------------------------------------------ the servers

    async def _ask(self, method: str, path: str, body: bytes = b"",
                   headers: Mapping[str, str] | None = None, accept: tuple[int, ...] = ()
                   ) -> tuple[Any, int, Mapping[str, str], bytes]:
        deadline = self.pool.clock() + self.deadline
        # location None: the pool decides it, keeps it a while, and probes again when every
        # server failed (a laptop that left the office)
        found = await ask(self.transport, self.pool, None, method, path, body,
                          dict(headers or {}), deadline, accept=accept)
        server = found.server
        self.counters.requests += 1
        self.counters.by_server[server.url] = self.counters.by_server.get(server.url, 0) + 1
        self.state.set_meta("last_server", server.url)
        return found

    async def refresh_agent(self, *, force: bool = False) -> Refreshed:
        """The agent pattern brought up to date (when due, or ``force``)."""
        async def get(method: str, path: str, headers: Mapping[str, str]
                      ) -> tuple[Any, int, Mapping[str, str], bytes]:
            return await self._ask(method, path, b"", headers, accept=(304, 404))

        return await self.agent.refresh(get, force=force)

    # ------------------------------------------------------------ files

    async def check_files(self, files: Sequence[Digests]) -> list[FileVerdict]:
        """A verdict for each file, in order (see the module docstring)."""
        now = self.clock()
        out: list[FileVerdict | None] = [None] * len(files)
        keys = [k for d in files for k in d.items()]
        cached = self.state.get_answers(keys, now) if keys else {}
        wanted: list[int] = []
        for i, d in enumerate(files):
            answers = [cached[k] for k in d.items() if k in cached]
            if answers and len(answers) == len(d.items()):
                out[i] = _verdict(d, answers, cached=True)
                self.counters.cached += 1
            elif self.query == "filtered" and not self.agent.needs_query(d):
                out[i] = FileVerdict(d, "unknown", "agent-pattern")
                self.counters.cleared += 1
            else:
                wanted.append(i)
        for chunk in batches(wanted, max(1, self.batch // 3)):  # up to 3 digests a file
            await self._ask_files(files, chunk, out)
        return [v for v in out if v is not None]

    async def _ask_files(self, files: Sequence[Digests], chunk: list[int],
                         out: list[FileVerdict | None]) -> None:
        items = [(i, kind, value) for i in chunk for kind, value in files[i].items()]
        body = json.dumps({"items": [{kind: value} for _, kind, value in items]}).encode()
        try:
            _, status, _, answer = await self._ask("POST", "/v1/file", body,
                                                   {"Content-Type": "application/json"})
            results = _results(status, answer, len(items))
        except NoServer as e:
            for i in chunk:
                out[i] = self._flag(files[i], f"no server answered: {e.message}")
            return
        self.counters.asked += len(items)
        by_file: dict[int, list[dict[str, Any]]] = {}
        keep: list[tuple[tuple[str, str], dict[str, Any], float]] = []
        now = self.clock()
        for (i, kind, value), result in zip(items, results):
            by_file.setdefault(i, []).append(result)
            ttl = result.get("ttl")
            if result.get("source") != "degraded" and isinstance(ttl, int | float) and ttl > 0:
                keep.append(((kind, value), result, now + min(float(ttl), MAX_TTL)))
        self.state.put_answers(keep)
        for i, answers in by_file.items():
            if any(a.get("source") == "degraded" for a in answers):
                out[i] = self._flag(files[i], "the server's cloud did not answer in time")
            else:
                out[i] = _verdict(files[i], answers)

    def action(self, verdict: FileVerdict) -> str:
        """``block`` for a malicious file, and for a flagged one under ``fail_closed``;
        ``allow`` otherwise (a flagged file is allowed for now and asked about again)."""
        if verdict.malicious or (verdict.flagged and self.fail_closed):
            return "block"
        return "allow"

    def _flag(self, digests: Digests, reason: str) -> FileVerdict:
        self.counters.flagged += 1
        return FileVerdict(digests, "unknown", "none", flagged=True, reason=reason[:500])

    # ------------------------------------------------------------ URLs

    async def check_urls(self, urls: Sequence[str], policy: str = "medium") -> list[dict[str, Any]]:
        """Each URL's result object (rating, score, action under ``policy``, source), in
        order; raises NoServer when no server answered (a URL is never flagged)."""
        now = self.clock()
        keys = [("url", f"{policy} {u}") for u in urls]
        cached = self.state.get_answers(keys, now)
        missing = [i for i, k in enumerate(keys) if k not in cached]
        got: dict[int, dict[str, Any]] = {i: {**cached[k], "cached": True}
                                          for i, k in enumerate(keys) if k in cached}
        for chunk in batches(missing, self.batch):
            body = json.dumps({"urls": [urls[i] for i in chunk], "policy": policy}).encode()
            _, status, _, answer = await self._ask("POST", "/v1/web", body,
                                                   {"Content-Type": "application/json"})
            results = _results(status, answer, len(chunk))
            self.counters.asked += len(chunk)
            keep = []
            for i, result in zip(chunk, results):
                got[i] = result
                ttl = result.get("ttl")
                if result.get("source") != "degraded" and isinstance(ttl, int | float) and ttl > 0:
                    keep.append((keys[i], result, now + min(float(ttl), MAX_TTL)))
            self.state.put_answers(keep)
        return [got[i] for i in range(len(urls))]


def _results(status: int, body: bytes, n: int) -> list[dict[str, Any]]:
    """The ``results`` of a 200 answer, checked to hold ``n`` objects."""
    if status != 200:
        raise ClientError(f"the server answered {status}")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ClientError("the server's answer is not JSON") from None
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list) or len(results) != n or not all(isinstance(r, dict) for r in results):
        raise ClientError(f"the server's answer does not hold {n} results")
    return results


def _verdict(digests: Digests, answers: list[dict[str, Any]], *, cached: bool = False) -> FileVerdict:
    """The most severe of a file's answers (one per digest it was asked by)."""
    worst = max(answers, key=lambda a: SEVERITY.get(str(a.get("verdict")), 1))
    verdict = str(worst.get("verdict"))
    if verdict not in SEVERITY:
        verdict = "unknown"
    threat = worst.get("threat")
    return FileVerdict(digests, verdict, str(worst.get("source", ""))[:32],
                       str(threat)[:200] if threat else None, cached=cached)
