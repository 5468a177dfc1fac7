"""Keeps a running server's patterns current: open, watch, swap live, update, report, re-serve.

``PatternKeeper`` is the app's side of the pattern life cycle (docs/architecture.md, “Patterns and updates”):

- **open**: the served version comes from the store (DATA/patterns, see
  ``proxy.updates.store``), built from the shipped sample on first start; or from
  ``pattern_dir`` when one is configured (then nothing is updated).
- **swap**: every ``pattern_poll`` seconds the store's ``current`` pointer is
  read (one readlink). When it names another version (installed by this
  process's updater, by ``rampart update now`` or ``rampart pattern
  rollback``) the new PatternSet is opened in a thread, then assigned to
  ``engine.patterns`` on the loop. The engine reads ``patterns`` once per
  request, so requests in flight finish on the old map; the old map is closed
  ``grace`` seconds later by ``loop.call_later``, off the request path.
- **update**: with ``update_source`` and ``update_key`` configured, the
  ``Updater`` runs on its schedule in the same loop.
- **follow** (a query-door worker, ``proxy.serve.workers``): the store is only read,
  never built into or updated; the main process's updater installs, and every worker
  swaps to the new ``current`` on its own within ``FOLLOW_POLL`` seconds.
- **report**: each pattern's version and age (``age_of``: since its version was
  built), staleness past ``stale_after``
  or once the source's newest signed manifest has expired (its ``expires``: a
  frozen or replayed source), and the last update result for /readyz; the
  update counters for /metrics.
- **re-serve**: ``/v1/patterns/...`` and ``/v1/agent-pattern`` serve the served
  version as an update source, so appliances chain (``proxy.serve.pattern_source``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy.clock import stamp
from proxy.config import Config
from proxy.errors import PatternError, RampartError
from proxy.patterns.build import build_pattern
from proxy.patterns.layout import (
    AGENT,
    DOMAIN_IP,
    MANIFEST,
    SMART_SCAN,
    SOURCE_DIR,
    SUSPICIOUS_URLS,
    WEB_BLOCKING,
    version_time,
)
from proxy.patterns.pattern import PatternSet
from proxy.serve.pattern_source import PatternSource
from proxy.updates import signing
from proxy.updates.fetch import HttpFetcher
from proxy.updates.manifest import EMPTY, LocalManifest, mark_sample
from proxy.updates.source import MAX_MANIFEST_BYTES, parse_manifest
from proxy.updates.store import PatternStore
from proxy.updates.updater import Updater

logger = logging.getLogger(__name__)

GRACE_SECONDS = 5.0
FOLLOW_POLL = 1.0
"""A following keeper's longest poll: a worker serves a new version within 2 s of its install."""
SourceTimes = tuple[datetime, datetime | None]  # a source manifest's published and expires


def intervals(cfg: Config) -> dict[str, float]:
    """Seconds between updates per pattern, from ``update_interval`` and its overrides."""
    per = {
        SMART_SCAN: cfg.update_interval_smart_scan,
        WEB_BLOCKING: cfg.update_interval_web_blocking,
        SUSPICIOUS_URLS: cfg.update_interval_suspicious_urls,
        DOMAIN_IP: cfg.update_interval_domain_ip,
        AGENT: cfg.update_interval_agent,
    }
    return {p: float(v or cfg.update_interval) for p, v in per.items()}


def make_updater(cfg: Config, store: PatternStore) -> tuple[Updater, HttpFetcher]:
    """The Updater ``serve`` and ``rampart update now`` both run, from the config."""
    if not cfg.update_source:
        raise RampartError("no update source configured (--update-source or update_source)")
    if cfg.update_key is None:
        raise RampartError("no update key configured (--update-key or update_key)")
    fetcher = HttpFetcher(cfg.update_source, connect_timeout=cfg.connect_timeout,
                          read_timeout=max(cfg.read_timeout, 30.0), max_bytes=cfg.update_max_bytes)
    updater = Updater(
        cfg.update_source, signing.load_public_key(cfg.update_key), store, fetcher,
        default_interval=cfg.update_interval, schedule=intervals(cfg),
        backoff_max=cfg.update_backoff_max, timeout=cfg.update_timeout,
        max_bytes=cfg.update_max_bytes, max_clock_skew=cfg.update_max_clock_skew,
    )
    return updater, fetcher


