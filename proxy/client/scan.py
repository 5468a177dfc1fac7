"""Scanning files and folders: walk, digest, ask (``Client``), act, remember.

Files are taken in chunks: a chunk is digested in a thread (one read per file; a file
whose size and modification time are what the state's index holds is not read again),
then asked about in batches, then acted on: a malicious file is moved to the quarantine
when one is given (else reported), a file no server answered is flagged (its path,
digests and the reason kept in the state) and allowed for now, or blocked under
``fail_closed``. A file answered later, by ``rescan`` or by any scan after a server
answers again, loses its flag and gets its action then.

Reports come out as each chunk is done, so a long scan prints as it goes and holds
only one chunk in memory.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.client.client import Client, FileVerdict
from proxy.client.digests import Digests, hash_file
from proxy.client.errors import ClientError
from proxy.client.walk import Found, walk

CHUNK = 256  # files digested, then asked about, at a time


@dataclass(frozen=True)
class FileReport:
    path: str
    action: str  # ok, quarantined, found, flagged, blocked, error, gone
    verdict: FileVerdict | None = None
    error: str = ""
    rescanned: bool = False  # a flagged file asked about again

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "action": self.action}
        if self.verdict is not None:
            out.update(self.verdict.to_json())
        if self.error:
            out["error"] = self.error
        if self.rescanned:
            out["rescanned"] = True
        return out


@dataclass
class Summary:
    scanned: int = 0
    infected: int = 0
    flagged: int = 0
    blocked: int = 0
    errors: int = 0
    bytes_read: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, report: FileReport) -> None:
        if report.action == "error":
            self.errors += 1
            return
        if report.action == "gone":
            return
        self.scanned += 1
        if report.action in ("quarantined", "found"):
            self.infected += 1
        elif report.action == "flagged":
            self.flagged += 1
        elif report.action == "blocked":
            self.blocked += 1

    @property
    def exit_code(self) -> int:
        """clamscan's: 1 when something was found (or blocked), else 2 for errors, else 0."""
        if self.infected or self.blocked:
            return 1
        return 2 if self.errors else 0


class Scanner:
    def __init__(self, client: Client, state: Any, *, kinds: Sequence[str] = ("sha256",),
                 quarantine: Any = None, chunk: int = CHUNK,
                 progress: Callable[[int], None] | None = None) -> None:
        self.client, self.state, self.kinds = client, state, tuple(kinds)
        self.quarantine, self.chunk, self.progress = quarantine, chunk, progress
        self.summary = Summary()

    async def scan(self, paths: Sequence[Path], *, rescan_flagged: bool = True
                   ) -> AsyncIterator[FileReport]:
        """Reports for every file under ``paths``; then, when a server answered during the
        scan, for the files flagged before it (asked about again)."""
        seen: set[str] = set()
        for chunk in _chunks(walk(paths), self.chunk):
            seen.update(str(f.path) for f in chunk)
            for report in await self._do(chunk):
                yield report
        if rescan_flagged and self.client.counters.requests:
            async for report in self.rescan(skip=seen):
                yield report

    async def rescan(self, *, skip: Iterable[str] = ()) -> AsyncIterator[FileReport]:
        """Ask again about every flagged file (not in ``skip``); a file gone since is
        unflagged and reported ``gone``."""
        skipped = set(skip)
        flagged = [f for f in self.state.flags() if f.path not in skipped]
        for start in range(0, len(flagged), self.chunk):
            found: list[Found] = []
            for flag in flagged[start:start + self.chunk]:
                try:
                    st = os.stat(flag.path, follow_symlinks=False)
                except OSError:
                    self.state.clear_flag(flag.path)
                    report = FileReport(flag.path, "gone", rescanned=True)
                    self.summary.add(report)
                    yield report
                    continue
                found.append(Found(Path(flag.path), st, None))
            for report in await self._do(found, rescanned=True):
                yield report

    async def _do(self, chunk: list[Found], *, rescanned: bool = False) -> list[FileReport]:
        hashed = await asyncio.to_thread(self._digest, chunk)
        ok = [(path, d) for path, d, _ in hashed if d is not None]
        verdicts = await self.client.check_files([d for _, d in ok]) if ok else []
        by_path = {path: v for (path, _), v in zip(ok, verdicts)}
        reports = []
        for path, _, error in hashed:
            if error:
                report = FileReport(path, "error", error=error, rescanned=rescanned)
            else:
                report = await asyncio.to_thread(self._act, path, by_path[path], rescanned)
            self.summary.add(report)
            reports.append(report)
        if self.progress is not None:
            self.progress(len(chunk))
        return reports

    def _digest(self, chunk: list[Found]) -> list[tuple[str, Digests | None, str]]:
        out: list[tuple[str, Digests | None, str]] = []
        for found in chunk:
            path = str(found.path)
            if found.error or found.stat is None:
                out.append((path, None, found.error or "cannot read"))
                continue
            st = found.stat
            known = self.state.known_file(path, st.st_size, st.st_mtime_ns, self.kinds)
            if known is not None:
                out.append((path, known, ""))
                continue
            try:
                digests, opened = hash_file(found.path, self.kinds)
            except ClientError as e:
                out.append((path, None, e.message))
                continue
            except OSError as e:
                out.append((path, None, e.strerror or str(e)))
                continue
            self.summary.bytes_read += opened.st_size
            self.state.remember_file(path, opened.st_size, opened.st_mtime_ns, digests)
            out.append((path, digests, ""))
        return out

    def _act(self, path: str, verdict: FileVerdict, rescanned: bool) -> FileReport:
        if verdict.flagged:
            self.state.flag(path, verdict.digests, verdict.reason, time.time())
            action = "blocked" if self.client.action(verdict) == "block" else "flagged"
            return FileReport(path, action, verdict, rescanned=rescanned)
        self.state.clear_flag(path)
        if not verdict.malicious:
            return FileReport(path, "ok", verdict, rescanned=rescanned)
        if self.quarantine is None:
            return FileReport(path, "found", verdict, rescanned=rescanned)
        try:
            self.quarantine.put(Path(path), verdict.digests, verdict.threat or "unknown threat")
        except (ClientError, OSError) as e:
            error = getattr(e, "message", None) or str(e)
            return FileReport(path, "found", verdict, error=f"not quarantined: {error}",
                              rescanned=rescanned)
        return FileReport(path, "quarantined", verdict, rescanned=rescanned)


def _chunks(found: Iterable[Found], size: int) -> Iterable[list[Found]]:
    chunk: list[Found] = []
    for f in found:
        chunk.append(f)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
