"""One appliance's processes seen as one: /metrics and /readyz across the query-door workers.

With ``workers`` above 1 (``proxy.serve.workers``), the query door is answered by
several processes and a scrape or a health check reaches only one of them. So every
process (each worker, and the main process with the updater and the other doors)
answers its own registry text and readiness on a unix socket in ``DATA_DIR/run/``
(``Member``; the folder is 0700, the socket 0600), and the worker asked gathers the
others within a short deadline (``Fleet``): counters and histograms summed, gauges
combined by what they mean (``merge``), and ``rampart_worker_up{worker}`` and
``rampart_workers_up`` saying who answered. /readyz is ready only when every worker
answered ready; a missing one is named in the body and makes it a 503, so a load
balancer's health check sees the appliance as one.

The socket protocol is one request line (``metrics`` or ``ready``) and the answer,
then the close; both sides bound what they read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from proxy.errors import RampartError
from proxy.files import make_dirs
from proxy.serve.metrics import Stats, stats_of
from proxy.wire.http import Handler, Request, Response

logger = logging.getLogger(__name__)

RUN_DIR = "run"
MAIN = "main"
ASK_DEADLINE = 1.0
"""Seconds the worker asked waits for the others; one that is slower counts as missing."""
MAX_ANSWER = 16 << 20
MAX_REQUEST = 64
MAX_SOCKET_PATH = 107  # sun_path, less its terminating NUL

SUMMED_GAUGES = frozenset({
    "rampart_connections_open", "rampart_cache_entries", "rampart_dns_pending",
})
"""Gauges of something each process holds its own share of: the appliance holds the sum."""
LEAST_GAUGES = frozenset({"rampart_cert_expiry_seconds", "rampart_pattern_version"})
"""Gauges where the lowest process speaks for all (the version every worker serves at least),
as does every ``..._up`` gauge (``rampart_redis_up``: up only while every process reaches it)."""
# any other gauge is a state or a time (ages, staleness, timestamps, uptime): the highest wins


def run_dir(data_dir: Path) -> Path:
    """``DATA_DIR/run``, made 0700: the workers' config and the members' sockets."""
    return make_dirs(Path(data_dir) / RUN_DIR)


def worker_name(index: int) -> str:
    return f"worker-{index}"


def socket_path(run: Path, name: str) -> Path:
    """Where member ``name`` answers; RampartError when the path is too long for a socket."""
    path = run / f"{name}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise RampartError(f"the data directory's path is too long for the workers' sockets"
                           f" ({path} is over {MAX_SOCKET_PATH} bytes); use a shorter --data-dir")
    return path


# ------------------------------------------------------------ one process's side


class Member:
    """This process's registry text and readiness, answered on its unix socket."""

    def __init__(self, path: Path, metrics: Callable[[], bytes],
                 ready: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self._metrics = metrics
        self._ready = ready
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a process of ours that died
        self._server = await asyncio.start_unix_server(self._answer, path=str(self.path),
                                                       limit=MAX_REQUEST * 2)
        os.chmod(self.path, 0o600)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), ASK_DEADLINE)
            what = line[:MAX_REQUEST].strip()
            if what == b"metrics":
                writer.write(self._metrics())
            elif what == b"ready":
                writer.write(json.dumps(self._ready(), sort_keys=True).encode())
            await writer.drain()
        except (OSError, TimeoutError, ValueError, asyncio.LimitOverrunError):
            pass
        except Exception:  # one broken reading must not end the member
            logger.exception("answering the fleet on %s failed", self.path)
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def ask(path: Path, what: str, deadline: float = ASK_DEADLINE) -> bytes | None:
    """Member ``path``'s answer to ``what`` (``metrics`` or ``ready``); None when it does not
    answer within ``deadline`` seconds (gone, stuck, or restarting)."""
    async def exchange() -> bytes:
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(what.encode() + b"\n")
            await writer.drain()
            data = await reader.read(MAX_ANSWER + 1)
            while data and len(data) <= MAX_ANSWER:
                more = await reader.read(MAX_ANSWER + 1 - len(data))
                if not more:
                    break
                data += more
            if len(data) > MAX_ANSWER:
                raise ValueError("answer too large")
            return data
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(exchange(), deadline)
    except (OSError, TimeoutError, ValueError):
        return None


# ------------------------------------------------------------ the merge


