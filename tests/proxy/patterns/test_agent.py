"""Tests for proxy.patterns.agent: the Smart Scan Agent Pattern filter, its file format and diffs."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from proxy.errors import PatternError
from proxy.patterns.agent import (
    AGENT_FORMAT,
    MAGIC,
    AgentFilter,
    apply_diff,
    build_agent,
    choose_prefix_bits,
    digest_keys,
    make_diff,
    read_agent,
    write_agent,
)

EICAR = {
    "md5": "44d88612fea8a8f36de82e1278abb02f",
    "sha1": "3395856ce81f2b7382dee72602f798b642f14140",
    "sha256": "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f",
}


def random_digests(n: int, width: int = 32, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, width), dtype=np.uint8)


def rehash(data: bytes) -> bytes:
    """Recompute the integrity trailer, so a test reaches the checks behind it."""
    return data[:-32] + hashlib.sha256(data[:-32]).digest()


def expected_prefixes(digests: np.ndarray, k: int) -> list[int]:
    """The documented mapping, written out with Python ints."""
    return sorted({int.from_bytes(bytes(d[:8]), "big") >> (64 - k) for d in digests})


# --- membership ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "width", "prefix_bits", "block_size"),
    [
        (0, 32, None, 256),
        (1, 32, None, 256),
        (2, 20, None, 2),
        (255, 32, None, 256),
        (256, 16, None, 256),
        (257, 32, None, 256),
        (3000, 32, None, 64),
        (3000, 32, 12, 256),  # many identical prefixes, small gaps
        (3000, 32, 64, 256),  # 8-byte block bases, a 52-bit Rice parameter
        (3000, 32, 28, 256),  # Rice parameter 16: whole-byte remainders
        (3000, 32, 8, 256),  # every one of the 256 prefixes present: Rice parameter 0
        (3000, 20, 33, 100),
        (20000, 32, None, 256),
    ],
)
def test_every_member_is_found_and_prefixes_follow_the_documented_mapping(
    n: int, width: int, prefix_bits: int | None, block_size: int
) -> None:
    digests = random_digests(n, width, seed=n + width)
    f = AgentFilter.from_bytes(build_agent(digests, prefix_bits=prefix_bits, block_size=block_size))
    assert f.may_contain_many(digests).all()
    assert all(f.may_contain(bytes(d)) for d in digests[:500])
    assert f.keys().tolist() == expected_prefixes(digests, f.prefix_bits)
    strangers = random_digests(500, width, seed=99)
    assert f.may_contain_many(strangers).tolist() == [f.may_contain(bytes(d)) for d in strangers]
    assert len(f) == len(expected_prefixes(digests, f.prefix_bits))


def test_md5_sha1_and_sha256_digests_share_one_filter() -> None:
    digests = [bytes.fromhex(h) for h in EICAR.values()]
    f = AgentFilter.from_bytes(build_agent(digests))
    assert [f.may_contain(d) for d in digests] == [True, True, True]
    assert not f.may_contain(hashlib.sha256(b"a clean file").digest())


def test_single_and_batched_answers_agree_on_members_and_strangers() -> None:
    members = random_digests(5000, seed=1)
    f = AgentFilter.from_bytes(build_agent(members, prefix_bits=16))  # dense: plenty of false positives
    probes = np.concatenate([members[:1000], random_digests(4000, seed=2)])
    batched = f.may_contain_many(probes)
    assert batched.tolist() == [f.may_contain(bytes(p)) for p in probes]
    assert 0 < batched[1000:].sum() < 4000


def test_measured_false_positive_rate_matches_the_theory() -> None:
    f = AgentFilter.from_bytes(build_agent(random_digests(100_000, seed=3)))
    assert f.prefix_bits == 25
    theory = f.false_positive_rate()
    assert theory == pytest.approx(0.003, rel=0.05)
    strangers = random_digests(200_000, seed=4)
    measured = float(f.may_contain_many(strangers).mean())
    # about 600 expected hits; 5 standard deviations is about 20 %
    assert measured == pytest.approx(theory, rel=0.2)


@pytest.mark.parametrize(
    "form",
    ["uint8", "bytes-list", "S32", "V32", "uint64-keys"],
)
def test_digest_forms_give_the_same_filter(form: str) -> None:
    digests = random_digests(1000, seed=5)
    digests[::7, -1] = 0  # trailing NUL bytes must survive S32 arrays
    forms = {
        "uint8": digests,
        "bytes-list": [bytes(d) for d in digests],
        "S32": digests.view("S32").ravel(),
        "V32": digests.view("V32").ravel(),
        "uint64-keys": digest_keys(digests),
    }
    assert build_agent(forms[form]) == build_agent(digests)


@pytest.mark.parametrize(
    "bad",
    [[b"short"], [b"x" * 33], ["a string"], np.zeros((3, 31), dtype=np.uint8), np.zeros(3, dtype=np.int64)],
)
def test_digests_of_the_wrong_size_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="16, 20 or 32"):
        build_agent(bad)  # type: ignore[arg-type]


def test_querying_with_a_wrong_size_digest_is_refused() -> None:
    f = AgentFilter.from_bytes(build_agent(random_digests(10)))
    with pytest.raises(ValueError, match="not 10"):
        f.may_contain(b"0123456789")


@pytest.mark.parametrize(
    ("n", "fp_rate", "bits"),
    [(10_000_000, 0.003, 32), (1_000_000, 0.003, 29), (100_000, 0.003, 25), (0, 0.003, 9), (1, 0.5, 1)],
)
def test_prefix_bits_follow_entry_count_and_target_rate(n: int, fp_rate: float, bits: int) -> None:
    assert choose_prefix_bits(n, fp_rate) == bits


@pytest.mark.parametrize(("prefix_bits", "block_size"), [(0, 256), (65, 256), (32, 1), (32, 70000)])
def test_bad_build_parameters_are_refused(prefix_bits: int, block_size: int) -> None:
    with pytest.raises(ValueError):
        build_agent(random_digests(10), prefix_bits=prefix_bits, block_size=block_size)


# --- bytes --------------------------------------------------------------------


def test_round_trip_and_facts() -> None:
    data = build_agent(random_digests(10_000, seed=6))
    f = AgentFilter.from_bytes(data)
    assert f.to_bytes() == data
    assert AgentFilter.from_bytes(f.to_bytes()).keys().tolist() == f.keys().tolist()
    assert data[:4] == MAGIC and struct.unpack_from("<H", data, 4)[0] == AGENT_FORMAT
    assert f.sha256 == hashlib.sha256(data).hexdigest()
    assert f.false_positive_rate() == len(f) / 2**f.prefix_bits
    assert len(data) * 8 / len(f) < 11  # compact: about 10 to 11 bits per entry


def test_output_is_deterministic_whatever_the_input_order_and_duplicates() -> None:
    digests = random_digests(5000, seed=8)
    shuffled = np.random.default_rng(9).permutation(digests)
    doubled = np.concatenate([digests, digests[:100]])
    assert build_agent(digests) == build_agent(digests)
    assert build_agent(shuffled, prefix_bits=30) == build_agent(doubled, prefix_bits=30)


def _valid() -> bytes:
    return build_agent(random_digests(3000, seed=10), block_size=64)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d[:10], "truncated"),
        (lambda d: d[:-1], "truncated"),
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d + b"\0", "trailing bytes"),
        (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:], "SHA-256 mismatch"),
        (lambda d: rehash(b"XXXX" + d[4:]), "bad magic"),
        (lambda d: rehash(d[:4] + struct.pack("<H", 2) + d[6:]), "format version 2"),
        (lambda d: rehash(d[:6] + bytes([0]) + d[7:]), "prefix bits 0"),
        # a unary length far beyond what the entry count can need: refused before unpacking
        (lambda d: rehash(d[:24] + struct.pack("<Q", 1 << 30) + d[32:]), "too long"),
        # a block base moved below its predecessor: decodes, but out of order
        (lambda d: rehash(d[:36] + struct.pack("<I", 0) + d[40:]), "not strictly increasing"),
        # one unary byte zeroed: a block loses its codes
        (lambda d: rehash(d[:-40] + b"\0" + d[-39:]), "unary"),
    ],
)
def test_truncated_or_corrupt_files_are_refused_naming_the_problem(mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PatternError, match=message):
        AgentFilter.from_bytes(mangle(_valid()))


def test_files_round_trip_through_disk(tmp_path: Path) -> None:
    data = _valid()
    path = tmp_path / "agent.rmag"
    write_agent(path, data)
    assert read_agent(path).to_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["agent.rmag"]  # no temporary left behind


# --- diffs ----------------------------------------------------------------------

BASE = random_digests(4000, seed=11)
MORE = random_digests(1500, seed=12)


@pytest.mark.parametrize(
    ("old", "new", "old_kw", "new_kw"),
    [
        (BASE, np.concatenate([BASE, MORE]), {}, {}),  # adds only
        (BASE, BASE[500:], {}, {}),  # removes only
        (BASE, np.concatenate([BASE[300:], MORE]), {}, {}),  # both
        (BASE, BASE, {}, {}),  # nothing changes
        (BASE, BASE[:0], {"prefix_bits": 24}, {"prefix_bits": 24}),  # empties the set
        (BASE[:0], BASE, {"prefix_bits": 24}, {"prefix_bits": 24}),  # fills an empty set
        (BASE[:0], BASE[:0], {"prefix_bits": 24}, {"prefix_bits": 24}),
        (BASE, BASE[100:], {"prefix_bits": 24}, {"prefix_bits": 26}),  # prefix length changes
        (BASE, MORE, {"block_size": 64}, {"block_size": 300}),  # block size changes
        (BASE, np.concatenate([BASE, MORE]), {"prefix_bits": 64}, {"prefix_bits": 64}),
    ],
)
def test_applying_a_diff_gives_the_full_rebuild_byte_for_byte(
    old: np.ndarray, new: np.ndarray, old_kw: dict[str, int], new_kw: dict[str, int]
) -> None:
    kw_old = {"prefix_bits": 24, **old_kw}
    kw_new = {"prefix_bits": 24, **new_kw}
    a, b = build_agent(old, **kw_old), build_agent(new, **kw_new)
    diff = make_diff(a, b)
    assert apply_diff(a, diff) == b
    assert make_diff(a, b) == diff  # deterministic


def test_a_small_change_makes_a_small_diff() -> None:
    base = random_digests(50_000, seed=13)
    old = build_agent(base, prefix_bits=32)
    new = build_agent(np.concatenate([base[1000:], random_digests(5000, seed=14)]), prefix_bits=32)
    diff = make_diff(old, new)
    assert apply_diff(old, diff) == new
    # 5000 adds at about 22 bits, 1000 removals (stored as positions) at about 8 bits
    assert len(diff) < 16_000 < len(new) // 3


def test_a_diff_for_another_base_is_refused() -> None:
    a = build_agent(BASE, prefix_bits=24)
    b = build_agent(BASE[10:], prefix_bits=24)
    other = build_agent(MORE, prefix_bits=24)
    with pytest.raises(PatternError, match="made for base"):
        apply_diff(other, make_diff(a, b))


def _diff() -> tuple[bytes, bytes, bytes]:
    a = build_agent(BASE, prefix_bits=24)
    b = build_agent(np.concatenate([BASE[50:], MORE]), prefix_bits=24)
    return a, b, make_diff(a, b)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d[:50], "truncated"),
        (lambda d: d[:-5], "truncated"),
        (lambda d: d + b"x", "trailing bytes"),
        (lambda d: d[:200] + bytes([d[200] ^ 4]) + d[201:], "SHA-256 mismatch"),
        (lambda d: rehash(b"RMAG" + d[4:]), "bad magic"),
        (lambda d: rehash(d[:6] + bytes([2]) + d[7:]), "flags"),
        # an added entry changed, trailer recomputed: it collides or the result differs
        (lambda d: rehash(d[:150] + bytes([d[150] ^ 1]) + d[151:]), "result|already holds"),
        (lambda d: rehash(d[:151] + bytes([d[151] ^ 16]) + d[152:]), "result|already holds"),
        # the promised result digest changed, trailer recomputed
        (lambda d: rehash(d[:80] + bytes(32) + d[112:]), "does not match the diff's result"),
        # the last removal code lost: the removed set no longer decodes
        (lambda d: rehash(d[:-33] + b"\0" + d[-32:]), "removed"),
    ],
)
def test_corrupt_or_truncated_diffs_are_refused(mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    a, _, diff = _diff()
    with pytest.raises(PatternError, match=message):
        apply_diff(a, mangle(diff))


def test_a_diff_cannot_be_made_from_a_corrupt_file() -> None:
    a, b, _ = _diff()
    with pytest.raises(PatternError, match="SHA-256 mismatch"):
        make_diff(a[:-1] + bytes([a[-1] ^ 1]), b)
