"""Benchmark the Safe Browsing v4 facade (proxy.sb.api); run by hand, prints figures, asserts
nothing.

    python3 bench/bench_sb.py                    # a 1M-entry MALWARE list
    python3 bench/bench_sb.py --entries 100000

Two pattern builds of synthetic URLs (fixed names: the second drops ``--removed`` of the
first's and adds ``--added``) are opened as an engine's pattern, and ``SafeBrowsing.handle``
is called directly (no HTTP: the door's own overhead is bench/load.py's). It prints:

- the first full update (the prefix set built once, then shared): seconds, and its size in
  JSON and protobuf, raw and Rice-encoded;
- update responses per second: full updates (no state) and partial updates (the first
  build's state against the second: the diff computed once, then shared);
- full-hash lookups per second, in batches of 100 prefixes (JSON and protobuf);
- the size of the same list in Rampart's agent pattern format (``proxy.patterns.agent``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.config import Config
from proxy.decide.lists import ListSnapshot
from proxy.patterns.agent import build_agent
from proxy.patterns.build import build_pattern
from proxy.patterns.pattern import PatternSet
from proxy.sb.api import SafeBrowsing

CLIENT = {"clientId": "bench-sb", "clientVersion": "1"}
JSON = "application/json"


def expressions(lo: int, hi: int) -> list[str]:
    return [f"h{i:07d}.bench.test/p/{i}.html" for i in range(lo, hi)]


def build(work: Path, name: str, exprs: list[str], version: str, base: Path | None) -> Path:
    src = work / f"{name}.txt"
    src.write_text("".join(f"{e},dangerous,malware\n" for e in exprs))
    out = work / name
    t = time.perf_counter()
    build_pattern(out, urls=[src], base=base, version=version)
    print(f"pattern build {name:8s} {time.perf_counter() - t:8.2f} s  ({len(exprs):,} URLs)")
    return out


def fetch_body(state: str, compression: str) -> bytes:
    return json.dumps({"client": CLIENT, "listUpdateRequests": [{
        "threatType": "MALWARE", "platformType": "ANY_PLATFORM", "threatEntryType": "URL",
        "state": state, "constraints": {"supportedCompressions": [compression]}}]}).encode()


def call(sb: SafeBrowsing, path: str, body: bytes, alt: str = "json") -> bytes:
    status, out, _ = sb.handle("POST", path, {"alt": alt, "key": "k"}, body, JSON)
    if status != 200:
        raise SystemExit(f"{path}: {status} {out[:300]!r}")
    return out


def per_second(fn: Any, seconds: float) -> tuple[float, int]:
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        spent = time.perf_counter() - t0
        if spent >= seconds:
            return n / spent, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000, help="URLs in the list (default 1M)")
    ap.add_argument("--added", type=int, default=5_000, help="URLs the second build adds")
    ap.add_argument("--removed", type=int, default=1_000, help="URLs the second build removes")
    ap.add_argument("--seconds", type=float, default=3.0, help="how long each rate is measured")
    ap.add_argument("--batch", type=int, default=100, help="prefixes per fullHashes:find")
    args = ap.parse_args()
    n = args.entries

    with tempfile.TemporaryDirectory(prefix="bench-sb-") as tmp:
        work = Path(tmp)
        first = expressions(0, n)
        second = expressions(args.removed, n + args.added)
        v1 = build(work, "v1", first, "2026010100", None)
        v2 = build(work, "v2", second, "2026010101", v1)
        engine = SimpleNamespace(patterns=PatternSet.open(v1), lists=ListSnapshot())
        sb = SafeBrowsing(lambda: engine, Config(data_dir=work, query_port=0, query_tls_port=0))
        fetch = "/v4/threatListUpdates:fetch"

        t = time.perf_counter()
        full = call(sb, fetch, fetch_body("", "RAW"))
        print(f"first full update       {time.perf_counter() - t:8.2f} s  (prefix set built)")
        state = json.loads(full)["listUpdateResponses"][0]["newClientState"]
        sizes = {(c, alt): len(call(sb, fetch, fetch_body("", c), alt))
                 for c in ("RAW", "RICE") for alt in ("json", "proto")}
        for (c, alt), size in sizes.items():
            print(f"full update {c:4s} {alt:5s}  {size:>12,} bytes = {size * 8 / n:6.2f} bits/entry")

        rate, _ = per_second(lambda: call(sb, fetch, fetch_body("", "RICE"), "proto"), args.seconds)
        print(f"full updates/s (RICE, proto)     {rate:10,.1f}")

        engine.patterns = PatternSet.open(v2)
        t = time.perf_counter()
        partial = call(sb, fetch, fetch_body(state, "RICE"))
        answer = json.loads(partial)["listUpdateResponses"][0]
        print(f"first partial update    {time.perf_counter() - t:8.2f} s  ({answer['responseType']}, "
              f"{len(partial):,} bytes JSON; new set and diff built)")
        rate, _ = per_second(lambda: call(sb, fetch, fetch_body(state, "RICE")), args.seconds)
        print(f"partial updates/s (RICE, JSON)   {rate:10,.1f}")
        rate, _ = per_second(lambda: call(sb, fetch, fetch_body(state, "RAW"), "proto"), args.seconds)
        print(f"partial updates/s (RAW, proto)   {rate:10,.1f}")

        rng = np.random.default_rng(20261201)
        hashes = [hashlib.sha256(e.encode()).digest() for e in second]
        picks = rng.integers(0, len(hashes), size=(64, args.batch))
        bodies = [json.dumps({"client": CLIENT, "threatInfo": {
            "threatTypes": ["MALWARE"], "platformTypes": ["ANY_PLATFORM"], "threatEntryTypes": ["URL"],
            "threatEntries": [{"hash": base64.b64encode(hashes[i][:4]).decode()} for i in row]}}).encode()
            for row in picks]
        i = 0

        def lookup() -> None:
            nonlocal i
            call(sb, "/v4/fullHashes:find", bodies[i % len(bodies)])
            i += 1

        rate, _ = per_second(lookup, args.seconds)
        print(f"fullHashes:find/s ({args.batch} prefixes) {rate:10,.1f}  "
              f"= {rate * args.batch:,.0f} prefixes/s")

        digests = np.frombuffer(b"".join(hashlib.sha256(e.encode()).digest() for e in first),
                                dtype=np.uint8).reshape(-1, 32)
        agent = build_agent(digests)
        print(f"agent pattern format    {len(agent):>12,} bytes = {len(agent) * 8 / n:6.2f} bits/entry "
              f"(a filter: false positives ask the server, as a prefix hit does)")
        engine.patterns.close()


if __name__ == "__main__":
    main()
