"""Publishing builds into an update source, and reading and checking one
(docs/architecture.md, “Patterns and updates”).

``publish`` adds a build (``proxy.patterns.build``) to an update source directory as
the new version of every pattern it changes, with diffs from each pattern's
previous version (``proxy.patterns.table_diff``, ``proxy.patterns.agent``) and a manifest
signed with ``proxy.updates.signing``; the layout and manifest format are
``proxy.updates.repo``'s. ``read_repo``, ``verify_repo``, ``repo_info`` and
``is_repo`` read one back (``rampart pattern verify`` and ``info``).

Publishing writes new full files and diffs first, then the manifest and its
signature (each to a temporary file, then renamed; the signature first, the
manifest last), so a reader never sees a manifest naming files that are not
there. Full files of the previous version stay one more publish for readers
still working from the old manifest; diffs older than the last ``keep``
versions of a pattern are pruned. Publishes into one directory are serialised
by a lock file.

Every manifest is signed with an ``expires`` time (``valid_for`` after it is
published, a week by default): appliances report their patterns stale once
their source's manifest has expired, so a frozen source, or an attacker
replaying its last manifest, is noticed. A publisher whose patterns change
less often than that publishes the same build again to renew it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from proxy.clock import iso, to_the_second
from proxy.errors import PatternError
from proxy.files import copy_atomic, locked, read_bounded, read_json, write_atomic
from proxy.patterns.layout import (
    AGENT,
    AGENT_FILE,
    DIFFS,
    ENTRIES,
    EXPIRES,
    FILES,
    FORMAT,
    FROM,
    FULL_ONLY,
    HISTORY,
    KEEP,
    MANIFEST,
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
    FileSpec,
    file_specs_json,
    read_file_specs,
)
from proxy.updates.repo import diff_path, full_path, verify_file
from proxy.updates.signing import sign
from proxy.updates.source import (
    DEFAULT_KEEP,
    MAX_KEEP,
    MAX_MANIFEST_BYTES,
    REPO_FORMAT,
    REPO_TYPE,
    SIGNATURE_BYTES,
    Diff,
    Manifest,
    PatternEntry,
    load_manifest,
    parse_manifest,
)

logger = logging.getLogger(__name__)

DEFAULT_VALID_FOR = timedelta(days=7)
MAX_VALID_FOR = timedelta(days=366)


@dataclass(frozen=True, slots=True)
class Published:
    pattern: str
    version: str
    changed: bool
    full_bytes: int
    diff_bytes: int  # 0 when unchanged or new


@dataclass(frozen=True, slots=True)
class PublishReport:
    patterns: tuple[Published, ...]
    strings_version: str
    pruned: int  # directories removed


def _read_json(path: Path, limit: int) -> Any:
    try:
        return read_json(path, limit, error=PatternError, label=path.name)
    except OSError as e:
        raise PatternError(f"{path.name}: cannot read: {e.strerror or e}") from None


def _read_signed(repo_dir: Path) -> tuple[bytes, bytes] | None:
    """(manifest bytes, signature bytes) of a repo, or None when it has no manifest yet."""
    m, s = repo_dir / MANIFEST, repo_dir / SIGNATURE
    if not m.exists():
        return None
    try:
        raw = read_bounded(m, MAX_MANIFEST_BYTES, error=PatternError, label=MANIFEST)
        sig = read_bounded(s, SIGNATURE_BYTES + 1, error=PatternError, label=SIGNATURE) if s.exists() else b""
    except OSError as e:
        raise PatternError(f"{MANIFEST}: cannot read: {e.strerror or e}") from None
    return raw, sig


def read_repo(repo_dir: Path, public_key: Ed25519PublicKey | bytes | Path | None) -> Manifest:
    """A repo's manifest; its signature is checked when a key is given."""
    signed = _read_signed(Path(repo_dir))
    if signed is None:
        raise PatternError(f"{MANIFEST}: not found: not an update source")
    raw, sig = signed
    return parse_manifest(raw) if public_key is None else load_manifest(raw, sig, public_key)


