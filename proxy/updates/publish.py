"""Publishing builds into an update source (docs/architecture.md, “Patterns and updates”).

``publish`` adds a build (``proxy.patterns.build``) to an update source directory as
the new version of every pattern it changes, with diffs from each pattern's
previous version (``proxy.patterns.table_diff``, ``proxy.patterns.agent``) and a manifest
signed with ``proxy.updates.signing``; the layout and manifest format are
``proxy.updates.repo``'s; ``proxy.updates.repo_dir`` reads one back.

A build is the whole pattern: what it lacks is removed. ``publish`` counts, per
pattern, the entries it adds and removes against the published version
(``proxy.updates.changes``) and, given ``max_shrink``, refuses to remove more than
that share of a pattern's entries before it writes anything.

A publisher following build-then-publish needs neither ``--version`` nor ``--base``
to publish again. A build whose version was defaulted (its hour) gets the next
free version when the update source has that hour or a later version already
(``layout.next_version``: the minute, then the second); a version given to the
build is kept, and refused if it is not newer. A build made without ``--base``
numbers its names afresh: they are renumbered onto the published strings.json
(``proxy.patterns.restring``), which only ever grows, because appliances keep
tables of patterns not due yet and read them with the newest strings.json.

Publishing writes new full files and diffs first, then the manifest and its
signature (each to a temporary file, then renamed; the signature first, the
manifest last), so a reader never sees a manifest naming files that are not
there. Full files of the previous version stay one more publish for readers
still working from the old manifest; diffs older than the last ``keep``
versions of a pattern are pruned. Publishes into one directory are serialised
by a lock file (private; the web servers that host the source skip dot files).

What is published is public by design: files are 0644 and folders 0755 whatever
the umask, so a web server running as another user can serve them (folders and
files an older release made private are opened up too).

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
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.clock import iso, to_the_second
from proxy.errors import ConfigError, PatternError
from proxy.files import (
    PUBLIC_FILE,
    copy_atomic,
    dir_mode_for,
    locked,
    make_dirs,
    write_atomic,
)
from proxy.patterns.layout import (
    AGENT,
    AGENT_FILE,
    AUTO_VERSION,
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
    PATTERN_TABLES,
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
    next_version,
    read_file_specs,
)
from proxy.updates.changes import Change, check_shrink, pattern_change
from proxy.updates.repo import diff_path, full_path, verify_file
from proxy.updates.repo_dir import read_signed
from proxy.updates.signing import sign
from proxy.updates.source import (
    DEFAULT_KEEP,
    MAX_KEEP,
    REPO_FORMAT,
    REPO_TYPE,
    Diff,
    Manifest,
    PatternEntry,
    load_manifest,
    parse_manifest,
)

logger = logging.getLogger(__name__)

DEFAULT_VALID_FOR = timedelta(days=7)
MAX_VALID_FOR = timedelta(days=366)
DEFAULT_MAX_SHRINK = 50.0  # percent of a pattern's entries one publish may remove (the CLI's)
PUBLIC_DIR = dir_mode_for(PUBLIC_FILE)  # 0755
LOCK = ".publish.lock"
_TEMP_PREFIX, _TEMP_SUFFIX = ".publish-", ".tmp"  # renumbered tables, removed after a publish


@dataclass(frozen=True, slots=True)
class Published:
    pattern: str
    version: str
    changed: bool
    full_bytes: int
    diff_bytes: int  # 0 when unchanged or new
    change: Change | None = None  # entries added and removed against the published version


@dataclass(frozen=True, slots=True)
class PublishReport:
    patterns: tuple[Published, ...]
    strings_version: str
    pruned: int  # directories removed
    version: str = ""  # what changed patterns were published as
    build_version: str = ""  # the build's own (another when it was defaulted and taken)
    renumbered: bool = False  # the build's names were renumbered onto the published ones


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


# ---------------------------------------------------------------- the build


@dataclass(frozen=True, slots=True)
class _Build:
    """A checked build directory, and where each of its files is read from."""

    dir: Path
    version: str
    auto_version: bool  # defaulted by `pattern build`: publish may give the next free one
    entries: dict[str, int]  # per pattern
    specs: dict[str, tuple[FileSpec, ...]]  # per pattern
    strings: FileSpec
    paths: dict[str, Path] = field(default_factory=dict)  # file -> where to copy it from

    def files_of(self, pattern: str) -> dict[str, Path]:
        return {s.name: self.paths[s.name] for s in self.specs[pattern]}


def _read_build(build_dir: Path) -> _Build:
    """The build's version, its patterns' entries and files, checked against its manifest."""
    from proxy.patterns.pattern import read_manifest

    m = read_manifest(build_dir)
    patterns = m.raw[PATTERNS]
    if AGENT not in patterns:
        raise PatternError(f"{build_dir.name}: the build has no agent pattern; rebuild it")
    entries: dict[str, int] = {}
    specs: dict[str, tuple[FileSpec, ...]] = {}
    for name, files in PATTERN_FILES.items():
        entry = patterns[name]
        listed = read_file_specs(entry.get(FILES), f"build pattern {name}", files)
        if {f.name for f in listed} != set(files):
            raise PatternError(f"{build_dir.name}: pattern {name}: files missing")
        for spec in listed:
            verify_file(build_dir / spec.name, spec.size, spec.sha256, spec.name)
        entries[name], specs[name] = int(entry.get(ENTRIES, 0)), listed
    s = next(f for f in m.files if f.name == STRINGS_FILE)
    verify_file(build_dir / STRINGS_FILE, s.size, s.sha256, STRINGS_FILE)
    paths = {f.name: build_dir / f.name for fs in specs.values() for f in fs}
    paths[STRINGS_FILE] = build_dir / STRINGS_FILE
    return _Build(build_dir, m.version, m.raw.get(AUTO_VERSION) is True, entries, specs,
                  FileSpec(STRINGS_FILE, s.size, s.sha256), paths)


def _restrung(build: _Build, repo_dir: Path, current: Manifest, temp: Path
              ) -> tuple[_Build, bool, bool]:
    """The build with its names on the published strings.json's ids (tables rewritten into
    ``temp`` where they differ), whether they were renumbered, and whether its strings.json
    adds names (else the published one stays)."""
    from proxy.patterns.restring import Strings, merge, restring

    published = Strings.load(repo_dir / full_path(STRINGS, current.strings_version, STRINGS_FILE))
    merged = merge(published, Strings.load(build.dir / STRINGS_FILE))
    grows = merged.strings != published
    if not merged.renumbers:
        return build, False, grows
    paths = dict(build.paths)
    for file in restring(build.dir, merged, temp):
        paths[file] = temp / file
    paths[STRINGS_FILE] = temp / STRINGS_FILE
    specs = {name: tuple(FileSpec.of(paths[f.name], f.entries) for f in fs) if name in
             PATTERN_TABLES else fs for name, fs in build.specs.items()}
    return (_Build(build.dir, build.version, build.auto_version, build.entries, specs,
                   FileSpec.of(temp / STRINGS_FILE), paths), True, grows)


# ---------------------------------------------------------------- versions


def _same_files(old: PatternEntry | None, specs: tuple[FileSpec, ...]) -> bool:
    return old is not None and {(f.name, f.sha256) for f in old.files} == {
        (f.name, f.sha256) for f in specs}


def _latest(current: Manifest) -> str:
    """The newest version an update source names (strings, every pattern and its history)."""
    names = [current.strings_version]
    for p in current.patterns:
        names += [p.version, *p.history]
    return max(names)


def _version(build: _Build, current: Manifest | None, strings_grow: bool,
             now: datetime) -> str:
    """The version changed patterns (and a grown strings.json) are published as."""
    if current is None:
        return build.version
    if build.auto_version:
        latest = _latest(current)
        return build.version if build.version > latest else next_version(latest, now)
    older = [(name, old.version) for name in PATTERN_FILES
             if (old := current.pattern(name)) is not None
             and not _same_files(old, build.specs[name]) and not build.version > old.version]
    if strings_grow and not build.version > current.strings_version:
        older.append((STRINGS, current.strings_version))
    if older:
        name, held = older[0]
        raise ConfigError(f"version {build.version} (given to `rampart pattern build "
                          f"--version`) is not newer than the published {name} {held}: build "
                          "again without --version (publish then takes the next free version) "
                          "or with a newer one")
    return build.version


# ---------------------------------------------------------------- publishing


def _current(repo_dir: Path, private_key: Ed25519PrivateKey) -> Manifest | None:
    """The update source's manifest (checked with the key's public half), None if new."""
    signed = read_signed(repo_dir)
    if signed is not None:
        return load_manifest(signed[0], signed[1], private_key.public_key())
    if any(not p.name.startswith(".publish") for p in repo_dir.iterdir()):
        raise ConfigError(f"{repo_dir} is not empty and has no {MANIFEST}: not an update source; "
                          "give an empty or new --repo")
    return None


def _changes(build: _Build, repo_dir: Path, current: Manifest | None) -> dict[str, Change]:
    out = {}
    for name in PATTERN_FILES:
        old = current.pattern(name) if current is not None else None
        old_dir = repo_dir / full_path(name, old.version, "") if old is not None else None
        out[name] = pattern_change(name, old_dir, build.paths, PATTERN_FILES[name],
                                   old.entries if old is not None else 0, build.entries[name])
    return out


def publish(build_dir: Path, repo_dir: Path, private_key: Ed25519PrivateKey, *,
            keep: int = DEFAULT_KEEP, now: datetime | None = None,
            valid_for: timedelta = DEFAULT_VALID_FOR,
            max_shrink: float | None = None) -> PublishReport:
    """Add a build to an update source as the new version of every pattern it changes.

    Writes full files and diffs from each pattern's previous version, then the
    signed manifest (last), then prunes what the manifest no longer names
    (keeping the previous full files one more publish). Refuses, before writing
    anything, a repo signed with another key, a build given a version that is not
    newer than a changed pattern's, and (with ``max_shrink``, a percentage) a build
    removing more than that share of a pattern's published entries. The manifest
    expires ``valid_for`` after ``now``.
    """
    build_dir, repo_dir = Path(build_dir), Path(repo_dir)
    if not 1 <= keep <= MAX_KEEP:
        raise ConfigError(f"keep must be 1..{MAX_KEEP}, not {keep}")
    if not timedelta(minutes=1) <= valid_for <= MAX_VALID_FOR:
        raise ConfigError(f"valid_for must be 1 minute..{MAX_VALID_FOR.days} days, not {valid_for}")
    published = to_the_second(now)
    build = _read_build(build_dir)
    make_dirs(repo_dir, PUBLIC_DIR)
    with locked(repo_dir / LOCK):
        current = _current(repo_dir, private_key)
        _remove_temps(repo_dir)
        changes = _changes(build, repo_dir, current)
        if max_shrink is not None:
            check_shrink(list(changes.values()), max_shrink, str(build_dir))
        temp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=repo_dir))
        try:
            return _publish_locked(build, repo_dir, private_key, current, changes, temp,
                                   keep=keep, published=published, valid_for=valid_for)
        finally:
            shutil.rmtree(temp, ignore_errors=True)


def _publish_locked(build: _Build, repo_dir: Path, private_key: Ed25519PrivateKey,
                    current: Manifest | None, changes: dict[str, Change], temp: Path, *,
                    keep: int, published: datetime, valid_for: timedelta) -> PublishReport:
    renumbered, grows = False, True
    if current is not None:
        build, renumbered, grows = _restrung(build, repo_dir, current, temp)
    version = _version(build, current, grows, published)
    strings_version = _publish_strings(build, repo_dir, version, current, grows)
    strings = current.strings if current is not None and not grows else build.strings
    doc_patterns: dict[str, Any] = {}
    report: list[Published] = []
    for name in PATTERN_FILES:
        old = current.pattern(name) if current is not None else None
        doc_patterns[name], done = _publish_pattern(build, repo_dir, name, version, old, keep,
                                                    changes[name])
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
    write_atomic(repo_dir / SIGNATURE, sign(raw, private_key), mode=PUBLIC_FILE)
    write_atomic(repo_dir / MANIFEST, raw, mode=PUBLIC_FILE)
    pruned = _prune(repo_dir, new, current)
    _open_up(repo_dir)
    logger.info("published %s as %s: %s", build.dir.name, version, ", ".join(
        f"{p.pattern} {p.version}{'' if p.changed else ' (unchanged)'}" for p in report))
    return PublishReport(tuple(report), strings_version, pruned, version, build.version,
                         renumbered)


def _publish_strings(build: _Build, repo_dir: Path, version: str, current: Manifest | None,
                     grows: bool) -> str:
    """The strings version the new manifest names: the published one unless the build adds
    names, else ``version`` (copied in)."""
    if current is not None and not grows:
        return current.strings_version
    copy_atomic(build.paths[STRINGS_FILE], repo_dir / full_path(STRINGS, version, STRINGS_FILE),
                mode=PUBLIC_FILE)
    return version


def _publish_pattern(build: _Build, repo_dir: Path, name: str, version: str,
                     old: PatternEntry | None, keep: int, change: Change
                     ) -> tuple[dict[str, Any], Published]:
    """One pattern's manifest entry, and what publishing it did: unchanged files keep the
    old version; changed ones are copied in at ``version`` with a diff from the old one."""
    specs = build.specs[name]
    files = build.files_of(name)
    full_bytes = sum(s.size for s in specs)
    if old is not None and _same_files(old, specs):
        history = list(old.history)[-keep:]
        diffs = [d for d in old.diffs if d.from_version in history]
        return (_pattern_json(old.version, old.entries, old.files, history, diffs),
                Published(name, old.version, False, full_bytes, 0, change))
    for spec in specs:
        copy_atomic(files[spec.name], repo_dir / full_path(name, version, spec.name),
                    mode=PUBLIC_FILE)
    diff_bytes = 0
    diffs = list(old.diffs) if old is not None else []
    if old is not None:
        made: list[FileSpec] = []
        for spec in specs:
            base = repo_dir / full_path(name, old.version, spec.name)
            data = _make_diff(spec.name, base, files[spec.name])
            if data is None or len(data) >= spec.size:
                continue
            write_atomic(repo_dir / diff_path(name, old.version, version, spec.name), data,
                         mode=PUBLIC_FILE)
            made.append(FileSpec(spec.name, len(data), hashlib.sha256(data).hexdigest()))
            diff_bytes += len(data)
        diffs.append(Diff(old.version, version, tuple(made)))
    history = ([*old.history, version] if old is not None else [version])[-keep:]
    diffs = [d for d in diffs if d.from_version in history]
    return (_pattern_json(version, build.entries[name], specs, history, diffs),
            Published(name, version, True, full_bytes, diff_bytes, change))


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


def _remove_temps(repo_dir: Path) -> None:
    """Remove the temporary folders of publishes that stopped half-way (under the lock)."""
    for p in repo_dir.iterdir():
        if p.name.startswith(_TEMP_PREFIX) and p.name.endswith(_TEMP_SUFFIX) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _open_up(repo_dir: Path) -> None:
    """Make every published folder 0755 and file 0644 (what an older release, or a copy by
    hand, left private), except the lock and temporary folders."""
    for top, dirs, files in os.walk(repo_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name, mode in [(d, PUBLIC_DIR) for d in dirs] + [
                (f, PUBLIC_FILE) for f in files if not f.startswith(".")]:
            _chmod(Path(top) / name, mode)
    _chmod(repo_dir, PUBLIC_DIR)


def _chmod(path: Path, mode: int) -> None:
    try:
        info = path.lstat()
        if not stat.S_ISLNK(info.st_mode) and stat.S_IMODE(info.st_mode) != mode:
            os.chmod(path, mode)
    except OSError as e:
        logger.warning("%s: cannot make it public (mode %04o): %s", path, mode, e.strerror or e)


def _prune(repo_dir: Path, new: Manifest, old: Manifest | None) -> int:
    """Remove full-file and diff directories the new manifest does not name.

    The old manifest's current full files stay one more publish, for readers
    still working from it.
    """
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
