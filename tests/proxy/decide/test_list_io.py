"""Rule files (proxy/decide/list_io.py): CSV and JSON round-trip every field through a real
store, plain lists read with comments and hosts-file lines, and a file with any bad row is
refused naming file, line and field, with nothing stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.decide import list_io
from proxy.decide.list_io import BadRows
from proxy.decide.lists import Actor, EntryKind, ListName, ListStore
from proxy.errors import ListError

B, A = ListName.BLOCKED, ListName.APPROVED
NOW = 1_800_000_000.0
SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
ALICE = Actor("alice", "console 10.0.0.5")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ListStore]:
    d = tmp_path / "a"
    d.mkdir(mode=0o700)
    s = ListStore.open(d, now=lambda: NOW)
    yield s
    s.close()


def fill(store: ListStore) -> None:
    store.add(B, [(None, "evil.example"), (None, SHA256)], note='ticket "7", urgent', actor=ALICE)
    store.add(B, [(EntryKind.KEYWORD, "Casino"), (EntryKind.REGEX, r"^https?://[^/]+\.bet/,x")],
              clients=["10.0.0.0/8", "2001:db8::/32"], expires=NOW + 86400)
    store.add(A, [(None, "http://good.example/app"), (None, "192.0.2.7")], note="büro")


def parse(text: str, fmt: str, default: ListName | None = None, **kw: object) -> list_io.Loaded:
    return list_io.parse(text.encode(), f"rules.{fmt}", fmt, default_list=default, now=NOW, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_then_import_gives_the_same_rules_and_the_same_file(
        store: ListStore, tmp_path: Path, fmt: str) -> None:
    fill(store)
    first = list_io.export(store.entries(), fmt)
    d = tmp_path / "b"
    d.mkdir(mode=0o700)
    with ListStore.open(d, now=lambda: NOW + 99) as other:
        loaded = parse(first, fmt)
        assert loaded.complete
        result = other.import_entries(loaded.entries, source=f"rules.{fmt}", actor=Actor("bob", "cli"))
        assert (result.added, result.moved, result.updated, result.unchanged) == (6, 0, 0, 0)
        assert other.entries() == store.entries()  # who added each and when travel with it
        assert list_io.export(other.entries(), fmt) == first
        again = other.import_entries(parse(first, fmt).entries, source="again", actor=ALICE)
        assert again.unchanged == 6 and again.added == 0


def test_the_csv_export_names_every_field(store: ListStore) -> None:
    fill(store)
    lines = list_io.export_csv(store.entries()).splitlines()
    assert lines[0] == "list,kind,value,clients,expires,note,added_by,added,origin"
    quoted = '"ticket ""7"", urgent"'
    assert f"blocked,domain,evil.example,,,{quoted},alice,2027-01-15T08:00:00Z,console 10.0.0.5" in lines
    assert any(line.startswith("blocked,keyword,casino,10.0.0.0/8 2001:db8::/32,2027-01-16T08:00:00Z,")
               for line in lines)
    doc = json.loads(list_io.export_json(store.entries()))
    assert doc["format"] == "rampart-lists" and doc["version"] == 1
    assert doc["rules"][0]["clients"] == [] and doc["rules"][0]["expires"] is None


def test_a_csv_row_may_leave_out_list_kind_and_more() -> None:
    loaded = parse("value,note\nevil.example,from a feed\nhttp://x.example/a,\n", "csv", B)
    assert [(e.list, e.kind, e.value, e.note) for e in loaded.entries] == [
        (B, EntryKind.DOMAIN, "evil.example", "from a feed"), (B, EntryKind.URL, "x.example/a", "")]
    json_rules = parse('[{"value": "a.example", "list": "approved", "clients": "10.0.0.0/8, 192.0.2.0/24"}]',
                       "json", B).entries
    assert [str(n) for n in json_rules[0].clients] == ["10.0.0.0/8", "192.0.2.0/24"]
    assert json_rules[0].list is A


def test_a_plain_list_with_comments_and_hosts_lines() -> None:
    text = ("# a blocklist\n\n"
            "evil.example\n"
            f"{SHA256.upper()}   # EICAR\n"
            "0.0.0.0 ads.example tracker.example\n"
            "127.0.0.1 localhost\n"
            "http://phish.example/login#frag\n"
            "evil.example\n")  # a repeat is one rule
    loaded = parse(text, "plain", B)
    assert not loaded.complete
    assert [(e.kind.value, e.value) for e in loaded.entries] == [
        ("domain", "evil.example"), ("hash", SHA256), ("domain", "ads.example"),
        ("domain", "tracker.example"), ("url", "phish.example/login")]
    assert [e.value for e in parse("12345\n", "plain", A, kind=EntryKind.DOMAIN).entries] == ["12345"]


@pytest.mark.parametrize(("fmt", "text", "line", "field", "why"), [
    ("csv", "list,value\nblocked,ok.example\nblocked,exa mple.test\n", 3, "value", "invalid character"),
    ("csv", "list,value\nblack,ok.example\n", 2, "list", "is not one of blocked or approved"),
    ("csv", "value,clients\nok.example,10.1.2.3/8\n", 2, "clients", "host bits set"),
    ("csv", "value,expires\nok.example,next week\n", 2, "expires", "neither a duration"),
    ("csv", "value,kind\nok.example,wildcard\n", 2, "kind", "is not one of hash, domain"),
    ("csv", "value,note\nok.example,\"two\nlines\"\n", 2, "note", "must be one line"),
    ("csv", "value,colour\nok.example,red\n", 1, "", "unknown column 'colour'"),
    ("csv", "list,kind\nblocked,domain\n", 1, "", "no 'value' column"),
    ("csv", "value\nok.example,extra\n", 2, "", "2 cells; the header has 1"),
    ("csv", "value,added\nok.example,yesterday\n", 2, "added", "'yesterday' is not valid"),
    ("json", '{"rules": [\n {"value": "ok.example"},\n {"value": 7}\n]}', 3, "value", "must be text"),
    ("json", '[\n{"value": "ok.example",\n "clients": [1]}]', 2, "clients", "must be text, not list"),
    ("json", '[{"value": "ok.example"}, {"value": "x.example", "colour": 1}]', 1, "colour", "unknown field"),
    ("json", '{"rules": [\n\n "ok.example"]}', 3, "", "rule #1 is not an object"),
    ("json", '{"rules": [}', 1, "", "not JSON"),
    ("json", '{"rule": []}', 1, "", "a rule file is"),
    ("json", '[{"value": "a.example", "list": "blocked"},\n {"value": "a.example", "list": "approved"}]',
     2, "value", "also on line 1, saying something else"),
    ("plain", "ok.example\n\n# c\nhttp://\n", 4, "value", "not a valid url"),
    ("plain", "ok.example\n" + "ab" * 31 + "a\n", 2, "value", "mistyped file hash"),
])
def test_a_bad_row_names_file_line_and_field_and_nothing_is_stored(
        store: ListStore, fmt: str, text: str, line: int, field: str, why: str) -> None:
    store.add(A, [(None, "keep.example")])
    with pytest.raises(BadRows) as info:
        parse(text, fmt, B)
    (got_line, got_field, message), *_ = info.value.problems
    assert (got_line, got_field) == (line, field), info.value.message
    assert why in message
    assert info.value.message.startswith(f"rules.{fmt}:{line}: ")
    assert info.value.message.endswith("nothing was imported")
    assert [e.value for e in store.entries()] == ["keep.example"]


def test_lines_are_counted_in_the_file_not_in_rows() -> None:
    with pytest.raises(BadRows) as info:
        parse('value,note\nok.example,"two\nlines"\nx..example,\n', "csv", B)
    assert [(p[0], p[1]) for p in info.value.problems] == [(2, "note"), (4, "value")]
    with pytest.raises(BadRows, match=r"rules\.json:5: field 'value'"):
        parse('{"format": "rampart-lists",\n "rules": [{"value": "a.example"},\n\n\n  {"value": "x..y"}]}',
              "json", B)


def test_every_bad_row_is_named_up_to_a_limit() -> None:
    rows = "".join(f"bad value {i}\n" for i in range(30))
    with pytest.raises(BadRows) as info:
        parse("ok.example\n" + rows, "plain", B)
    assert [p[0] for p in info.value.problems] == list(range(2, 2 + list_io.MAX_PROBLEMS))
    assert info.value.more and "stopped after 20 bad rows" in info.value.message


def test_a_file_that_is_not_utf8_or_names_no_list(tmp_path: Path) -> None:
    with pytest.raises(BadRows, match=r"rules.plain:2: not UTF-8"):
        list_io.parse(b"ok.example\n\xff\xfe\n", "rules.plain", "plain", default_list=B, now=NOW)
    with pytest.raises(BadRows, match="field 'list': empty; say blocked or approved"):
        parse("value\nok.example\n", "csv")
    big = tmp_path / "big.txt"
    with big.open("wb") as f:
        f.truncate(list_io.MAX_FILE_BYTES + 1)
    with pytest.raises(ListError, match=r"big\.txt is \d+ bytes; at most"):
        list_io.load(big, "plain", default_list=B, kind=None, now=NOW)


def test_importing_merges_moves_and_audits(store: ListStore) -> None:
    store.add(A, [(None, "evil.example")], note="keep me", clients=["10.0.0.0/8"])
    store.add(B, [(None, "stay.example")], note="kept")
    plain = parse("evil.example\nstay.example\nnew.example\n", "plain", B)
    result = store.import_entries(plain.entries, source="feed.txt", complete=False, actor=ALICE)
    assert (result.added, result.moved, result.updated, result.unchanged) == (1, 1, 0, 1)
    stay = store.get(EntryKind.DOMAIN, "stay.example")
    assert stay is not None and stay.note == "kept"  # a plain line does not wipe a rule's fields
    assert result.message("feed.txt") == (
        "imported feed.txt: 1 added, 1 moved from the other list, 0 updated, 1 unchanged")
    trail = store.audit(limit=3)
    assert [(a.action, a.value, a.detail.get("result")) for a in trail] == [
        ("import", "", None), ("import", "new.example", "added"), ("import", "evil.example", "moved")]
    assert trail[0].detail == {"file": "feed.txt", "added": 1, "moved": 1, "updated": 0, "unchanged": 1}
    assert trail[1].who == "alice" and trail[1].origin == "console 10.0.0.5"
    csv_rows = parse("list,value,note\nblocked,stay.example,new note\n", "csv")
    assert store.import_entries(csv_rows.entries, source="x.csv").updated == 1  # a full row replaces


def test_format_of_reads_the_extension() -> None:
    assert list_io.format_of(Path("a.CSV"), None) == "csv"
    assert list_io.format_of(Path("a.json"), None) == "json"
    assert list_io.format_of(Path("hosts"), None) == "plain"
    assert list_io.format_of(Path("a.csv"), "plain") == "plain"
