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
- **report**: each pattern's version and age, staleness past ``stale_after``
  or once the source's newest signed manifest has expired (its ``expires``: a
  frozen or replayed source), and the last update result for /readyz; the
  update counters for /metrics.
- **re-serve**: ``/v1/patterns/...`` serves the served version as an update
  source (the repository layout of ``proxy.updates.repo``), so appliances chain. The
  manifest and signature are the publisher's bytes, re-served unchanged, so a
  chained appliance verifies them with the publisher's public key; files are
  found among the versions the store keeps (full files, and the diffs this
  appliance downloaded; a diff it does not have is a 404, on which a follower
  takes the full file). ``/v1/agent-pattern`` serves the agent pattern with an
  ``ETag`` (its SHA-256), ``If-None-Match`` (304) and ``?from=ETAG`` diffs made
  from a kept version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy.clock import stamp
from proxy.config import Config
from proxy.errors import PatternError, ProtocolError, RampartError
from proxy.patterns.build import build_pattern
from proxy.patterns.pattern import STRINGS, PatternSet
from proxy.serve.routes import parse_query
from proxy.updates import repo, signing
from proxy.updates.store import PatternStore
from proxy.updates.updater import (
    DIFFS_DIR,
    SOURCE_DIR,
    HttpFetcher,
    Updater,
    read_local,
    version_time,
)
from proxy.wire import paths
from proxy.wire.http import Request, Response

logger = logging.getLogger(__name__)

GRACE_SECONDS = 5.0
SourceTimes = tuple[datetime, datetime | None]  # a source manifest's published and expires
AGENT_DIFF_CACHE = 8
_REPO_PATH = re.compile(
    r"(?:full/(?P<fp>[a-z0-9-]{1,32})/(?P<fv>\d{10,14})/(?P<ff>[a-z0-9._-]{1,64})"
    r"|diffs/(?P<dp>[a-z0-9-]{1,32})/(?P<da>\d{10,14})-(?P<db>\d{10,14})/(?P<df>[a-z0-9._-]{1,64})\.diff)"
)
_ETAG = re.compile(r'W?/?"?([0-9a-f]{64})"?')