def sample_store(cfg: Config, sources: dict[str, list[Path]]) -> PatternStore:
    """The data directory's store, with the sample installed when it holds nothing yet.

    The sample is marked as such (``mark_sample``) and installed as
    ``<version>-sample``: its version is this start's hour, so the first update takes
    a source's patterns whatever their versions, and one of the same hour installs
    under its own name. Servers starting together on a fresh data directory each
    build the sample; the first to install it wins and the others use its version.
    """
    store = PatternStore.open(cfg.data_dir / "patterns", keep=cfg.keep_versions)
    if store.current_path() is None:
        logger.info("no pattern in the data directory yet: building the shipped sample")
        staging = store.staging()
        try:
            sample = staging / "sample"
            report = build_pattern(sample, hashes=sources.get("hashes", ()),
                                   urls=sources.get("urls", ()), domains=sources.get("domains", ()))
            mark_sample(sample)
            store.install_first(sample, f"{report.version}-sample")
        finally:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return store


class PatternKeeper:
    def __init__(self, cfg: Config, sources: dict[str, list[Path]], *, grace: float = GRACE_SECONDS,
                 updates: bool = True, follow: bool = False) -> None:
        """``follow``: read the store another process keeps (no sample built, no updater)."""
        self.cfg = cfg
        self.follow = follow
        self.grace = grace
        self.store: PatternStore | None = None
        self.updater: Updater | None = None
        self._fetcher: HttpFetcher | None = None
        self._sources = sources
        self._updates = updates and not follow
        self.engine: Any = None
        self.served: str | None = None  # the store version being served
        self.local: LocalManifest = EMPTY  # its local manifest
        self.served_source: SourceTimes | None = None  # of the source manifest it came from
        self.swaps = 0
        self._closing: list[tuple[asyncio.TimerHandle, PatternSet]] = []
        self.source = PatternSource(self)  # /v1/patterns/... and /v1/agent-pattern
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ open / start / stop

    def open(self) -> PatternSet:
        """The PatternSet to serve first (the engine is built with it, then ``attach``)."""
        cfg = self.cfg
        if cfg.pattern_dir is not None:
            patterns = PatternSet.open(cfg.pattern_dir)
            self.local = LocalManifest.load(cfg.pattern_dir)
            return patterns
        if self.follow:
            self.store = PatternStore.open(cfg.data_dir / "patterns", keep=cfg.keep_versions)
        else:
            self.store = sample_store(cfg, self._sources)
        path = self.store.current_path()
        if path is None:  # following: the main process installs the first version
            raise PatternError(f"no pattern installed in {cfg.data_dir / 'patterns'} yet")
        patterns = PatternSet.open(path)
        self.served = path.name
        self.local = LocalManifest.load(path)
        self.served_source = source_times(path)
        if self._updates and cfg.update_source and cfg.update_key is not None:
            self.updater, self._fetcher = make_updater(cfg, self.store)
        return patterns

    def attach(self, engine: Any) -> None:
        self.engine = engine

    async def start(self) -> None:
        if self.store is None:
            return
        self._tasks.append(asyncio.create_task(self._watch()))
        if self.updater is not None:
            self._tasks.append(asyncio.create_task(self.updater.run(self._installed)))
            logger.info("following update source %s", self.cfg.update_source)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for handle, old in self._closing:
            handle.cancel()
            old.close()
        self._closing.clear()
        if self._fetcher is not None:
            await self._fetcher.close()

    # ------------------------------------------------------------ swapping

    async def _installed(self, version: str) -> None:
        await self.reload()

    async def _watch(self) -> None:
        poll = min(self.cfg.pattern_poll, FOLLOW_POLL) if self.follow else self.cfg.pattern_poll
        while True:
            await asyncio.sleep(poll)
            try:
                await self.reload()
            except Exception:
                logger.exception("switching to the installed pattern failed; keeping %s",
                                 self.served)

    async def reload(self) -> bool:
        """Serve the store's current version if it is not the one served; True if swapped."""
        assert self.store is not None
        name = self.store.current_version()
        if name is None or (name == self.served and not self.engine.patterns.compacted()):
            return False
        path = self.store.path_of(name)
        try:
            new = await asyncio.to_thread(PatternSet.open, path, verify=False)
        except PatternError as e:
            logger.error("pattern version %s does not open (%s); keeping %s", name, e.message,
                         self.served)
            self.served_error = f"version {name} does not open: {e.message}"
            return False
        local = await asyncio.to_thread(LocalManifest.load, path)
        # the served version reopened once its overlays are compacted is not a new swap
        self.swap(new, name, local, await asyncio.to_thread(source_times, path),
                  counted=name != self.served)
        return True

    def swap(self, new: PatternSet, name: str, local: LocalManifest,
             source: SourceTimes | None = None, *, counted: bool = True) -> None:
        """Assign ``new`` to the engine now; close the old map ``grace`` seconds later;
        ``counted``: in ``rampart_pattern_swaps``."""
        old = self.engine.patterns
        self.engine.patterns = new
        self.served, self.local, self.served_source = name, local, source
        self.served_error = None
        self.swaps += counted
        loop = asyncio.get_running_loop()
        entry: list[Any] = []

        def close_old() -> None:
            old.close()
            with contextlib.suppress(ValueError):
                self._closing.remove(entry[0])

        handle = loop.call_later(self.grace, close_old)
        entry.append((handle, old))
        self._closing.append((handle, old))
        logger.info("now serving pattern version %s (was %s)", new.version, old.version)

    served_error: str | None = None

    # ------------------------------------------------------------ reporting

    def pattern_versions(self) -> dict[str, str]:
        return {name: entry.version for name, entry in self.local.patterns.items()}

    def age_of(self, version: str, now: float) -> float:
        """A pattern's age, the one definition /readyz (top level and per pattern), the
        ``rampart_pattern_age_seconds`` and ``rampart_pattern_stale`` metrics and every stale
        check use: seconds from when its version was built to ``now``.

        A version names its build time (``YYYYMMDDHH[MM[SS]]``, UTC, to the precision it
        gives: ``proxy.patterns.layout.version_time``); a version that names no time counts
        from the served directory's ``created``. Not the install time: an old build
        installed now (a late appliance, a replayed source) serves old data, and its age
        says so. Never negative (a clock behind the publisher's).
        """
        t = version_time(version)
        built = t.timestamp() if t is not None else self.engine.patterns.created.timestamp()
        return max(0.0, now - built)

    def ages(self, now: float) -> dict[str, float]:
        """Each served pattern's age (``age_of``), by pattern name."""
        return {name: self.age_of(v, now) for name, v in self.pattern_versions().items()}

    def age(self, now: float) -> float:
        """The served set's age: its oldest pattern's (``age_of``), so the set is stale exactly
        when one of its patterns is; the set's own version when no pattern is listed."""
        return max(self.ages(now).values(), default=self.age_of(self.engine.patterns.version, now))

    def stale(self, age: float, now: float) -> bool:
        """Stale: older than ``stale_after``, or the update source's newest signed manifest
        expired (a frozen or replayed source)."""
        return age > self.cfg.stale_after or self.expired(now)

    def source_expires(self) -> datetime | None:
        """When the newest signed source manifest known expires (None: it sets no expiry): the
        served version's, or one published since that the updater accepted (nothing to fetch,
        say: a publisher renewing the expiry of an unchanged build)."""
        up, served = self.updater, self.served_source
        if up is not None and up.source_published is not None and (
                served is None or up.source_published >= served[0]):
            return up.source_expires
        return served[1] if served is not None else None

    def expired(self, now: float) -> bool:
        expires = self.source_expires()
        return expires is not None and expires.timestamp() <= now

    def _expires_timestamp(self) -> float:
        expires = self.source_expires()
        return expires.timestamp() if expires is not None else 0.0

    def readiness(self, now: float | None = None) -> dict[str, Any]:
        """The /readyz ``pattern`` section: versions, ages, staleness, the last update."""
        now = time.time() if now is None else now
        ages = self.ages(now)
        age = self.age(now)
        per = {
            name: {"version": v, "age_seconds": int(ages[name]),
                   "stale": self.stale(ages[name], now)}
            for name, v in sorted(self.pattern_versions().items())
        }
        expires = self.source_expires()
        body: dict[str, Any] = {
            "version": self.engine.patterns.version, "age_seconds": int(age),
            "stale": self.stale(age, now), "stale_after": self.cfg.stale_after, "patterns": per,
            "stored": self.served, "source_expires": stamp(expires) if expires is not None else None,
            "source_expired": self.expired(now),
            "sample": self.local.sample,  # the bundled sample: no update installed yet
        }
        if self.store is not None:
            body["versions"] = self.store.versions()
        if self.served_error:
            body["error"] = self.served_error
        body["update"] = self.updater.status() if self.updater is not None else None
        return body

    def gauges(self) -> dict[str, tuple[str, Any]]:
        """Gauges for ``metrics.gauge``: name -> (help, read)."""
        return {
            "rampart_pattern_version": (
                "Version of each served pattern as the number YYYYMMDDHHMMSS (a shorter"
                " version padded with zeros, so the value only grows)",
                lambda: [({"pattern": p}, float(v.ljust(14, "0")))
                         for p, v in self.pattern_versions().items() if v.isdigit()]),
            "rampart_pattern_age_seconds": (
                "Age of each served pattern: seconds since its version was built (the time"
                " the version names), as /readyz reports it",
                lambda: [({"pattern": p}, a) for p, a in self.ages(time.time()).items()]),
            "rampart_pattern_stale": (
                "1 when a served pattern is older than stale_after or its source's manifest expired",
                self._stale_gauge),
            "rampart_update_source_expires_timestamp": (
                "Unix time the update source's newest signed manifest expires (0: no expiry)",
                self._expires_timestamp),
            "rampart_pattern_swaps": (
                "Live pattern swaps since start", lambda: float(self.swaps)),
        }

    def _stale_gauge(self) -> list[tuple[dict[str, str], float]]:
        now = time.time()
        return [({"pattern": p}, float(self.stale(a, now))) for p, a in self.ages(now).items()]

    def collect(self) -> Iterator[Metric]:
        """A prometheus collector for the update counters (registered on the app's registry)."""
        up = self.updater
        c = CounterMetricFamily("rampart_update_failures", "Failed pattern updates, by reason",
                                labels=["reason"])
        if up is not None:
            for reason, n in sorted(up.failures.items()):
                c.add_metric([reason], n)
        yield c
        c = CounterMetricFamily("rampart_update_successes",
                                "Successful update checks (installed or already current)")
        c.add_metric([], up.successes if up is not None else 0)
        yield c
        g = GaugeMetricFamily("rampart_update_last_success_timestamp",
                              "Unix time of the last successful update check (0: none yet)")
        g.add_metric([], up.last_success or 0.0 if up is not None else 0.0)
        yield g


def source_times(directory: Path) -> SourceTimes | None:
    """When the signed source manifest a version was installed from was published and expires
    (None: there is none, e.g. the sample). Its signature was checked when it was installed."""
    try:
        with open(directory / SOURCE_DIR / MANIFEST, "rb") as f:
            m = parse_manifest(f.read(MAX_MANIFEST_BYTES + 1))
    except (OSError, PatternError):
        return None
    return m.published, m.expires