def _make_diff(file: str, old: Path, new: Path) -> bytes | None:
    """The diff of one pattern file, or None where none is made (layout change, IP tables)."""
    if file in FULL_ONLY:
        return None
    if file == AGENT_FILE:
        from proxy.patterns import agent

        return bytes(agent.make_diff(old.read_bytes(), new.read_bytes()))
    from proxy.patterns.table_diff import make_table_diff

    try:
        return make_table_diff(old, new)
    except PatternError as e:
        logger.warning("no diff for %s: %s", file, e.message)
        return None


def _check_strings_extend(old: Path, new: Path) -> None:
    a = _read_json(old, 256 << 20)
    b = _read_json(new, 256 << 20)
    for key in ("threats", "categories"):
        la, lb = a.get(key), b.get(key)
        if not isinstance(la, list) or not isinstance(lb, list) or lb[: len(la)] != la:
            raise PatternError(f"{STRINGS_FILE}: the build's {key} do not extend the published "
                               f"ones; build with --base (the previous build) so ids stay stable")


def _build_files(build_dir: Path) -> tuple[str, dict[str, dict[str, Any]], FileSpec]:
    """The build's version, its patterns (name -> {version, entries, files}) and strings."""
    from proxy.patterns.pattern import read_manifest

    m = read_manifest(build_dir)
    patterns = m.raw[PATTERNS]
    if AGENT not in patterns:
        raise PatternError(f"{build_dir.name}: the build has no agent pattern; rebuild it")
    out: dict[str, dict[str, Any]] = {}
    for name, files in PATTERN_FILES.items():
        entry = patterns[name]
        listed = read_file_specs(entry.get(FILES), f"build pattern {name}", files)
        if {f.name for f in listed} != set(files):
            raise PatternError(f"{build_dir.name}: pattern {name}: files missing")
        for spec in listed:
            verify_file(build_dir / spec.name, spec.size, spec.sha256, spec.name)
        out[name] = {ENTRIES: entry.get(ENTRIES, 0), FILES: listed}
    s = next(f for f in m.files if f.name == STRINGS_FILE)
    verify_file(build_dir / STRINGS_FILE, s.size, s.sha256, STRINGS_FILE)
    return m.version, out, FileSpec(STRINGS_FILE, s.size, s.sha256)


def publish(build_dir: Path, repo_dir: Path, private_key: Ed25519PrivateKey, *,
            keep: int = DEFAULT_KEEP, now: datetime | None = None,
            valid_for: timedelta = DEFAULT_VALID_FOR) -> PublishReport:
    """Add a build to an update source as the new version of every pattern it changes.

    Writes full files and diffs from each pattern's previous version, then the
    signed manifest (last), then prunes what the manifest no longer names
    (keeping the previous full files one more publish). Refuses a build whose
    version is not newer than a changed pattern's, a repo signed with another
    key, and a strings.json that does not extend the published one. The manifest
    expires ``valid_for`` after ``now``.
    """
    build_dir, repo_dir = Path(build_dir), Path(repo_dir)
    if not 1 <= keep <= MAX_KEEP:
        raise PatternError(f"keep must be 1..{MAX_KEEP}, not {keep}")
    if not timedelta(minutes=1) <= valid_for <= MAX_VALID_FOR:
        raise PatternError(f"valid_for must be 1 minute..{MAX_VALID_FOR.days} days, not {valid_for}")
    published = to_the_second(now)
    version, built, strings = _build_files(build_dir)
    repo_dir.mkdir(parents=True, exist_ok=True)
    with locked(repo_dir / ".publish.lock"):
        signed = _read_signed(repo_dir)
        current: Manifest | None = None
        if signed is not None:
            current = load_manifest(signed[0], signed[1], private_key.public_key())
        elif any(p.name != ".publish.lock" for p in repo_dir.iterdir()):
            raise PatternError(f"{repo_dir.name}: not empty and has no {MANIFEST}")
        strings_version = _publish_strings(build_dir, repo_dir, version, strings, current)
        doc_patterns: dict[str, Any] = {}
        report: list[Published] = []
        for name in PATTERN_FILES:
            old = current.pattern(name) if current is not None else None
            doc_patterns[name], done = _publish_pattern(
                build_dir, repo_dir, name, version, built[name], old, keep)
            report.append(done)
        doc = {
            FORMAT: REPO_FORMAT,
            TYPE: REPO_TYPE,
            PUBLISHED: iso(published),
            EXPIRES: iso(published + valid_for),
            KEEP: keep,
            STRINGS: {VERSION: strings_version, SIZE: strings.size, SHA256: strings.sha256},
            PATTERNS: doc_patterns,
        }
        raw = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        new = parse_manifest(raw)  # never publish what a reader would refuse
        write_atomic(repo_dir / SIGNATURE, sign(raw, private_key))
        write_atomic(repo_dir / MANIFEST, raw)
        pruned = _prune(repo_dir, new, current)
    logger.info("published %s: %s", version, ", ".join(
        f"{p.pattern} {p.version}{'' if p.changed else ' (unchanged)'}" for p in report))
    return PublishReport(tuple(report), strings_version, pruned)


