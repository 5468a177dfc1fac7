"""Compacting an installed version: its overlaid tables written whole, off the request path.

An update that arrived as diffs holds its tables as base + overlay
(``proxy.patterns.overlays``); ``compact_version`` writes each full file beside them,
checks it against the SHA-256 the signed manifest gave for it, then drops the overlay
record from the version's manifest and removes the parts. The updater runs it right after
the live swap (``Updater.update_once``) and again before each scheduled attempt, so a
version stays overlaid only for the seconds compaction takes, or until a failed one is
retried. A file that does not match is deleted and its pattern returned: the updater
takes that pattern's full files from the source at once and installs a version built
from them (why the overlay could be served meanwhile: ``proxy.patterns.overlays``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from proxy.errors import PatternError
from proxy.files import write_atomic
from proxy.patterns.layout import MANIFEST, PATTERN_FILES
from proxy.patterns.overlays import OVERLAYS, compact, drop_parts
from proxy.updates.manifest import LocalManifest, read_local

logger = logging.getLogger(__name__)


def compact_version(directory: Path) -> tuple[list[str], set[str]]:
    """Compact every overlaid table of the version in ``directory``; returns the files
    compacted and the patterns whose compacted file did not match the signed manifest
    (their overlay stays, unused once a version from full files replaces it). Other errors
    (a full disk) propagate; the version then stays overlaid, which serves correctly, and
    is retried later."""
    local = LocalManifest.load(directory)
    if not local.overlays:
        return [], set()
    bad: set[str] = set()
    done: list[str] = []
    for file in local.overlays:
        pattern = next((p for p, fs in PATTERN_FILES.items() if file in fs), None)
        spec = local.spec(pattern, file) if pattern is not None else None
        if pattern is None or spec is None:
            logger.warning("%s: overlaid %s is not listed; left as it is", directory.name, file)
            continue
        try:
            compact(directory, file, spec)
        except PatternError as e:
            if e.reason not in ("digest_mismatch", "wrong_base", "bad_pattern"):
                raise
            logger.error("version %s: %s; taking the full %s files from the source",
                         directory.name, e.message, pattern)
            bad.add(pattern)
            continue
        done.append(file)
    if done:
        _forget(directory, done)
    return done, bad


def _forget(directory: Path, files: list[str]) -> None:
    """Drop ``files``' overlay records from the version's manifest, then their parts. A
    reader that read the old manifest finds the full file, which wins (``open_table``)."""
    raw = read_local(directory)
    listed = raw.get(OVERLAYS)
    if isinstance(listed, dict):
        left = {k: v for k, v in listed.items() if k not in files}
        if left:
            raw[OVERLAYS] = left
        else:
            raw.pop(OVERLAYS)
        write_atomic(directory / MANIFEST, json.dumps(raw, indent=1).encode() + b"\n")
    for file in files:
        drop_parts(directory, file)
