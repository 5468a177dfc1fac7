"""Reference client benchmark: run by hand; prints figures, asserts nothing.

    python3 bench/bench_client.py                      # 1 GiB file, 10,000 small files
    python3 bench/bench_client.py --size 256M --files 2000 --runs 3
    python3 bench/bench_client.py --chunks 256K,1M,4M,8M   # chunk sizes on the large file
    python3 bench/bench_client.py --dir /var/tmp       # where the scratch files go

Part 1, hashing (``proxy.client.digests.hash_file`` against ``sha256sum`` on the same
files in the same run; both read from a warm page cache, so this compares hashing, not
the disk):

- one large file (``--size``, default 1 GiB): MiB/s of ``sha256sum FILE`` and of
  ``hash_file`` (SHA-256 alone at each chunk size asked, and SHA-256+SHA-1+MD5 in the same
  read), each as a ratio to ``sha256sum`` (goal for SHA-256: >= 0.9);
- ``--files`` small files (default 10,000; sizes 0 B..64 KiB from a fixed seed, in 100
  folders): files/s of ``sha256sum`` given them in argument lists of at most 128 KiB as
  ``xargs`` would, of ``hash_file`` per file, and of ``walk`` + ``hash_file`` (what a scan
  does before asking anything), each as a ratio to ``sha256sum``.

Runs alternate (sha256sum, hash_file, ... , sha256sum, hash_file, ...) and each side's
median of wall times is kept, so a busy neighbour hurts both alike.

Part 2, ``--queries``: a real ``rampart serve`` on loopback with a pattern of
``--entries`` SHA-256s (default 100,000) and one in 100 of ``--files`` small files; a
fresh client scans them under the default ``filtered`` policy (agent pattern first) and
under ``all``; printed: items and requests sent per 1,000 files, as the client counted
them (the batches hold up to 1,000 items).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.client.digests import ALGORITHMS, hash_file
from proxy.client.walk import walk

SEED = 20261211
ARG_MAX = 128 << 10  # the argument-list size xargs uses by default
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def size(text: str) -> int:
    """``1G``, ``256M``, ``64K`` or bytes (binary units)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in UNITS else ""
    return int(float(text[: len(text) - len(unit)]) * UNITS[unit])


def label(n: int) -> str:
    """``n`` bytes as ``256 KiB`` or ``4 MiB``."""
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n / 1024:g} KiB"


def make_large(path: Path, total: int) -> None:
    """``total`` bytes of a repeated random 1 MiB block (hashing speed ignores content)."""
    block = random.Random(SEED).randbytes(1 << 20)
    with open(path, "wb") as f:
        left = total
        while left > 0:
            left -= f.write(block[: min(left, len(block))])


def make_small(top: Path, n: int) -> list[Path]:
    """``n`` files of 0 B..64 KiB (log-uniform, so most are small, as on a real disk)."""
    rng = random.Random(SEED)
    paths = []
    for i in range(n):
        folder = top / f"d{i % 100:02d}"
        folder.mkdir(exist_ok=True)
        path = folder / f"f{i:06d}.bin"
        path.write_bytes(rng.randbytes(int(2 ** rng.uniform(0, 16)) - 1))
        paths.append(path)
    return sorted(paths)


def argument_lists(paths: list[Path]) -> list[list[str]]:
    """The paths cut as xargs cuts them: each list's arguments at most ``ARG_MAX`` bytes."""
    lists: list[list[str]] = [[]]
    used = 0
    for p in map(str, paths):
        if lists[-1] and used + len(p) + 1 > ARG_MAX:
            lists.append([])
            used = 0
        lists[-1].append(p)
        used += len(p) + 1
    return lists


def sha256sum(lists: list[list[str]]) -> Callable[[], None]:
    def run() -> None:
        for args in lists:
            subprocess.run(["sha256sum", "--", *args], stdout=subprocess.DEVNULL, check=True)
    return run


def hashing(paths: list[Path], kinds: tuple[str, ...] = ("sha256",),
            chunk: int = 1 << 20) -> Callable[[], None]:
    def run() -> None:
        for p in paths:
            hash_file(p, kinds, chunk=chunk)
    return run


def scanning(top: Path) -> Callable[[], None]:
    def run() -> None:
        for found in walk([top]):
            if found.error is None:
                hash_file(found.path)
    return run


