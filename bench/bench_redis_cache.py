"""Shared-cache benchmark: run by hand; prints figures, asserts nothing.

    python3 bench/bench_redis_cache.py                 # 20,000 cached hashes, 3 s a figure
    python3 bench/bench_redis_cache.py --keys 50000 --seconds 5

In one run, on one real redis-server (started on a free 127.0.0.1 port, as the tests do)
and the same 20,000 cloud answers, it measures single-item file answers through the
engine (``begin_files`` then ``finish``, in process: no HTTP, so the cache's share shows):

- local cache hits/s: the engine's own ``AnswerCache`` holds every answer (the baseline);
- shared-cache hits/s, one at a time: the local cache holds nothing (size 0), so every
  answer is one GET+PTTL pipeline to Redis and back (latency-bound);
- shared-cache hits/s, 64 in flight: the same, 64 requests awaiting at once (as a door
  with many connections does), so round trips overlap;
- shared-cache items/s in 100-item batches (one pipeline per batch);

each with its ratio to the local figure of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.decide.cache import AnswerCache
from proxy.decide.engine import Engine
from proxy.decide.lists import ListSnapshot
from proxy.model import Service, Source
from proxy.shared.answers import SharedAnswers
from proxy.shared.link import Link
from proxy.wire import protocol, replies
from tests.redis_server import RedisServer


class NoPatterns:
    version = "bench"

    def lookup_joined(self, kind: Any, raw: Any) -> list[Any]:
        return []


class Stats:
    def __init__(self) -> None:
        self.items: Counter[str] = Counter()

    def count_items(self, service: Service, sources: Any) -> None:
        for s, n in sources.items():
            self.items[s.value] += n


class NeverRelay:
    async def ask_many(self, service: Service, pairs: Any) -> list[Any]:
        raise AssertionError("the benchmark must be answered from a cache")


def engine(cache_size: int, link: Link | None) -> tuple[Engine, Stats]:
    cache: AnswerCache[Any] = AnswerCache(cache_size)
    stats = Stats()
    shared = SharedAnswers(link, "bench", cache.drop) if link is not None else None
    patterns: Any = NoPatterns()
    e = Engine(patterns=patterns, lists=ListSnapshot([]), cache=cache, relay=NeverRelay(),
               stats=stats, shared=shared)
    return e, stats


def batches(hexes: list[str], size: int) -> list[protocol.FileBatch]:
    return [protocol.FileBatch.of([protocol.parse_hash(h) for h in hexes[i:i + size]])
            for i in range(0, len(hexes), size)]


async def one(e: Engine, batch: protocol.FileBatch) -> None:
    await e.finish(Service.FILE, *e.begin_files(batch))


async def rate(e: Engine, work: list[protocol.FileBatch], seconds: float, inflight: int) -> float:
    """Items answered per second, ``inflight`` requests awaiting at once."""
    done, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        group = [work[(i + j) % len(work)] for j in range(inflight)]
        i += inflight
        await asyncio.gather(*(one(e, b) for b in group))
        done += sum(len(b) for b in group)
    return done / (time.perf_counter() - start)


async def main(args: argparse.Namespace) -> None:
    hexes = [hashlib.sha256(f"bench-{i}".encode()).hexdigest() for i in range(args.keys)]
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as redis:
        link = Link(redis.url, timeout=5.0)
        shared = SharedAnswers(link, "seed", lambda _k: None)
        result = {"verdict": "unknown", "ttl": 3600}
        for i in range(0, len(hexes), 1000):
            shared.put_many(Service.FILE, [(h, result, 3600) for h in hexes[i:i + 1000]])
        while shared._tasks:
            await asyncio.sleep(0.01)
        local, local_stats = engine(args.keys * 2, None)
        answer = replies.file_answer_from_result(result, Source.CLOUD)
        for h in hexes:
            local.cache.put(h, answer, 3600)
        remote, remote_stats = engine(0, Link(redis.url, timeout=5.0))
        singles, hundreds = batches(hexes, 1), batches(hexes, 100)
        base = await rate(local, singles, args.seconds, 1)
        figures = [
            ("shared-cache hits/s, one at a time", await rate(remote, singles, args.seconds, 1)),
            ("shared-cache hits/s, 64 in flight", await rate(remote, singles, args.seconds, 64)),
            ("shared-cache items/s, 100-item batches", await rate(remote, hundreds, args.seconds, 1)),
        ]
        assert set(local_stats.items) == {"cache"} and set(remote_stats.items) == {"cache"}, (
            local_stats.items, remote_stats.items)
        print(f"local cache hits/s (baseline)            {base:12,.0f}   1.00")
        for name, value in figures:
            print(f"{name:<40} {value:12,.0f}   {value / base:.3f} of local")
        await link.close()
        await remote.shared.link.close()  # type: ignore[union-attr]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    asyncio.run(main(parser.parse_args()))
