"""Renumbering a build's threat names and categories onto a published strings.json.

An update source has one strings.json and it only ever grows: appliances update each
pattern on its own schedule and take the newest strings.json with any of them, so a
table they keep from an earlier version still reads its names by id from the newest
one. A build numbers its names afresh unless it was given ``--base``; ``merge`` and
``restring`` give every name the id the published strings.json has for it (new names
are appended) and rewrite the build's tables with those ids, into another folder.
The rewritten tables are byte for byte what a build with ``--base`` would have made,
so a pattern whose entries did not change is found unchanged by its SHA-256.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from proxy.errors import PatternError
from proxy.files import write_atomic
from proxy.patterns.layout import PATTERN_TABLES, STRINGS_FILE
from proxy.patterns.pattern import load_strings
from proxy.patterns.tables import Table, write_table

logger = logging.getLogger(__name__)

MAX_THREATS = 1 << 32  # ids are u4 in the file tables
MAX_CATEGORIES = 1 << 16  # ids are u2 in the rated tables
COLUMN_NAMES = {"threat": "threats", "category": "categories"}  # id columns -> their list


@dataclass(frozen=True, slots=True)
class Strings:
    """The names of a strings.json, in id order (id 0 is the empty name)."""

    threats: tuple[str, ...]
    categories: tuple[str, ...]

    @classmethod
    def load(cls, path: Path) -> Strings:
        threats, categories = load_strings(path)
        return cls(tuple(threats), tuple(categories))

    def to_bytes(self) -> bytes:
        """strings.json as ``proxy.patterns.build`` writes it (the same bytes for the same names)."""
        doc = {"format": 1, "threats": list(self.threats), "categories": list(self.categories)}
        return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode()


@dataclass(frozen=True, slots=True)
class Merged:
    """The published names with a build's new ones appended, and the build's ids mapped."""

    strings: Strings
    maps: dict[str, npt.NDArray[np.uint32]]  # "threats"/"categories": build id -> merged id

    @property
    def renumbers(self) -> bool:
        """Whether any build id changes (False: the build's strings extend the published)."""
        return any(not np.array_equal(m, np.arange(len(m))) for m in self.maps.values())


def _merge_names(published: tuple[str, ...], built: tuple[str, ...], limit: int,
                 what: str) -> tuple[tuple[str, ...], npt.NDArray[np.uint32]]:
    ids = {name: i for i, name in enumerate(published)}
    merged = list(published)
    for name in built:
        if name not in ids:
            ids[name] = len(merged)
            merged.append(name)
    if len(merged) > limit:
        raise PatternError(f"{STRINGS_FILE}: the published {what} and the build's together are "
                           f"{len(merged)}, more than {limit}")
    return tuple(merged), np.array([ids[name] for name in built], dtype=np.uint32)


def merge(published: Strings, built: Strings) -> Merged:
    """The published names, then the build's names the published ones lack (in build order)."""
    threats, tmap = _merge_names(published.threats, built.threats, MAX_THREATS, "threat names")
    categories, cmap = _merge_names(published.categories, built.categories, MAX_CATEGORIES,
                                    "categories")
    return Merged(Strings(threats, categories), {"threats": tmap, "categories": cmap})


def _rewrite(src: Path, dst: Path, maps: dict[str, npt.NDArray[np.uint32]]) -> None:
    with Table.open(src) as t:
        columns: dict[str, npt.NDArray[Any]] = {}
        for name in t.column_names:
            col = t.column(name)
            ids = COLUMN_NAMES.get(name)
            if ids is not None:
                if len(col) and int(col.max()) >= len(maps[ids]):
                    raise PatternError(f"{src.name}: a {name} id is not in the build's "
                                       f"{STRINGS_FILE}")
                col = maps[ids][col].astype(col.dtype)
            columns[name] = col
        write_table(dst, t.sorted_keys(), columns, key_width=t.key_width,
                    ends=t.ends() if t.is_range else None, index_bits=t.index_bits)


def restring(build_dir: Path, merged: Merged, into: Path) -> list[str]:
    """Write the build's tables with ``merged``'s ids, and its strings.json, into ``into``;
    the table files written."""
    written = []
    for files in PATTERN_TABLES.values():
        for file in files:
            _rewrite(build_dir / file, into / file, merged.maps)
            written.append(file)
    write_atomic(into / STRINGS_FILE, merged.strings.to_bytes())
    logger.info("renumbered %s's names onto the published %s (%d threat names, %d categories)",
                build_dir.name, STRINGS_FILE, len(merged.strings.threats),
                len(merged.strings.categories))
    return written
