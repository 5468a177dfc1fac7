"""The pattern updater: follow a signed update source, install into the store, never break serving.

One update (``Updater.update_once``; the schedule and ``rampart update now`` run
the same code):

1. fetch ``manifest.json`` and ``manifest.json.sig`` (bounded sizes, one
   deadline for the whole update) and check the Ed25519 signature; refuse a
   manifest older than the store's high-water mark of what was installed (an
   old source served again) or published over ``max_clock_skew`` ahead of the
   clock (``repo.check_timely``), and note when it ``expires``;
2. plan the smallest path from what the current version holds (``repo.plan``:
   a diff chain or the full file, per file), limited to the patterns that are
   due on their own schedule;
3. fetch each file into a staging directory of the store, checking its size
   and SHA-256 against the signed manifest; apply diff chains by writing a new
   file beside the old one (``repo.apply_diff``: tables and the agent pattern)
   and check the result against the manifest's SHA-256; hard-link the files
   that did not change from the current version (steps 3 and 4 are
   ``proxy.updates.assemble``);
4. write the local ``manifest.json`` (``proxy.updates.manifest``: the
   ``proxy.patterns.pattern`` format with per-pattern versions and
   ``strings_version``) and keep the signed source
   manifest beside it (``source/``) so the appliance can serve its patterns as
   an update source itself; open the result once to check it; install it in
   the store (the ``current`` pointer swaps atomically) and tell the app;
5. a table updated by diffs is installed as its previous file plus one overlay, not
   merged (``proxy.patterns.overlays``: the swap takes a fraction of a second at 10M
   entries); once the app serves it, its full file is compacted in a thread and checked
   against the signed manifest's SHA-256 (``proxy.updates.compaction``); a mismatch
   takes that pattern's full files from the source at once.

Anything wrong (unsigned, badly signed, truncated, corrupt, a digest
mismatch, a diff against another base, a full disk, a timeout) removes the
staging directory and changes nothing; the result says why (``reason`` is a
metric label). The schedule then retries with exponential backoff and jitter.
A diff the source does not have (404, e.g. a chained appliance that took the
full path itself) falls back to the full file in the same update; any other
bad diff makes the next attempt take the full files of that pattern.

Failure reasons: ``unsigned``, ``bad_signature``, ``bad_manifest``,
``downgrade`` (older than what was installed), ``from_future``,
``fetch_failed``, ``timeout``, ``too_large``, ``truncated``,
``digest_mismatch``, ``wrong_base``, ``corrupt_diff``, ``bad_pattern``,
``disk_full``, ``io_error``. Each is the ``reason`` of the error that says it
(``PatternError``, ``Refused``, ``FetchError``), set where the error is made;
``OSError`` is told apart by its errno.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.clock import stamp
from proxy.config import default
from proxy.errors import (
    AlreadyCurrent,
    FetchError,
    PatternError,
    Superseded,
)
from proxy.files import write_atomic
from proxy.updates import repo, signing
from proxy.updates.assemble import Assembly
from proxy.updates.compaction import compact_version
from proxy.updates.fetch import Fetcher
from proxy.updates.manifest import HeldPattern, LocalManifest
from proxy.updates.store import PatternStore

logger = logging.getLogger(__name__)

BACKOFF_BASE = 30.0
MAX_SIGNATURE_FETCH = 1024


def write_file(path: Path, data: bytes) -> None:
    """The updater's one writer: ``data`` into a private (0600) file, whole and on disk
    (``proxy.files.write_atomic``; its folder is made if missing)."""
    write_atomic(path, data)


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class UpdateResult:
    ok: bool
    changed: bool  # a new version was installed
    version: str | None  # installed (ok) or attempted (failed); None when nothing to do
    path: str  # "diff", "full", "diff+full" or "none"
    bytes: int  # downloaded
    seconds: float
    reason: str | None = None  # failure reason (a metric label)
    message: str = ""
    patterns: Mapping[str, str] = field(default_factory=dict)  # pattern -> version now held
    at: float = 0.0  # wall-clock time it finished

    def line(self) -> str:
        """One human line: what ``rampart update now`` prints and the log says."""
        if not self.ok:
            return (f"update failed ({self.reason}): {self.message}; version {self.version or '?'}, "
                    f"path {self.path}, {self.bytes} bytes, {self.seconds:.2f} s")
        if not self.changed:
            return f"up to date: {self.message or 'nothing to fetch'} ({self.seconds:.2f} s)"
        return (f"installed version {self.version}: path {self.path}, {self.bytes} bytes, "
                f"{self.seconds:.2f} s")

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "changed": self.changed, "version": self.version, "path": self.path,
                "bytes": self.bytes, "seconds": round(self.seconds, 3), "reason": self.reason,
                "message": self.message, "at": int(self.at)}


async def _announce(on_installed: Callable[[str], Any] | None, version: str | None) -> None:
    """Tell the app a version was installed (the live swap); its failure is only logged."""
    if on_installed is None:
        return
    try:
        outcome = on_installed(version or "")
        if asyncio.iscoroutine(outcome):
            await outcome
    except Exception:
        logger.exception("swapping to the new pattern failed")


def _os_reason(e: OSError) -> str:
    return "disk_full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "io_error"


# ---------------------------------------------------------------- the local manifest


def held_versions(local: Mapping[str, Any], directory: Path | None) -> dict[str, str]:
    """What a version directory holds, from its manifest as plain JSON (``read_local``):
    ``LocalManifest.held``."""
    return LocalManifest.parse(local).held(directory)


# ---------------------------------------------------------------- the updater


Schedule = Mapping[str, float]


class Updater:
    """Keeps ``store`` current from one signed update source.

    ``schedule`` maps pattern names to seconds between updates (missing names
    take ``default_interval``). ``max_clock_skew`` is how far ahead of
    ``clock`` a manifest's publication time may be. ``clock`` is wall-clock
    time (schedules, timestamps, the manifest's times), ``monotonic`` the
    fetcher's deadline clock, ``rng`` in [0, 1) for the backoff jitter,
    ``writer`` writes downloaded files (tests make it fail with ENOSPC).
    """

    def __init__(
        self,
        source_url: str,
        public_key: Any,
        store: PatternStore,
        fetcher: Fetcher,
        *,
        default_interval: float = 3600.0,
        schedule: Schedule | None = None,
        backoff_max: float = 3600.0,
        timeout: float = 600.0,
        max_bytes: int = 1 << 31,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        writer: Callable[[Path, bytes], None] = write_file,
        offload: Callable[..., Awaitable[Any]] | None = None,
        max_clock_skew: float = default("update_max_clock_skew"),
        compact: bool = True,
    ) -> None:
        self.source_url = source_url
        self.public_key = signing.load_public_key(public_key)
        self.store = store
        self.fetcher = fetcher
        self.default_interval = default_interval
        self.intervals = {p: float((schedule or {}).get(p) or default_interval)
                          for p in repo.PATTERN_FILES}
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.clock = clock
        self.monotonic = monotonic
        self.rng = rng
        self.writer = writer
        self._offload = offload or asyncio.to_thread
        self.max_clock_skew = max_clock_skew
        self.compact = compact  # False: leave installed versions overlaid (tests)
        # state, for /readyz and /metrics
        self.failures: Counter[str] = Counter()
        self.successes = 0
        self.consecutive_failures = 0
        self.last: UpdateResult | None = None
        self.last_success: float | None = None
        self.last_checked: dict[str, float] = {}  # pattern -> when it was last brought current
        self.next_attempt: float | None = None
        self.source_published: datetime | None = None  # the last manifest accepted
        self.source_expires: datetime | None = None  # and when it expires (None: never)
        self._full_next: set[str] = set()  # patterns whose diffs failed: take full files next
        self._retry_due: set[str] = set()  # what a failed attempt was updating

    # ------------------------------------------------------------ schedule

    def due(self, now: float | None = None) -> set[str]:
        now = self.clock() if now is None else now
        return {p for p, every in self.intervals.items()
                if now >= self.last_checked.get(p, float("-inf")) + every}

    def next_delay(self, now: float | None = None) -> float:
        """Seconds until the next attempt: backoff after a failure, else the next due pattern."""
        now = self.clock() if now is None else now
        if self.consecutive_failures:
            step = min(self.backoff_max, BACKOFF_BASE * 2.0 ** (self.consecutive_failures - 1))
            return float(step / 2 + self.rng() * step / 2)
        if not self.last_checked:
            return 0.0
        soonest = min(self.last_checked.get(p, float("-inf")) + every
                      for p, every in self.intervals.items())
        return max(0.0, soonest - now)

    async def run(self, on_installed: Callable[[str], Any] | None = None,
                  sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        """Update forever on the schedule; ``on_installed(version)`` after each install."""
        while True:
            delay = self.next_delay()
            self.next_attempt = self.clock() + delay
            await sleep(delay)
            due = self.due() | (self._retry_due if self.consecutive_failures else set())
            due |= await self.settle(on_installed)  # a compaction left over, or one that failed
            await self.update_once(patterns=due or None, on_installed=on_installed)

    # ------------------------------------------------------------ one update

    async def update_once(self, *, patterns: Iterable[str] | None = None,
                          on_installed: Callable[[str], Any] | None = None) -> UpdateResult:
        """One update of ``patterns`` (default: all); never raises for a bad update.

        After an install, ``on_installed(version)`` (the live swap), then ``settle``: the
        compaction of the tables the version holds overlaid, and ``on_installed`` again (the
        app reopens the compacted version: ``PatternSet.compacted``). A compacted table that
        does not match the signed manifest makes a second update at once, of the full files
        of its pattern; its result is returned.
        """
        result = await self._update_once(patterns)
        if not result.changed:
            return result
        await _announce(on_installed, result.version)
        bad = await self.settle(on_installed)
        if not bad:
            return result
        retry = await self._update_once(bad)
        if retry.changed:
            await _announce(on_installed, retry.version)
            await self.settle(on_installed)
        return retry

    async def settle(self, on_installed: Callable[[str], Any] | None = None) -> set[str]:
        """Compact the current version's overlaid tables in a thread, then, if any was,
        ``on_installed(version)`` again (the app reopens it on its full files); returns the
        patterns whose full file did not match (marked to take full files next). Never
        raises."""
        current = self.store.current_path()
        if current is None or not self.compact:
            return set()
        try:
            done, bad = await self._offload(compact_version, current)
        except (PatternError, OSError) as e:
            logger.warning("compacting pattern version %s failed (%s); it stays overlaid and "
                           "is retried before the next update", current.name, e)
            return set()
        self._full_next |= bad
        if done:
            await _announce(on_installed, current.name)
        return set(bad)

    async def _update_once(self, patterns: Iterable[str] | None) -> UpdateResult:
        started = self.monotonic()
        deadline = started + self.timeout
        due = set(patterns) if patterns is not None else set(repo.PATTERN_FILES)
        got = {"bytes": 0, "diff": False, "full": False}
        version: str | None = None
        staging: Path | None = None
        failure: tuple[str, str]
        try:
            manifest, signature = await self._manifest(deadline, got)
            current = self.store.current_path()
            local = LocalManifest.load(current)
            self._check_timely(manifest, local)
            have = local.held(current)
            for p in self._full_next:
                have.pop(p, None)
            fetches = self._plan(manifest, have, due)
            if not fetches:
                return self._done(started, got, ok=True, changed=False, version=None,
                                  message="nothing to fetch", checked=due)
            held = self._result_patterns(manifest, local, have, fetches)
            version = max(p.version for p in held.values())
            if version in self.store.refused():
                return self._done(started, got, ok=True, changed=False, version=version,
                                  message=f"version {version} was rolled back by an operator; "
                                          "waiting for a newer one", checked=due)
            staging = self.store.staging()
            assembly = Assembly(staging, manifest, current,
                                lambda path, size: self._get(path, size, deadline, got),
                                self.writer, self._offload, got, self._full_next)
            await assembly.build(signature, local, fetches, held)
            name = await self._offload(self._install, staging, version, manifest)
            staging = None
            self._full_next -= due
            return self._done(started, got, ok=True, changed=True, version=name,
                              message="installed", checked=due, held=held)
        except Superseded as e:
            return self._done(started, got, ok=True, changed=False, version=version,
                              message=f"{e.message} by another process", checked=due)
        except (PatternError, FetchError) as e:  # each made with its reason
            failure = (e.reason, e.message)
        except OSError as e:
            failure = (_os_reason(e), f"cannot write the update: {e.strerror or e}")
        except TimeoutError:
            failure = ("timeout", f"update took longer than {self.timeout:g} s")
        finally:
            if staging is not None:
                await self._offload(shutil.rmtree, staging, True)
        self._retry_due = due
        return self._done(started, got, ok=False, changed=False, version=version,
                          reason=failure[0], message=failure[1])

    def _install(self, staging: Path, version: str, manifest: repo.Manifest) -> str:
        """Install as ``version``, or ``version-<time>`` when that is current already: an update
        that leaves the newest pattern version as it was, or another process (`rampart update
        now`, the server's schedule) that installed the same update meanwhile."""
        mark = repo.newest(manifest)
        try:
            return self.store.install(staging, version, mark)
        except AlreadyCurrent:
            return self.store.install(staging, f"{version}-{int(self.clock())}", mark)

    async def _get(self, path: str, max_bytes: int, deadline: float, got: dict[str, Any]) -> bytes:
        if max_bytes > self.max_bytes:
            raise FetchError(f"{path}: {max_bytes} bytes is over update_max_bytes", reason="too_large")
        remaining = deadline - self.monotonic()
        if remaining <= 0:
            raise FetchError(f"update took longer than {self.timeout:g} s", reason="timeout")
        data = await asyncio.wait_for(
            self.fetcher.get(path, max_bytes=max_bytes, deadline=deadline), remaining)
        got["bytes"] += len(data)
        return data

    async def _manifest(self, deadline: float, got: dict[str, Any]) -> tuple[repo.Manifest, bytes]:
        raw = await self._get(repo.MANIFEST, repo.MAX_MANIFEST_BYTES, deadline, got)
        try:
            sig = await self._get(repo.SIGNATURE, MAX_SIGNATURE_FETCH, deadline, got)
        except FetchError as e:
            if not e.missing:
                raise
            sig = b""
        return repo.load_manifest(raw, sig, self.public_key), sig

    def _check_timely(self, manifest: repo.Manifest, local: LocalManifest) -> None:
        """Refuse a replayed or future manifest (``Refused``); note when an accepted one expires."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        repo.check_timely(manifest, self.store.newest() or local.mark(), now, self.max_clock_skew)
        self.source_published, self.source_expires = manifest.published, manifest.expires
        if manifest.expires is not None and manifest.expires <= now:
            logger.warning("the update source's manifest expired at %s (published %s): the "
                           "source is not publishing, or someone replays its last manifest; "
                           "patterns count as stale", stamp(manifest.expires),
                           stamp(manifest.published))

    def _plan(self, manifest: repo.Manifest, have: dict[str, str], due: set[str]) -> list[repo.Fetch]:
        fetches = repo.plan(manifest, have)
        if repo.STRINGS not in have:
            # Tables built elsewhere (the shipped sample) use other string ids: take everything.
            return fetches
        wanted = [f for f in fetches if f.pattern in due]
        if not wanted:
            return []  # a newer strings.json alone changes no answer; it comes with the next pattern
        return [f for f in fetches if f.pattern in due or f.pattern == repo.STRINGS]

    def _result_patterns(self, manifest: repo.Manifest, local: LocalManifest,
                         have: Mapping[str, str], fetches: list[repo.Fetch]
                         ) -> dict[str, HeldPattern]:
        """What the new version will hold: the fetched patterns at the manifest's versions,
        the others as the current version holds them."""
        fetched = {f.pattern for f in fetches}
        held: dict[str, HeldPattern] = {}
        for entry in manifest.patterns:
            if entry.name in fetched:
                held[entry.name] = HeldPattern(entry.version, entry.entries, entry.files)
            elif entry.name in have:
                held[entry.name] = local.patterns[entry.name]
            else:
                raise PatternError(f"pattern {entry.name} is neither held nor fetched",
                                   reason="bad_manifest")
        return held

    # ------------------------------------------------------------ bookkeeping

    def _done(self, started: float, got: Mapping[str, Any], *, ok: bool, changed: bool,
              version: str | None, reason: str | None = None, message: str = "",
              checked: Iterable[str] = (), held: Mapping[str, HeldPattern] | None = None
              ) -> UpdateResult:
        path = "+".join(k for k in ("diff", "full") if got.get(k)) or "none"
        now = self.clock()
        result = UpdateResult(
            ok=ok, changed=changed, version=version, path=path, bytes=int(got.get("bytes", 0)),
            seconds=self.monotonic() - started, reason=reason, message=message,
            patterns={p: e.version for p, e in (held or {}).items()}, at=now,
        )
        self.last = result
        if ok:
            self.successes += 1
            self.consecutive_failures = 0
            self.last_success = now
            for p in checked:
                self.last_checked[p] = now
        else:
            self.failures[reason or "unknown"] += 1
            self.consecutive_failures += 1
        log = logger.info if ok else logger.warning
        log("pattern update: %s", result.line(), extra={"update": result.to_json()})
        return result

    def status(self) -> dict[str, Any]:
        """For /readyz: the last result, the last success, failures so far, the next attempt."""
        return {
            "source": self.source_url,
            "last": self.last.to_json() if self.last else None,
            "last_success": int(self.last_success) if self.last_success else None,
            "consecutive_failures": self.consecutive_failures,
            "failures": dict(self.failures),
            "next_attempt": int(self.next_attempt) if self.next_attempt else None,
            "source_expires": stamp(self.source_expires) if self.source_expires else None,
        }
