"""One query-door worker of ``rampart serve --workers N``: an App answering the query door.

The main process (``proxy.serve.workers``) starts each worker as
``python3 -m proxy.cli.worker RUN INDEX COUNT PARENT`` with the main process's resolved
Config in ``RUN/config.json`` (0600, in the 0700 ``DATA_DIR/run``), so every worker
serves exactly what the main process was configured with, flags and config file alike.
A worker runs a plain uvloop loop (no mitmproxy, like ``rampart cloud``) and an App
that binds the query ports with SO_REUSEPORT beside its siblings, maps the patterns
from the same store (the page cache holds them once), follows the store the main
process's updater installs into, polls the same lists database and writes the same
query log. It never takes ``DATA_DIR/serve.lock``: the main process holds it.

A worker says ``ready`` on its standard output once it answers; it ends on SIGTERM by
draining (no new connections, the requests in flight answered, then the exit), and
also when the main process goes away: its standard input (a pipe from the main
process) reaches end of file, and Linux sends it SIGTERM (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.config import FIELDS, Config
from proxy.errors import ConfigError, RampartError
from proxy.files import read_bounded, write_atomic
from proxy.serve import feed, fleet, live, metrics
from proxy.serve.app import App

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
MAX_CONFIG = 1 << 20
READY = b"ready\n"
CONFIG_POLL = 1.0
"""How often a worker looks for a Config the main process wrote again (a console setting)."""
DRAIN_SECONDS = 5.0
"""How long a stopping worker waits for its connections to finish what they were asked."""
PR_SET_PDEATHSIG = 1


# ------------------------------------------------------------ the config handed over


def write_config(run: Path, cfg: Config) -> Path:
    """``cfg`` as every worker reads it: RUN/config.json, 0600, written whole."""
    values = {name: _plain(getattr(cfg, name)) for name in FIELDS}
    path = run / CONFIG_FILE
    write_atomic(path, json.dumps(values, sort_keys=True).encode())
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def read_config(path: Path) -> Config:
    """The Config the main process wrote; ConfigError naming what is wrong with it."""
    try:
        values = json.loads(read_bounded(path, MAX_CONFIG, private=True, error=ConfigError))
    except ValueError as e:
        raise ConfigError(f"worker config {path} is not JSON: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"worker config {path} is not a JSON object")
    return Config().replace(**values)  # each value checked as a flag's would be


# ------------------------------------------------------------ the process


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when its parent ends (Linux), and exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # ended before the prctl took hold
        raise SystemExit(1)


def watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` when standard input ends: the main process closed its pipe or died."""
    def read() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 4096):  # unbuffered: no lock for the interpreter's exit to wait on
                pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read, name="parent-pipe", daemon=True).start()


class Worker:
    """Worker ``index`` of ``count``: its App, its fleet member, and how it stops."""

    def __init__(self, cfg: Config, run: Path, index: int, count: int,
                 prepare: Callable[[App], None] | None = None) -> None:
        self.cfg = cfg
        self.run = run
        self.index = index
        self.count = count
        self.prepare = prepare  # e.g. the Safe Browsing handler (proxy.serve imports no proxy.sb)
        self.fleet = fleet.Fleet(run, index, count, metrics=self.own_metrics, ready=self.own_ready)
        self.app = App(cfg, worker=index, front=self.fleet.front)
        self.member: fleet.Member | None = None
        self.feed = feed.FeedClient(fleet.socket_path(run, feed.FEED), self.app.observers)

    def own_metrics(self) -> bytes:
        return metrics.render(self.app.registry)

    def own_ready(self) -> dict[str, Any]:
        return {**self.app.readiness(), "pid": os.getpid(), "worker": self.index}

    def _count_requests(self) -> None:
        stats = self.app.stats
        metrics.counter(
            stats, "rampart_worker_requests", "Query-door requests answered, by worker",
            lambda: [({"worker": str(self.index)}, float(sum(stats.requests.values())))])
        metrics.counter(
            stats, "rampart_capture_feed_dropped",
            "Query-door flows a worker did not forward to the capture (the main process fell"
            " behind), by worker",
            lambda: [({"worker": str(self.index)}, float(self.feed.dropped))])

    async def serve(self, stop: asyncio.Event, announce: Callable[[], None] = lambda: None) -> None:
        """Answer until ``stop`` is set, then drain and stop; ``announce`` once answering."""
        await self.app.start()
        follow = asyncio.create_task(self.follow_config())
        try:
            self._count_requests()
            if self.prepare is not None:
                self.prepare(self.app)
            self.member = fleet.Member(fleet.socket_path(self.run, fleet.worker_name(self.index)),
                                       self.own_metrics, self.own_ready)
            await self.member.start()
            self.feed.start()  # its answers to the main process's capture, while one is on
            announce()
            await stop.wait()
            logger.info("worker %d (pid %d) draining", self.index, os.getpid())
            await self.drain()
        finally:
            follow.cancel()
            await self.feed.close()
            if self.member is not None:
                await self.member.close()
            await self.app.stop()

    async def follow_config(self) -> None:
        """Take the settings the console changes in the main process: it writes its Config
        again (``Supervisor.follow_config``), and the live keys are applied here as there
        (``proxy.serve.live.take``)."""
        path = self.run / CONFIG_FILE
        seen = _stamp(path)
        while True:
            await asyncio.sleep(CONFIG_POLL)
            now = _stamp(path)
            if now == seen:
                continue
            seen = now
            try:
                new = await asyncio.to_thread(read_config, path)
            except RampartError as e:
                logger.warning("worker %d keeps its settings: %s", self.index, e.message)
                continue
            if new != self.app.cfg:
                live.take(self.app, new)
                logger.info("worker %d took the main process's new settings", self.index)

    async def drain(self, seconds: float = DRAIN_SECONDS) -> None:
        """Stop accepting; wait (at most ``seconds``) until every connection has answered what
        it was asked and closed."""
        for door in self.app.doors:
            door.server.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while any(door.server.connections for door in self.app.doors) and loop.time() < deadline:
            await asyncio.sleep(0.02)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def say_ready() -> None:
    """Tell the main process this worker answers: one line on the pipe it reads."""
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()
    os.dup2(2, 1)  # the main process reads no more: anything printed goes to the log


def run(cfg: Config, run_dir: Path, index: int, count: int, parent: int,
        prepare: Callable[[App], None] | None = None) -> int:
    """The worker's whole life on uvloop; its exit code."""
    import uvloop

    die_with_parent(parent)
    worker = Worker(cfg, run_dir, index, count, prepare)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        # Ctrl-C reaches the whole process group: the main process stops the workers itself
        # (SIGTERM, in order), so a worker does not end under it and get restarted.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        watch_stdin(loop, stop)
        await worker.serve(stop, say_ready)

    try:
        uvloop.run(main())
    except (RampartError, OSError) as e:
        print(f"rampart worker {index}: error: {getattr(e, 'message', None) or e}", file=sys.stderr)
        return 1
    return 0
