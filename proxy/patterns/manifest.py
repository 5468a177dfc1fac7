"""A pattern directory's manifest: reading and bounding it, and checking the files it
lists against it (the layout is ``proxy.patterns.pattern``'s docstring; a file may be
held overlaid, as its base and an overlay: ``proxy.patterns.overlays``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy.clock import iso, parse_iso
from proxy.errors import PatternError
from proxy.files import read_json
from proxy.patterns.layout import (
    CREATED,
    ENTRIES,
    FILES,
    FORMAT,
    MANIFEST,
    PATTERN_TABLES,
    PATTERNS,
    SIZE,
    STRINGS_FILE,
    VERSION,
    VERSION_NAME,
    FileSpec,
    manifest_error,
    read_file_specs,
)
from proxy.patterns.overlays import Overlay, held_as, read_overlays

MANIFEST_FORMAT = 1
MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class PatternManifest:
    """What ``read_manifest`` checked: the version, the build time, and every file listed."""

    version: str
    created: datetime
    raw: dict[str, Any]
    files: tuple[FileSpec, ...]  # every file the manifest lists
    overlays: dict[str, Overlay] = field(default_factory=dict)  # files held overlaid


def read_manifest(directory: Path) -> PatternManifest:
    """The manifest of ``directory``, bounded and checked; PatternError naming the problem."""
    path = Path(directory) / MANIFEST
    try:
        raw = read_json(path, MAX_MANIFEST_BYTES, error=PatternError, label=MANIFEST)
    except OSError as e:
        raise PatternError(f"{MANIFEST}: cannot read: {e.strerror or e}") from None
    if not isinstance(raw, dict):
        raise manifest_error("not an object")
    if raw.get(FORMAT) != MANIFEST_FORMAT:
        raise manifest_error(f"format {raw.get(FORMAT)!r} not supported (expected {MANIFEST_FORMAT})")
    version = raw.get(VERSION)
    if not isinstance(version, str) or VERSION_NAME.fullmatch(version) is None:
        raise manifest_error(f"bad version {str(version)[:40]!r}")
    try:
        created = parse_iso(raw.get(CREATED))
    except ValueError:
        raise manifest_error(f"bad created time {str(raw.get(CREATED))[:40]!r}") from None
    specs = list(read_file_specs(raw.get(FILES), "top level"))
    if STRINGS_FILE not in {s.name for s in specs}:
        raise manifest_error(f"{STRINGS_FILE} not listed")
    patterns = raw.get(PATTERNS)
    if not isinstance(patterns, dict):
        raise manifest_error("'patterns' is not an object")
    for pname, files in PATTERN_TABLES.items():
        entry = patterns.get(pname)
        if not isinstance(entry, dict):
            raise manifest_error(f"pattern {pname!r} missing")
        pspecs = read_file_specs(entry.get(FILES), pname)
        missing = set(files) - {s.name for s in pspecs}
        if missing:
            raise manifest_error(f"{pname}: {', '.join(sorted(missing))} not listed")
        specs.extend(pspecs)
    return PatternManifest(version, created, raw, tuple(specs), read_overlays(raw))


def check_listed(directory: Path, spec: FileSpec, m: PatternManifest, *, verify: bool) -> None:
    """``check_file`` for a listed file, or for its base and overlay when it is held overlaid."""
    for held in held_as(directory, spec, m.overlays):
        check_file(directory, held, verify=verify)


def check_file(directory: Path, spec: FileSpec, *, verify: bool) -> None:
    """Refuse a listed file of another size than ``spec``'s (with ``verify``, another SHA-256)."""
    path = directory / spec.name
    try:
        size = path.stat().st_size
    except OSError as e:
        raise PatternError(f"{spec.name}: cannot read: {e.strerror or e}") from None
    if size != spec.size:
        state = "truncated" if size < spec.size else "wrong size"
        raise PatternError(f"{spec.name}: {state}: {size} bytes, manifest says {spec.size}")
    if verify:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != spec.sha256:
            raise PatternError(f"{spec.name}: SHA-256 does not match the manifest (corrupt)")


def pattern_info(directory: Path) -> dict[str, Any]:
    """Versions, entries and sizes from the manifest, and whether the files have those sizes."""
    directory = Path(directory)
    m = read_manifest(directory)
    problems = []
    for spec in m.files:
        try:
            check_listed(directory, spec, m, verify=False)
        except PatternError as e:
            problems.append(e.message)
    return manifest_info(m, problems)


def manifest_info(m: PatternManifest, problems: list[str]) -> dict[str, Any]:
    """``pattern_info``'s answer for ``m`` and the problems found with its files."""
    patterns = {}
    for name, entry in m.raw[PATTERNS].items():
        if not isinstance(entry, dict):
            continue
        listed = entry.get(FILES)
        files: dict[str, Any] = listed if isinstance(listed, dict) else {}
        patterns[name] = {
            VERSION: entry.get(VERSION),
            ENTRIES: entry.get(ENTRIES),
            SIZE: sum(f.get(SIZE, 0) for f in files.values() if isinstance(f, dict)),
        }
    return {
        "format": MANIFEST_FORMAT,
        "version": m.version,
        "created": iso(m.created),
        "patterns": patterns,
        "problems": problems,
    }