def merge(texts: Mapping[str, bytes]) -> list[Metric]:
    """The families of several registry texts as one: counters, histograms and summaries
    summed per label set, gauges combined by ``SUMMED_GAUGES``/``LEAST_GAUGES`` (else the
    highest). A text that does not parse is left out and logged."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for name, text in texts.items():
        try:
            parsed = list(text_string_to_metric_families(text.decode("utf-8", "replace")))
        except Exception as e:  # a member's text is ours, but never trusted to parse
            logger.warning("metrics of %s left out: they do not parse (%s)", name, e)
            continue
        for family in parsed:
            mine = families.setdefault(family.name, Metric(family.name, family.documentation,
                                                           family.type))
            table = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                table[key] = _combine(mine, table.get(key), sample.value)
    out = []
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        out.append(family)
    return out


def _combine(family: Metric, old: float | None, new: float) -> float:
    if old is None:
        return new
    if family.type != "gauge" or family.name in SUMMED_GAUGES:
        return old + new
    if family.name in LEAST_GAUGES or family.name.endswith("_up"):
        return min(old, new)
    return max(old, new)


def render(families: list[Metric]) -> bytes:
    class _Fixed:
        def collect(self) -> list[Metric]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())
    return generate_latest(registry)


def up_families(count: int, up: Mapping[int, bool]) -> list[Metric]:
    """``rampart_workers`` (configured), ``rampart_workers_up`` and ``rampart_worker_up{worker}``."""
    configured = Metric("rampart_workers", "Query-door worker processes configured", "gauge")
    configured.add_sample("rampart_workers", {}, float(count))
    total = Metric("rampart_workers_up", "Query-door workers that answered this scrape", "gauge")
    total.add_sample("rampart_workers_up", {}, float(sum(up.values())))
    each = Metric("rampart_worker_up", "1 when the worker answered this scrape, by worker", "gauge")
    for index in range(count):
        each.add_sample("rampart_worker_up", {"worker": str(index)}, float(up.get(index, False)))
    return [configured, total, each]


# ------------------------------------------------------------ the worker asked


class Fleet:
    """What a worker answers for the whole appliance: its own reading and the others'."""

    def __init__(self, run: Path, index: int, count: int, *, metrics: Callable[[], bytes],
                 ready: Callable[[], dict[str, Any]], deadline: float = ASK_DEADLINE) -> None:
        self.run = run
        self.index = index
        self.count = count
        self.own_metrics = metrics
        self.own_ready = ready
        self.deadline = deadline

    def others(self) -> list[str]:
        """The members asked: the main process and the other workers (``index`` -1: this is
        the main process, asking every worker, e.g. for the console's dashboard)."""
        main = [MAIN] if self.index >= 0 else []
        return [*main, *(worker_name(i) for i in range(self.count) if i != self.index)]

    async def _gather(self, what: str) -> dict[str, bytes | None]:
        names = self.others()
        answers = await asyncio.gather(
            *(ask(socket_path(self.run, n), what, self.deadline) for n in names))
        return dict(zip(names, answers))

    async def metrics(self) -> bytes:
        merged, up = await self._merged()
        return render(merged + up_families(self.count, up))

    async def stats(self) -> tuple[Stats, dict[str, float]]:
        """Every process's counters together as one ``Stats``, with the unlabelled gauges
        (the console's status page: items, cache, relay across the workers)."""
        merged, _ = await self._merged()
        return stats_of(merged)

    async def _merged(self) -> tuple[list[Metric], dict[int, bool]]:
        texts: dict[str, bytes] = {worker_name(self.index) if self.index >= 0 else MAIN:
                                   self.own_metrics()}
        for name, text in (await self._gather("metrics")).items():
            if text is not None:
                texts[name] = text
        return merge(texts), {i: worker_name(i) in texts for i in range(self.count)}

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """/readyz for the appliance: this worker's body, the main process's update status, and
        each worker's status; 503 while one does not answer or is not ready."""
        body = self.own_ready()
        answers = await self._gather("ready")
        workers = []
        for i in range(self.count):
            doc = body if i == self.index else _json(answers.get(worker_name(i)))
            workers.append(_worker_entry(i, doc))
        main = _json(answers.get(MAIN)) if self.index >= 0 else body
        if main is not None and isinstance(body.get("pattern"), dict):
            body["pattern"]["update"] = main.get("pattern", {}).get("update")
        body["main"] = _worker_entry(-1, main)
        del body["main"]["worker"]
        body["workers"] = workers
        missing = [w["worker"] for w in workers if w["status"] not in ("ready", "stale")]
        if missing:
            body["status"] = "degraded"
            body["missing_workers"] = missing
        return (503 if missing else 200), body

    def front(self, handler: Handler) -> Handler:
        """``handler`` with GET /metrics and /readyz answered for the whole appliance."""
        async def metrics() -> Response:
            return Response(200, await self.metrics(), content_type="text/plain; version=0.0.4")

        async def ready() -> Response:
            status, body = await self.readiness()
            return Response(status, json.dumps(body, sort_keys=True).encode())

        def serve(request: Request) -> Response | Awaitable[Response]:
            target = request.target
            if target.startswith(_FLEET_PATHS) and request.method == "GET":  # one test per query
                path = target.split(b"?", 1)[0]
                if path == b"/metrics":
                    return metrics()
                if path == b"/readyz":
                    return ready()
            return handler(request)

        return serve


_FLEET_PATHS = (b"/metrics", b"/readyz")


def _json(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _worker_entry(index: int, doc: dict[str, Any] | None) -> dict[str, Any]:
    if doc is None:
        return {"worker": index, "status": "missing"}
    pattern = doc.get("pattern")
    return {"worker": index, "pid": doc.get("pid"), "status": doc.get("status"),
            "pattern": pattern.get("version") if isinstance(pattern, dict) else None}
