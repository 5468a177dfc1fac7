"""The records pattern sources hold, and how duplicates merge: **the most severe wins**
(``proxy.patterns.sources`` states the rule in full). ``flatten_networks`` turns
overlapping IP networks into the non-overlapping ranges an IP table holds.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TypeVar

from proxy.model import HashKind, Rating, Verdict

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_VERDICT_SEVERITY = {Verdict.CLEAN: 0, Verdict.SUSPICIOUS: 1, Verdict.MALICIOUS: 2}


@dataclass(frozen=True, slots=True)
class HashRecord:
    kind: HashKind
    digest: bytes
    verdict: Verdict
    threat: str | None  # None: not given


@dataclass(frozen=True, slots=True)
class UrlRecord:
    expression: str  # normalised, no scheme
    rating: Rating
    score: int
    category: str | None


@dataclass(frozen=True, slots=True)
class DomainRecord:
    name: str  # normalised domain name
    rating: Rating
    score: int
    category: str | None


@dataclass(frozen=True, slots=True)
class NetworkRecord:
    network: Network
    rating: Rating
    score: int
    category: str | None


@dataclass(frozen=True, slots=True)
class IpRange:
    """A flattened, non-overlapping piece of the IP list, with the network that rated it."""

    first: int
    last: int
    record: NetworkRecord


# ---------------------------------------------------------------- merging


def merge_hash(old: HashRecord, new: HashRecord) -> HashRecord:
    """The most severe verdict wins; at a tie the earlier record, its threat filled in."""
    if _VERDICT_SEVERITY[new.verdict] > _VERDICT_SEVERITY[old.verdict]:
        return new if new.threat is not None or old.threat is None else replace(
            new, threat=old.threat)
    if old.threat is None and new.threat is not None and new.verdict is old.verdict:
        return replace(old, threat=new.threat)
    return old


W = TypeVar("W", UrlRecord, DomainRecord, NetworkRecord)


def merge_rated(old: W, new: W) -> W:
    """The most severe rating wins, then the higher score, then the earlier record."""
    if (new.rating.severity, new.score) > (old.rating.severity, old.score):
        winner, other = new, old
    else:
        winner, other = old, new
    if winner.category is None and other.category is not None:
        return replace(winner, category=other.category)
    return winner


def merge_hashes(records: Iterable[HashRecord]) -> dict[tuple[HashKind, bytes], HashRecord]:
    out: dict[tuple[HashKind, bytes], HashRecord] = {}
    for r in records:
        key = (r.kind, r.digest)
        old = out.get(key)
        out[key] = r if old is None else merge_hash(old, r)
    return out


def merge_by(records: Iterable[W], key: Callable[[W], object]) -> dict[object, W]:
    out: dict[object, W] = {}
    for r in records:
        k = key(r)
        old = out.get(k)
        out[k] = r if old is None else merge_rated(old, r)
    return out


def flatten_networks(records: Iterable[NetworkRecord]) -> list[IpRange]:
    """Non-overlapping sorted ranges of one address family; most severe, then narrowest, wins."""
    nets = list(merge_by(records, lambda r: r.network).values())
    if not nets:
        return []
    points: set[int] = set()
    for r in nets:
        points.add(int(r.network.network_address))
        points.add(int(r.network.broadcast_address) + 1)
    starts = sorted(nets, key=lambda r: int(r.network.network_address))
    bounds = sorted(points)
    out: list[IpRange] = []
    # (-severity, -prefix length, -score, order, end + 1, record): the top entry rules
    heap: list[tuple[int, int, int, int, int, NetworkRecord]] = []
    i = 0
    for lo, nxt in itertools.pairwise(bounds):
        while i < len(starts) and int(starts[i].network.network_address) <= lo:
            r = starts[i]
            end = int(r.network.broadcast_address) + 1
            heapq.heappush(heap, (-r.rating.severity, -r.network.prefixlen, -r.score, i, end, r))
            i += 1
        while heap and heap[0][4] <= lo:
            heapq.heappop(heap)
        if not heap:
            continue
        best = heap[0][5]
        if out and out[-1].record is best and out[-1].last + 1 == lo:
            out[-1] = IpRange(out[-1].first, nxt - 1, best)
        else:
            out.append(IpRange(lo, nxt - 1, best))
    return out
