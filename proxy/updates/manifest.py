"""The local manifest: what an installed version directory says it holds, as one typed value.

A version directory's ``manifest.json`` is a pattern directory's manifest
(``proxy.patterns.pattern``); one the updater wrote adds where it came from::

    {"format": 1, "version": V, "created": ISO-8601 UTC,
     "files": {"strings.json": {"size", "sha256"}},
     "patterns": {NAME: {"version", "entries", "files": {FILE: {"size", "sha256", "entries"}}}},
     "strings_version": V | null,                 the update source's strings version held
     "source": {"published": ISO-8601 UTC},       the source manifest installed from
     "overlays": {FILE: {"base", "overlay"}}}     files held as base + overlay, only when
                                                  some are (``proxy.patterns.overlays``)

A sample build has neither of the last two; the bundled sample a server builds on first
start also says ``"sample": true`` (``mark_sample``). A version not from an update source
holds nothing an update can build on (``held``): its version is the appliance's own
hour, not a publisher's, so the first update takes every pattern whatever the
numbers; once a version from a source is installed the normal rules apply.
``LocalManifest.parse`` is lenient
(it is the appliance's own file, read to plan the next update): a part that is
missing or malformed is left out, so at worst the next update fetches more.
``to_json`` writes the updater's form, byte for byte what earlier releases wrote.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy.clock import iso, parse_iso, stamp
from proxy.errors import PatternError
from proxy.files import read_json, write_atomic
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
from proxy.patterns.overlays import OVERLAYS, Overlay, held_as, overlays_json, read_overlays

LOCAL_FORMAT = 1
MAX_LOCAL_BYTES = 4 << 20
SAMPLE = "sample"  # a local manifest's: true for the bundled sample built on first start


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
    sample: bool = False  # the bundled sample (``mark_sample``)
    overlays: Mapping[str, Overlay] = field(default_factory=dict)  # files held overlaid

    @property
    def from_source(self) -> bool:
        """Installed from an update source (not the sample, nor a build installed by hand)."""
        return self.published is not None and not self.sample

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
        try:
            overlays = read_overlays(raw)
        except PatternError:
            overlays = {}
        sv = raw.get(STRINGS_VERSION)
        source = raw.get(SOURCE)
        version = raw.get(VERSION)
        return cls(patterns, strings, sv if isinstance(sv, str) else None,
                   _time(source.get(PUBLISHED)) if isinstance(source, dict) else None,
                   version if isinstance(version, str) else None, _time(raw.get(CREATED)),
                   raw.get(SAMPLE) is True, overlays)

    @classmethod
    def load(cls, directory: Path | None) -> LocalManifest:
        """The manifest of a version directory (``EMPTY`` when there is none or it is unreadable)."""
        return cls.parse(read_local(directory))

    def held(self, directory: Path | None) -> dict[str, str]:
        """What ``directory`` (the version directory of this manifest) holds, as ``repo.plan``'s
        ``have``: pattern -> version.

        A pattern counts only if every file it needs is listed and present, and only
        in a version installed from an update source (``from_source``): the sample's
        versions name the hour the appliance first started, not anything a publisher
        made, and its tables' string ids are not the source's; so from the sample
        every pattern is fetched in full, even one whose version number is equal to or
        newer than the source's (a source published in the hour of the first start).
        """
        have: dict[str, str] = {}
        if directory is None or not self.from_source:
            return have
        for name, files in PATTERN_FILES.items():
            entry = self.patterns.get(name)
            listed = {f.name for f in entry.files} if entry is not None else set()
            if entry is not None and all(f in listed and self.present(directory, f) for f in files):
                have[name] = entry.version
        if self.strings_version is not None and (directory / STRINGS_FILE).is_file():
            have[STRINGS] = self.strings_version
        return have

    def present(self, directory: Path, file: str) -> bool:
        """``file`` is in ``directory``, whole or as its overlay's parts."""
        return all((directory / s.name).is_file()
                   for s in held_as(directory, FileSpec(file, 0, ""), self.overlays))

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
        out = {
            FORMAT: LOCAL_FORMAT,
            VERSION: self.version,
            CREATED: iso(self.created or self.published),
            FILES: file_specs_json([self.strings]),
            PATTERNS: {name: p.to_json() for name, p in self.patterns.items()},
            STRINGS_VERSION: self.strings_version,
            SOURCE: {PUBLISHED: iso(self.published)},
        }
        if self.overlays:
            out[OVERLAYS] = overlays_json(self.overlays)
        return out


EMPTY = LocalManifest()


def mark_sample(directory: Path) -> None:
    """Mark the pattern build in ``directory`` as the bundled sample (``"sample": true`` in its
    manifest), so the first update from a source replaces it whatever the versions say."""
    raw = read_local(directory)
    if not raw:
        raise PatternError(f"{directory / MANIFEST}: cannot mark a build without a manifest")
    write_atomic(directory / MANIFEST, json.dumps({**raw, SAMPLE: True}, indent=1).encode() + b"\n")


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