def medians(runs: int, sides: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Median wall seconds of each side over ``runs`` alternating rounds (one warm-up each)."""
    for work in sides.values():
        work()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(runs):
        for name, work in sides.items():
            t = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def show(label: str, amount: float, unit: str, seconds: float, base: float) -> None:
    print(f"  {label:<40} {amount / seconds:>12,.0f} {unit}   ratio {base / seconds:6.2f}")


def large(tmp: Path, total: int, chunks: list[int], runs: int) -> None:
    path = tmp / "large.bin"
    make_large(path, total)
    sides: dict[str, Callable[[], None]] = {"sha256sum": sha256sum([[str(path)]])}
    for chunk in chunks:
        sides[f"hash_file sha256, {label(chunk)} chunks"] = hashing([path], chunk=chunk)
    sides["hash_file sha256+sha1+md5, 1 MiB chunks"] = hashing([path], ALGORITHMS)
    print(f"one file of {total / (1 << 20):,.0f} MiB; {runs} alternating runs, medians "
          "(ratio = to sha256sum)")
    got = medians(runs, sides)
    mib = total / (1 << 20)
    for name, seconds in got.items():
        show(name, mib, "MiB/s", seconds, got["sha256sum"])
    path.unlink()


def small(tmp: Path, n: int, runs: int) -> None:
    top = tmp / "small"
    top.mkdir()
    paths = make_small(top, n)
    lists = argument_lists(paths)
    total = sum(p.stat().st_size for p in paths)
    print(f"{n:,} small files, {total / (1 << 20):,.1f} MiB in all; sha256sum given {len(lists)} "
          f"argument list(s); {runs} alternating runs, medians")
    got = medians(runs, {"sha256sum (xargs-like)": sha256sum(lists), "hash_file per file": hashing(paths),
                         "walk + hash_file": scanning(top)})
    base = got["sha256sum (xargs-like)"]
    for name, seconds in got.items():
        show(name, n, "files/s", seconds, base)


# ---- part 2: queries sent per 1,000 files, with and without the agent pattern --------


def _appliance(tmp: Path, entries: int, bad: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """``rampart serve`` on loopback with a pattern of ``entries`` random SHA-256s plus
    ``bad`` (so its agent pattern is the size a real one has)."""
    import hashlib
    import socket

    import httpx

    rng = random.Random(SEED)
    hashes = tmp / "hashes.txt"
    with hashes.open("w") as out:
        for h in bad:
            out.write(f"{h},Bench-Threat\n")
        for _ in range(entries):
            out.write(f"{hashlib.sha256(rng.randbytes(16)).hexdigest()},Bench-Other\n")
    rampart = [sys.executable, "-m", "addons.cli"]
    subprocess.run([*rampart, "pattern", "build", "--out", str(tmp / "build"), "--hashes", str(hashes)],
                   check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [*rampart, "serve", "--data-dir", str(tmp / "data"), "--pattern", str(tmp / "build"),
         "--listen", "127.0.0.1", "--query-port", str(port), "--query-tls-port", "0",
         "--console-port", "0", "--proxy-port", "0", "--transparent-port", "0", "--capture-port", "0",
         "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    sys.exit("bench_client: the appliance did not come up")


def queries(tmp: Path, n: int, entries: int) -> None:
    """Scan ``n`` small files (1 in 100 malicious) with a fresh client state twice: the
    default ``filtered`` policy (agent pattern first) and ``all``; print the items and
    requests each sent, per 1,000 files."""
    import asyncio
    import hashlib

    from proxy.client.options import ClientOptions
    from proxy.client.scan import Scanner
    from proxy.client.session import open_session

    top = tmp / "q-files"
    top.mkdir()
    paths = make_small(top, n)
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    once = [d for d in digests if digests.count(d) == 1]  # content no other file shares
    bad = once[::100]
    proc, url = _appliance(tmp, entries, bad)
    try:
        print(f"\nqueries: {n} files ({len(bad)} malicious), a pattern of {entries + len(bad)} SHA-256s")
        for policy in ("filtered", "all"):
            session = open_session(ClientOptions(servers=(url,), query=policy,
                                                 state_dir=tmp / f"state-{policy}"))

            async def run(session: Any) -> tuple[int, int, int]:
                try:
                    await session.client.refresh_agent()
                    scanner = Scanner(session.client, session.state)
                    found = sum([1 async for r in scanner.scan([top]) if r.action == "found"])
                    c = session.client.counters
                    return c.asked, c.requests, found
                finally:
                    await session.close()

            asked, requests, found = asyncio.run(run(session))
            print(f"  {policy:<9} {asked * 1000 / n:8.1f} items and {requests * 1000 / n:6.2f} requests"
                  f" per 1,000 files; {found} found")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=size, default=1 << 30, help="the large file (default 1G)")
    ap.add_argument("--files", type=int, default=10_000, help="how many small files (default 10,000)")
    ap.add_argument("--chunks", default="1M", help="hash_file chunk sizes on the large file, comma-separated")
    ap.add_argument("--runs", type=int, default=5, help="alternating runs per side (default 5)")
    ap.add_argument("--dir", type=Path, default=None, help="where the scratch files go (default $TMPDIR)")
    ap.add_argument("--queries", action="store_true",
                    help="part 2: queries per 1,000 files with and without the agent pattern")
    ap.add_argument("--entries", type=int, default=100_000,
                    help="part 2: SHA-256s in the appliance's pattern (default 100,000)")
    args = ap.parse_args()
    if not shutil.which("sha256sum"):
        sys.exit("bench_client: sha256sum (coreutils) is needed as the baseline")
    chunks = [size(c) for c in args.chunks.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-client-") as tmp:
        if args.size > 0:
            large(Path(tmp), args.size, chunks, args.runs)
        if args.files > 0:
            small(Path(tmp), args.files, args.runs)
        if args.queries:
            queries(Path(tmp), max(args.files, 1000), args.entries)


if __name__ == "__main__":
    main()
