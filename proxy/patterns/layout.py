"""The vocabulary of pattern directories and update sources, defined once: file names,
pattern names, manifest field names, version names, and the one "file spec" JSON form.

A pattern directory (``proxy.patterns.pattern``) and an update source
(``proxy.updates.repo``) name the same patterns and files; their manifests
(``manifest.json`` in both) describe every file the same way, as a file spec::

    FILE: {"size": BYTES, "sha256": HEX, "entries": N}     "entries" optional

read by ``read_file_specs`` and written by ``file_specs_json``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.errors import PatternError
from proxy.model import HashKind

# ---------------------------------------------------------------- files

MANIFEST = "manifest.json"  # in a pattern directory and at the top of an update source
SIGNATURE = "manifest.json.sig"  # an update source's Ed25519 signature over manifest.json
STRINGS_FILE = "strings.json"  # threat names and categories, shared by all patterns
AGENT_FILE = "agent.bin"  # the Smart Scan Agent Pattern (``proxy.patterns.agent``)
SOURCE_DIR = "source"  # in an installed version: the signed manifest it was installed from
DIFFS_DIR = "diffs"  # in an installed version: the diffs it was built with (re-served)

FILE_TABLES = {
    HashKind.MD5: "file-md5.tbl",
    HashKind.SHA1: "file-sha1.tbl",
    HashKind.SHA256: "file-sha256.tbl",
}
WEB_BLOCKING_TABLE = "web-blocking.tbl"
SUSPICIOUS_URLS_TABLE = "suspicious-urls.tbl"
DOMAINS_TABLE = "domains.tbl"
IP4_TABLE = "ip4.tbl"
IP6_TABLE = "ip6.tbl"
FULL_ONLY = frozenset({IP4_TABLE, IP6_TABLE})  # small range tables: shipped full, no diffs

# ---------------------------------------------------------------- patterns

SMART_SCAN = "smart-scan"
WEB_BLOCKING = "web-blocking"
SUSPICIOUS_URLS = "suspicious-urls"
DOMAIN_IP = "domain-ip"
AGENT = "agent"
STRINGS = "strings"  # the pseudo-pattern of strings.json in an update source and a plan

PATTERN_TABLES: dict[str, tuple[str, ...]] = {
    SMART_SCAN: tuple(FILE_TABLES.values()),
    WEB_BLOCKING: (WEB_BLOCKING_TABLE,),
    SUSPICIOUS_URLS: (SUSPICIOUS_URLS_TABLE,),
    DOMAIN_IP: (DOMAINS_TABLE, IP4_TABLE, IP6_TABLE),
}
"""The patterns every pattern directory holds, and their tables."""
PATTERN_FILES: dict[str, tuple[str, ...]] = {**PATTERN_TABLES, AGENT: (AGENT_FILE,)}
"""Every pattern an update source publishes, and its files."""

# ---------------------------------------------------------------- manifest fields

FORMAT = "format"
TYPE = "type"  # an update source's: REPO_TYPE (``proxy.updates.repo``)
VERSION = "version"
CREATED = "created"  # a pattern directory's build time
AUTO_VERSION = "auto_version"  # a build's: true when its version was defaulted (publish may move it)
PUBLISHED = "published"  # an update source's publication time (also a high-water mark key)
EXPIRES = "expires"
KEEP = "keep"
FILES = "files"  # an object of file specs
PATTERNS = "patterns"
ENTRIES = "entries"
SIZE = "size"
SHA256 = "sha256"
HISTORY = "history"
DIFFS = "diffs"
FROM = "from"
TO = "to"
STRINGS_VERSION = "strings_version"  # a local manifest's: the strings version it holds
SOURCE = "source"  # a local manifest's: what it was installed from

VERSION_NAME = re.compile(r"\d{10}(?:\d{2}){0,2}")  # YYYYMMDDHH[MM[SS]]; sorts as a string
VERSION_FORMS = ("%Y%m%d%H", "%Y%m%d%H%M", "%Y%m%d%H%M%S")  # the hour, then finer
MAX_FILES = 16  # file specs in one "files" object
MAX_FILE_BYTES = 1 << 40
MAX_ENTRIES = 1 << 48

_FILE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def version_time(version: str) -> datetime | None:
    """A version name ``YYYYMMDDHH[MM[SS]]`` as a UTC time (None if it is not one)."""
    digits = version.ljust(14, "0")
    try:
        return datetime.strptime(digits, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def next_version(latest: str | None, now: datetime) -> str:
    """The first version name newer than ``latest``: ``now``'s hour, else its minute, else
    its second, else the second after ``latest`` (more than one a second, or a clock behind).

    Every form is a time, so ``version_time`` (pattern age) stays meaningful, and a
    shorter form sorts before the longer ones that extend it (``2026112400`` <
    ``202611240000`` < ``2026112401``), so names compare as strings wherever versions
    are compared (publish, the updater's downgrade check, the store).
    """
    for form in VERSION_FORMS:
        name = now.astimezone(UTC).strftime(form)
        if latest is None or name > latest:
            return name
    assert latest is not None
    t = version_time(latest)
    if t is None:
        raise PatternError(f"published version {latest!r} is not a time; give --version")
    return (t + timedelta(seconds=1)).strftime(VERSION_FORMS[-1])


def manifest_error(what: str, reason: str = "bad_pattern") -> PatternError:
    """A bad manifest: PatternError ``manifest.json: <what>``; an update source's has reason
    ``bad_manifest``, a pattern directory's the default ``bad_pattern``."""
    return PatternError(f"{MANIFEST}: {what}", reason=reason)


# ---------------------------------------------------------------- file specs


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One file as a manifest lists it."""

    name: str
    size: int
    sha256: str
    entries: int | None = None

    @classmethod
    def of(cls, path: Path, entries: int | None = None) -> FileSpec:
        """The spec of the file at ``path`` (its size and SHA-256, read once)."""
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        return cls(path.name, path.stat().st_size, digest, entries)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {SIZE: self.size, SHA256: self.sha256}
        if self.entries is not None:
            out[ENTRIES] = self.entries
        return out


def _number(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def read_file_specs(files: Any, where: str, allowed: Collection[str] | None = None,
                    bad: Callable[[str], PatternError] = manifest_error) -> tuple[FileSpec, ...]:
    """The file specs of a manifest's ``files`` object; ``bad(what)`` for anything wrong.

    ``allowed`` bounds the names (an update source's patterns know their files);
    without it any file name of ``[a-z0-9][a-z0-9._-]{0,63}`` is taken.
    """
    if not isinstance(files, dict) or len(files) > MAX_FILES:
        raise bad(f"{where}: 'files' is not an object of at most {MAX_FILES} files")
    out = []
    for name, spec in files.items():
        if allowed is not None and name not in allowed:
            raise bad(f"{where}: unexpected file {str(name)[:80]!r}")
        if not isinstance(name, str) or _FILE_NAME.fullmatch(name) is None:
            raise bad(f"{where}: bad file name {str(name)[:80]!r}")
        if not isinstance(spec, dict):
            raise bad(f"{where}: {name}: not an object")
        fields: tuple[Any, Any, Any] = (spec.get(SIZE), spec.get(SHA256), spec.get(ENTRIES))
        size, digest, entries = fields
        if not _number(size, MAX_FILE_BYTES):
            raise bad(f"{where}: {name}: bad size {str(size)[:40]!r}")
        if not isinstance(digest, str) or _SHA256_HEX.fullmatch(digest) is None:
            raise bad(f"{where}: {name}: bad sha256")
        if entries is not None and not _number(entries, MAX_ENTRIES):
            raise bad(f"{where}: {name}: bad entries {str(entries)[:40]!r}")
        out.append(FileSpec(name, size, digest, entries))
    return tuple(out)


def file_specs_json(specs: Iterable[FileSpec]) -> dict[str, dict[str, Any]]:
    """A manifest's ``files`` object: the inverse of ``read_file_specs``."""
    return {s.name: s.to_json() for s in specs}
