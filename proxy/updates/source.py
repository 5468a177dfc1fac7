"""An update source's signed manifest: its values, the parse that bounds every field, the
signature check, and the check against replays and clocks (docs/architecture.md,
“Patterns and updates”). The format and the update source's layout are described in
``proxy.updates.repo``, which re-exports everything here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from proxy.clock import parse_iso, stamp
from proxy.errors import PatternError, Refused
from proxy.patterns.layout import (
    DIFFS,
    ENTRIES,
    EXPIRES,
    FILES,
    FORMAT,
    FROM,
    HISTORY,
    KEEP,
    MANIFEST,
    MAX_ENTRIES,
    PATTERN_FILES,
    PATTERNS,
    PUBLISHED,
    SHA256,
    SIGNATURE,
    SIZE,
    STRINGS,
    STRINGS_FILE,
    TO,
    TYPE,
    VERSION,
    VERSION_NAME,
    FileSpec,
    manifest_error,
    read_file_specs,
)
from proxy.updates.signing import load_public_key

logger = logging.getLogger(__name__)

REPO_FORMAT = 1
REPO_TYPE = "rampart-update-source"
DEFAULT_KEEP = 24
MAX_KEEP = 1000
MAX_MANIFEST_BYTES = 4 << 20
SIGNATURE_BYTES = 64
MAX_PATTERNS = 16
MAX_HISTORY = MAX_KEEP + 1


# ---------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Diff:
    from_version: str
    to_version: str
    files: tuple[FileSpec, ...]  # FileSpec.name is the target file name, without ".diff"

    def file(self, name: str) -> FileSpec | None:
        return next((f for f in self.files if f.name == name), None)


@dataclass(frozen=True, slots=True)
class PatternEntry:
    name: str
    version: str
    entries: int
    files: tuple[FileSpec, ...]
    history: tuple[str, ...]  # oldest first; the last is ``version``
    diffs: tuple[Diff, ...]

    def file(self, name: str) -> FileSpec | None:
        return next((f for f in self.files if f.name == name), None)


@dataclass(frozen=True, slots=True)
class Manifest:
    published: datetime
    keep: int
    strings: FileSpec  # name is the strings version; see ``strings_version``
    patterns: tuple[PatternEntry, ...]
    raw: bytes  # the exact signed bytes
    expires: datetime | None = None  # None: the publisher set no expiry (older manifests)

    @property
    def strings_version(self) -> str:
        return self.strings.name

    def pattern(self, name: str) -> PatternEntry | None:
        return next((p for p in self.patterns if p.name == name), None)


# ---------------------------------------------------------------- parsing


def _bad(what: str) -> PatternError:
    return manifest_error(what, "bad_manifest")


def _version(value: Any, where: str) -> str:
    if not isinstance(value, str) or VERSION_NAME.fullmatch(value) is None:
        raise _bad(f"{where}: bad version {str(value)[:40]!r}")
    return value


def _count(value: Any, where: str, limit: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise _bad(f"{where}: bad number {str(value)[:40]!r}")
    return value


def _time(value: Any, where: str) -> datetime:
    try:
        return parse_iso(value)
    except ValueError:
        raise _bad(f"bad {where} time {str(value)[:40]!r}") from None


def _specs(files: Any, where: str, allowed: tuple[str, ...]) -> tuple[FileSpec, ...]:
    return read_file_specs(files, where, allowed, bad=_bad)


def _diffs(name: str, raw_diffs: Any, allowed: tuple[str, ...]) -> tuple[Diff, ...]:
    if not isinstance(raw_diffs, list) or len(raw_diffs) > MAX_HISTORY:
        raise _bad(f"pattern {name}: 'diffs' is not a list of at most {MAX_HISTORY}")
    diffs = []
    for i, d in enumerate(raw_diffs):
        where = f"pattern {name}: diff {i}"
        if not isinstance(d, dict):
            raise _bad(f"{where}: not an object")
        a = _version(d.get(FROM), where)
        b = _version(d.get(TO), where)
        if not a < b:
            raise _bad(f"{where}: from {a} is not before to {b}")
        diffs.append(Diff(a, b, _specs(d.get(FILES), where, allowed)))
    return tuple(diffs)


def _pattern(name: str, raw: Any) -> PatternEntry:
    if not isinstance(raw, dict):
        raise _bad(f"pattern {name}: not an object")
    allowed = PATTERN_FILES[name]
    version = _version(raw.get(VERSION), f"pattern {name}")
    files = _specs(raw.get(FILES), f"pattern {name}", allowed)
    missing = set(allowed) - {f.name for f in files}
    if missing:
        raise _bad(f"pattern {name}: {', '.join(sorted(missing))} not listed")
    history = raw.get(HISTORY)
    if not isinstance(history, list) or not 1 <= len(history) <= MAX_HISTORY:
        raise _bad(f"pattern {name}: 'history' is not a list of 1..{MAX_HISTORY} versions")
    hist = tuple(_version(v, f"pattern {name}: history") for v in history)
    if list(hist) != sorted(set(hist)) or hist[-1] != version:
        raise _bad(f"pattern {name}: history is not increasing up to the current version")
    diffs = _diffs(name, raw.get(DIFFS), allowed)
    entries = _count(raw.get(ENTRIES, 0), f"pattern {name}: entries", MAX_ENTRIES)
    return PatternEntry(name, version, entries, files, hist, diffs)


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and bound manifest bytes (without checking a signature: see ``load_manifest``)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _bad(f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _bad(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _bad("not an object")
    if doc.get(TYPE) != REPO_TYPE:
        raise _bad(f"type {str(doc.get(TYPE))[:40]!r} is not {REPO_TYPE!r}")
    if doc.get(FORMAT) != REPO_FORMAT:
        raise _bad(f"format {str(doc.get(FORMAT))[:20]!r} not supported "
                   f"(expected {REPO_FORMAT})")
    published = _time(doc.get(PUBLISHED), PUBLISHED)
    expires = None if doc.get(EXPIRES) is None else _time(doc.get(EXPIRES), EXPIRES)
    if expires is not None and expires <= published:
        raise _bad(f"expires {stamp(expires)} is not after published {stamp(published)}")
    keep = _count(doc.get(KEEP), KEEP, MAX_KEEP)
    if keep < 1:
        raise _bad("keep must be at least 1")
    s = doc.get(STRINGS)
    if not isinstance(s, dict):
        raise _bad("'strings' is not an object")
    (spec,) = _specs({STRINGS_FILE: {SIZE: s.get(SIZE), SHA256: s.get(SHA256)}}, STRINGS,
                     (STRINGS_FILE,))
    strings = FileSpec(_version(s.get(VERSION), STRINGS), spec.size, spec.sha256)
    pats = doc.get(PATTERNS)
    if not isinstance(pats, dict) or len(pats) > MAX_PATTERNS:
        raise _bad(f"'patterns' is not an object of at most {MAX_PATTERNS}")
    patterns = []
    for name in PATTERN_FILES:
        if name not in pats:
            raise _bad(f"pattern {name!r} missing")
        patterns.append(_pattern(name, pats[name]))
    return Manifest(published, keep, strings, tuple(patterns), raw, expires)


def load_manifest(raw_manifest: bytes, signature: bytes,
                  public_key: Ed25519PublicKey | bytes | Path) -> Manifest:
    """Verify the detached Ed25519 signature over the exact bytes, then parse.

    PatternError reasons: ``unsigned`` (no signature), ``bad_signature``, ``bad_manifest``.
    """
    if not signature:
        raise PatternError(f"{SIGNATURE}: missing (unsigned manifest refused)", reason="unsigned")
    if len(signature) != SIGNATURE_BYTES:
        raise PatternError(f"{SIGNATURE}: {len(signature)} bytes, expected {SIGNATURE_BYTES}",
                           reason="bad_signature")
    if len(raw_manifest) > MAX_MANIFEST_BYTES:
        raise _bad(f"larger than {MAX_MANIFEST_BYTES} bytes")
    key = load_public_key(public_key)
    try:
        key.verify(signature, raw_manifest)
    except InvalidSignature:
        raise PatternError(f"{SIGNATURE}: bad signature (tampered manifest or wrong key)",
                           reason="bad_signature") from None
    return parse_manifest(raw_manifest)


# ---------------------------------------------------------------- replays and the clock


def newest(manifest: Manifest) -> dict[str, str]:
    """The high-water mark installing from ``manifest`` raises the store's to: its publication
    time (``PUBLISHED``), the strings version (``STRINGS``) and every pattern's version."""
    return {PUBLISHED: stamp(manifest.published), STRINGS: manifest.strings_version,
            **{p.name: p.version for p in manifest.patterns}}


