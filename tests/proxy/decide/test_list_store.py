"""The list store's full rules (issue 10): scope, expiry, note and who/where/when stored and
read back, edits, the audit trail of every change, the keyword/regex limits, the poll a
running server makes (every kind, and expiry), and the migration of a version-1 file.

``data/lists_v1.sqlite`` was written by the list store as it was before issue 10 (commit
498b14c, ``ListStore.add`` of eight rules of every old kind, one forced with --kind).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.decide import lists as lists_mod
from proxy.decide.list_schema import MIGRATED_BY
from proxy.decide.lists import (
    FILENAME,
    SCHEMA_VERSION,
    Actor,
    EntryKind,
    ListName,
    ListStore,
    NoSuchRule,
)
from proxy.errors import ListError
from proxy.wire.urls import canonicalize

B, A = ListName.BLOCKED, ListName.APPROVED
H, D, U, K, R = (EntryKind.HASH, EntryKind.DOMAIN, EntryKind.URL, EntryKind.KEYWORD, EntryKind.REGEX)
ALICE = Actor("alice", "console 10.0.0.5")
BOB = Actor("bob", "cli")
V1 = Path(__file__).parent / "data" / "lists_v1.sqlite"
SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[ListStore]:
    s = ListStore.open(tmp_path, now=clock)
    yield s
    s.close()


def test_every_field_is_stored_and_read_back(tmp_path: Path, store: ListStore, clock: Clock) -> None:
    store.add(B, [(K, "Casino"), (R, r"^https?://[^/]+\.bet/")], note="policy 4",
              clients=["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"], expires=clock.t + 3600, actor=ALICE)
    store.close()
    with ListStore.open(tmp_path, now=clock) as again:
        keyword, regex = again.entries(B)
    assert (keyword.kind, keyword.value, regex.kind, regex.value) == (K, "casino", R, r"^https?://[^/]+\.bet/")
    assert [str(n) for n in keyword.clients] == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
    assert keyword.expires == clock.t + 3600 and not keyword.expired(clock.t)
    assert (keyword.note, keyword.added_by, keyword.origin, keyword.created) == (
        "policy 4", "alice", "console 10.0.0.5", clock.t)


def test_adding_again_updates_what_is_given_and_keeps_the_rest(store: ListStore, clock: Clock) -> None:
    store.add(B, [(None, "evil.example")], note="first", clients=["10.0.0.0/8"], actor=ALICE)
    assert store.add(B, [(None, "evil.example")]) == ["domain evil.example is already on the blocked list"]
    assert store.add(B, [(None, "evil.example")], expires=clock.t + 60, actor=BOB) == [
        "updated domain evil.example on the blocked list (expires)"]
    e = store.get(D, "evil.example")
    assert e is not None and e.note == "first" and [str(n) for n in e.clients] == ["10.0.0.0/8"]
    assert e.added_by == "alice"  # an edit is not a new rule: the audit says who edited
    assert store.add(A, [(None, "evil.example")], actor=BOB) == [
        "moved domain evil.example from the blocked list to the approved list"]
    moved = store.get(D, "evil.example")
    assert moved is not None
    assert (moved.clients, moved.expires, moved.note, moved.added_by) == ((), None, "", "bob")


def test_edit_changes_one_rule_and_says_when_there_is_none(store: ListStore, clock: Clock) -> None:
    store.add(B, [(None, "evil.example")], clients=["10.0.0.0/8"], expires=clock.t + 60)
    e = store.edit(None, "EVIL.example", note="checked", clients=[], expires=None, actor=ALICE)
    assert (e.note, e.clients, e.expires, e.list) == ("checked", (), None, B)
    assert store.edit(D, "evil.example", to=A).list is A
    with pytest.raises(NoSuchRule, match=r"no list holds domain other\.example") as info:
        store.edit(None, "other.example", note="x")
    assert info.value.status == 404
    with pytest.raises(ListError, match="already past"):
        store.edit(None, "evil.example", expires=clock.t - 1)


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"clients": ["10.1.2.3/8"]}, "has host bits set; did you mean 10.0.0.0/8"),
    ({"clients": ["ten.example"]}, "'ten.example' is not an IP address or CIDR network"),
    ({"clients": [f"10.0.{i}.0/24" for i in range(65)]}, "more than 64 client networks"),
    ({"expires": 1.0}, "expiry is already past"),
    ({"note": "a\x00b"}, "note must be one line"),
])
def test_bad_fields_change_nothing(store: ListStore, kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ListError, match=problem):
        store.add(B, [(None, "evil.example")], **kwargs)  # type: ignore[arg-type]
    assert store.entries() == [] and store.audit() == []


def test_every_change_is_audited_with_who_when_what_and_where(store: ListStore, clock: Clock) -> None:
    store.add(B, [(None, "evil.example"), (None, SHA256)], note="n", actor=ALICE)
    clock.t += 10
    store.add(A, [(None, "evil.example")], actor=BOB)
    store.edit(None, "evil.example", note="looked at", actor=ALICE)
    store.remove([(None, SHA256)], actor=BOB)
    trail = store.audit()
    assert [(a.action, a.who, a.origin, a.list, a.kind, a.value) for a in trail] == [
        ("remove", "bob", "cli", "blocked", "hash", SHA256),
        ("edit", "alice", "console 10.0.0.5", "approved", "domain", "evil.example"),
        ("move", "bob", "cli", "approved", "domain", "evil.example"),
        ("add", "alice", "console 10.0.0.5", "blocked", "hash", SHA256),
        ("add", "alice", "console 10.0.0.5", "blocked", "domain", "evil.example"),
    ]
    assert trail[1].detail == {"note": ["", "looked at"]}
    assert trail[2].detail["from"] == "blocked" and trail[2].at == clock.t
    assert trail[4].detail == {"clients": "", "expires": None, "note": "n"}
    assert "alice (console 10.0.0.5)  add     blocked domain evil.example  [note n]" in trail[4].line()
    assert [a.action for a in store.audit(value="evil.example", limit=1)] == ["edit"]
    with pytest.raises(ListError):
        store.add(B, [(None, "ok.example"), (None, "bad value")], actor=ALICE)
    assert len(store.audit()) == 5  # a refused batch leaves no trail either


def test_a_regex_that_cannot_compile_is_refused_and_the_pattern_rules_are_bounded(
        store: ListStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad, why in [("(a)\\1", "invalid escape sequence"), ("(?=x)", "invalid perl operator"),
                     (".*", "matches the empty text"), ("x" * 6000, "longer than 2048"),
                     ("(((a{100}){100}){100})", "invalid repetition size"),
                     ("(abc|def){1000}", "too complex")]:
        with pytest.raises(ListError, match=why):
            store.add(B, [(R, bad)])
    with pytest.raises(ListError, match="shorter than 3"):
        store.add(B, [(K, "ab")])
    monkeypatch.setattr(lists_mod, "MAX_PATTERN_RULES", 2)
    store.add(B, [(K, "one"), (K, "two")])
    with pytest.raises(ListError, match="more than 2 keyword and regex rules"):
        store.add(A, [(R, "three")])
    assert [e.value for e in store.entries()] == ["one", "two"]


def test_a_running_server_sees_every_kind_change(tmp_path: Path, clock: Clock) -> None:
    server = ListStore.open(tmp_path, now=clock)
    cli = ListStore.open(tmp_path, now=clock)
    try:
        server.snapshot()
        url = canonicalize("http://www.shop.example/cart/pay.exe?id=casino")
        for kind, value, matched in [(D, "shop.example", "shop.example"), (U, "www.shop.example/cart", None),
                                     (K, "casino", None), (R, r"\.exe", None)]:
            assert not server.changed()
            cli.add(B, [(kind, value)], clients=["10.0.0.0/8"])
            assert server.changed()
            snap = server.snapshot()
            found = snap.url_entries(url, "10.1.1.1")
            assert any(e.kind is kind for e in found) and snap.url_entries(url, "192.0.2.1") == []
            del matched
        assert server.snapshot().match_url(url, "10.1.1.1") == (B, "www.shop.example/cart")
    finally:
        server.close()
        cli.close()


def test_the_poll_drops_a_rule_when_it_expires(store: ListStore, clock: Clock) -> None:
    store.add(B, [(None, "soon.example")], expires=clock.t + 30)
    snap = store.snapshot()
    assert snap.match_domain("soon.example") == (B, "soon.example")
    assert not store.changed()
    clock.t += 30
    assert store.changed()  # nothing was committed: the expiry itself asks for a new snapshot
    assert store.snapshot().match_domain("soon.example") is None
    assert not store.changed()
    (e,) = store.entries()
    assert e.expired(clock.t)  # still listed, as expired


def test_a_version_1_file_is_migrated_without_losing_a_rule(tmp_path: Path, clock: Clock) -> None:
    shutil.copy(V1, tmp_path / FILENAME)
    (tmp_path / FILENAME).chmod(0o600)
    old = sqlite3.connect(tmp_path / FILENAME)
    before = old.execute("SELECT list, kind, value, note, created FROM entries ORDER BY id").fetchall()
    assert old.execute("PRAGMA user_version").fetchone()[0] == 1
    old.close()
    with ListStore.open(tmp_path, now=clock) as s:
        after = s.entries()
        trail = s.audit()
        s.add(B, [(K, "casino")])  # the new kinds are allowed by the new table
        snap = s.snapshot()
    assert sorted((e.list.value, e.kind.value, e.value, e.note, e.created) for e in after) == sorted(before)
    assert len(before) == 8 and all(e.added_by == MIGRATED_BY and not e.clients for e in after)
    assert [(a.action, a.detail) for a in trail] == [("migrate", {"from": 1, "to": 2, "rules": 8})]
    assert snap.match_url(canonicalize("http://a.evil.example/")) == (B, "evil.example")
    assert snap.match_domain("12345") == (A, "12345")
    conn = sqlite3.connect(tmp_path / FILENAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    with ListStore.open(tmp_path, now=clock) as s:  # opening again migrates nothing more
        assert len(s.entries()) == 9 and [a.action for a in s.audit()][-1] == "migrate"


def test_a_failed_migration_leaves_the_old_file_as_it_was(tmp_path: Path, clock: Clock,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(V1, tmp_path / FILENAME)
    (tmp_path / FILENAME).chmod(0o600)
    from proxy.decide import list_schema

    monkeypatch.setattr(list_schema, "ENTRIES", "CREATE TABLE entries (broken")
    with pytest.raises(ListError, match="cannot open the list store"):
        ListStore.open(tmp_path, now=clock)
    conn = sqlite3.connect(tmp_path / FILENAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 8
    conn.close()


def test_a_newer_schema_is_refused(tmp_path: Path, clock: Clock) -> None:
    with ListStore.open(tmp_path, now=clock):
        pass
    conn = sqlite3.connect(tmp_path / FILENAME)
    conn.execute("PRAGMA user_version = 9")
    conn.close()
    with pytest.raises(ListError, match="schema version 9; this Rampart reads 2"):
        ListStore.open(tmp_path, now=clock)
