"""Tests for proxy.patterns.tables: the memory-mapped sorted table format."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from pathlib import Path

import numpy as np
import pytest

from proxy.errors import PatternError
from proxy.patterns.tables import (
    MIN_INDEX_BITS,
    RangeTable,
    Table,
    index_bits_for,
    write_range_table,
    write_table,
)


def sha(i: int) -> bytes:
    return hashlib.sha256(f"key-{i}".encode()).digest()


def nul_ended(n: int) -> list[bytes]:
    """SHA-256 digests that end in a NUL byte (numpy S32 scalars would drop it)."""
    out, i = [], 0
    while len(out) < n:
        d = sha(10_000 + i)
        if d[-1] == 0:
            out.append(d)
        i += 1
    return out


@pytest.fixture
def table(tmp_path: Path) -> Table:
    keys = [sha(i) for i in range(2000)] + nul_ended(3)
    keys.append(keys[5][:2] + b"\x00" * 30)  # shares a bucket with keys[5]
    ids = np.arange(len(keys), dtype=np.uint32)
    write_table(tmp_path / "t.tbl", keys, {"ident": ids, "flag": (ids % 7).astype(np.uint8)})
    t = Table.open(tmp_path / "t.tbl")
    t.expected = keys  # type: ignore[attr-defined]
    yield t
    t.close()


def test_every_key_finds_its_own_row(table: Table) -> None:
    keys: list[bytes] = table.expected  # type: ignore[attr-defined]
    ident = table.column("ident")
    for i, k in enumerate(keys):
        row = table.lookup(k)
        assert row is not None
        assert int(ident[row]) == i
        assert table.value("flag", row) == i % 7
    assert len(table) == len(keys)


def test_nul_ended_digest_is_distinct_from_its_prefix(table: Table) -> None:
    key = nul_ended(1)[0]
    assert table.lookup(key) is not None
    # the same digest with the last byte changed is absent, found by neither path
    other = key[:-1] + b"\x01"
    assert table.lookup(other) is None
    assert table.lookup_many([key, other]).tolist()[1] == -1
    assert table.key(table.lookup(key)) == key


@pytest.mark.parametrize(
    "probe",
    [
        pytest.param(lambda k: k[:-1] + bytes([k[-1] ^ 1]), id="last-byte-differs"),
        pytest.param(lambda k: bytes([k[0] ^ 0x80]) + k[1:], id="other-bucket"),
        pytest.param(lambda k: k[:2] + b"\xff" * 30, id="same-bucket-end"),
        pytest.param(lambda k: b"\x00" * 32, id="all-zero"),
        pytest.param(lambda k: b"\xff" * 32, id="all-ff"),
    ],
)
def test_missing_keys_are_missing(table: Table, probe) -> None:
    keys: list[bytes] = table.expected  # type: ignore[attr-defined]
    missing = [probe(k) for k in keys[:50]]
    missing = [m for m in missing if m not in set(keys)]
    assert missing
    assert all(table.lookup(m) is None for m in missing)
    assert (table.lookup_many(missing) == -1).all()


def test_key_misaligned_inside_window_is_not_a_hit(tmp_path: Path) -> None:
    # the probe occurs in the bucket's key block straddling two rows, not on a row boundary
    p = b"\xab\xcd"
    a = p + b"\x01" * 14 + p + b"\x02" * 14
    b = p + b"\x03" * 30
    probe = a[16:] + b[:16]
    assert probe[:2] == p and probe not in (a, b)
    write_table(tmp_path / "m.tbl", [a, b], {})
    with Table.open(tmp_path / "m.tbl") as t:
        assert t.key(0) + t.key(1) == a + b and probe in a + b
        assert t.lookup(probe) is None
        assert t.lookup_many([probe, a, b]).tolist() == [-1, 0, 1]


def test_lookup_many_matches_single_lookups(table: Table) -> None:
    keys: list[bytes] = table.expected  # type: ignore[attr-defined]
    rng = np.random.default_rng(7)
    probes = [keys[i] for i in rng.integers(0, len(keys), 500)]
    probes += [sha(100_000 + i) for i in range(100)]
    rows = table.lookup_many(probes)
    assert rows.tolist() == [-1 if (r := table.lookup(p)) is None else r for p in probes]
    matrix = np.frombuffer(b"".join(probes), dtype=np.uint8).reshape(-1, 32)
    assert table.lookup_many(matrix).tolist() == rows.tolist()
    assert table.lookup_many([]).tolist() == []


def test_first_word_collision_is_resolved(tmp_path: Path) -> None:
    # keys sharing their first 8 bytes take the batched path's slow fallback
    base = b"\x12\x34\x56\x78\x9a\xbc\xde\xf0"
    keys = [base + bytes([i]) * 24 for i in range(5)]
    write_table(tmp_path / "c.tbl", keys, {"v": np.arange(5, dtype=np.uint8)})
    with Table.open(tmp_path / "c.tbl") as t:
        probes = [*keys, base + b"\x09" * 24]
        rows = t.lookup_many(probes)
        assert [int(t.column("v")[r]) for r in rows[:5]] == [0, 1, 2, 3, 4]
        assert rows[5] == -1


def test_keys_are_stored_sorted(table: Table) -> None:
    raw = [bytes(r) for r in table.sorted_keys()]
    assert raw == sorted(table.expected)  # type: ignore[attr-defined]


def test_duplicates_are_refused(tmp_path: Path) -> None:
    keys = [sha(1), sha(2), sha(1)]
    with pytest.raises(PatternError, match=f"duplicate key {sha(1).hex()}"):
        write_table(tmp_path / "d.tbl", keys, {})
    assert not (tmp_path / "d.tbl").exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left


@pytest.mark.parametrize(
    ("keys", "columns", "message"),
    [
        ([b"\x01" * 32, b"\x02" * 31], {}, "key 1 is 31 bytes"),
        ([b"\x01" * 32], {"c": np.zeros(2, np.uint8)}, "column 'c' has shape"),
        ([b"\x01" * 32], {"c": np.zeros(1, np.float32)}, "unsigned integer"),
        ([b"\x01" * 32], {"bad name": np.zeros(1, np.uint8)}, "bad column name"),
        ([b"\x01" * 2], {}, "key width 2"),
    ],
)
def test_bad_input_is_refused(tmp_path: Path, keys, columns, message) -> None:
    with pytest.raises(PatternError, match=message):
        write_table(tmp_path / "x.tbl", keys, columns)


def test_empty_table(tmp_path: Path) -> None:
    write_table(tmp_path / "e.tbl", [], {"v": np.zeros(0, np.uint8)}, key_width=20)
    with Table.open(tmp_path / "e.tbl") as t:
        assert len(t) == 0
        assert t.lookup(b"\x00" * 20) is None
        assert t.lookup_many([b"\x00" * 20]).tolist() == [-1]


def test_wrong_key_length_is_an_error(table: Table) -> None:
    with pytest.raises(PatternError, match="key is 20 bytes, expected 32"):
        table.lookup(b"\x00" * 20)


def test_truncated_file_is_refused_naming_it(tmp_path: Path) -> None:
    write_table(tmp_path / "trunc.tbl", [sha(i) for i in range(100)],
                {"v": np.zeros(100, np.uint16)})
    size = (tmp_path / "trunc.tbl").stat().st_size
    for cut in (size - 1, size // 2, 40, 0):
        os.truncate(tmp_path / "trunc.tbl", cut)
        with pytest.raises(PatternError, match=r"trunc\.tbl: (truncated|empty file)"):
            Table.open(tmp_path / "trunc.tbl")


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"XXXX", "not a Rampart table"),
        (4, b"\x09\x00", "table format 9 not supported"),
        (12, b"\x30\x00\x00\x00", "bad index bits"),
    ],
)
def test_corrupt_header_is_refused(tmp_path: Path, offset, value, message) -> None:
    path = tmp_path / "bad.tbl"
    write_table(path, [sha(i) for i in range(10)], {})
    data = bytearray(path.read_bytes())
    data[offset : offset + len(value)] = value
    path.write_bytes(bytes(data))
    with pytest.raises(PatternError, match=f"bad.tbl: {message}"):
        Table.open(path)


def test_verify_detects_a_flipped_byte(tmp_path: Path) -> None:
    path = tmp_path / "flip.tbl"
    write_table(path, [sha(i) for i in range(10)], {"v": np.arange(10, dtype=np.uint8)})
    with Table.open(path) as t:
        t.verify()
    data = bytearray(path.read_bytes())
    data[-70] ^= 0xFF  # inside the key block
    path.write_bytes(bytes(data))
    with Table.open(path) as t, pytest.raises(PatternError, match=r"flip\.tbl: content digest"):
        t.verify()


def test_rewrite_is_atomic_and_open_tables_keep_the_old_data(tmp_path: Path) -> None:
    path = tmp_path / "swap.tbl"
    write_table(path, [sha(1)], {"v": np.array([1], np.uint8)})
    old = Table.open(path)
    write_table(path, [sha(2)], {"v": np.array([2], np.uint8)})
    new = Table.open(path)
    assert old.lookup(sha(1)) == 0 and old.lookup(sha(2)) is None
    assert new.lookup(sha(2)) == 0 and new.lookup(sha(1)) is None
    old.close()
    new.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["swap.tbl"]


def test_close_while_a_view_is_held(tmp_path: Path) -> None:
    path = tmp_path / "v.tbl"
    write_table(path, [sha(i) for i in range(10)], {"v": np.arange(10, dtype=np.uint16)})
    t = Table.open(path)
    view = t.column("v")
    t.close()
    t.close()  # idempotent
    assert sorted(view.tolist()) == list(range(10))  # the map stays alive for the view
    with pytest.raises(PatternError, match="closed"):
        t.lookup(sha(1))
    with pytest.raises(PatternError, match="closed"):
        t.lookup_many([sha(1)])
    del view


def test_views_are_read_only(table: Table) -> None:
    with pytest.raises(ValueError):
        table.column("ident")[0] = 1


@pytest.mark.parametrize(
    ("count", "bits"),
    [(0, MIN_INDEX_BITS), (1_000_000, 16), (1_100_000, 17), (10_000_000, 20), (10**10, 24)],
)
def test_index_bits_grow_with_count(count: int, bits: int) -> None:
    assert index_bits_for(count) == bits


def test_large_table_uses_a_wider_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 256, size=(300_000, 16), dtype=np.uint8)
    keys = np.unique(keys.view("V16")).view(np.uint8).reshape(-1, 16)
    write_table(tmp_path / "big.tbl", keys, {}, index_bits=18)
    with Table.open(tmp_path / "big.tbl") as t:
        assert t.index_bits == 18
        probe = keys[rng.integers(0, len(keys), 1000)]
        assert (t.lookup_many(probe) >= 0).all()
        assert all(t.lookup(bytes(k)) is not None for k in probe[:200])


# ---------------------------------------------------------------- ranges


def v4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


@pytest.fixture
def ranges4(tmp_path: Path) -> RangeTable:
    starts = [v4("192.0.2.0"), v4("10.0.0.0"), v4("198.51.100.7"), v4("255.255.255.255")]
    ends = [v4("192.0.2.255"), v4("10.255.255.255"), v4("198.51.100.7"),
            v4("255.255.255.255")]
    write_range_table(tmp_path / "ip4.tbl", starts, ends,
                      {"id": np.array([1, 2, 3, 4], np.uint8)})
    t = RangeTable.open(tmp_path / "ip4.tbl")
    yield t
    t.close()


@pytest.mark.parametrize(
    ("ip", "ident"),
    [
        ("192.0.2.0", 1), ("192.0.2.77", 1), ("192.0.2.255", 1), ("192.0.3.0", None),
        ("10.0.0.0", 2), ("10.200.1.1", 2), ("9.255.255.255", None), ("11.0.0.0", None),
        ("198.51.100.7", 3), ("198.51.100.6", None), ("198.51.100.8", None),
        ("255.255.255.255", 4), ("0.0.0.0", None),
    ],
)
def test_ipv4_ranges(ranges4: RangeTable, ip: str, ident: int | None) -> None:
    row = ranges4.lookup_ip(ipaddress.IPv4Address(ip))
    assert (None if row is None else ranges4.value("id", row)) == ident


def test_ipv6_ranges_and_family_mismatch(tmp_path: Path) -> None:
    net = ipaddress.IPv6Network("2001:db8:bad::/48")
    write_range_table(tmp_path / "ip6.tbl", [net.network_address.packed],
                      [net.broadcast_address.packed], {"id": np.array([9], np.uint8)})
    with RangeTable.open(tmp_path / "ip6.tbl") as t:
        assert t.lookup_ip(ipaddress.IPv6Address("2001:db8:bad:ffff::1")) == 0
        assert t.lookup_ip(ipaddress.IPv6Address("2001:db8:bae::")) is None
        assert t.lookup_ip(ipaddress.IPv4Address("192.0.2.1")) is None


@pytest.mark.parametrize(
    ("starts", "ends", "message"),
    [
        ([v4("10.0.0.0"), v4("10.0.0.128")], [v4("10.0.0.200"), v4("10.0.0.255")], "overlaps"),
        ([v4("10.0.0.9")], [v4("10.0.0.1")], "ends before it starts"),
    ],
)
def test_bad_ranges_are_refused(tmp_path: Path, starts, ends, message) -> None:
    with pytest.raises(PatternError, match=message):
        write_range_table(tmp_path / "r.tbl", starts, ends, {})


def test_plain_table_is_not_a_range_table(tmp_path: Path) -> None:
    write_table(tmp_path / "p.tbl", [v4("10.0.0.1")], {})
    with pytest.raises(PatternError, match="not an IP range table"):
        RangeTable.open(tmp_path / "p.tbl")