def _publish_strings(build_dir: Path, repo_dir: Path, version: str, strings: FileSpec,
                     current: Manifest | None) -> str:
    """The strings version the new manifest names: the published one if the build's
    strings.json is the same, else ``version`` (copied in, once checked to extend it)."""
    if current is not None and current.strings.sha256 == strings.sha256:
        return current.strings_version
    if current is not None:
        if not version > current.strings_version:
            raise PatternError(f"version {version} is not newer than the published "
                               f"strings {current.strings_version}")
        _check_strings_extend(
            repo_dir / full_path(STRINGS, current.strings_version, STRINGS_FILE),
            build_dir / STRINGS_FILE)
    copy_atomic(build_dir / STRINGS_FILE, repo_dir / full_path(STRINGS, version, STRINGS_FILE))
    return version


def _publish_pattern(build_dir: Path, repo_dir: Path, name: str, version: str,
                     built: dict[str, Any], old: PatternEntry | None, keep: int
                     ) -> tuple[dict[str, Any], Published]:
    """One pattern's manifest entry, and what publishing it did: unchanged files keep the
    old version; changed ones are copied in at ``version`` with a diff from the old one."""
    specs: tuple[FileSpec, ...] = built[FILES]
    full_bytes = sum(s.size for s in specs)
    if old is not None and {(f.name, f.sha256) for f in old.files} == {
            (f.name, f.sha256) for f in specs}:
        history = list(old.history)[-keep:]
        diffs = [d for d in old.diffs if d.from_version in history]
        return (_pattern_json(old.version, old.entries, old.files, history, diffs),
                Published(name, old.version, False, full_bytes, 0))
    if old is not None and not version > old.version:
        raise PatternError(f"version {version} is not newer than {name} {old.version}")
    for spec in specs:
        copy_atomic(build_dir / spec.name, repo_dir / full_path(name, version, spec.name))
    diff_bytes = 0
    diffs = list(old.diffs) if old is not None else []
    if old is not None:
        made: list[FileSpec] = []
        for spec in specs:
            base = repo_dir / full_path(name, old.version, spec.name)
            data = _make_diff(spec.name, base, build_dir / spec.name)
            if data is None or len(data) >= spec.size:
                continue
            write_atomic(repo_dir / diff_path(name, old.version, version, spec.name), data)
            made.append(FileSpec(spec.name, len(data), hashlib.sha256(data).hexdigest()))
            diff_bytes += len(data)
        diffs.append(Diff(old.version, version, tuple(made)))
    history = ([*old.history, version] if old is not None else [version])[-keep:]
    diffs = [d for d in diffs if d.from_version in history]
    return (_pattern_json(version, int(built[ENTRIES]), specs, history, diffs),
            Published(name, version, True, full_bytes, diff_bytes))


