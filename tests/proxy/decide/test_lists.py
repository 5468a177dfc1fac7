"""Tests for proxy.decide.lists: classification, the SQLite store and snapshot matching."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.decide.lists import (
    FILENAME,
    MAX_BATCH,
    Entry,
    EntryKind,
    ListName,
    ListSnapshot,
    ListStore,
    classify,
)
from proxy.errors import ListError, RampartError
from proxy.model import FileQuery, HashKind
from proxy.wire.urls import canonicalize

MD5 = "44D88612FEA8A8F36DE82E1278ABB02F"
SHA1 = "3395856ce81f2b7382dee72602f798b642f14140"
SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"

B, A = ListName.BLOCKED, ListName.APPROVED
H, D, U = EntryKind.HASH, EntryKind.DOMAIN, EntryKind.URL


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1
        return self.t


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ListStore]:
    s = ListStore.open(tmp_path, now=Clock())
    yield s
    s.close()


# ---------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (MD5, None, (H, MD5.lower())),
        (SHA1, None, (H, SHA1)),
        (f"  {SHA256.upper()}  ", None, (H, SHA256)),
        ("Evil.Example", None, (D, "evil.example")),
        ("evil.example.", None, (D, "evil.example")),
        ("bücher.example", None, (D, "xn--bcher-kva.example")),
        ("192.0.2.7", None, (D, "192.0.2.7")),
        ("2001:DB8::1", None, (D, "2001:db8::1")),
        ("http://Example.test/x", None, (U, "example.test/x")),
        ("example.test/x", None, (U, "example.test/x")),
        ("https://example.test", None, (U, "example.test/")),
        ("example.test/a/../b?q=1", None, (U, "example.test/b?q=1")),
        # a forced kind wins over the form
        ("example.test", U, (U, "example.test/")),
        ("deadbeef" * 4, D, (D, "deadbeef" * 4)),
        ("DEADBEEF" * 5, H, (H, "deadbeef" * 5)),
    ],
)
def test_classify(value: str, kind: EntryKind | None, expected: tuple[EntryKind, str]) -> None:
    assert classify(value, kind) == expected


@pytest.mark.parametrize(
    ("value", "kind", "problem"),
    [
        ("", None, "empty"),
        ("   ", None, "empty"),
        ("evil..example", None, "not a valid domain"),
        ("exa mple.com", None, "invalid character"),
        ("*.evil.example", None, "subdomain"),
        ("mailto:x@example.com/", None, "not a valid url"),
        ("abc", H, "MD5, SHA-1 and SHA-256"),
        ("z" * 64, H, "not hexadecimal"),
        ("example.test/" + "a" * 3000, None, "longer than 2048"),
        ("example.test/" + "é" * 400, None, "longer than 2048 characters once normalised"),
    ],
)
def test_classify_rejects(value: str, kind: EntryKind | None, problem: str) -> None:
    with pytest.raises(ListError, match=problem) as info:
        classify(value, kind)
    if value.strip():
        assert value.strip()[:20] in info.value.message  # the message names the value


# ---------------------------------------------------------------- store


def test_add_show_move_remove_round_trip(store: ListStore, tmp_path: Path) -> None:
    assert (tmp_path / FILENAME).is_file()
    msgs = store.add(B, [(None, "Evil.Example"), (None, SHA256)], note="ticket 7")
    assert msgs == [
        "added domain evil.example to the blocked list",
        f"added hash {SHA256} to the blocked list",
    ]
    msgs = store.add(A, [(None, "http://good.example/app"), (D, "evil.example")])
    assert msgs[0] == "added url good.example/app to the approved list"
    assert msgs[1] == "moved domain evil.example from the blocked list to the approved list"
    assert store.add(A, [(None, "good.example/app")]) == [
        "url good.example/app is already on the approved list"
    ]

    blocked = store.entries(B)
    assert [(e.kind, e.value, e.note) for e in blocked] == [(H, SHA256, "ticket 7")]
    assert all(isinstance(e, Entry) and e.created > 0 for e in blocked)
    assert {(e.list, e.value) for e in store.entries()} == {
        (A, "evil.example"),
        (A, "good.example/app"),
        (B, SHA256),
    }

    assert store.remove([(None, "EVIL.example."), (None, SHA256.upper())]) == 2
    assert store.remove([(None, "not-there.example")]) == 0
    assert [e.value for e in store.entries()] == ["good.example/app"]
    assert store.remove([(None, "good.example/app")], name=B) == 0
    assert store.remove([(None, "good.example/app")], name=A) == 1


def test_entries_survive_reopen(tmp_path: Path) -> None:
    with ListStore.open(tmp_path) as s:
        s.add(B, [(None, "evil.example")])
    with ListStore.open(tmp_path) as s:
        assert [e.value for e in s.entries(B)] == ["evil.example"]
        assert s.entries(A) == []


def test_wal_mode(store: ListStore, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / FILENAME)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_bad_value_in_batch_writes_nothing(store: ListStore) -> None:
    store.add(A, [(None, "keep.example")])
    with pytest.raises(ListError, match=r"value #3: 'bad value' .*nothing was changed"):
        store.add(B, [(None, "new.example"), (None, "keep.example"), (None, "bad value")])
    assert [(e.list, e.value) for e in store.entries()] == [(A, "keep.example")]
    with pytest.raises(ListError, match="value #2"):
        store.remove([(None, "keep.example"), (H, "xyz")])
    assert [e.value for e in store.entries()] == ["keep.example"]


def test_failed_write_rolls_back_the_whole_batch(store: ListStore, tmp_path: Path) -> None:
    # Another writer's constraint makes the second insert fail inside the transaction.
    conn = sqlite3.connect(tmp_path / FILENAME)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON entries WHEN NEW.value = 'refused.example'"
        " BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
    )
    conn.commit()
    conn.close()
    with pytest.raises(ListError, match="refused by test"):
        store.add(B, [(None, "first.example"), (None, "refused.example")])
    assert store.entries() == []
    assert store.add(B, [(None, "first.example")]) == ["added domain first.example to the blocked list"]


def test_batch_and_note_are_bounded(store: ListStore) -> None:
    too_many = [(D, f"h{i}.example") for i in range(MAX_BATCH + 1)]
    with pytest.raises(ListError, match="more than"):
        store.add(B, too_many)
    with pytest.raises(ListError, match="note longer"):
        store.add(B, [(None, "a.example")], note="x" * 5000)
    with pytest.raises(ListError, match="one line"):
        store.add(B, [(None, "a.example")], note="a\nb")
    assert store.entries() == []


def test_second_store_sees_changes(tmp_path: Path) -> None:
    server = ListStore.open(tmp_path)
    cli = ListStore.open(tmp_path)
    try:
        assert server.changed()  # nothing read yet
        snap = server.snapshot()
        assert len(snap) == 0
        assert not server.changed()

        cli.add(B, [(None, "evil.example")])
        assert server.changed()
        assert server.changed()  # asking twice loses nothing
        snap = server.snapshot()
        assert snap.match_domain("a.evil.example") == (B, "evil.example")
        assert not server.changed()

        cli.remove([(None, "evil.example")])
        assert server.changed()
        assert server.snapshot().match_domain("evil.example") is None

        server.add(A, [(None, "own.example")])  # own commits count too
        assert server.changed()
        server.snapshot()
        assert not server.changed()
    finally:
        server.close()
        cli.close()


# ---------------------------------------------------------------- snapshot matching


def snap(*rules: tuple[ListName, str]) -> ListSnapshot:
    entries = []
    for name, text in rules:
        kind, value = classify(text)
        entries.append(Entry(name, kind, value, "", 0.0))
    return ListSnapshot(entries)


def match_file(s: ListSnapshot, q: FileQuery) -> tuple[ListName, str] | None:
    """A file's rule, as the engine asks for it (match_hexes, a batch's digests at once)."""
    return s.match_hexes([q.digest.hex()]).get(q.digest.hex())


def test_match_file() -> None:
    s = snap((B, SHA256), (A, MD5))
    assert match_file(s, FileQuery(HashKind.SHA256, bytes.fromhex(SHA256))) == (B, SHA256)
    assert match_file(s, FileQuery(HashKind.MD5, bytes.fromhex(MD5))) == (A, MD5.lower())
    other = hashlib.sha256(b"other").digest()
    assert match_file(s, FileQuery(HashKind.SHA256, other)) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("evil.example", (B, "evil.example")),
        ("a.evil.example", (B, "evil.example")),
        ("x.y.evil.example", (B, "evil.example")),
        ("A.Evil.Example.", (B, "evil.example")),
        ("notevil.example", None),
        ("evil.example.com", None),
        ("example", None),
        ("192.0.2.7", (B, "192.0.2.7")),
        ("192.0.2.8", None),
        ("2001:db8::1", (A, "2001:db8::1")),
    ],
)
def test_match_domain_covers_subdomains(name: str, expected: object) -> None:
    s = snap((B, "evil.example"), (B, "192.0.2.7"), (A, "2001:db8::1"))
    assert s.match_domain(name) == expected


def test_blocked_beats_approved_regardless_of_specificity() -> None:
    s = snap((A, "good.example"), (B, "bad.good.example"), (A, "x.bad.good.example"))
    assert s.match_domain("x.bad.good.example") == (B, "bad.good.example")
    assert s.match_domain("other.good.example") == (A, "good.example")

    s = snap((B, "evil.example"), (A, "www.evil.example"), (A, "www.evil.example/safe"))
    assert s.match_url(canonicalize("http://www.evil.example/safe/x")) == (B, "evil.example")

    s = snap((A, "ok.example"), (B, "ok.example/malware/"))
    assert s.match_url(canonicalize("http://ok.example/malware/x.exe")) == (
        B,
        "ok.example/malware/",
    )
    assert s.match_url(canonicalize("http://ok.example/index.html")) == (A, "ok.example")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://evil.example/", (B, "evil.example")),
        ("https://a.evil.example/x?y=1", (B, "evil.example")),
        ("http://notevil.example/", None),
        ("http://shop.example/checkout", (B, "shop.example/checkout")),
        ("http://shop.example/checkout/pay?id=1", (B, "shop.example/checkout")),
        ("HTTP://Shop.Example:8080//checkout", (B, "shop.example/checkout")),
        ("http://shop.example/", None),
        ("http://www.shop.example/checkout", None),  # a prefix is for its own host only
        ("http://shop.example/docs/a", (A, "shop.example/docs/")),
        ("http://192.0.2.7/login", (B, "192.0.2.7")),
        ("http://[2001:db8::1]/", (A, "2001:db8::1")),
        ("http://[2001:db8::1]/admin/x", (B, "[2001:db8::1]/admin")),
    ],
)
def test_match_url(url: str, expected: object) -> None:
    s = snap(
        (B, "evil.example"),
        (B, "http://shop.example/checkout"),
        (A, "shop.example/docs/"),
        (B, "192.0.2.7"),
        (A, "2001:db8::1"),
        (B, "http://[2001:db8::1]/admin"),
    )
    assert s.match_url(canonicalize(url)) == expected


def test_url_entries_explains_every_matching_rule() -> None:
    s = snap((A, "example.test"), (A, "a.example.test/x"), (A, "a.example.test/x/y"))
    found = s.url_entries(canonicalize("http://a.example.test/x/y/z"))
    assert [e.value for e in found] == ["a.example.test/x/y", "a.example.test/x", "example.test"]
    assert s.match_url(canonicalize("http://a.example.test/x/y/z")) == (A, "a.example.test/x/y")


def test_snapshot_counts(store: ListStore) -> None:
    store.add(B, [(None, "evil.example"), (None, SHA256), (None, MD5)])
    store.add(A, [(None, "good.example/x")])
    s = store.snapshot()
    assert len(s) == 4
    assert s.count(B) == 3
    assert s.count(B, H) == 2
    assert s.count(kind=U) == 1
    assert s.counts() == {  # keyword and regex counted too since issue 10
        "blocked": {"hash": 2, "domain": 1, "url": 0, "keyword": 0, "regex": 0},
        "approved": {"hash": 0, "domain": 0, "url": 1, "keyword": 0, "regex": 0},
    }
    assert len(ListSnapshot()) == 0
    assert ListSnapshot().match_url("http://a.example/") is None


# ---------------------------------------------------------------- file modes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022], ids=["umask000", "umask022"])
def test_the_database_and_its_sidecars_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        with ListStore.open(tmp_path / "data") as s:
            s.add(B, [(None, "evil.example")])
            made = sorted(p.name for p in (tmp_path / "data").iterdir())
            modes = {name: _mode(tmp_path / "data" / name) for name in made}
    finally:
        os.umask(old)
    assert made == [FILENAME, f"{FILENAME}-shm", f"{FILENAME}-wal"]
    assert modes == dict.fromkeys(made, 0o600)
    assert _mode(tmp_path / "data") == 0o700


def test_a_database_left_readable_by_an_older_release_is_narrowed(tmp_path: Path) -> None:
    with ListStore.open(tmp_path) as s:
        s.add(B, [(None, "evil.example")])
    (tmp_path / FILENAME).chmod(0o644)
    with ListStore.open(tmp_path) as s:
        assert _mode(tmp_path / FILENAME) == 0o600
        assert [e.value for e in s.entries(B)] == ["evil.example"]


def test_a_data_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    with pytest.raises(RampartError, match="writable by its group and other users"):
        ListStore.open(tmp_path)
    assert not (tmp_path / FILENAME).exists()
