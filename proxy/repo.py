"""The update source: a signed directory of pattern versions, full files and diffs (DESIGN §5).

API (stable; the updater builds on it)::

    load_manifest(raw: bytes, signature: bytes, public_key) -> Manifest
        check the Ed25519 signature over the exact bytes, then parse and bound
        the JSON; PatternError naming what is wrong.
    plan(manifest, have: Mapping[str, str]) -> list[Fetch]
        the smallest path from the versions you have (pattern name -> version,
        and STRINGS -> version) to the manifest's: per file, a diff chain or the
        full file. Empty when everything is current.
    verify_file(data: bytes | Path, size: int, sha256: str, what: str) -> None
    apply_diff(file: str, base: Path, diff: bytes, out: Path) -> None
        apply one downloaded diff of pattern file ``file`` (a table or agent.bin)
        to ``base``, writing ``out`` atomically; PatternError for a diff against
        the wrong base or a corrupt one. Check ``out`` with verify_file after
        the last diff of a chain.
    load_public_key(data: bytes | Path) -> Ed25519PublicKey     (PEM, or raw 32 bytes)
    load_private_key(path: Path) -> Ed25519PrivateKey
    keygen(out: Path) -> Path                                    (writes out and out.pub)
    publish(build_dir, repo_dir, private_key, *, keep=DEFAULT_KEEP, now=None) -> PublishReport
    read_repo(repo_dir, public_key | None) -> Manifest           (signature checked if a key)
    verify_repo(repo_dir, public_key | None) -> list[str]       (problems; empty = good)
    repo_info(repo_dir) -> dict
    make_server(repo_dir, host, port) -> ThreadingHTTPServer     (``rampart pattern serve``)

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
diffs are ``proxy.tables`` diffs; agent diffs are ``proxy.agent`` diffs. The
IP range tables are small and always shipped full: they have no diffs.

manifest.json::

    {"format": 1, "type": "rampart-update-source",
     "published": ISO-8601 UTC, "keep": N,
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
``build_pattern(base=...)`` keeps every earlier threat name and category at
its id and appends new ones (ids then stay stable, which keeps table diffs
small), and ``publish`` refuses a build whose strings.json does not extend the
current one. So the newest strings.json serves tables of any retained
version, and ``plan`` fetches it (always full) whenever its version changed.

Publishing writes new full files and diffs first, then the manifest and its
signature (each to a temporary file, then renamed; the signature first, the
manifest last), so a reader never sees a manifest naming files that are not
there. A reader that fetches the new manifest with the old signature (or the
reverse) sees a bad signature and retries. Full files of the previous version
stay one more publish for readers still working from the old manifest; diffs
older than the last ``keep`` versions of a pattern are pruned.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from proxy.errors import PatternError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
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

SMART_SCAN = "smart-scan"
WEB_BLOCKING = "web-blocking"
SUSPICIOUS_URLS = "suspicious-urls"
DOMAIN_IP = "domain-ip"
AGENT = "agent"
AGENT_FILE = "agent.bin"
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


# ---------------------------------------------------------------- keys


def keygen(out: Path) -> Path:
    """Write a new Ed25519 private key to ``out`` (PEM, mode 0600) and the public key to out.pub."""
    out = Path(out)
    pub = out.with_name(out.name + ".pub")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise PatternError(f"{out.name}: exists; refusing to overwrite a key") from None
    except OSError as e:
        raise PatternError(f"{out.name}: cannot create: {e.strerror or e}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    os.chmod(out, 0o600)  # in case the umask or an ACL changed it
    pub.write_bytes(public_pem)
    logger.info("wrote a new Ed25519 key pair %s, %s", out.name, pub.name)
    return pub


def load_private_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        data = path.read_bytes()[: 1 << 16]
        key = serialization.load_pem_private_key(data, password=None)
    except OSError as e:
        raise PatternError(f"{path.name}: cannot read key: {e.strerror or e}") from None
    except (ValueError, TypeError) as e:
        raise PatternError(f"{path.name}: not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PatternError(f"{path.name}: not an Ed25519 private key")
    return key


def load_public_key(data: bytes | Path | Ed25519PublicKey) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM bytes, raw 32 bytes, or a file holding either."""
    if isinstance(data, Ed25519PublicKey):
        return data
    what = "public key"
    if isinstance(data, Path):
        what = data.name
        try:
            data = data.read_bytes()[: 1 << 16]
        except OSError as e:
            raise PatternError(f"{what}: cannot read: {e.strerror or e}") from None
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise PatternError(f"{what}: not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PatternError(f"{what}: not an Ed25519 public key")
    return key


def sign(raw: bytes, key: Ed25519PrivateKey) -> bytes:
    return key.sign(raw)


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


def _file_specs(files: Any, where: str, allowed: tuple[str, ...]) -> tuple[FileSpec, ...]:
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
    files = _file_specs(raw.get("files"), f"pattern {name}", allowed)
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
        diffs.append(Diff(a, b, _file_specs(d.get("files"), where, allowed)))
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
    try:
        published = datetime.fromisoformat(str(doc.get("published")))
    except ValueError:
        raise _bad(f"bad published time {str(doc.get('published'))[:40]!r}") from None
    if published.tzinfo is None:
        published = published.replace(tzinfo=UTC)
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
    return Manifest(published, keep, strings, tuple(patterns), raw)


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
        from proxy import agent

        size = Path(base).stat().st_size
        if size > agent.MAX_FILE_BYTES:
            raise PatternError(f"{file}: {size} bytes is over the limit")
        agent.write_agent(Path(out), agent.apply_diff(Path(base).read_bytes(), diff))
        return
    if file in FULL_ONLY or not any(file in fs for fs in PATTERN_FILES.values()):
        raise PatternError(f"{file}: no diffs exist for this file")
    from proxy.tables import apply_table_diff

    apply_table_diff(Path(base), diff, Path(out))


# ---------------------------------------------------------------- publishing


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


def _read_json_bounded(path: Path, limit: int) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise PatternError(f"{path.name}: cannot read: {e.strerror or e}") from None
    if len(data) > limit:
        raise PatternError(f"{path.name}: larger than {limit} bytes")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PatternError(f"{path.name}: not JSON: {e}") from None


def _read_signed(repo_dir: Path) -> tuple[bytes, bytes] | None:
    """(manifest bytes, signature bytes) of a repo, or None when it has no manifest yet."""
    m, s = repo_dir / MANIFEST, repo_dir / SIGNATURE
    if not m.exists():
        return None
    try:
        with open(m, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        sig = s.read_bytes()[: SIGNATURE_BYTES + 1] if s.exists() else b""
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


def _copy_atomic(src: Path, dst: Path) -> None:
    import shutil
    import tempfile

    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_atomic(dst: Path, data: bytes) -> None:
    import tempfile

    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _make_diff(file: str, old: Path, new: Path) -> bytes | None:
    """The diff of one pattern file, or None where none is made (layout change, IP tables)."""
    if file in FULL_ONLY:
        return None
    if file == AGENT_FILE:
        from proxy import agent

        return bytes(agent.make_diff(old.read_bytes(), new.read_bytes()))
    from proxy.tables import make_table_diff

    try:
        return make_table_diff(old, new)
    except PatternError as e:
        logger.warning("no diff for %s: %s", file, e.message)
        return None


def _check_strings_extend(old: Path, new: Path) -> None:
    a = _read_json_bounded(old, 256 << 20)
    b = _read_json_bounded(new, 256 << 20)
    for key in ("threats", "categories"):
        la, lb = a.get(key), b.get(key)
        if not isinstance(la, list) or not isinstance(lb, list) or lb[: len(la)] != la:
            raise PatternError(f"{STRINGS_FILE}: the build's {key} do not extend the published "
                               f"ones; build with --base (the previous build) so ids stay stable")


def _build_files(build_dir: Path) -> tuple[str, dict[str, dict[str, Any]], FileSpec]:
    """The build's version, its patterns (name -> {version, entries, files}) and strings."""
    from proxy.pattern import read_manifest

    m = read_manifest(build_dir)
    patterns = m.raw["patterns"]
    if AGENT not in patterns:
        raise PatternError(f"{build_dir.name}: the build has no agent pattern; rebuild it")
    out: dict[str, dict[str, Any]] = {}
    for name, files in PATTERN_FILES.items():
        entry = patterns[name]
        listed = _file_specs(entry.get("files"), f"build pattern {name}", files)
        if {f.name for f in listed} != set(files):
            raise PatternError(f"{build_dir.name}: pattern {name}: files missing")
        for spec in listed:
            verify_file(build_dir / spec.name, spec.size, spec.sha256, spec.name)
        out[name] = {"entries": entry.get("entries", 0), "files": listed}
    s = next(f for f in m.files if f.name == STRINGS_FILE)
    verify_file(build_dir / STRINGS_FILE, s.size, s.sha256, STRINGS_FILE)
    return m.version, out, FileSpec(STRINGS_FILE, s.size, s.sha256)


def _spec_json(spec: FileSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"size": spec.size, "sha256": spec.sha256}
    if spec.entries is not None:
        out["entries"] = spec.entries
    return out


def publish(build_dir: Path, repo_dir: Path, private_key: Ed25519PrivateKey, *,
            keep: int = DEFAULT_KEEP, now: datetime | None = None) -> PublishReport:
    """Add a build to an update source as the new version of every pattern it changes.

    Writes full files and diffs from each pattern's previous version, then the
    signed manifest (last), then prunes what the manifest no longer names
    (keeping the previous full files one more publish). Refuses a build whose
    version is not newer than a changed pattern's, a repo signed with another
    key, and a strings.json that does not extend the published one.
    """
    import fcntl

    build_dir, repo_dir = Path(build_dir), Path(repo_dir)
    if not 1 <= keep <= MAX_KEEP:
        raise PatternError(f"keep must be 1..{MAX_KEEP}, not {keep}")
    version, built, strings = _build_files(build_dir)
    repo_dir.mkdir(parents=True, exist_ok=True)
    with open(repo_dir / ".publish.lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        signed = _read_signed(repo_dir)
        current: Manifest | None = None
        if signed is not None:
            current = load_manifest(signed[0], signed[1], private_key.public_key())
        elif any(p.name != ".publish.lock" for p in repo_dir.iterdir()):
            raise PatternError(f"{repo_dir.name}: not empty and has no {MANIFEST}")

        # strings.json
        if current is not None and current.strings.sha256 == strings.sha256:
            strings_version = current.strings_version
        else:
            if current is not None:
                if not version > current.strings_version:
                    raise PatternError(f"version {version} is not newer than the published "
                                       f"strings {current.strings_version}")
                _check_strings_extend(
                    repo_dir / full_path(STRINGS, current.strings_version, STRINGS_FILE),
                    build_dir / STRINGS_FILE)
            strings_version = version
            _copy_atomic(build_dir / STRINGS_FILE,
                         repo_dir / full_path(STRINGS, version, STRINGS_FILE))

        doc_patterns: dict[str, Any] = {}
        report: list[Published] = []
        for name in PATTERN_FILES:
            specs: tuple[FileSpec, ...] = built[name]["files"]
            old = current.pattern(name) if current is not None else None
            full_bytes = sum(s.size for s in specs)
            if old is not None and {(f.name, f.sha256) for f in old.files} == {
                    (f.name, f.sha256) for f in specs}:
                history = list(old.history)[-keep:]
                diffs = [d for d in old.diffs if d.from_version in history]
                doc_patterns[name] = _pattern_json(old.version, old.entries, old.files,
                                                   history, diffs)
                report.append(Published(name, old.version, False, full_bytes, 0))
                continue
            if old is not None and not version > old.version:
                raise PatternError(f"version {version} is not newer than {name} "
                                   f"{old.version}")
            for spec in specs:
                _copy_atomic(build_dir / spec.name, repo_dir / full_path(name, version, spec.name))
            diff_bytes = 0
            diffs = list(old.diffs) if old is not None else []
            if old is not None:
                made: list[FileSpec] = []
                for spec in specs:
                    base = repo_dir / full_path(name, old.version, spec.name)
                    data = _make_diff(spec.name, base, build_dir / spec.name)
                    if data is None or len(data) >= spec.size:
                        continue
                    _write_atomic(repo_dir / diff_path(name, old.version, version, spec.name),
                                  data)
                    made.append(FileSpec(spec.name, len(data),
                                         hashlib.sha256(data).hexdigest()))
                    diff_bytes += len(data)
                diffs.append(Diff(old.version, version, tuple(made)))
            history = ([*old.history, version] if old is not None else [version])[-keep:]
            diffs = [d for d in diffs if d.from_version in history]
            doc_patterns[name] = _pattern_json(version, int(built[name]["entries"]), specs,
                                               history, diffs)
            report.append(Published(name, version, True, full_bytes, diff_bytes))

        doc = {
            "format": REPO_FORMAT,
            "type": REPO_TYPE,
            "published": (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
            .isoformat().replace("+00:00", "Z"),
            "keep": keep,
            "strings": {"version": strings_version, "size": strings.size,
                        "sha256": strings.sha256},
            "patterns": doc_patterns,
        }
        raw = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        new = parse_manifest(raw)  # never publish what a reader would refuse
        _write_atomic(repo_dir / SIGNATURE, sign(raw, private_key))
        _write_atomic(repo_dir / MANIFEST, raw)
        from proxy.tables import fsync_dir

        fsync_dir(repo_dir)
        pruned = _prune(repo_dir, new, current)
    logger.info("published %s: %s", version, ", ".join(
        f"{p.pattern} {p.version}{'' if p.changed else ' (unchanged)'}" for p in report))
    return PublishReport(tuple(report), strings_version, pruned)


def _pattern_json(version: str, entries: int, files: tuple[FileSpec, ...], history: list[str],
                  diffs: list[Diff]) -> dict[str, Any]:
    return {
        "version": version,
        "entries": entries,
        "files": {f.name: _spec_json(f) for f in files},
        "history": history,
        "diffs": [{"from": d.from_version, "to": d.to_version,
                   "files": {f.name: _spec_json(f) for f in d.files}} for d in diffs],
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
        "published": m.published.isoformat().replace("+00:00", "Z"),
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
        doc = _read_json_bounded(path / MANIFEST, MAX_MANIFEST_BYTES)
    except PatternError:
        return False
    return isinstance(doc, dict) and doc.get("type") == REPO_TYPE


# ---------------------------------------------------------------- serving

MAX_SERVE_CONNECTIONS = 64
_SERVE_PATH = re.compile(r"/(?:[A-Za-z0-9][A-Za-z0-9._-]{0,127}/){0,4}[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def make_server(repo_dir: Path, host: str = "127.0.0.1", port: int = 0) -> Any:
    """A small static HTTP server for an update source (GET and HEAD only).

    Paths are matched against a strict pattern (no ``..``, no dot files, no
    percent escapes, at most five segments) and must resolve inside the repo;
    anything else is 404. At most ``MAX_SERVE_CONNECTIONS`` requests are served
    at once (more get 503). Call ``serve_forever()``; ``server_address`` holds
    the bound port.
    """
    import http.server
    import shutil
    import threading

    root = Path(repo_dir).resolve()
    slots = threading.BoundedSemaphore(MAX_SERVE_CONNECTIONS)

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "rampart-pattern-serve"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        timeout = 30

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("serve: %s", format % args)

        def _file(self) -> Path | None:
            path = self.path.split("?", 1)[0]
            if _SERVE_PATH.fullmatch(path) is None:
                return None
            target = (root / path.lstrip("/")).resolve()
            if not target.is_relative_to(root) or not target.is_file():
                return None
            return target

        def _answer(self, body: bool) -> None:
            if not slots.acquire(blocking=False):
                self.send_error(503, "busy")
                return
            try:
                target = self._file()
                if target is None:
                    self.send_error(404)
                    return
                with open(target, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json" if target.suffix ==
                                     ".json" else "application/octet-stream")
                    self.send_header("Content-Length", str(size))
                    if target.name in (MANIFEST, SIGNATURE):
                        self.send_header("Cache-Control", "no-cache")
                    self.end_headers()
                    if body:
                        shutil.copyfileobj(f, self.wfile, 1 << 20)
            finally:
                slots.release()

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
