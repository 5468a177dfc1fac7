"""PatternSet.lookup_joined: the batch path's lookup, against the item-by-item one."""

from __future__ import annotations

import hashlib
import random

import pytest

from proxy.model import FileQuery, HashKind
from proxy.patterns.build import build_pattern
from proxy.patterns.pattern import PatternSet


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pb")
    rng = random.Random(7)
    lines = []
    for i in range(3000):
        digest = hashlib.sha256(f"bad-{i}".encode()).hexdigest()
        verdict = "suspicious" if i % 5 == 0 else "malicious"
        lines.append(f"{digest},Threat-{i % 7},{verdict}")
    for i in range(200):
        lines.append(f"{hashlib.md5(f'bad-{i}'.encode()).hexdigest()},Md5-Threat")
    rng.shuffle(lines)
    src = tmp / "hashes.txt"
    src.write_text("\n".join(lines) + "\n")
    out = tmp / "pattern"
    build_pattern(out, hashes=[src])
    with PatternSet.open(out) as p:
        yield p


@pytest.mark.parametrize("n", [1, 3, 8, 9, 500])
def test_lookup_joined_agrees_with_single_lookups(patterns, n):
    rng = random.Random(n)
    digests = [hashlib.sha256(f"{'bad' if rng.random() < 0.6 else 'good'}-{rng.randrange(4000)}"
                              .encode()).digest() for _ in range(n)]
    want = {j: patterns.lookup_file(FileQuery(HashKind.SHA256, d)) for j, d in enumerate(digests)}
    got: dict[int, object] = {}
    for hit, at in patterns.lookup_joined(HashKind.SHA256, b"".join(digests)):
        for j in at:
            assert j not in got
            got[j] = hit
    assert got == {j: h for j, h in want.items() if h is not None}
    assert len({id(h) for h in got.values()}) == len(set(got.values()))  # hits are interned


def test_lookup_joined_of_a_kind_without_a_table_finds_nothing(patterns):
    assert patterns.lookup_joined(HashKind.SHA1, bytes(20) * 10) == []
