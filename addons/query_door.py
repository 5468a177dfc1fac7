"""Starts the query door (the lean HTTP server of proxy.serve.server) in mitmproxy's loop.

The door is a ``proxy.serve.app.App``, with the console door (``proxy.console.door``)
and the DNS door (``proxy.dns.door``) beside it when ``console_port`` and ``dns_port``
are on; this addon only ties their life to mitmproxy's: ``running`` starts them,
``done`` stops them, and gives the door its Safe Browsing v4 handler (``proxy.sb.api``:
``proxy.serve`` does not import ``proxy.sb``, so the App gets it here). A start failure (a port in use, a bad
pattern) is reported and shuts the master down with the reason.

With ``workers`` above 1 this process does not listen on the query ports: it starts the
query-door workers (``proxy.serve.workers.Supervisor``) once its App is open, and answers
its own metrics and readiness to them (``proxy.serve.fleet.Member``), so a worker's
/metrics and /readyz speak for the whole appliance. ``started`` waits for every worker.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from mitmproxy import ctx

from proxy.config import Config
from proxy.console.door import ConsoleDoor, start_console
from proxy.dns.door import DnsDoor, start_dns
from proxy.errors import RampartError
from proxy.serve import fleet
from proxy.serve.app import App
from proxy.serve.conns import ConnectionCaps
from proxy.serve.feed import FEED, FeedServer
from proxy.serve.routes import SafeBrowsingHandler
from proxy.serve.workers import Supervisor, worker_count
from proxy.settings import Layers

logger = logging.getLogger(__name__)


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):  # a data directory or file we cannot use: say which and why
        where = f" {e.filename}" if e.filename else ""
        return f"cannot use{where}: {e.strerror or e}"
    return str(getattr(e, "message", e))


def safe_browsing(app: App) -> SafeBrowsingHandler:
    """The /v4/ routes' handler for an open ``app``: its engine read per request, so a new
    pattern or list snapshot is what the next client update sees."""
    import threading

    from proxy.sb.api import SafeBrowsing

    sb = SafeBrowsing(lambda: app.engine, app.cfg)
    # the first prefix set takes seconds at a million entries: built now, off the loop,
    # so the first client's update does not wait for it (later ones are built in a thread
    # by the cache itself)
    threading.Thread(target=_prepare, args=(sb,), name="sb-prepare", daemon=True).start()
    return sb.handle


def _prepare(sb: Any) -> None:
    try:
        sb.prepare()
    except Exception:  # the first request builds it then
        logger.exception("Safe Browsing prefix set not prepared")


class QueryDoor:
    def __init__(self, cfg: Config, caps: ConnectionCaps | None = None,
                 layers: Layers | None = None) -> None:
        self.app = App(cfg, caps=caps, layers=layers or Layers())
        self.start_error: str | None = None  # not `error`: that name is a mitmproxy hook
        self.started = False
        self.console: ConsoleDoor | None = None  # the admin API and web console, when on
        self.dns: DnsDoor | None = None  # the DNSBL zones, when on
        self.workers: Supervisor | None = None  # the query-door workers, above 1
        self.member: fleet.Member | None = None  # this process's readings, for the workers
        self.capture: Any = None  # addons.capture.Capture, given by addons.master
        self.feed: FeedServer | None = None  # the workers' flows, to the capture
        self.fleet: fleet.Fleet | None = None  # every worker's readings, asked from here
        # workers only where there is a query door for them to answer
        self.app.serve_queries = worker_count(cfg) == 1 or not (cfg.query_port or cfg.query_tls_port)

    async def running(self) -> None:
        try:
            await self.app.start()
            self.app.safe_browsing = safe_browsing(self.app)
            if self.app.cfg.console_port:
                self.console = await start_console(self.app.cfg, self.app)
            if self.app.cfg.dns_port:
                self.dns = await self._start_dns()
            if not self.app.serve_queries:
                await self._start_workers()
            self.started = True
        except (RampartError, OSError) as e:
            self.start_error = _reason(e)
            logger.error("cannot start: %s", self.start_error)
            ctx.master.shutdown()

    async def _start_dns(self) -> DnsDoor | None:
        """The DNS door; on its default port (5353, also mDNS's: avahi holds it on many
        machines) a port in use turns the door off with a warning instead of stopping the
        appliance. A port the administrator chose must be free."""
        try:
            return await start_dns(self.app.cfg, self.app)
        except RampartError as e:
            if self.app.layers.set_by("dns_port") != "default":
                raise
            logger.warning("the DNS door is off: %s", e.message)
            return None

    async def _start_workers(self) -> None:
        """The query-door workers, each ready, and this process's fleet member beside them."""
        app = self.app
        self.workers = Supervisor(app.cfg, [sys.executable, "-m", "proxy.cli.worker"])
        app.registry.register(self.workers)  # restarts, in every worker's merged scrape
        self.member = fleet.Member(fleet.socket_path(self.workers.run, fleet.MAIN),
                                   lambda: app._metrics(), self._readiness)
        await self.member.start()
        capture = self.capture
        if capture is not None:
            self.feed = FeedServer(fleet.socket_path(self.workers.run, FEED), capture.observe,
                                   lambda: capture.active)
            await self.feed.start()
        await self.workers.start()
        self.fleet = fleet.Fleet(self.workers.run, -1, self.workers.count,
                                 metrics=lambda: app._metrics(), ready=self._readiness)
        app.fleet = self.fleet  # the console's status page reads every process
        self.workers.follow_config(lambda: app.cfg)  # the console's live settings reach them

    def _readiness(self) -> dict[str, Any]:
        body = {**self.app.readiness(), "pid": os.getpid()}
        if self.workers is not None:
            body["workers"] = self.workers.status()
        return body

    def ports(self) -> dict[str, int]:
        """Where the query door answers: this process's doors, or the workers'."""
        return self.workers.ports() if self.workers is not None else self.app.ports()

    async def done(self) -> None:
        if self.workers is not None:
            await self.workers.stop()  # drained first: the workers answer until they end
        if self.member is not None:
            await self.member.close()
        if self.feed is not None:
            await self.feed.close()
        if self.dns is not None:
            await self.dns.stop()
        if self.console is not None:
            await self.console.stop()
        if self.started:
            await self.app.stop()