def _pattern_json(version: str, entries: int, files: tuple[FileSpec, ...], history: list[str],
                  diffs: list[Diff]) -> dict[str, Any]:
    return {
        VERSION: version,
        ENTRIES: entries,
        FILES: file_specs_json(files),
        HISTORY: history,
        DIFFS: [{FROM: d.from_version, TO: d.to_version, FILES: file_specs_json(d.files)}
                for d in diffs],
    }


def _prune(repo_dir: Path, new: Manifest, old: Manifest | None) -> int:
    """Remove full-file and diff directories the new manifest does not name.

    The old manifest's current full files stay one more publish, for readers
    still working from it.
    """
    import shutil

    wanted_full: set[tuple[str, str]] = {(STRINGS, new.strings_version)}
    wanted_diffs: set[tuple[str, str]] = set()
    for p in new.patterns:
        wanted_full.add((p.name, p.version))
        wanted_diffs.update((p.name, f"{d.from_version}-{d.to_version}") for d in p.diffs)
    if old is not None:
        wanted_full.add((STRINGS, old.strings_version))
        wanted_full.update((p.name, p.version) for p in old.patterns)
    removed = 0
    for top, wanted in (("full", wanted_full), ("diffs", wanted_diffs)):
        root = repo_dir / top
        if not root.is_dir():
            continue
        for pdir in root.iterdir():
            if not pdir.is_dir():
                continue
            for vdir in pdir.iterdir():
                if vdir.is_dir() and (pdir.name, vdir.name) not in wanted:
                    shutil.rmtree(vdir, ignore_errors=True)
                    removed += 1
    return removed


# ---------------------------------------------------------------- checking


def verify_repo(repo_dir: Path, public_key: Ed25519PublicKey | bytes | Path | None) -> list[str]:
    """Problems with an update source: signature (when a key is given), every named file's
    size and SHA-256. An empty list means it is good."""
    repo_dir = Path(repo_dir)
    m = read_repo(repo_dir, public_key)
    problems: list[str] = []

    def check(rel: str, size: int, sha: str) -> None:
        try:
            verify_file(repo_dir / rel, size, sha, rel)
        except PatternError as e:
            problems.append(e.message)

    check(full_path(STRINGS, m.strings_version, STRINGS_FILE), m.strings.size, m.strings.sha256)
    for p in m.patterns:
        for f in p.files:
            check(full_path(p.name, p.version, f.name), f.size, f.sha256)
        for d in p.diffs:
            for f in d.files:
                check(diff_path(p.name, d.from_version, d.to_version, f.name), f.size, f.sha256)
    return problems


def repo_info(repo_dir: Path) -> dict[str, Any]:
    """What an update source holds (the signature is not checked: see ``verify_repo``)."""
    m = read_repo(Path(repo_dir), None)
    return {
        "type": REPO_TYPE,
        "published": iso(m.published),
        "expires": iso(m.expires) if m.expires is not None else None,
        "keep": m.keep,
        "strings": m.strings_version,
        "patterns": {
            p.name: {
                "version": p.version,
                "entries": p.entries,
                "size": sum(f.size for f in p.files),
                "history": list(p.history),
                "diffs": len(p.diffs),
                "diff_size": sum(f.size for d in p.diffs for f in d.files),
            }
            for p in m.patterns
        },
    }


def is_repo(path: Path) -> bool:
    """Whether ``path`` looks like an update source (rather than a build directory)."""
    path = Path(path)
    if (path / SIGNATURE).exists():
        return True
    try:
        doc = _read_json(path / MANIFEST, MAX_MANIFEST_BYTES)
    except PatternError:
        return False
    return isinstance(doc, dict) and doc.get(TYPE) == REPO_TYPE
