"""Pattern storage benchmark: run by hand; prints figures, asserts nothing.

    python3 bench/bench_patterns.py                 # 1M and 10M entries
    python3 bench/bench_patterns.py --entries 2000000

For N synthetic SHA-256 entries (fixed seed) it prints: build time, file size,
open time, anonymous RSS growth after open (/proc/self/smaps_rollup), single
and batched lookups per second, the time to make a +50k/-10k diff, to merge
it into a new table (``apply_table_diff``) and to open the result (merge +
swap), the same diff applied as an overlay instead (``fold_diff`` and
``OverlaidTable``: overlay + swap, with single and batched lookup rates on
base + overlay as ratios of the plain table's in the same run, and of the plain table
looked up in Python (without the compiled lookups, ``tables/_finder.c``), and the
compaction into the full file off the request path), and the agent pattern's
bits per entry, measured false-positive rate and diff size when
``proxy.patterns.agent`` is present.

Lookup rates are per CPU second of this process (``time.process_time``), and the overlaid
and plain rates are taken in turns (``paired_rates``), so a shared machine's changing load
skews their ratio less. Goals at 10M: open <= 5 ms, anonymous RSS growth ~ 0, single >= 750k/s,
batched >= 1.8M/s, merge + swap <= 0.5 s (overlay + swap), overlaid lookups
>= 0.9 of the plain table's; agent <= 10.7 bits/entry, <= 0.4 %
false positives, <= 150 KB diffs.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.patterns.table_diff import apply_table_diff, make_table_diff
from proxy.patterns.table_overlay import OverlaidTable, fold_diff
from proxy.patterns.tables import Table, write_table
from proxy.patterns.tables.read import FINDER

SEED = 20240101
ADDED, REMOVED = 50_000, 10_000


def anonymous_kb() -> int:
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def columns(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"verdict": rng.integers(1, 3, n, dtype=np.uint8),
            "threat": rng.integers(1, 5000, n, dtype=np.uint32)}


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s"


def lookup_rates(table: Table | OverlaidTable, singles: list[bytes], mixed: np.ndarray,
                 repeat: int = 3) -> dict[str, float]:
    """Single lookups, then batches of 1,000 and 10,000: lookups per CPU second, best of
    ``repeat`` (CPU time: other work on a shared machine counts less than in wall time)."""
    out: dict[str, float] = {}
    table.lookup(singles[0])
    best = min(_timed(lambda: [table.lookup(k) for k in singles]) for _ in range(repeat))
    out["single lookup"] = len(singles) / best
    for batch in (1000, 10_000):
        def batches(size: int = batch) -> None:
            for s in range(0, len(mixed), size):
                table.lookup_many(mixed[s:s + size])
        best = min(_timed(batches) for _ in range(repeat))
        out[f"batched {batch:>6}"] = len(mixed) / best
    return out


def python_path(table: Table) -> Any:
    """``table`` looked up by its class's own Python methods: the path without the compiled
    lookups (``proxy/patterns/tables/_finder.c``), with no Python frame added around them."""
    return SimpleNamespace(lookup=functools.partial(Table.lookup, table),
                           lookup_many=table._lookup_many_plain)


def paired_rates(tables: list[Any], singles: list[bytes], mixed: np.ndarray,
                 rounds: int = 5) -> list[dict[str, float]]:
    """``lookup_rates`` of each table taken in turns, best of ``rounds`` each: a ratio of
    two is then fair on a machine whose load changes during the run."""
    rates: list[dict[str, float]] = [{} for _ in tables]
    for _ in range(rounds):
        for got, table in zip(rates, tables):
            for k, v in lookup_rates(table, singles, mixed, repeat=1).items():
                got[k] = max(got.get(k, 0.0), v)
    return rates


def _timed(fn: object) -> float:
    assert callable(fn)
    t = time.process_time()
    fn()
    return time.process_time() - t


def bench(n: int, work: Path) -> None:
    print(f"== {n:,} SHA-256 entries")
    rng = np.random.default_rng(SEED)
    keys = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    cols = columns(n, rng)
    path = work / f"sha256-{n}.tbl"

    t = time.perf_counter()
    size = write_table(path, keys, cols)
    print(f"build          {time.perf_counter() - t:8.2f} s   file {size / 1e6:,.1f} MB "
          f"({size / n:.1f} B/entry)")

    opens = []
    before = anonymous_kb()
    for _ in range(5):
        t = time.perf_counter()
        table = Table.open(path)
        opens.append(time.perf_counter() - t)
        table.close()
    table = Table.open(path)
    after = anonymous_kb()
    print(f"open           {min(opens) * 1e3:8.2f} ms  (median {sorted(opens)[2] * 1e3:.2f} ms)"
          f"   anonymous RSS growth {after - before:+,d} kB")

    q = 200_000
    hits = keys[rng.integers(0, n, q // 2)]
    misses = rng.integers(0, 256, (q // 2, 32), dtype=np.uint8)
    mixed = np.concatenate([hits, misses])
    rng.shuffle(mixed)
    singles = [row.tobytes() for row in mixed]
    plain = lookup_rates(table, singles, mixed)
    for label, r in plain.items():
        print(f"{label:<14} {r:>12,.0f}/s{'  (half hits)' if label == 'single lookup' else ''}")
    grown = anonymous_kb()
    print(f"anonymous RSS growth after lookups {grown - before:+,d} kB")

    # +50k / -10k
    keep = np.ones(n, dtype=bool)
    keep[rng.choice(n, REMOVED, replace=False)] = False
    new_keys = np.concatenate([keys[keep], rng.integers(0, 256, (ADDED, 32), dtype=np.uint8)])
    new_cols = {k: np.concatenate([v[keep], columns(ADDED, rng)[k]]) for k, v in cols.items()}
    new_path = work / f"sha256-{n}-new.tbl"
    write_table(new_path, new_keys, new_cols)
    t = time.perf_counter()
    diff = make_table_diff(path, new_path)
    print(f"make diff      {time.perf_counter() - t:8.2f} s   diff {len(diff) / 1e6:.2f} MB "
          f"(+{ADDED:,}/-{REMOVED:,})")
    merged = work / f"sha256-{n}-merged.tbl"
    t = time.perf_counter()
    apply_table_diff(path, diff, merged)
    t_merge = time.perf_counter() - t
    t = time.perf_counter()
    swapped = Table.open(merged)
    t_open = time.perf_counter() - t
    same = merged.read_bytes() == new_path.read_bytes() if n <= 2_000_000 else None
    print(f"merge + swap   {t_merge + t_open:8.2f} s   (merge {t_merge:.2f} s incl. fsync, "
          f"open {t_open * 1e3:.2f} ms){'' if same is None else f'  identical: {same}'}")
    swapped.close()

    # the same diff as an overlay: nothing rewritten, base + overlay looked up together
    overlay_path = work / f"sha256-{n}.overlay"
    t = time.perf_counter()
    overlay_path.write_bytes(fold_diff(table, None, diff, "bench diff"))
    t_fold = time.perf_counter() - t
    t = time.perf_counter()
    over = OverlaidTable.open(work / "overlaid.tbl", path, overlay_path)
    t_open = time.perf_counter() - t
    print(f"overlay + swap {t_fold + t_open:8.2f} s   (fold {t_fold:.2f} s, open {t_open * 1e3:.1f} ms)"
          f"   vs merge + swap {t_merge:.2f} s: {(t_fold + t_open) / t_merge:.2f}x")
    added = new_keys[-ADDED:]
    over_mixed = mixed.copy()
    over_mixed[: q // 100] = added[rng.integers(0, ADDED, q // 100)]  # 1 % overlay hits
    rng.shuffle(over_mixed)
    compiled = FINDER is not None
    tables = [table, over, python_path(table)] if compiled else [table, over]
    plain, overlaid, *python = paired_rates(tables, [row.tobytes() for row in over_mixed], over_mixed)
    for label, r in overlaid.items():
        print(f"overlaid {label.removesuffix(' lookup'):<6}{r:>12,.0f}/s   plain {plain[label]:,.0f}/s: "
              f"{r / plain[label]:.2f}x  (1 % overlay hits; until compaction, then plain)")
    for label, r in python[0].items() if python else ():
        print(f"python {label.removesuffix(' lookup'):<8}{r:>12,.0f}/s   (the plain table without the"
              f" compiled lookups; overlaid {overlaid[label] / r:.2f}x, plain {plain[label] / r:.2f}x)")
    if not compiled:
        print("(the compiled lookups are not built: every figure is the Python path's)")
    t = time.perf_counter()
    apply_table_diff(path, overlay_path, work / f"sha256-{n}-compacted.tbl")
    print(f"compaction     {time.perf_counter() - t:8.2f} s   (off the request path, "
          f"content SHA-256 checked)")
    over.close()
    table.close()

    try:
        from proxy.patterns import agent
    except ImportError:
        print("agent          proxy.patterns.agent not available")
        return
    t = time.perf_counter()
    a = agent.build_agent(keys)
    t_build = time.perf_counter() - t
    f = agent.AgentFilter.from_bytes(a)
    probes = rng.integers(0, 256, (1_000_000, 32), dtype=np.uint8)
    fp = float(f.may_contain_many(probes).mean())
    b = agent.build_agent(new_keys, prefix_bits=f.prefix_bits)
    t = time.perf_counter()
    d = agent.make_diff(a, b)
    t_diff = time.perf_counter() - t
    print(f"agent          {len(a) * 8 / n:8.2f} bits/entry   {len(a) / 1e6:.1f} MB   "
          f"FP {fp * 100:.3f} %   build {t_build:.2f} s   diff {len(d) / 1e3:.1f} KB "
          f"(made in {t_diff:.2f} s)")
    for p in (path, new_path, merged, overlay_path, work / f"sha256-{n}-compacted.tbl"):
        p.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, action="append",
                    help="entry count (repeatable; default 1M and 10M)")
    ap.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    counts = args.entries or [1_000_000, 10_000_000]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in counts:
            bench(n, Path(tmp))
    print(f"(pid {os.getpid()}, numpy {np.__version__})")


if __name__ == "__main__":
    main()
