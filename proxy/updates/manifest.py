"""The local manifest: what an installed version directory says it holds, as one typed value.

A version directory's ``manifest.json`` is a pattern directory's manifest
(``proxy.patterns.pattern``); one the updater wrote adds where it came from::

    {"format": 1, "version": V, "created": ISO-8601 UTC,
     "files": {"strings.json": {"size", "sha256"}},
     "patterns": {NAME: {"version", "entries", "files": {FILE: {"size", "sha256", "entries"}}}},
     "strings_version": V | null,                 the update source's strings version held
     "source": {"published": ISO-8601 UTC}}       the source manifest installed from

A sample build has neither of the last two. ``LocalManifest.parse`` is lenient
(it is the appliance's own file, read to plan the next update): a part that is
missing or malformed is left out, so at worst the next update fetches more.
``to_json`` writes the updater's form, byte for byte what earlier releases wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy.clock import iso, parse_iso, stamp
from proxy.errors import PatternError
from proxy.files import read_json
from proxy.patterns.layout import (
    CREATED,
    ENTRIES,
    FILES,
    FORMAT,
    MANIFEST,
    PATTERN_FILES,
    PATTERNS,
    PUBLISHED,
    SOURCE,
    STRINGS,
    STRINGS_FILE,
    STRINGS_VERSION,
    VERSION,
    FileSpec,
    file_specs_json,
    read_file_specs,
)

LOCAL_FORMAT = 1
MAX_LOCAL_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class HeldPattern:
    """One pattern a version directory holds."""

    version: str
    entries: int
    files: tuple[FileSpec, ...]

    @classmethod
    def parse(cls, raw: Any, name: str) -> HeldPattern | None:
        """The entry of pattern ``name``, or None if it is not a well-formed one."""
        if not isinstance(raw, dict) or not isinstance(raw.get(VERSION), str):
            return None
        entries = raw.get(ENTRIES, 0)
        try:
            files = read_file_specs(raw.get(FILES), name)
        except PatternError:
            return None
        if not isinstance(entries, int) or isinstance(entries, bool):
            return None
        return cls(raw[VERSION], entries, files)

    def to_json(self) -> dict[str, Any]:
        return {VERSION: self.version, ENTRIES: self.entries, FILES: file_specs_json(self.files)}


@dataclass(frozen=True, slots=True)
class LocalManifest:
    """A version directory's manifest; ``EMPTY`` stands for none (nothing installed)."""

    patterns: Mapping[str, HeldPattern] = field(default_factory=dict)
    strings: FileSpec | None = None  # strings.json as listed
    strings_version: str | None = None  # None: not from an update source (the sample)
    published: datetime | None = None  # of the source manifest installed from; None: sample
    version: str | None = None
    created: datetime | None = None

    @classmethod
    def parse(cls, raw: Any) -> LocalManifest:
        """The manifest in ``raw`` (parsed JSON), leaving out what is malformed."""
        if not isinstance(raw, dict):
            return EMPTY
        pats = raw.get(PATTERNS)
        patterns = {}
        for name, entry in (pats.items() if isinstance(pats, dict) else ()):
            held = HeldPattern.parse(entry, str(name))
            if held is not None:
                patterns[str(name)] = held
        try:
            strings = next((s for s in read_file_specs(raw.get(FILES), "top level")
                            if s.name == STRINGS_FILE), None)
        except PatternError:
            strings = None
        sv = raw.get(STRINGS_VERSION)
        source = raw.get(SOURCE)
        version = raw.get(VERSION)
        return cls(patterns, strings, sv if isinstance(sv, str) else None,
                   _time(source.get(PUBLISHED)) if isinstance(source, dict) else None,
                   version if isinstance(version, str) else None, _time(raw.get(CREATED)))

    @classmethod
    def load(cls, directory: Path | None) -> LocalManifest:
        """The manifest of a version directory (``EMPTY`` when there is none or it is unreadable)."""
        return cls.parse(read_local(directory))

    def held(self, directory: Path | None) -> dict[str, str]:
        """What ``directory`` (the version directory of this manifest) holds, as ``repo.plan``'s
        ``have``: pattern -> version.

        A pattern counts only if every file it needs is listed and present. The
        strings version counts only for patterns from an update source (a sample
        build has none, so its tables' ids are not those of the source).
        """
        have: dict[str, str] = {}
        if directory is None:
            return have
        for name, files in PATTERN_FILES.items():
            entry = self.patterns.get(name)
            listed = {f.name for f in entry.files} if entry is not None else set()
            if entry is not None and all(f in listed and (directory / f).is_file() for f in files):
                have[name] = entry.version
        if self.strings_version is not None and (directory / STRINGS_FILE).is_file():
            have[STRINGS] = self.strings_version
        return have

    def spec(self, pattern: str, file: str) -> FileSpec | None:
        """How this manifest lists ``file`` of ``pattern`` (None if it does not)."""
        entry = self.patterns.get(pattern)
        return next((f for f in entry.files if f.name == file), None) if entry is not None else None

    def mark(self) -> dict[str, str]:
        """The high-water mark a version installed from a source implies (``repo.newest`` of
        what it holds), for stores that predate the store's own mark; {} for the sample."""
        if self.published is None:
            return {}
        mark = {PUBLISHED: stamp(self.published)}
        if self.strings_version is not None:
            mark[STRINGS] = self.strings_version
        mark.update((name, entry.version) for name, entry in self.patterns.items())
        return mark

    def to_json(self) -> dict[str, Any]:
        """The updater's form of a local manifest (see the module docstring)."""
        assert self.strings is not None and self.published is not None
        return {
            FORMAT: LOCAL_FORMAT,
            VERSION: self.version,
            CREATED: iso(self.created or self.published),
            FILES: file_specs_json([self.strings]),
            PATTERNS: {name: p.to_json() for name, p in self.patterns.items()},
            STRINGS_VERSION: self.strings_version,
            SOURCE: {PUBLISHED: iso(self.published)},
        }


EMPTY = LocalManifest()


def _time(value: Any) -> datetime | None:
    try:
        return parse_iso(value) if value is not None else None
    except ValueError:
        return None


def read_local(directory: Path | None) -> dict[str, Any]:
    """The manifest of a version directory as plain JSON ({} when there is none, it is
    unreadable or not an object)."""
    if directory is None:
        return {}
    try:
        raw = read_json(directory / MANIFEST, MAX_LOCAL_BYTES, error=PatternError)
    except (OSError, PatternError):
        return {}
    return raw if isinstance(raw, dict) else {}
