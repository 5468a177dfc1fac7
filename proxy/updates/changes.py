"""What publishing a build adds and removes, per pattern, against the published version,
and the refusal of a large drop (``rampart pattern publish --max-shrink``).

A build's sources are the whole pattern: an entry in none of them is removed from the
update source, and from every appliance, by the next publish. A publisher who builds
from one new file instead of every source would drop most of the pattern; counting
the entries each pattern loses, and refusing to publish a loss above a share of its
published entries unless told to (``--allow-shrink``), makes that mistake loud before
anything is written.

Entries are compared by key (a hash, a URL or domain digest, a range start): a key
in both with other values (a new threat name, say) is neither added nor removed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from proxy.errors import ConfigError, PatternError
from proxy.patterns.layout import AGENT, AGENT_FILE
from proxy.patterns.tables import Table

logger = logging.getLogger(__name__)

CHUNK_ROWS = 1 << 20  # keys looked up at once: bounds the memory a comparison takes


@dataclass(frozen=True, slots=True)
class Change:
    """One pattern's entries before (published) and after (the build), and the difference."""

    pattern: str
    before: int  # 0 when the pattern was not published yet
    after: int
    added: int
    removed: int

    @property
    def removed_share(self) -> float:
        """The share of the published entries this publish removes (0 to 1)."""
        return self.removed / self.before if self.before else 0.0


def _missing(table: Table, other: Table) -> int:
    """How many of ``table``'s keys ``other`` does not hold."""
    keys = table.sorted_keys()
    gone = 0
    for start in range(0, table.count, CHUNK_ROWS):
        gone += int((other.lookup_many(keys[start:start + CHUNK_ROWS]) < 0).sum())
    return gone


def table_changes(old: Path, new: Path) -> tuple[int, int]:
    """(keys added, keys removed) turning table ``old`` into table ``new``."""
    with Table.open(old) as a, Table.open(new) as b:
        return _missing(b, a), _missing(a, b)


def agent_changes(old: Path, new: Path) -> tuple[int, int] | None:
    """(prefixes added, removed) between two agent patterns; None when their prefix lengths
    differ, so their entries are not comparable."""
    from proxy.patterns import agent

    a, b = agent.read_agent(old), agent.read_agent(new)
    if a.prefix_bits != b.prefix_bits:
        return None
    ka, kb = a.keys(), b.keys()
    return int((~np.isin(kb, ka, assume_unique=True)).sum()), int(
        (~np.isin(ka, kb, assume_unique=True)).sum())


def pattern_change(name: str, old_dir: Path | None, new_dir: Mapping[str, Path],
                   files: tuple[str, ...], before: int, after: int) -> Change:
    """The change of pattern ``name``: its ``files`` at ``old_dir`` (the published version's
    folder; None if unpublished) against ``new_dir[file]``. Where a file cannot be compared
    (missing from the update source, an agent pattern of another prefix length), the net
    change of the entry counts stands in."""
    if old_dir is None:
        return Change(name, 0, after, after, 0)
    added = removed = 0
    try:
        for file in files:
            got = (agent_changes if file == AGENT_FILE else table_changes)(old_dir / file,
                                                                           new_dir[file])
            if got is None:
                raise PatternError(f"{file}: prefix length changed")
            added, removed = added + got[0], removed + got[1]
    except (OSError, PatternError) as e:
        why = e.message if isinstance(e, PatternError) else (e.strerror or str(e))
        if name != AGENT:
            logger.warning("%s: cannot compare with the published version (%s); counting the "
                           "net change", name, why)
        return Change(name, before, after, max(0, after - before), max(0, before - after))
    return Change(name, before, after, added, removed)


def check_shrink(changes: list[Change], max_shrink: float, what: str) -> None:
    """Refuse (ConfigError) when a pattern loses more than ``max_shrink`` percent of its
    published entries; the agent pattern follows smart-scan and is not checked itself."""
    over = [c for c in changes if c.pattern != AGENT and c.removed_share * 100 > max_shrink]
    if not over:
        return
    lost = ", ".join(f"{c.pattern} {c.removed} of {c.before} entries ({c.removed_share:.0%})"
                     for c in over)
    raise ConfigError(
        f"refusing to publish {what}: it removes {lost}, more than --max-shrink {max_shrink:g}%. "
        "A build's sources are the whole pattern (entries not in them are removed): build "
        "from complete sources, or give --allow-shrink if the removal is meant")