def intervals(cfg: Config) -> dict[str, float]:
    """Seconds between updates per pattern, from ``update_interval`` and its overrides."""
    per = {
        repo.SMART_SCAN: cfg.update_interval_smart_scan,
        repo.WEB_BLOCKING: cfg.update_interval_web_blocking,
        repo.SUSPICIOUS_URLS: cfg.update_interval_suspicious_urls,
        repo.DOMAIN_IP: cfg.update_interval_domain_ip,
        repo.AGENT: cfg.update_interval_agent,
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

    Servers starting together on a fresh data directory each build the sample;
    the first to install it wins and the others use its version.
    """
    store = PatternStore.open(cfg.data_dir / "patterns", keep=cfg.keep_versions)
    if store.current_path() is None:
        logger.info("no pattern in the data directory yet: building the shipped sample")
        staging = store.staging()
        try:
            build_pattern(staging / "sample", hashes=sources.get("hashes", ()),
                          urls=sources.get("urls", ()), domains=sources.get("domains", ()))
            store.install_first(staging / "sample")
        finally:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return store


class PatternKeeper:
    def __init__(self, cfg: Config, sources: dict[str, list[Path]], *, grace: float = GRACE_SECONDS,
                 updates: bool = True) -> None:
        self.cfg = cfg
        self.grace = grace
        self.store: PatternStore | None = None
        self.updater: Updater | None = None
        self._fetcher: HttpFetcher | None = None
        self._sources = sources
        self._updates = updates
        self.engine: Any = None
        self.served: str | None = None  # the store version being served
        self.local: dict[str, Any] = {}  # its local manifest
        self.served_source: SourceTimes | None = None  # of the source manifest it came from
        self.swaps = 0
        self._closing: list[tuple[asyncio.TimerHandle, PatternSet]] = []
        self._agent_diffs: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ open / start / stop

    def open(self) -> PatternSet:
        """The PatternSet to serve first (the engine is built with it, then ``attach``)."""
        cfg = self.cfg
        if cfg.pattern_dir is not None:
            patterns = PatternSet.open(cfg.pattern_dir)
            self.local = read_local(cfg.pattern_dir)
            return patterns
        self.store = sample_store(cfg, self._sources)
        path = self.store.current_path()
        assert path is not None
        patterns = PatternSet.open(path)
        self.served = path.name
        self.local = read_local(path)
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
        while True:
            await asyncio.sleep(self.cfg.pattern_poll)
            try:
                await self.reload()
            except Exception:
                logger.exception("switching to the installed pattern failed; keeping %s",
                                 self.served)

    async def reload(self) -> bool:
        """Serve the store's current version if it is not the one served; True if swapped."""
        assert self.store is not None
        name = self.store.current_version()
        if name is None or name == self.served:
            return False
        path = self.store.path_of(name)
        try:
            new = await asyncio.to_thread(PatternSet.open, path, verify=False)
        except PatternError as e:
            logger.error("pattern version %s does not open (%s); keeping %s", name, e.message,
                         self.served)
            self.served_error = f"version {name} does not open: {e.message}"
            return False
        local = await asyncio.to_thread(read_local, path)
        self.swap(new, name, local, await asyncio.to_thread(source_times, path))
        return True

    def swap(self, new: PatternSet, name: str, local: dict[str, Any],
             source: SourceTimes | None = None) -> None:
        """Assign ``new`` to the engine now; close the old map ``grace`` seconds later."""
        old = self.engine.patterns
        self.engine.patterns = new
        self.served, self.local, self.served_source = name, local, source
        self.served_error = None
        self.swaps += 1
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
        pats = self.local.get("patterns")
        out: dict[str, str] = {}
        if isinstance(pats, dict):
            for name, entry in pats.items():
                if isinstance(entry, dict) and isinstance(entry.get("version"), str):
                    out[str(name)] = entry["version"]
        return out

    def ages(self, now: float) -> dict[str, float]:
        created = self.engine.patterns.created.timestamp()
        out = {}
        for name, version in self.pattern_versions().items():
            t = version_time(version)
            out[name] = max(0.0, now - (t.timestamp() if t is not None else created))
        return out

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
        patterns = self.engine.patterns
        age = max(0.0, now - patterns.created.timestamp())
        ages = self.ages(now)
        stale_after = self.cfg.stale_after
        expired = self.expired(now)
        per = {
            name: {"version": v, "age_seconds": int(ages[name]),
                   "stale": ages[name] > stale_after or expired}
            for name, v in sorted(self.pattern_versions().items())
        }
        stale = age > stale_after or expired or any(p["stale"] for p in per.values())
        expires = self.source_expires()
        body: dict[str, Any] = {
            "version": patterns.version, "age_seconds": int(age), "stale": stale,
            "stale_after": stale_after, "patterns": per, "stored": self.served,
            "source_expires": stamp(expires) if expires is not None else None,
            "source_expired": expired,
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
                "Version (YYYYMMDDHH[MM[SS]] as a number) of each served pattern",
                lambda: [({"pattern": p}, float(v)) for p, v in self.pattern_versions().items()
                         if v.isdigit()]),
            "rampart_pattern_age_seconds": (
                "Age of each served pattern (from its version time)",
                lambda: [({"pattern": p}, a) for p, a in self.ages(time.time()).items()]),
            "rampart_pattern_stale": (
                "1 when a served pattern is older than stale_after or its source's manifest expired",
                lambda: [({"pattern": p}, float(a > self.cfg.stale_after or self.expired(time.time())))
                         for p, a in self.ages(time.time()).items()]),
            "rampart_update_source_expires_timestamp": (
                "Unix time the update source's newest signed manifest expires (0: no expiry)",
                self._expires_timestamp),
            "rampart_pattern_swaps": (
                "Live pattern swaps since start", lambda: float(self.swaps)),
        }

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

    # ------------------------------------------------------------ serving as an update source

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        """``/v1/patterns/<repo path>`` and ``/v1/agent-pattern`` (their methods checked by the
        routes, from ``proxy.wire.paths``)."""
        path, _, query = request.target.partition(b"?")
        p = path.decode("latin-1")
        if p == paths.AGENT_PATTERN.path:
            return self._agent(request, query)
        return self._repo_file(p.removeprefix(paths.PATTERNS.path))

    def _served_dir(self) -> Path:
        if self.store is not None and self.served is not None:
            return self.store.path_of(self.served)
        if self.cfg.pattern_dir is not None:
            return self.cfg.pattern_dir
        raise ProtocolError("not_found", "no pattern is served", status=404)

    def _repo_file(self, rel: str) -> Awaitable[Response]:
        if rel in (repo.MANIFEST, repo.SIGNATURE):
            found = self._served_dir() / SOURCE_DIR / rel
            if not found.is_file():
                raise ProtocolError("not_found", "this appliance has no signed source manifest "
                                    "(it serves a pattern that did not come from an update source)",
                                    status=404)
            return self._send(found, "application/json" if rel == repo.MANIFEST else
                              "application/octet-stream")
        m = _REPO_PATH.fullmatch(rel)
        if m is None:
            raise ProtocolError("not_found", f"no such pattern file {rel[:100]!r}", status=404)
        held = self._find(m)
        if held is None:
            raise ProtocolError("not_found", f"this appliance does not hold {rel[:100]!r}", status=404)
        return self._send(held, "application/octet-stream")

    def _kept_dirs(self) -> list[Path]:
        if self.store is None:
            return [self._served_dir()]
        names = self.store.versions()
        if self.served in names:  # the served one first
            names.remove(self.served)
            names.append(self.served)
        return [self.store.path_of(n) for n in reversed(names)]

    def _find(self, m: re.Match[str]) -> Path | None:
        for d in self._kept_dirs():
            local = read_local(d)
            if m["fp"]:
                pattern, version, file = m["fp"], m["fv"], m["ff"]
                if pattern == "strings":
                    if file == STRINGS and local.get("strings_version") == version:
                        return d / STRINGS
                    continue
                pats = local.get("patterns")
                entry = pats.get(pattern) if isinstance(pats, dict) else None
                if (isinstance(entry, dict) and entry.get("version") == version
                        and file in repo.PATTERN_FILES.get(pattern, ())):
                    return d / file
            else:
                candidate = d / DIFFS_DIR / m["dp"] / f"{m['da']}-{m['db']}" / f"{m['df']}.diff"
                if candidate.is_file():
                    return candidate
        return None

    async def _send(self, path: Path, content_type: str) -> Response:
        limit = self.cfg.update_max_bytes

        def read() -> bytes:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
            if len(data) > limit:
                raise ProtocolError("too_large", "file is over update_max_bytes", status=413)
            return data

        try:
            body = await asyncio.to_thread(read)
        except FileNotFoundError:
            raise ProtocolError("not_found", "pattern file went away (version pruned)",
                                status=404) from None
        return Response(200, body, content_type=content_type)

    def _agent(self, request: Request, query: bytes) -> Response | Awaitable[Response]:
        path = self._served_dir() / repo.AGENT_FILE
        entry = (self.local.get("patterns") or {}).get(repo.AGENT) if isinstance(
            self.local.get("patterns"), dict) else None
        sha = None
        if isinstance(entry, dict):
            spec = (entry.get("files") or {}).get(repo.AGENT_FILE)
            sha = spec.get("sha256") if isinstance(spec, dict) else None
        if not isinstance(sha, str) or not path.is_file():
            raise ProtocolError("not_found", "this appliance has no agent pattern yet "
                                "(it comes with the first update from an update source)", status=404)
        etag = f'"{sha}"'
        headers = (("ETag", etag), ("Cache-Control", "no-cache"),
                   ("X-Pattern-Version", str(entry.get("version"))))  # type: ignore[union-attr]
        inm = request.header(b"if-none-match")
        if inm is not None and etag in [t.strip() for t in inm.decode("latin-1").split(",")]:
            return Response(304, b"", content_type="application/octet-stream", headers=headers)
        base = parse_query(query, "GET /v1/agent-pattern").get("from")
        if base is not None and base.strip().strip('"') == sha:
            return Response(304, b"", content_type="application/octet-stream", headers=headers)
        return self._agent_body(path, sha, base, headers)

    async def _agent_body(self, path: Path, sha: str, base: str | None,
                          headers: tuple[tuple[str, str], ...]) -> Response:
        from proxy.patterns import agent

        if base is not None:
            m = _ETAG.fullmatch(base.strip())
            old = self._agent_file_with(m.group(1)) if m else None
            if old is not None:
                key = (m.group(1), sha)  # type: ignore[union-attr]
                diff = self._agent_diffs.get(key)
                if diff is None:
                    diff = await asyncio.to_thread(
                        lambda: agent.make_diff(old.read_bytes(), path.read_bytes()))
                    self._agent_diffs[key] = diff
                    while len(self._agent_diffs) > AGENT_DIFF_CACHE:
                        self._agent_diffs.popitem(last=False)
                return Response(200, diff, content_type="application/x-rampart-agent-diff",
                                headers=headers)
        body = await asyncio.to_thread(path.read_bytes)
        return Response(200, body, content_type="application/x-rampart-agent", headers=headers)

    def _agent_file_with(self, sha: str) -> Path | None:
        for d in self._kept_dirs():
            local = read_local(d)
            pats = local.get("patterns")
            entry = pats.get(repo.AGENT) if isinstance(pats, dict) else None
            spec = ((entry or {}).get("files") or {}).get(repo.AGENT_FILE) if isinstance(
                entry, dict) else None
            if isinstance(spec, dict) and spec.get("sha256") == sha and (d / repo.AGENT_FILE).is_file():
                return d / repo.AGENT_FILE
        return None


def source_times(directory: Path) -> SourceTimes | None:
    """When the signed source manifest a version was installed from was published and expires
    (None: there is none, e.g. the sample). Its signature was checked when it was installed."""
    try:
        with open(directory / SOURCE_DIR / repo.MANIFEST, "rb") as f:
            m = repo.parse_manifest(f.read(repo.MAX_MANIFEST_BYTES + 1))
    except (OSError, PatternError):
        return None
    return m.published, m.expires
