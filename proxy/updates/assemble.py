"""Building one update's version directory in the store's staging area: full files and
diff chains fetched and checked, unchanged files linked from the current version, the
local manifest (``proxy.updates.manifest``) and the signed source manifest written
beside them. ``proxy.updates.updater`` makes one ``Assembly`` per update.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.errors import FetchError, PatternError
from proxy.files import copy_atomic, make_dirs
from proxy.patterns.layout import DIFFS_DIR, MANIFEST, SOURCE_DIR, STRINGS_FILE, FileSpec
from proxy.patterns.pattern import PatternSet
from proxy.updates import repo
from proxy.updates.manifest import HeldPattern, LocalManifest

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Assembly:
    """The new version directory ``staging`` of one update from ``manifest``.

    ``get(path, max_bytes)`` downloads (the update's deadline and byte count are the
    updater's), ``writer`` writes a file, ``offload`` runs blocking work off the event
    loop; ``got`` records whether diffs and full files were fetched; ``full_next``
    collects the patterns whose diffs failed.
    """

    staging: Path
    manifest: repo.Manifest
    current: Path | None
    get: Callable[[str, int], Awaitable[bytes]]
    writer: Callable[[Path, bytes], None]
    offload: Callable[..., Awaitable[Any]]
    got: dict[str, Any]
    full_next: set[str]

    async def build(self, signature: bytes, local: LocalManifest, fetches: list[repo.Fetch],
                    held: Mapping[str, HeldPattern]) -> None:
        """Fetch ``fetches`` into the staging directory, link what ``held`` keeps from the
        current version, and write the local manifest: a version directory to install."""
        staging, manifest, current = self.staging, self.manifest, self.current
        by_file: dict[tuple[str, str], list[repo.Fetch]] = {}
        for f in fetches:
            by_file.setdefault((f.pattern, f.file), []).append(f)
        for (pattern, file), steps in by_file.items():
            target = staging / file
            if steps[0].kind is repo.FetchKind.FULL:
                await self._fetch_full(steps[0], target)
                continue
            try:
                await self._fetch_chain(steps, target)
            except FetchError as e:
                if not e.missing:
                    raise
                logger.info("diff %s is not at the update source; taking the full file", e.message)
                entry = manifest.pattern(pattern)
                spec = entry.file(file) if entry is not None else None
                if entry is None or spec is None:
                    raise
                full = repo.Fetch(pattern, file, repo.FetchKind.FULL,
                                  repo.full_path(pattern, entry.version, file), spec.size,
                                  spec.sha256, None, entry.version)
                await self._fetch_full(full, target)
        # files that did not change come from the current version (hard links, no copy)
        for held_entry in held.values():
            for spec in held_entry.files:
                if not (staging / spec.name).exists():
                    await self.offload(_link_or_copy, _require(current) / spec.name,
                                        staging / spec.name)
        if repo.STRINGS not in {f.pattern for f in fetches}:
            await self.offload(_link_or_copy, _require(current) / STRINGS_FILE, staging / STRINGS_FILE)
            strings_version = local.strings_version
        else:
            strings_version = manifest.strings_version
        doc = LocalManifest(
            held, self._strings_spec(local, strings_version), strings_version,
            published=manifest.published, version=max(p.version for p in held.values()),
            created=manifest.published)
        complete = all(held[p.name].version == p.version for p in manifest.patterns) and (
            strings_version == manifest.strings_version)
        await self.offload(self._finish, doc, signature, complete)

    def _strings_spec(self, local: LocalManifest, strings_version: str | None) -> FileSpec:
        """strings.json as the new local manifest lists it (the file is in ``staging``)."""
        path = self.staging / STRINGS_FILE
        if strings_version == self.manifest.strings_version:
            return FileSpec(STRINGS_FILE, path.stat().st_size, self.manifest.strings.sha256)
        if local.strings is not None:
            return FileSpec(STRINGS_FILE, path.stat().st_size, local.strings.sha256)
        return FileSpec.of(path)

    def _finish(self, doc: LocalManifest, signature: bytes, complete: bool) -> None:
        """Write the local manifest and the source manifest beside it; check the result opens."""
        staging, manifest, current = self.staging, self.manifest, self.current
        self.writer(staging / MANIFEST, json.dumps(doc.to_json(), indent=1).encode() + b"\n")
        src = staging / SOURCE_DIR
        make_dirs(src)
        if complete:
            self.writer(src / repo.MANIFEST, manifest.raw)
            self.writer(src / repo.SIGNATURE, signature)
        elif current is not None and (current / SOURCE_DIR / repo.MANIFEST).is_file():
            for name in (repo.MANIFEST, repo.SIGNATURE):
                _link_or_copy(current / SOURCE_DIR / name, src / name)
        try:
            PatternSet.open(staging, verify=False).close()
        except PatternError as e:
            raise PatternError(f"the updated pattern does not open: {e.message}") from None

    async def _fetch_full(self, f: repo.Fetch, target: Path) -> None:
        data = await self.get(f.path, f.size)
        self.got["full"] = True
        repo.verify_file(data, f.size, f.sha256, f.path)
        await self.offload(self.writer, target, data)

    async def _fetch_chain(self, steps: list[repo.Fetch], target: Path) -> None:
        """Fetch a diff chain and apply it to the current version's file; a diff that does not
        apply sends its pattern to full files next time (``full_next``)."""
        staging = self.staging
        base = _require(self.current) / steps[0].file
        work = staging / ".work"
        make_dirs(work)
        for i, step in enumerate(steps):
            data = await self.get(step.path, step.size)
            self.got["diff"] = True
            repo.verify_file(data, step.size, step.sha256, step.path)
            keep = staging / DIFFS_DIR / step.path.removeprefix("diffs/")
            await self.offload(_mkdir_write, self.writer, keep, data)
            out = work / f"{step.file}.{i}"
            try:
                await self.offload(repo.apply_diff, step.file, base, data, out)
            except PatternError as e:
                self.full_next.add(step.pattern)
                reason = "wrong_base" if e.reason == "wrong_base" else "corrupt_diff"
                raise PatternError(f"{step.path}: {e.message}", reason=reason) from None
            base = out
        entry = self.manifest.pattern(steps[-1].pattern)
        spec = entry.file(steps[-1].file) if entry is not None else None
        if spec is None:
            raise PatternError(f"{steps[-1].file}: not listed in the manifest", reason="bad_manifest")
        try:
            await self.offload(repo.verify_file, base, spec.size, spec.sha256, steps[-1].file)
        except PatternError as e:
            self.full_next.add(steps[-1].pattern)
            raise PatternError(f"{steps[-1].file} after its diffs: {e.message}",
                               reason="wrong_base") from None
        os.replace(base, target)


def _require(current: Path | None) -> Path:
    if current is None:
        raise PatternError("the plan needs a current version, and there is none",
                           reason="bad_manifest")
    return current


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        copy_atomic(src, dst)


def _mkdir_write(writer: Callable[[Path, bytes], None], path: Path, data: bytes) -> None:
    make_dirs(path.parent)
    writer(path, data)