def check_timely(manifest: Manifest, mark: Mapping[str, str], now: datetime,
                 max_skew: float) -> None:
    """Refuse a manifest older than ``mark`` (``newest`` of what was installed) or published
    more than ``max_skew`` seconds ahead of ``now``; ``Refused`` says which and why.

    Older is an earlier publication time, or any version below the mark's (a newer
    time does not excuse an older version: the publisher never lowers one). An
    empty mark (nothing installed from a source yet: the shipped sample) takes
    any manifest. A manifest from the future would raise the mark past every
    genuine one until that time, so it is refused before it can.
    """
    ahead = (manifest.published - now).total_seconds()
    if ahead > max_skew:
        raise Refused("from_future", f"{MANIFEST}: published {stamp(manifest.published)}, "
                      f"{ahead:.0f} s ahead of this appliance's clock (more than "
                      f"update_max_clock_skew, {max_skew:g} s): is a clock wrong?")
    for key, value in newest(manifest).items():
        held = mark.get(key)
        if held is not None and value < held:
            what = "published" if key == PUBLISHED else f"{key} version"
            raise Refused("downgrade", f"{MANIFEST}: {what} {value} is older than the installed "
                          f"{held}: an old update source served again (replayed?); not "
                          "installed (`rampart pattern rollback` goes back on purpose)")


