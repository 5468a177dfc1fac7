"""An update source directory as ``rampart pattern publish`` leaves it: read its manifest
(``read_repo``), check every file it names (``verify_repo``), describe it (``repo_info``),
and tell one from a build directory (``is_repo``); ``rampart pattern verify`` and
``info`` use these, and ``proxy.updates.publish`` reads the current manifest with
``read_signed``. The layout and manifest format are ``proxy.updates.repo``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from proxy.clock import iso
from proxy.errors import PatternError
from proxy.files import read_bounded, read_json
from proxy.patterns.layout import MANIFEST, SIGNATURE, STRINGS, STRINGS_FILE, TYPE
from proxy.updates.repo import diff_path, full_path, verify_file
from proxy.updates.source import (
    MAX_MANIFEST_BYTES,
    REPO_TYPE,
    SIGNATURE_BYTES,
    Manifest,
    load_manifest,
    parse_manifest,
)


def _read_json(path: Path, limit: int) -> Any:
    try:
        return read_json(path, limit, error=PatternError, label=path.name)
    except OSError as e:
        raise PatternError(f"{path.name}: cannot read: {e.strerror or e}") from None


def read_signed(repo_dir: Path) -> tuple[bytes, bytes] | None:
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
    signed = read_signed(Path(repo_dir))
    if signed is None:
        raise PatternError(f"{MANIFEST}: not found: not an update source")
    raw, sig = signed
    return parse_manifest(raw) if public_key is None else load_manifest(raw, sig, public_key)


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
