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
                               now=None, valid_for=DEFAULT_VALID_FOR,
                               max_shrink=None) -> PublishReport
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
table diffs small), and ``publish`` renumbers any other build's names onto the
current strings.json (``proxy.patterns.restring``), appending the new ones. So the
newest strings.json serves tables of any retained version, and ``plan`` fetches it
(always full) whenever its version changed.

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
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from proxy.errors import PatternError
from proxy.files import read_bounded

# The vocabulary (``proxy.patterns.layout``) and the manifest (``proxy.updates.source``),
# re-exported: this module is the update source's API.
from proxy.patterns.layout import AGENT as AGENT
from proxy.patterns.layout import AGENT_FILE as AGENT_FILE
from proxy.patterns.layout import DOMAIN_IP as DOMAIN_IP
from proxy.patterns.layout import FULL_ONLY as FULL_ONLY
from proxy.patterns.layout import MANIFEST as MANIFEST
from proxy.patterns.layout import PATTERN_FILES as PATTERN_FILES
from proxy.patterns.layout import PUBLISHED as PUBLISHED
from proxy.patterns.layout import SIGNATURE as SIGNATURE
from proxy.patterns.layout import SMART_SCAN as SMART_SCAN
from proxy.patterns.layout import STRINGS as STRINGS
from proxy.patterns.layout import STRINGS_FILE as STRINGS_FILE
from proxy.patterns.layout import SUSPICIOUS_URLS as SUSPICIOUS_URLS
from proxy.patterns.layout import WEB_BLOCKING as WEB_BLOCKING
from proxy.patterns.layout import FileSpec as FileSpec
from proxy.updates.source import DEFAULT_KEEP as DEFAULT_KEEP
from proxy.updates.source import MAX_HISTORY as MAX_HISTORY
from proxy.updates.source import MAX_KEEP as MAX_KEEP
from proxy.updates.source import MAX_MANIFEST_BYTES as MAX_MANIFEST_BYTES
from proxy.updates.source import REPO_FORMAT as REPO_FORMAT
from proxy.updates.source import REPO_TYPE as REPO_TYPE
from proxy.updates.source import SIGNATURE_BYTES as SIGNATURE_BYTES
from proxy.updates.source import Diff as Diff
from proxy.updates.source import Manifest as Manifest
from proxy.updates.source import PatternEntry as PatternEntry
from proxy.updates.source import check_timely as check_timely
from proxy.updates.source import load_manifest as load_manifest
from proxy.updates.source import newest as newest
from proxy.updates.source import parse_manifest as parse_manifest

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- fetches


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
    """Check a downloaded file (bytes, or a path) against the manifest's size and SHA-256.

    PatternError reasons: ``truncated`` (a size other than the manifest's), ``digest_mismatch``.
    """
    if isinstance(data, Path):
        try:
            got = data.stat().st_size
        except OSError as e:
            raise PatternError(f"{what}: cannot read: {e.strerror or e}") from None
    else:
        got = len(data)
    if got != size:
        state = "truncated" if got < size else "too long"
        raise PatternError(f"{what}: {state}: {got} bytes, manifest says {size}", reason="truncated")
    if isinstance(data, Path):
        with open(data, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    else:
        digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise PatternError(f"{what}: SHA-256 mismatch (corrupt or substituted file)",
                           reason="digest_mismatch")


def apply_diff(file: str, base: Path, diff: bytes, out: Path) -> None:
    """Apply a diff of pattern file ``file`` to ``base``, writing ``out`` atomically.

    PatternError with reason ``wrong_base`` for a diff made against another base; any
    other is a corrupt diff.
    """
    if file == AGENT_FILE:
        from proxy.patterns import agent

        old = read_bounded(Path(base), agent.MAX_FILE_BYTES, error=PatternError, label=file)
        agent.write_agent(Path(out), agent.apply_diff(old, diff))
        return
    if file in FULL_ONLY or not any(file in fs for fs in PATTERN_FILES.values()):
        raise PatternError(f"{file}: no diffs exist for this file")
    from proxy.patterns.table_diff import apply_table_diff

    apply_table_diff(Path(base), diff, Path(out))
