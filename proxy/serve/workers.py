"""``rampart serve --workers N``: the main process's side, which starts and keeps N workers.

One core answers some tens of thousands of queries a second; more cores need more
processes, because one Python process runs on one. With ``workers`` above 1 the main
process (mitmproxy's, with the updater, the intercept, DNS and console doors and the
capture port) does not listen on the query ports itself: it starts N worker processes
(``proxy.serve.worker``) that all bind them with SO_REUSEPORT, so the kernel spreads new
connections among them. The ``Supervisor`` hands them the resolved Config
(``DATA_DIR/run/config.json``), waits until each says it is ready (the started banner
comes after that), restarts one that dies while the others keep answering (at once after
a long life, with a doubling delay while it keeps dying: ``RestartPolicy``; each restart
logged and counted in ``rampart_worker_restarts_total``), and on stop sends each SIGTERM
and waits for it to drain, killing one that does not end in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import certs
from proxy.config import Config
from proxy.errors import RampartError
from proxy.serve import fleet, startup
from proxy.serve.worker import CONFIG_FILE, READY, write_config

logger = logging.getLogger(__name__)

START_SECONDS = 60.0
"""How long a worker has to say it is ready (opening a large pattern takes a while)."""
CONFIG_POLL = 1.0
"""How often the main process looks whether its Config changed (the console's settings)."""
STOP_SECONDS = 10.0
"""How long a stopping worker has to drain before it is killed."""


def worker_count(cfg: Config) -> int:
    """The workers to run: ``cfg.workers``, or one per core this process may use for 0."""
    if cfg.workers:
        return cfg.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class RestartPolicy:
    """When a worker that died is started again: at once (``first`` seconds) when it had run
    ``stable`` seconds or more, else after a delay doubling with each quick death up to
    ``most``, so a worker that cannot start does not spin the machine."""

    first: float = 0.2
    most: float = 30.0
    stable: float = 10.0

    def failures_after(self, failures: int, ran: float) -> int:
        """Quick deaths in a row, counting the one that just happened after ``ran`` seconds."""
        return 0 if ran >= self.stable else failures + 1

    def delay(self, failures: int) -> float:
        """Seconds to wait before the next start, after ``failures`` quick deaths in a row."""
        if failures <= 0:
            return self.first
        return min(self.most, self.first * float(2 ** min(failures, 32)))


@dataclass
class Slot:
    """One worker's place: its current process, and what its life so far has been."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    ready: bool = False
    failures: int = 0
    restarts: int = 0
    last_exit: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


@dataclass(eq=False)
class Supervisor:
    """The N workers of ``cfg``, each run with ``command`` plus RUN INDEX COUNT PARENT."""

    cfg: Config
    command: Sequence[str]
    count: int = 0
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    start_seconds: float = START_SECONDS
    stop_seconds: float = STOP_SECONDS
    slots: list[Slot] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False
    _written: Config | None = None

    def __post_init__(self) -> None:
        self.count = self.count or worker_count(self.cfg)
        self.run = fleet.run_dir(self.cfg.data_dir)
        self.slots = [Slot(i) for i in range(self.count)]

    async def start(self) -> None:
        """Start every worker and wait until each is ready; RampartError naming the first that
        is not (the others are stopped)."""
        fleet.socket_path(self.run, fleet.worker_name(self.count - 1))  # too long: said now
        holder = startup.lock_holder(self.cfg.data_dir)
        if holder is not None and holder != os.getpid():
            raise RampartError(f"another rampart server (pid {holder}) runs on data directory"
                               f" {self.cfg.data_dir}; --workers needs a data directory of its own")
        if self.cfg.query_tls_port:
            certs.CA.ensure(self.cfg.data_dir)  # once here, not raced by N workers
        write_config(self.run, self.cfg)
        self._written = self.cfg
        try:
            await asyncio.gather(*(self._start(slot) for slot in self.slots))
        except BaseException:
            await self.stop()
            raise
        self._tasks += [asyncio.create_task(self._keep(slot)) for slot in self.slots]

    def follow_config(self, current: Callable[[], Config]) -> None:
        """Write ``current()`` for the workers whenever it is another Config (a setting the
        console changed, ``proxy.serve.live``); each worker takes it within two polls."""
        async def follow() -> None:
            while True:
                await asyncio.sleep(CONFIG_POLL)
                cfg = current()
                if cfg is not self._written:
                    try:
                        await asyncio.to_thread(write_config, self.run, cfg)
                    except OSError as e:
                        logger.error("cannot hand the new settings to the workers: %s", e)
                        continue
                    self._written = cfg

        self._tasks.append(asyncio.create_task(follow()))

    async def _start(self, slot: Slot) -> None:
        """Start ``slot``'s process and wait for its ready line; RampartError if it ends first."""
        slot.ready = False
        slot.proc = await asyncio.create_subprocess_exec(
            *self.command, str(self.run), str(slot.index), str(self.count), str(os.getpid()),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        slot.started = time.monotonic()
        assert slot.proc.stdout is not None
        try:
            line = await asyncio.wait_for(slot.proc.stdout.readline(), self.start_seconds)
        except TimeoutError:
            line = None
        if line != READY:
            code = await self._end(slot.proc, 0.0 if line is None else 5.0)
            slot.last_exit = code
            _close_pipe(slot.proc)
            raise RampartError(f"query-door worker {slot.index} did not start (exit {code});"
                               " its error is logged above")
        slot.ready = True
        logger.info("query-door worker %d ready (pid %d)", slot.index, slot.proc.pid)

    @staticmethod
    async def _end(proc: asyncio.subprocess.Process, grace: float) -> int:
        """``proc``'s exit code: it is ending (its pipe closed), or is killed after ``grace`` s."""
        try:
            return await asyncio.wait_for(proc.wait(), grace) if grace else await _kill(proc)
        except TimeoutError:
            return await _kill(proc)

    async def _keep(self, slot: Slot) -> None:
        """Restart ``slot``'s worker whenever it ends, until the supervisor stops."""
        while not self._stopping:
            assert slot.proc is not None
            code = await slot.proc.wait()
            slot.ready = False
            slot.last_exit = code
            _close_pipe(slot.proc)
            if self._stopping:
                return
            ran = time.monotonic() - slot.started
            slot.failures = self.policy.failures_after(slot.failures, ran)
            delay = self.policy.delay(slot.failures)
            logger.error("query-door worker %d (pid %d) ended (exit %d) after %.1f s; starting it"
                         " again in %.1f s", slot.index, slot.proc.pid, code, ran, delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            slot.restarts += 1
            try:
                await self._start(slot)
            except RampartError as e:
                logger.error("%s", e.message)  # the loop waits for the dead process, then again

    async def stop(self) -> None:
        """SIGTERM every worker; wait for each to drain and end, killing any still running after
        ``stop_seconds``."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        live = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in live:
            try:
                await asyncio.wait_for(proc.wait(), self.stop_seconds)
            except TimeoutError:
                logger.error("query-door worker pid %d did not drain in %g s; killing it",
                             proc.pid, self.stop_seconds)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            _close_pipe(proc)
        for slot in self.slots:
            slot.ready = False
        with contextlib.suppress(OSError):
            (self.run / CONFIG_FILE).unlink()  # the settings stay only while they are in use

    # ------------------------------------------------------------ reporting

    def status(self) -> list[dict[str, Any]]:
        """Each worker: pid, ready, restarts, the last exit code (for the main's /readyz)."""
        return [{"worker": s.index, "pid": s.pid, "ready": s.ready, "restarts": s.restarts,
                 "last_exit": s.last_exit} for s in self.slots]

    def collect(self) -> Iterator[Metric]:
        """``rampart_worker_restarts_total{worker}`` and ``rampart_workers_ready`` (a collector
        registered on the main process's registry, merged into every worker's scrape)."""
        c = CounterMetricFamily("rampart_worker_restarts",
                                "Query-door workers started again after they ended, by worker",
                                labels=["worker"])
        for s in self.slots:
            c.add_metric([str(s.index)], s.restarts)
        yield c
        g = GaugeMetricFamily("rampart_workers_ready",
                              "Query-door workers the main process has seen ready and running")
        g.add_metric([], sum(s.ready for s in self.slots))
        yield g

    def ports(self) -> dict[str, int]:
        """Where the workers answer, as ``App.ports`` says it for one process."""
        cfg = self.cfg
        return {k: v for k, v in (("http", cfg.query_port), ("https", cfg.query_tls_port)) if v}

    def run_path(self) -> Path:
        return self.run


def _close_pipe(proc: asyncio.subprocess.Process) -> None:
    """Close the pipe to an ended worker, so its transport is done with it (no ResourceWarning)."""
    if proc.stdin is not None:
        proc.stdin.close()


async def _kill(proc: asyncio.subprocess.Process) -> int:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    return await proc.wait()
