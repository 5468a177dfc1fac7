"""Overlaid files in a pattern directory: a table held as its base plus an overlay, not whole.

An update that arrives as a diff (``proxy.updates.assemble``) need not rewrite a 10M-entry
table: the new version directory may hold, instead of ``FILE``,

    FILE.base      the table the diff chain starts from (a hard link to the previous
                   version's file), and
    FILE.overlay   one ``proxy.patterns.table_diff`` diff from that base to the table the
                   publisher made (``proxy.patterns.table_overlay.fold_diff``),

listed in the directory's ``manifest.json`` under a top-level ``"overlays"`` key::

    "overlays": {FILE: {"base": {"size", "sha256"}, "overlay": {"size", "sha256"}}}

while ``FILE`` itself stays listed with the size and SHA-256 the signed manifest gives for
the full file. ``FILE`` present wins: once ``compact`` has written it, the record and the
parts are only leftovers, and readers open ``FILE`` (``open_table``).

**Why serving base + overlay before the full file's SHA-256 is checked is safe.** Every
byte of it is authenticated: the base was checked against a signed manifest's SHA-256 when
it was installed (or it is a compaction checked so), every diff folded into the overlay
was checked against the SHA-256 the signed manifest gives for that diff before it was
used, and each diff names the content SHA-256 of the table it applies to, which must be
the base's (or the previous diff's result); a removed key must be there and an added one
must not (``fold_diff``), so a diff for another table is refused. What base + overlay
answers is then exactly the publisher's signed base with its signed changes. The full
file's SHA-256 can only disagree if the publisher's diff and full file disagree, or this
code's merge does: ``compact`` checks that, off the request path. On a mismatch the
compacted file is deleted, never renamed into place and never served; the updater takes
that pattern's full file from the source at once (``proxy.updates.updater``), and a
version built from it replaces the overlaid one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.errors import PatternError
from proxy.patterns.layout import FileSpec, manifest_error, read_file_specs
from proxy.patterns.table_diff import apply_table_diff
from proxy.patterns.table_overlay import OverlaidTable
from proxy.patterns.tables import Table

logger = logging.getLogger(__name__)

OVERLAYS = "overlays"  # a pattern directory manifest's top-level key
BASE_SUFFIX = ".base"
OVERLAY_SUFFIX = ".overlay"
MAX_OVERLAYS = 16
MAX_OVERLAY_ROWS = 1 << 18
"""Rows (removed + added) an overlay may reach; an update past it merges the full file."""


@dataclass(frozen=True, slots=True)
class Overlay:
    """How a directory holds ``file`` overlaid: the specs of ``file.base`` and ``file.overlay``."""

    file: str
    base: FileSpec
    overlay: FileSpec

    def to_json(self) -> dict[str, Any]:
        return {"base": _bare(self.base), "overlay": _bare(self.overlay)}

    @classmethod
    def of(cls, file: str, base: FileSpec, overlay: FileSpec) -> Overlay:
        """The record of ``file`` from the specs of its parts (their names are set here)."""
        return cls(file, FileSpec(file + BASE_SUFFIX, base.size, base.sha256),
                   FileSpec(file + OVERLAY_SUFFIX, overlay.size, overlay.sha256))


def _bare(spec: FileSpec) -> dict[str, Any]:
    return {"size": spec.size, "sha256": spec.sha256}


def read_overlays(raw: Mapping[str, Any], bad: Any = manifest_error) -> dict[str, Overlay]:
    """The ``overlays`` of a manifest (parsed JSON); ``bad(what)`` names anything malformed."""
    listed = raw.get(OVERLAYS)
    if listed is None:
        return {}
    if not isinstance(listed, dict) or len(listed) > MAX_OVERLAYS:
        raise bad(f"'{OVERLAYS}' is not an object of at most {MAX_OVERLAYS} files")
    out = {}
    for file, entry in listed.items():
        if not isinstance(entry, dict) or set(entry) != {"base", "overlay"}:
            raise bad(f"{OVERLAYS}: {str(file)[:80]}: not an object of 'base' and 'overlay'")
        specs = read_file_specs({f"{file}{BASE_SUFFIX}": entry["base"],
                                 f"{file}{OVERLAY_SUFFIX}": entry["overlay"]}, OVERLAYS, bad=bad)
        out[str(file)] = Overlay(str(file), specs[0], specs[1])
    return out


def overlays_json(overlays: Mapping[str, Overlay]) -> dict[str, Any]:
    return {name: o.to_json() for name, o in overlays.items()}


def held_as(directory: Path, spec: FileSpec, overlays: Mapping[str, Overlay]
            ) -> tuple[FileSpec, ...]:
    """The files that hold ``spec``'s file in ``directory``: itself, or its overlay's parts."""
    if (directory / spec.name).is_file() or spec.name not in overlays:
        return (spec,)
    o = overlays[spec.name]
    return o.base, o.overlay


def open_table(directory: Path, name: str, overlays: Mapping[str, Overlay]
               ) -> Table | OverlaidTable:
    """Table ``name`` of ``directory``: the file, else its base and overlay."""
    path = directory / name
    if path.is_file() or name not in overlays:
        return Table.open(path)
    return OverlaidTable.open(path, directory / (name + BASE_SUFFIX),
                              directory / (name + OVERLAY_SUFFIX))


def overlay_rows(overlay: bytes | memoryview) -> int:
    """Rows an overlay touches (removed + added), from its header (checked by its parser)."""
    from proxy.patterns.table_diff import parse_table_diff

    d = parse_table_diff(overlay, "overlay")
    return len(d.removed) + len(d.added)


def compact(directory: Path, file: str, spec: FileSpec) -> bool:
    """Write ``file`` in ``directory`` from its base and overlay, checked against ``spec``
    (the signed manifest's size and SHA-256 of the full file); False if it is there already.

    The merged table is written beside the final name and renamed only when its content
    SHA-256 matches the overlay's; the whole file is then checked against ``spec`` and
    deleted if it differs: PatternError (reason ``digest_mismatch``), after which nothing
    may serve it (see the module docstring for what the caller does).
    """
    target = directory / file
    if target.is_file():
        return False
    base, overlay = directory / (file + BASE_SUFFIX), directory / (file + OVERLAY_SUFFIX)
    apply_table_diff(base, overlay, target)
    try:
        written = FileSpec.of(target)
    except OSError:
        target.unlink(missing_ok=True)
        raise
    if (written.size, written.sha256) != (spec.size, spec.sha256):
        target.unlink(missing_ok=True)
        raise PatternError(f"{file}: compacted from its base and overlay, it does not match "
                           "the signed manifest's SHA-256", reason="digest_mismatch")
    logger.info("compacted %s in %s", file, directory.name)
    return True


def drop_parts(directory: Path, file: str) -> None:
    """Remove ``file``'s base and overlay once ``file`` itself is in ``directory``."""
    if not (directory / file).is_file():
        raise PatternError(f"{file}: not compacted yet; its parts stay")
    for suffix in (BASE_SUFFIX, OVERLAY_SUFFIX):
        (directory / (file + suffix)).unlink(missing_ok=True)
