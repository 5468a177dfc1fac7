"""Benchmark the Smart Scan Agent Pattern (proxy.patterns.agent); run by hand, prints figures,
asserts nothing.

    python bench/bench_agent.py                 # 1M synthetic SHA-256 digests
    python bench/bench_agent.py --entries 10000000

Synthetic digests come from a fixed seed. An hourly update is modelled as
+50k/-10k entries. Goals from issue 3 (at 10M): <= 10.7 bits per entry, <= 0.4 %
false positives, <= 150 KB hourly diffs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.patterns.agent import AgentFilter, apply_diff, build_agent, make_diff


def timed(fn, *args, **kw):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000, help="digests in the pattern (default 1M)")
    ap.add_argument("--added", type=int, default=50_000, help="entries added by the hourly update")
    ap.add_argument("--removed", type=int, default=10_000, help="entries removed by the hourly update")
    ap.add_argument("--strangers", type=int, default=1_000_000, help="non-members for the FP rate")
    ap.add_argument("--fp-rate", type=float, default=0.003, help="target false-positive rate")
    ap.add_argument("--seed", type=int, default=20261122)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n = args.entries

    digests = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    data, t_build = timed(build_agent, digests, fp_rate=args.fp_rate)
    f, t_load = timed(AgentFilter.from_bytes, data)
    print(f"entries            {n:,} (distinct prefixes {len(f):,})")
    print(f"prefix bits k      {f.prefix_bits}   Rice r {f.rice_bits}   block {f.block_size}")
    print(f"build              {t_build:.2f} s")
    print(f"load + validate    {t_load:.2f} s")
    print(f"size               {len(data):,} bytes = {len(data) * 8 / n:.3f} bits/entry (goal <= 10.7)")

    strangers = rng.integers(0, 256, size=(args.strangers, 32), dtype=np.uint8)
    hits, t_many = timed(f.may_contain_many, strangers)
    fp = float(hits.mean())
    print(
        f"false positives    measured {fp:.4%} over {args.strangers:,}, theory {f.false_positive_rate():.4%}"
        " (goal <= 0.4 %)"
    )
    members_found, _ = timed(f.may_contain_many, digests[: args.strangers])
    print(f"false negatives    {int((~members_found).sum())} of {min(n, args.strangers):,} members")

    singles = [bytes(d) for d in strangers[:50_000]] + [bytes(d) for d in digests[:50_000]]
    _, t_single = timed(lambda: [f.may_contain(d) for d in singles])
    print(f"single queries     {len(singles) / t_single:,.0f}/s (half members)")
    for batch in (100, 1000, 10_000):
        chunks = [strangers[i : i + batch] for i in range(0, min(len(strangers), 200 * batch), batch)]
        _, t = timed(lambda c=chunks: [f.may_contain_many(x) for x in c])
        print(f"batched x{batch:<7,}  {sum(map(len, chunks)) / t:,.0f}/s")
    print(f"batched x{args.strangers:<7,}  {args.strangers / t_many:,.0f}/s")

    removed = rng.choice(n, size=args.removed, replace=False)
    keep = np.ones(n, dtype=bool)
    keep[removed] = False
    added = rng.integers(0, 256, size=(args.added, 32), dtype=np.uint8)
    new_digests = np.concatenate([digests[keep], added])
    new, t_rebuild = timed(build_agent, new_digests, prefix_bits=f.prefix_bits)
    diff, t_diff = timed(make_diff, data, new)
    result, t_apply = timed(apply_diff, data, diff)
    print(f"update             +{args.added:,}/-{args.removed:,}: full rebuild {t_rebuild:.2f} s")
    print(
        f"diff               {len(diff):,} bytes = {len(diff) / 1024:.1f} KiB"
        f" ({len(diff) * 8 / (args.added + args.removed):.1f} bits/change; goal <= 150 KB),"
        f" {len(diff) / len(new):.2%} of the full file"
    )
    print(f"make diff          {t_diff:.2f} s")
    print(f"apply diff         {t_apply:.2f} s   result == rebuild: {result == new}")


if __name__ == "__main__":
    main()
