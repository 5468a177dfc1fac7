"""Assembles one Rampart process from its Config: patterns, lists, cache, relay, engine, doors.

``App`` is what both ``rampart serve`` (hosted by mitmproxy, through
``addons.query_door``) and ``rampart cloud`` (a plain asyncio loop) start. It
owns the background work that keeps the engine current (list reloads) and
reports readiness.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import certs
from certs import expiry as cert_expiry
from certs.follow import DoorTls
from proxy.clock import utcnow
from proxy.config import Config
from proxy.decide.cache import AnswerCache
from proxy.decide.engine import Engine
from proxy.decide.lists import ListStore
from proxy.errors import PatternError, RampartError, RelayError
from proxy.files import check_private_dir
from proxy.logs.hub import Logs
from proxy.model import Service
from proxy.relay.relay import Relay
from proxy.serve import metrics
from proxy.serve.conns import ConnectionCaps, raise_fd_limit, total_for
from proxy.serve.gate import Gate
from proxy.serve.keeper import PatternKeeper
from proxy.serve.listener import Listener
from proxy.serve.repeats import Repeats
from proxy.serve.routes import Routes, SafeBrowsingHandler
from proxy.serve.server import ServerLimits, start_server
from proxy.settings import Layers
from proxy.shared.state import SharedState
from proxy.wire import paths, protocol
from proxy.wire.http import Again, Handler, Request, Response

logger = logging.getLogger(__name__)


def sample_sources(name: str) -> dict[str, list[Path]]:
    """The shipped sample pattern sources: ``appliance`` or ``cloud``."""
    root = Path(str(resources.files("proxy") / "samples" / name))
    if not root.is_dir():
        raise PatternError(f"no sample pattern named {name!r}")
    return {
        kind: sorted(root.glob(f"{kind}*.txt")) for kind in ("hashes", "urls", "domains")
    }


@dataclass
class Door:
    name: str
    scheme: str
    server: Listener
    port: int = 0


@dataclass
class App:
    cfg: Config
    authoritative: bool = False
    sample: str = "appliance"
    doors: list[Door] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    observers: list[Callable[[Request, Response, float], None]] = field(default_factory=list)
    """Called after every query-door answer (e.g. the capture addon); must be quick."""
    caps: ConnectionCaps | None = None
    """Connections per client and in all, shared with the process's other doors (made on
    ``open`` when not given)."""
    tls: DoorTls | None = field(default=None, init=False)
    """The HTTPS door's certificate, followed on disk (set by ``tls_context``)."""
    logs: Logs | None = field(default=None, init=False)
    """The query, update and relay logs and the audit (``proxy.logs``), open from ``start``
    to ``stop`` (query rows only while ``query_log`` is on); the admin API searches
    ``logs.store``."""
    layers: Layers = field(default_factory=Layers)
    """Which config keys the file and the flags set, and the console's saved settings
    (``proxy.settings``): what the settings page may change (``proxy.serve.live``)."""
    safe_browsing: SafeBrowsingHandler | None = field(default=None, init=False)
    """The Safe Browsing v4 routes' handler (``proxy.sb.api.SafeBrowsing(...).handle``, set
    by ``addons.query_door`` once open: this package does not import ``proxy.sb``); the
    ``/v4/`` routes are a 404 while it is None."""
    serve_queries: bool = True
    """False in the main process of ``workers`` above 1: the query door is the workers'."""
    worker: int | None = None
    """This App is query-door worker N (``proxy.serve.worker``): its keeper follows the main
    process's store, its query door binds with SO_REUSEPORT beside the other workers'."""
    front: Callable[[Handler], Handler] | None = None
    """Wraps the query door's handler (a worker's ``proxy.serve.fleet.Fleet.front``)."""
    fleet: Any = None
    """In the main process of ``workers`` above 1: every process's readings
    (``proxy.serve.fleet.Fleet``), for the console's status page."""
    _labels: dict[bytes, str] = field(default_factory=dict, init=False, repr=False)
    """Request target -> its route's metric label (bounded)."""

    # ------------------------------------------------------------ start / stop

    def open(self) -> None:
        """Everything but the listeners; raises RampartError with a clear message on bad state."""
        cfg = self.cfg
        check_private_dir(cfg.data_dir)  # before anything is read from it or written to it
        self.stats = metrics.Stats()
        self.registry = metrics.registry_for(self.stats)
        self.repeats = Repeats(self.stats, self.observers,
                               lambda: self.logs.observe if self.logs is not None else None)
        self.keeper = PatternKeeper(cfg, sample_sources(self.sample),  # store, swaps, updates
                                    follow=self.worker is not None)
        patterns = self.keeper.open()
        self.pattern_path = patterns.directory
        self.lists_store = ListStore.open(cfg.data_dir)
        self.relay = (
            Relay(
                cfg.cloud,
                ca_file=str(cfg.cloud_ca) if cfg.cloud_ca else None,
                connect_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
                total_timeout=cfg.total_timeout,
                batch_window=cfg.batch_window,
                max_batch=cfg.max_batch,
                max_concurrent=cfg.max_relay_concurrency,
                breaker_failures=cfg.breaker_failures,
                breaker_cooldown=cfg.breaker_cooldown,
                observer=self,  # on_upstream: the metrics, then the relay log
            )
            if cfg.cloud and not self.authoritative
            else None
        )
        self.cache: AnswerCache[Any] = AnswerCache(cfg.cache_size)
        self.engine = Engine(
            patterns=patterns,
            lists=self.lists_store.snapshot(),
            cache=self.cache,
            relay=self.relay,
            stats=self.stats,
            local_ttl=cfg.local_ttl,
            retry_after=cfg.degraded_retry_after,
            authoritative=self.authoritative,
            degraded_action=cfg.degraded_action,
        )
        self.gate = (
            Gate(cfg.query_clients, rate=cfg.rate_limit, burst=cfg.rate_burst,
                 proxies=cfg.trusted_proxies)
            if cfg.query_clients or cfg.rate_limit
            else None
        )
        self.limits = protocol.Limits(
            max_batch=cfg.max_batch, max_url=cfg.max_url, max_inspect_content=cfg.max_inspect_content
        )
        if self.caps is None:
            self.caps = connection_caps(cfg)
        self.keeper.attach(self.engine)
        self.routes = Routes(self.engine, self.limits, ready=self.readiness, metrics=self._metrics,
                             patterns=self.keeper.source.handle,
                             safe_browsing=lambda: self.safe_browsing)
        self.registry.register(self.keeper)  # update counters
        self._share()
        self._gauges()

    async def start(self) -> None:
        self.open()
        cfg = self.cfg
        self.logs = Logs.open(cfg)  # the update, relay and audit logs are always kept
        if cfg.query_log:
            self.observers.append(self.logs.observe)
        self.logs.follow_updates(lambda: self.keeper.updater)
        limits = ServerLimits(
            max_header=cfg.max_header, max_body=cfg.max_body, idle_timeout=cfg.idle_timeout,
            head_timeout=cfg.head_timeout, request_timeout=cfg.request_timeout,
        )
        if cfg.query_port and self.serve_queries:
            await self._listen("query", "http", cfg.query_port, limits, None)
        if cfg.query_tls_port and self.serve_queries:
            await self._listen("query", "https", cfg.query_tls_port, limits, self.tls_context())
            assert self.tls is not None
            follow = self.tls.follow(self.doors[-1].server.use_ssl_context)
            self._tasks.append(asyncio.create_task(follow))
        self._tasks.append(asyncio.create_task(self._watch_lists()))
        if self.shared is not None:
            self._tasks += [asyncio.create_task(t) for t in self.shared.tasks(self._lists_changed)]
        await self.keeper.start()

    def tls_context(self) -> Any:
        """The HTTPS door's context now; ``self.tls`` then follows a CA rotation or import
        onto the door while it runs (``certs.follow``)."""
        certs.CA.ensure(self.cfg.data_dir)  # created on first start
        names = certs.default_names(self.cfg.tls_names)
        if self.worker:  # each worker records what it presents, for `rampart ca show`
            self.tls = DoorTls(self.cfg.data_dir, names, door=f"query-worker-{self.worker}",
                               label=f"query door (HTTPS, worker {self.worker})")
        else:
            self.tls = DoorTls(self.cfg.data_dir, names)
        return self.tls.first()

    async def _listen(
        self, name: str, scheme: str, port: int, limits: ServerLimits, ssl_context: Any
    ) -> None:
        try:
            server = await start_server(
                self.front(self.routes) if self.front is not None else self.routes,
                self.cfg.listen, port, limits=limits, ssl_context=ssl_context,
                observe=self._observe, gate=self.gate, caps=self.caps, door=f"query-{scheme}",
                reuse_port=self.worker is not None, repeat=self.repeat,
            )
        except OSError as e:
            raise RampartError(
                f"cannot listen on {self.cfg.listen}:{port} for the {name} door ({scheme}): {e.strerror}"
            ) from None
        bound = server.sockets[0].getsockname()[1]
        self.doors.append(Door(name, scheme, server, bound))
        logger.info("%s door listening on %s://%s:%d", name, scheme, self.cfg.listen, bound)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.tls is not None:
            self.tls.close()
        for door in self.doors:
            door.server.close()
        for door in self.doors:
            await door.server.wait_closed()
        if self.relay is not None:
            await self.relay.close()
        if self.shared is not None:
            await self.shared.close()
        self.lists_store.close()
        await self.keeper.stop()
        self.engine.patterns.close()
        self.repeats.flush()  # the answers sent again in the doors' last loop turn
        if self.logs is not None:
            if self.logs.observe in self.observers:
                self.observers.remove(self.logs.observe)
            await asyncio.to_thread(self.logs.close)  # writes what is queued

    # ------------------------------------------------------------ shared state (--redis)

    def _share(self) -> None:
        """With ``redis``: the lists, the cloud-answer cache and the rate limits shared
        (``proxy.shared``); the lists followed by the process that owns them, not a worker."""
        self.shared = SharedState.open(self.cfg, self.lists_store, self.cache,
                                       follow_lists=self.worker is None)
        if self.shared is None:
            return
        self.shared.attach(self.engine, self.gate)
        for name, (kind, help_text, read) in self.shared.samples().items():
            (metrics.gauge if kind == "gauge" else metrics.counter)(self.stats, name, help_text, read)

    async def _lists_changed(self) -> None:
        """The shared lists changed lists.sqlite here: serve them now, not at the next poll."""
        self.engine.lists = await asyncio.to_thread(self.lists_store.snapshot)
        logger.info("approved/blocked lists reloaded (shared)")

    # ------------------------------------------------------------ background

    async def _watch_lists(self) -> None:
        """Swap in new lists when the store changes. The cache stays: the lists are asked
        before it, so a new rule wins at once without throwing away the cloud's answers."""
        while True:
            await asyncio.sleep(self.cfg.lists_poll)
            try:
                if self.lists_store.changed():
                    # built off the loop: 100,000 rules take a second or more to index
                    self.engine.lists = await asyncio.to_thread(self.lists_store.snapshot)
                    logger.info("approved/blocked lists reloaded")
            except Exception:
                logger.exception("reloading the lists failed; keeping the previous ones")

    # ------------------------------------------------------------ health and metrics

    def readiness(self) -> dict[str, Any]:
        """The /readyz body: always answered 200 (a stale pattern still answers)."""
        pattern = self.keeper.readiness()  # versions, ages, staleness, the last update
        body: dict[str, Any] = {
            "status": "stale" if pattern["stale"] else "ready",  # stale still answers
            "pattern": pattern,
            "doors": [{"name": d.name, "scheme": d.scheme, "port": d.port} for d in self.doors],
        }
        if self.relay is not None:
            body["cloud"] = self.relay.status()
        if self.shared is not None:  # down still answers: from the local copies
            body["redis"] = self.shared.status()
        body["certificates"] = _certificates(self.cfg.data_dir)
        return body

    def _metrics(self) -> bytes:
        return metrics.render(self.registry)

    def _gauges(self) -> None:
        st = self.stats
        metrics.gauge(st, "rampart_cache_entries", "Cloud answers in the cache", lambda: len(self.cache))
        for name, (help_text, read) in self.keeper.gauges().items():
            metrics.gauge(st, name, help_text, read)
        metrics.gauge(
            st, "rampart_pattern_info", "The served pattern version (always 1)",
            lambda: [({"version": self.engine.patterns.version}, 1.0)],
        )
        caps = self.caps
        assert caps is not None
        metrics.gauge(
            st, "rampart_connections_open", "Connections open, by door",
            lambda: [({"door": d}, float(n)) for d, n in sorted(caps.open_by_door.items())],
        )
        metrics.counter(
            st, "rampart_connections_refused",
            "Connections refused or cut, by door and reason (client_cap, total_cap,"
            " no_descriptors; head_timeout on the intercept door)",
            lambda: [({"door": d, "reason": r}, float(n)) for (d, r), n in sorted(caps.refused.items())],
        )
        metrics.counter(
            st, "rampart_log_dropped",
            "Log entries not written, by reason (queue_full: the writer fell behind; write_failed:"
            " the log database refused a batch); queries are answered either way",
            lambda: self.logs.writer.dropped_samples() if self.logs is not None else [],
        )
        metrics.gauge(st, "rampart_uptime_seconds", "Seconds since start", lambda: time.time() - st.started)
        metrics.gauge(
            st, "rampart_cert_expiry_seconds",
            "Seconds until the CA (cert=ca) or a served certificate expires",
            lambda: [({"cert": e.name}, e.seconds_left(utcnow())) for e in _expiries(self.cfg.data_dir)],
        )

    def on_upstream(self, endpoint: str, service: Service, items: int, seconds: float,
                    error: RelayError | None) -> None:
        """The relay's observer: every upstream attempt to the metrics, failures to the log."""
        self.stats.on_upstream(endpoint, service, items, seconds, error)
        if error is not None and self.logs is not None:
            self.logs.on_upstream(endpoint, service, items, seconds, error)

    def _observe(self, request: Request, response: Response, seconds: float) -> None:
        self.stats.requests[(self._label(request.target), response.status)] += 1
        self.stats.request_latency.observe(seconds)
        for observer in self.observers:
            observer(request, response, seconds)

    def _label(self, target: bytes) -> str:
        """The metric label of ``target``'s route (memoised: products ask the same again)."""
        label = self._labels.get(target)
        if label is None:
            route = paths.route_of(target.split(b"?", 1)[0].decode("latin-1"))
            label = route.label if route is not None else "other"
            if len(self._labels) >= 4096:
                self._labels.clear()
            self._labels[target] = label
        return label

    def repeat(self, request: Request, response: Response) -> Again | None:
        """The query door's ``Repeat`` (``proxy.serve.server``): for an answer from the
        routes' GET memo, whether it still holds and what counts it once more as a parsed
        request is counted (``proxy.serve.repeats``); None for any other answer."""
        found = self.routes.repeat(request, response)
        if found is None:
            return None
        holds, service, sources = found
        return self.repeats.again(request, response, holds, service, sources,
                                  self._label(request.target))

    def log_answer(self, request: Request, response: Response, seconds: float) -> None:
        """Another door's answer (the intercept door's) to the query log, when it is on."""
        if self.logs is not None and self.cfg.query_log:
            self.logs.observe(request, response, seconds)

    def ports(self) -> dict[str, int]:
        return {d.scheme: d.port for d in self.doors}


def connection_caps(cfg: Config) -> ConnectionCaps:
    """The process's connection caps: every door's connections count against them."""
    fd_limit = raise_fd_limit()
    total = min(cfg.max_connections or fd_limit, total_for(fd_limit))
    caps = ConnectionCaps(total, cfg.max_client_connections)
    logger.debug("connection caps: %d in all, %d per client (open-file limit %d)",
                 caps.total, caps.per_client, fd_limit)
    return caps


def _expiries(data_dir: Path) -> list[cert_expiry.Expiry]:
    try:
        return cert_expiry.certificate_expiries(data_dir)
    except certs.CertError as e:
        logger.warning("cannot read certificate expiry: %s", e)
        return []


def _certificates(data_dir: Path) -> dict[str, Any]:
    """The /readyz ``certificates`` section: each certificate's expiry and the warnings."""
    now, found = utcnow(), _expiries(data_dir)
    return {
        "expiry": [
            {"cert": e.name, "not_after": e.not_after.isoformat(),
             "days_left": e.days_left(now)}
            for e in found
        ],
        "warnings": cert_expiry.warnings_for(found, now),
    }
