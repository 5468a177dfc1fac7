"""The update source: a signed directory of pattern versions, full files and diffs
(docs/architecture.md, “Patterns and updates”).

API (stable; the updater builds on it)::

    load_manifest(raw: bytes, signature: bytes, public_key) -> Manifest
        check the Ed25519 signature over the exact bytes, then parse and bound
        the JSON; PatternError naming what is wrong.
    plan(manifest, have: Mapping[str, str]) -> list[Fetch]
        the smallest path from the versions you have (pattern name -> version,
        and STRINGS -> version) to the manifest's: per file, a diff chain or the
        full file. Empty when everything is current.
    check_timely(manifest, mark: Mapping[str, str], now, max_skew) -> None
        Refused (reason "downgrade" or "from_future") for a manifest older than
        the high-water mark ``newest(...)`` of what was installed, or from the future.
    verify_file(data: bytes | Path, size: int, sha256: str, what: str) -> None
    apply_diff(file: str, base: Path, diff: bytes, out: Path) -> None
        apply one downloaded diff of pattern file ``file`` (a table or agent.bin)
        to ``base``, writing ``out`` atomically; PatternError for a diff against
        the wrong base or a corrupt one. Check ``out`` with verify_file after
        the last diff of a chain.
    parse_manifest(raw: bytes) -> Manifest                       (no signature check)

Beside it::

    proxy.updates.signing      load_public_key(data: bytes | Path) -> Ed25519PublicKey
                                                                 (PEM, or raw 32 bytes)
                       keygen(out: Path) -> Path                 (writes out and out.pub)
                       load_private_key(path: Path) -> Ed25519PrivateKey
                       sign(raw: bytes, key) -> bytes
    proxy.updates.publish      publish(build_dir, repo_dir, private_key, *, keep=DEFAULT_KEEP,
                               now=None) -> PublishReport
                       read_repo(repo_dir, public_key | None) -> Manifest
                                                                 (signature checked if a key)
                       verify_repo(repo_dir, public_key | None) -> list[str]
                                                                 (problems; empty = good)
                       repo_info(repo_dir) -> dict;  is_repo(path) -> bool
    proxy.serve.repo_server  make_server(repo_dir, host, port) -> ThreadingHTTPServer
                                                                 (``rampart pattern serve``)

Layout of REPO_DIR (any static web server can host it; every path below is
relative to the update-source URL)::

    manifest.json                        the manifest (JSON, UTF-8)
    manifest.json.sig                    Ed25519 signature over the exact bytes of
                                         manifest.json: 64 raw bytes
    full/strings/<V>/strings.json        threat names and categories, version V
    full/<pattern>/<V>/<file>            the full files of a pattern at version V
    diffs/<pattern>/<A>-<B>/<file>.diff  a diff turning <file> at version A into B

Patterns: ``smart-scan`` (file-md5.tbl, file-sha1.tbl, file-sha256.tbl),
``web-blocking`` (web-blocking.tbl), ``suspicious-urls`` (suspicious-urls.tbl),
``domain-ip`` (domains.tbl, ip4.tbl, ip6.tbl) and ``agent`` (agent.bin). Table
diffs are ``proxy.patterns.table_diff`` diffs; agent diffs are ``proxy.patterns.agent`` diffs. The
IP range tables are small and always shipped full: they have no diffs.

manifest.json::

    {"format": 1, "type": "rampart-update-source",
     "published": ISO-8601 UTC, "keep": N,
     "expires": ISO-8601 UTC,               optional: after it, the source counts as frozen
     "strings": {"version": V, "size": S, "sha256": H},
     "patterns": {
       NAME: {"version": V,                 current version of this pattern
              "entries": N,
              "files": {FILE: {"size", "sha256", "entries"}},   at V, under full/NAME/V/
              "history": [V1, V2, ..., V],  retained versions, oldest first, last is V
              "diffs": [{"from": A, "to": B,
                         "files": {FILE: {"size", "sha256"}}}]}}}   diffs/NAME/A-B/FILE.diff

Versions are ``YYYYMMDDHH[MM[SS]]`` and sort as strings. Each pattern has its
own version: a publish whose build leaves a pattern's files unchanged (same
SHA-256) keeps that pattern's version and adds no diff, so appliances
updating one pattern hourly and another daily fetch only what changed.

Diffs are a chain of consecutive versions: each publish adds one diff per
changed pattern, from its previous version to the new one. ``plan`` takes,
per file, the chain from the version you have to the current one if every
step of it is listed and its total size is below the full file's; else the
full file. A version older than the history, or unknown, takes the full files.

strings.json is shared by all patterns and only ever grows: a build made with
``build_pattern(base=...)`` (``proxy.patterns.build``) keeps every earlier threat name
and category at its id and appends new ones (ids then stay stable, which keeps
table diffs small), and ``publish`` refuses a build whose strings.json does not extend the
current one. So the newest strings.json serves tables of any retained
version, and ``plan`` fetches it (always full) whenever its version changed.

Publishing writes new full files and diffs first, then the manifest and its
signature (each to a temporary file, then renamed; the signature first, the
manifest last), so a reader never sees a manifest naming files that are not
there. A reader that fetches the new manifest with the old signature (or the
reverse) sees a bad signature and retries. Full files of the previous version
stay one more publish for readers still working from the old manifest; diffs
older than the last ``keep`` versions of a pattern are pruned (``proxy.updates.publish``).

A signature says who made a manifest, not when: an old, genuinely signed source
served again (a replay, by anyone on the path of a plain-HTTP source) would
take an appliance back to old patterns. ``check_timely`` refuses a manifest
older than the high-water mark of what the appliance installed (``newest``:
the publication time, every pattern version and the strings version; kept by
``proxy.updates.store``) and one published further ahead of the clock than the
allowed skew (which would raise the mark past every genuine manifest to come).
``expires`` makes the opposite attack visible: a source frozen at its last
manifest (or an attacker replaying it) leaves an appliance with stale patterns.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from proxy.clock import parse_iso, stamp
from proxy.errors import PatternError, Refused
from proxy.files import read_bounded

# The pattern names are the pattern directory's, defined there once (re-exported here).
from proxy.patterns.pattern import AGENT as AGENT
from proxy.patterns.pattern import AGENT_FILE as AGENT_FILE
from proxy.patterns.pattern import DOMAIN_IP as DOMAIN_IP
from proxy.patterns.pattern import SMART_SCAN as SMART_SCAN
from proxy.patterns.pattern import SUSPICIOUS_URLS as SUSPICIOUS_URLS
from proxy.patterns.pattern import WEB_BLOCKING as WEB_BLOCKING
from proxy.updates.signing import load_public_key

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PUBLISHED = "published"  # the high-water mark's key for the publication time
SIGNATURE = "manifest.json.sig"
STRINGS = "strings"  # the pseudo-pattern of strings.json, in ``have`` and ``Fetch.pattern``
STRINGS_FILE = "strings.json"
REPO_FORMAT = 1
REPO_TYPE = "rampart-update-source"
DEFAULT_KEEP = 24
MAX_KEEP = 1000
MAX_MANIFEST_BYTES = 4 << 20
SIGNATURE_BYTES = 64
MAX_PATTERNS = 16
MAX_FILES = 16
MAX_HISTORY = MAX_KEEP + 1
MAX_FILE_BYTES = 1 << 40

PATTERN_FILES: dict[str, tuple[str, ...]] = {
    SMART_SCAN: ("file-md5.tbl", "file-sha1.tbl", "file-sha256.tbl"),
    WEB_BLOCKING: ("web-blocking.tbl",),
    SUSPICIOUS_URLS: ("suspicious-urls.tbl",),
    DOMAIN_IP: ("domains.tbl", "ip4.tbl", "ip6.tbl"),
    AGENT: (AGENT_FILE,),
}
FULL_ONLY = frozenset({"ip4.tbl", "ip6.tbl"})  # small range tables: no diffs

_VERSION = re.compile(r"\d{10}(?:\d{2}){0,2}")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class FileSpec:
    name: str
    size: int
    sha256: str
    entries: int | None = None


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


class FetchKind(enum.Enum):
    FULL = "full"
    DIFF = "diff"


@dataclass(frozen=True, slots=True)
class Fetch:
    """One file to download. Diffs of one file come in chain order, oldest first."""

    pattern: str  # a pattern name, or STRINGS
    file: str  # the file it produces in a pattern directory, e.g. "file-sha256.tbl"
    kind: FetchKind
    path: str  # relative to the update source, e.g. "full/smart-scan/2024010203/file-sha256.tbl"
    size: int
    sha256: str
    from_version: str | None  # None for a full file
    to_version: str


def full_path(pattern: str, version: str, file: str) -> str:
    if pattern == STRINGS:
        return f"full/strings/{version}/{STRINGS_FILE}"
    return f"full/{pattern}/{version}/{file}"


def diff_path(pattern: str, from_version: str, to_version: str, file: str) -> str:
    return f"diffs/{pattern}/{from_version}-{to_version}/{file}.diff"


# ---------------------------------------------------------------- the manifest


def _bad(what: str) -> PatternError:
    return PatternError(f"{MANIFEST}: {what}")


def _version(value: Any, where: str) -> str:
    if not isinstance(value, str) or _VERSION.fullmatch(value) is None:
        raise _bad(f"{where}: bad version {str(value)[:40]!r}")
    return value


def _count(value: Any, where: str, limit: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise _bad(f"{where}: bad number {str(value)[:40]!r}")
    return value


def _digest(value: Any, where: str) -> str:
    if not isinstance(value, str) or _SHA256_HEX.fullmatch(value) is None:
        raise _bad(f"{where}: bad sha256")
    return value


def _time(value: Any, where: str) -> datetime:
    try:
        return parse_iso(value)
    except ValueError:
        raise _bad(f"bad {where} time {str(value)[:40]!r}") from None


def parse_file_specs(files: Any, where: str, allowed: tuple[str, ...]) -> tuple[FileSpec, ...]:
    """The ``files`` object of a manifest pattern or diff, bounded to the ``allowed`` names."""
    if not isinstance(files, dict) or len(files) > MAX_FILES:
        raise _bad(f"{where}: 'files' is not an object of at most {MAX_FILES} files")
    out = []
    for name, spec in files.items():
        if name not in allowed:
            raise _bad(f"{where}: unexpected file {str(name)[:80]!r}")
        if not isinstance(spec, dict):
            raise _bad(f"{where}: {name}: not an object")
        entries = spec.get("entries")
        out.append(FileSpec(
            name,
            _count(spec.get("size"), f"{where}: {name}: size", MAX_FILE_BYTES),
            _digest(spec.get("sha256"), f"{where}: {name}"),
            None if entries is None else _count(entries, f"{where}: {name}: entries", 1 << 48),
        ))
    return tuple(out)


def _pattern(name: str, raw: Any, keep: int) -> PatternEntry:
    if not isinstance(raw, dict):
        raise _bad(f"pattern {name}: not an object")
    allowed = PATTERN_FILES[name]
    version = _version(raw.get("version"), f"pattern {name}")
    files = parse_file_specs(raw.get("files"), f"pattern {name}", allowed)
    missing = set(allowed) - {f.name for f in files}
    if missing:
        raise _bad(f"pattern {name}: {', '.join(sorted(missing))} not listed")
    history = raw.get("history")
    if not isinstance(history, list) or not 1 <= len(history) <= MAX_HISTORY:
        raise _bad(f"pattern {name}: 'history' is not a list of 1..{MAX_HISTORY} versions")
    hist = tuple(_version(v, f"pattern {name}: history") for v in history)
    if list(hist) != sorted(set(hist)) or hist[-1] != version:
        raise _bad(f"pattern {name}: history is not increasing up to the current version")
    raw_diffs = raw.get("diffs")
    if not isinstance(raw_diffs, list) or len(raw_diffs) > MAX_HISTORY:
        raise _bad(f"pattern {name}: 'diffs' is not a list of at most {MAX_HISTORY}")
    diffs = []
    for i, d in enumerate(raw_diffs):
        where = f"pattern {name}: diff {i}"
        if not isinstance(d, dict):
            raise _bad(f"{where}: not an object")
        a = _version(d.get("from"), where)
        b = _version(d.get("to"), where)
        if not a < b:
            raise _bad(f"{where}: from {a} is not before to {b}")
        diffs.append(Diff(a, b, parse_file_specs(d.get("files"), where, allowed)))
    entries = _count(raw.get("entries", 0), f"pattern {name}: entries", 1 << 48)
    return PatternEntry(name, version, entries, files, hist, tuple(diffs))


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
    if doc.get("type") != REPO_TYPE:
        raise _bad(f"type {str(doc.get('type'))[:40]!r} is not {REPO_TYPE!r}")
    if doc.get("format") != REPO_FORMAT:
        raise _bad(f"format {str(doc.get('format'))[:20]!r} not supported "
                   f"(expected {REPO_FORMAT})")
    published = _time(doc.get("published"), "published")
    expires = None if doc.get("expires") is None else _time(doc.get("expires"), "expires")
    if expires is not None and expires <= published:
        raise _bad(f"expires {stamp(expires)} is not after published {stamp(published)}")
    keep = _count(doc.get("keep"), "keep", MAX_KEEP)
    if keep < 1:
        raise _bad("keep must be at least 1")
    s = doc.get("strings")
    if not isinstance(s, dict):
        raise _bad("'strings' is not an object")
    strings = FileSpec(_version(s.get("version"), "strings"),
                       _count(s.get("size"), "strings: size", MAX_FILE_BYTES),
                       _digest(s.get("sha256"), "strings"))
    pats = doc.get("patterns")
    if not isinstance(pats, dict) or len(pats) > MAX_PATTERNS:
        raise _bad(f"'patterns' is not an object of at most {MAX_PATTERNS}")
    patterns = []
    for name in PATTERN_FILES:
        if name not in pats:
            raise _bad(f"pattern {name!r} missing")
        patterns.append(_pattern(name, pats[name], keep))
    return Manifest(published, keep, strings, tuple(patterns), raw, expires)


def load_manifest(raw_manifest: bytes, signature: bytes,
                  public_key: Ed25519PublicKey | bytes | Path) -> Manifest:
    """Verify the detached Ed25519 signature over the exact bytes, then parse."""
    if not signature:
        raise PatternError(f"{SIGNATURE}: missing (unsigned manifest refused)")
    if len(signature) != SIGNATURE_BYTES:
        raise PatternError(f"{SIGNATURE}: {len(signature)} bytes, expected {SIGNATURE_BYTES}")
    if len(raw_manifest) > MAX_MANIFEST_BYTES:
        raise _bad(f"larger than {MAX_MANIFEST_BYTES} bytes")
    key = load_public_key(public_key)
    try:
        key.verify(signature, raw_manifest)
    except InvalidSignature:
        raise PatternError(f"{SIGNATURE}: bad signature (tampered manifest or wrong key)"
                           ) from None
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


# ---------------------------------------------------------------- planning


def _chain(entry: PatternEntry, file: str, have: str) -> list[Fetch] | None:
    """The diff chain for one file from ``have`` to the current version, or None."""
    if have not in entry.history:
        return None
    by_from = {d.from_version: d for d in entry.diffs}
    steps: list[Fetch] = []
    at = have
    while at != entry.version:
        d = by_from.get(at)
        spec = d.file(file) if d is not None else None
        if d is None or spec is None:
            return None
        steps.append(Fetch(entry.name, file, FetchKind.DIFF,
                           diff_path(entry.name, d.from_version, d.to_version, file),
                           spec.size, spec.sha256, d.from_version, d.to_version))
        at = d.to_version
        if len(steps) > MAX_HISTORY:
            return None
    return steps


def plan(manifest: Manifest, have: Mapping[str, str]) -> list[Fetch]:
    """The smallest set of downloads that brings ``have`` to the manifest's versions.

    ``have`` maps pattern names (and STRINGS) to the version held; a missing
    name means nothing is held. Per file: the diff chain if it exists and is
    smaller in total than the full file, else the full file. Patterns and files
    come in manifest order, diffs of a file in chain order. The result of every
    file must then match ``manifest.pattern(p).file(f)`` (size and SHA-256).
    """
    out: list[Fetch] = []
    if have.get(STRINGS) != manifest.strings_version:
        s = manifest.strings
        out.append(Fetch(STRINGS, STRINGS_FILE, FetchKind.FULL,
                         full_path(STRINGS, s.name, STRINGS_FILE), s.size, s.sha256, None,
                         s.name))
    for entry in manifest.patterns:
        held = have.get(entry.name)
        if held == entry.version:
            continue
        for spec in entry.files:
            full = Fetch(entry.name, spec.name, FetchKind.FULL,
                         full_path(entry.name, entry.version, spec.name), spec.size,
                         spec.sha256, None, entry.version)
            chain = _chain(entry, spec.name, held) if held is not None else None
            if chain is not None and sum(f.size for f in chain) < spec.size:
                out.extend(chain)
            else:
                out.append(full)
    return out


# ---------------------------------------------------------------- files


def verify_file(data: bytes | Path, size: int, sha256: str, what: str = "file") -> None:
    """Check a downloaded file (bytes, or a path) against the manifest's size and SHA-256."""
    if isinstance(data, Path):
        try:
            got = data.stat().st_size
        except OSError as e:
            raise PatternError(f"{what}: cannot read: {e.strerror or e}") from None
        if got != size:
            state = "truncated" if got < size else "too long"
            raise PatternError(f"{what}: {state}: {got} bytes, manifest says {size}")
        with open(data, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    else:
        if len(data) != size:
            state = "truncated" if len(data) < size else "too long"
            raise PatternError(f"{what}: {state}: {len(data)} bytes, manifest says {size}")
        digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise PatternError(f"{what}: SHA-256 mismatch (corrupt or substituted file)")


def apply_diff(file: str, base: Path, diff: bytes, out: Path) -> None:
    """Apply a diff of pattern file ``file`` to ``base``, writing ``out`` atomically."""
    if file == AGENT_FILE:
        from proxy.patterns import agent

        old = read_bounded(Path(base), agent.MAX_FILE_BYTES, error=PatternError, label=file)
        agent.write_agent(Path(out), agent.apply_diff(old, diff))
        return
    if file in FULL_ONLY or not any(file in fs for fs in PATTERN_FILES.values()):
        raise PatternError(f"{file}: no diffs exist for this file")
    from proxy.patterns.table_diff import apply_table_diff

    apply_table_diff(Path(base), diff, Path(out))
