"""Building one update's version directory in the store's staging area: full files and
diff chains fetched and checked, unchanged files linked from the current version, the
local manifest (``proxy.updates.manifest``) and the signed source manifest written
beside them. ``proxy.updates.updater`` makes one ``Assembly`` per update.

A table's diff chain is not merged into a new full file: its diffs are folded into one
overlay over the current version's table (``proxy.patterns.overlays``: ``FILE.base``, a
hard link, and ``FILE.overlay``), so an hourly update writes a few MB, not the whole
table; the updater compacts the full file afterwards, off the request path. An overlay
that would pass ``MAX_OVERLAY_ROWS`` is merged into the full file here instead, checked
against the manifest's SHA-256 as before.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.errors import FetchError, PatternError
from proxy.files import copy_atomic, make_dirs
from proxy.patterns.layout import (
    DIFFS_DIR,
    FULL_ONLY,
    MANIFEST,
    PATTERN_TABLES,
    SOURCE_DIR,
    STRINGS_FILE,
    FileSpec,
)
from proxy.patterns.overlays import (
    MAX_OVERLAY_ROWS,
    Overlay,
    overlay_rows,
)
from proxy.patterns.pattern import PatternSet
from proxy.patterns.table_diff import apply_table_diff
from proxy.patterns.table_overlay import fold_diff
from proxy.patterns.tables import Table
from proxy.updates import repo
from proxy.updates.manifest import HeldPattern, LocalManifest

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Assembly:
    """The new version directory ``staging`` of one update from ``manifest``.

    ``get(path, max_bytes)`` downloads (the update's deadline and byte count are the
    updater's), ``writer`` writes a file, ``offload`` runs blocking work off the event
    loop; ``got`` records whether diffs and full files were fetched; ``full_next``
    collects the patterns whose diffs failed; ``overlays`` the tables this version holds
    as base + overlay.
    """

    staging: Path
    manifest: repo.Manifest
    current: Path | None
    get: Callable[[str, int], Awaitable[bytes]]
    writer: Callable[[Path, bytes], None]
    offload: Callable[..., Awaitable[Any]]
    got: dict[str, Any]
    full_next: set[str]
    overlays: dict[str, Overlay] = field(default_factory=dict)

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
                if file in local.overlays or (
                        file in _OVERLAID and local.spec(pattern, file) is not None):
                    await self._fold_chain(steps, target, local)
                else:
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
                if (staging / spec.name).exists() or spec.name in self.overlays:
                    continue
                was = local.overlays.get(spec.name)
                if was is not None and not (_require(current) / spec.name).is_file():
                    self.overlays[spec.name] = was  # held as it was: base + overlay
                    for part in (was.base, was.overlay):
                        await self.offload(_link_or_copy, _require(current) / part.name,
                                           staging / part.name)
                    continue
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
            created=manifest.published, overlays=dict(self.overlays))
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


    async def _fold_chain(self, steps: list[repo.Fetch], target: Path, local: LocalManifest
                          ) -> None:
        """Fetch a table's diff chain and fold it into one overlay over the current version's
        table (whole, or its base when it is overlaid already): ``FILE.base`` is linked and
        ``FILE.overlay`` written into the staging directory. A diff that does not fold
        sends its pattern to full files next time, as in ``_fetch_chain``."""
        staging, current, file = self.staging, _require(self.current), steps[0].file
        was = local.overlays.get(file)
        if (current / file).is_file() or was is None:
            base, base_spec, overlay = current / file, local.spec(steps[0].pattern, file), None
        else:
            base, base_spec = current / was.base.name, was.base
            overlay = await self.offload(_read_spec, current, was.overlay)
        assert base_spec is not None
        for step in steps:
            data = await self.get(step.path, step.size)
            self.got["diff"] = True
            repo.verify_file(data, step.size, step.sha256, step.path)
            keep = staging / DIFFS_DIR / step.path.removeprefix("diffs/")
            await self.offload(_mkdir_write, self.writer, keep, data)
            try:
                overlay = await self.offload(_fold, base, overlay, data, step.path)
            except PatternError as e:
                self.full_next.add(step.pattern)
                reason = "wrong_base" if e.reason == "wrong_base" else "corrupt_diff"
                raise PatternError(f"{step.path}: {e.message}", reason=reason) from None
        assert overlay is not None
        spec = self._spec(steps[-1])
        if overlay_rows(overlay) > MAX_OVERLAY_ROWS:
            await self.offload(self._merge_full, steps[-1].pattern, base, overlay, target, spec)
            return
        part = staging / (file + ".overlay")
        await self.offload(self.writer, part, overlay)
        await self.offload(_link_or_copy, base, staging / (file + ".base"))
        self.overlays[file] = Overlay.of(
            file, base_spec, FileSpec(part.name, len(overlay), hashlib.sha256(overlay).hexdigest()))

    def _spec(self, step: repo.Fetch) -> FileSpec:
        entry = self.manifest.pattern(step.pattern)
        spec = entry.file(step.file) if entry is not None else None
        if spec is None:
            raise PatternError(f"{step.file}: not listed in the manifest", reason="bad_manifest")
        return spec

    def _merge_full(self, pattern: str, base: Path, overlay: bytes, target: Path,
                    spec: FileSpec) -> None:
        """Merge ``base`` + ``overlay`` into the full ``target``, checked against ``spec``."""
        apply_table_diff(base, overlay, target)
        try:
            repo.verify_file(target, spec.size, spec.sha256, target.name)
        except PatternError as e:
            target.unlink(missing_ok=True)
            self.full_next.add(pattern)
            raise PatternError(f"{target.name} after its diffs: {e.message}",
                               reason="wrong_base") from None


_OVERLAID = frozenset(f for fs in PATTERN_TABLES.values() for f in fs) - FULL_ONLY


def _fold(base: Path, overlay: bytes | None, diff: bytes, what: str) -> bytes:
    with Table.open(base) as table:
        return fold_diff(table, overlay, diff, what)


def _read_spec(directory: Path, spec: FileSpec) -> bytes:
    """A small file of ``directory`` as its spec lists it (size bounded; the SHA-256 is the
    overlay's own trailer, checked when it is folded)."""
    with open(directory / spec.name, "rb") as f:
        data = f.read(spec.size + 1)
    if len(data) != spec.size:
        raise PatternError(f"{spec.name}: {len(data)} bytes, the manifest says {spec.size}",
                           reason="bad_pattern")
    return data


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
