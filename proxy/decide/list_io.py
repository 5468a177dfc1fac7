"""Rule files: CSV and JSON (every field, both ways) and plain lists (import only).

- **CSV**: a header row, then one rule a row. Columns (any order; only ``value`` is
  required): ``list`` (blocked/approved), ``kind`` (empty: told from the value, as
  ``rampart lists add`` does), ``value``, ``clients`` (CIDR networks separated by spaces
  or commas; empty: every client), ``expires`` (ISO-8601 time, or a duration from now
  such as ``7d``; empty: never), ``note``, ``added_by``, ``added`` (ISO-8601), ``origin``.
- **JSON**: ``{"rules": [{...}, ...]}`` (export adds ``"format": "rampart-lists",
  "version": 1``) or a bare array; fields named as the CSV columns, ``clients`` a list.
- **plain**: one value a line (a hash, domain or URL prefix; ``--kind`` says which when
  the form does not), ``#`` starts a comment at the start of a line or after a space,
  blank lines are skipped; a hosts-file line (``0.0.0.0 ads.example``) gives its names.

A row without a list takes the one the importer names (``--blocked``/``--approved``).
Every row is read and checked before anything is stored; ``BadRows`` names each bad
one by file, line and field (up to ``MAX_PROBLEMS``), and then nothing is imported.
Exports are sorted by list, kind and value, times to the second, so exporting what an
export imported gives the same file.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.clock import parse_iso
from proxy.decide.list_rules import (
    MAX_NAME_LENGTH,
    MAX_NOTE_LENGTH,
    Entry,
    EntryKind,
    ListName,
    check_text,
    classify,
    clients_text,
    iso_time,
    parse_clients,
    parse_expiry,
)
from proxy.errors import ListError
from proxy.files import read_bounded

FORMATS = ("csv", "json", "plain")
EXPORT_FORMATS = ("csv", "json")
FIELDS = ("list", "kind", "value", "clients", "expires", "note", "added_by", "added", "origin")
MAX_FILE_BYTES = 64 << 20
MAX_ROWS = 500_000
MAX_PROBLEMS = 20
_SINKS = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1"})  # hosts-file addresses that block a name
_HOSTS_OWN = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost",
                        "ip6-loopback", "0.0.0.0"})
_COMMENT = re.compile(r"(?:^|\s)#.*")


class BadRows(ListError):
    """Rows an import refused: ``problems`` is (line, field, message) for each, in file order."""

    code = "bad_import"

    def __init__(self, name: str, problems: list[tuple[int, str, str]], more: bool = False) -> None:
        shown = [f"{name}:{line}: " + (f"field {fld!r}: " if fld else "") + msg
                 for line, fld, msg in problems]
        tail = f"; stopped after {MAX_PROBLEMS} bad rows" if more else ""
        super().__init__("; ".join(shown) + tail + "; nothing was imported")
        self.problems = problems
        self.lines = shown  # one text per problem: "FILE:LINE: field 'F': why"
        self.more = more


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a file holds: its rules, and whether each row states the whole rule."""

    entries: list[Entry]
    complete: bool


def format_of(path: Path, given: str | None) -> str:
    """The format given, else the file's extension (``.csv``, ``.json``), else plain."""
    if given:
        return given
    return {".csv": "csv", ".json": "json"}.get(path.suffix.lower(), "plain")


def load(path: Path, fmt: str, *, default_list: ListName | None, kind: EntryKind | None,
         now: float) -> Loaded:
    """Read and check a whole rule file (at most ``MAX_FILE_BYTES``)."""
    try:
        data = read_bounded(path, MAX_FILE_BYTES, error=ListError)
    except OSError as e:
        raise ListError(f"cannot read {path}: {e.strerror or e}") from None
    return parse(data, path.name, fmt, default_list=default_list, kind=kind, now=now)


def parse(data: bytes, name: str, fmt: str, *, default_list: ListName | None,
          kind: EntryKind | None = None, now: float) -> Loaded:
    if fmt not in FORMATS:
        raise ListError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise BadRows(name, [(line, "", f"not UTF-8 text (byte {e.start})")]) from None
    rows = _csv_rows(text, name) if fmt == "csv" else _json_rows(text, name) if fmt == "json" else None
    reader = _Reader(name, default_list, now)
    if rows is None:
        for line, value in _plain_rows(text):
            reader.take(line, {"value": value}, kind)
    else:
        for line, row in rows:
            reader.take(line, row, None)
    return Loaded(reader.finish(), complete=rows is not None)


class _Reader:
    """Turns rows into rules, keeping every problem (up to MAX_PROBLEMS) and duplicates apart."""

    def __init__(self, name: str, default_list: ListName | None, now: float) -> None:
        self.name, self.default_list, self.now = name, default_list, now
        self.problems: list[tuple[int, str, str]] = []
        self.more = False
        self.seen: dict[tuple[EntryKind, str], tuple[int, Entry]] = {}

    def take(self, line: int, row: dict[str, Any], kind: EntryKind | None) -> None:
        if len(self.seen) >= MAX_ROWS:
            raise BadRows(self.name, [(line, "", f"more than {MAX_ROWS} rules in one file")])
        try:
            e = self._entry(row, kind)
        except _Bad as bad:
            self._problem(line, bad.field, bad.message)
            return
        key = (e.kind, e.value)
        earlier = self.seen.get(key)
        if earlier is not None and earlier[1] != e:
            self._problem(line, "value", f"{e.kind.value} {e.value} is also on line {earlier[0]}, "
                                         "saying something else")
        elif earlier is None:
            self.seen[key] = (line, e)

    def _problem(self, line: int, fld: str, message: str) -> None:
        if len(self.problems) >= MAX_PROBLEMS:
            self.more = True
            raise BadRows(self.name, self.problems, more=True)
        self.problems.append((line, fld, message))

    def finish(self) -> list[Entry]:
        if self.problems:
            raise BadRows(self.name, self.problems, self.more)
        return [e for _, e in self.seen.values()]

    def _entry(self, row: dict[str, Any], kind: EntryKind | None) -> Entry:
        name = _field(row, "list", lambda t: ListName(t.strip().lower()) if t.strip() else None,
                      "blocked or approved") or self.default_list
        if name is None:
            raise _Bad("list", "empty; say blocked or approved (or give --blocked or --approved)")
        kind = _field(row, "kind", lambda t: EntryKind(t.strip().lower()) if t.strip() else None,
                      ", ".join(k.value for k in EntryKind)) or kind
        value = row.get("value")
        if not isinstance(value, str) or not value.strip():
            raise _Bad("value", "missing" if value in (None, "") else "must be text")
        kind, value = _field(row, "value", lambda t: classify(t, kind))
        return Entry(
            name, kind, value,
            note=_field(row, "note", lambda t: check_text(t, "note", MAX_NOTE_LENGTH)) or "",
            created=_field(row, "added", lambda t: parse_iso(t.strip()).timestamp() if t.strip() else 0.0)
            or 0.0,
            clients=_field(row, "clients", lambda t: parse_clients(re.split(r"[\s,]+", t.strip()))
                           if t.strip() else ()) or (),
            expires=_field(row, "expires", lambda t: parse_expiry(t, self.now, past_ok=True)
                           if t.strip() else None),
            added_by=_field(row, "added_by", lambda t: check_text(t, "added_by", MAX_NAME_LENGTH)) or "",
            origin=_field(row, "origin", lambda t: check_text(t, "origin", MAX_NAME_LENGTH)) or "",
        )


class _Bad(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _field(row: dict[str, Any], name: str, read: Any, expected: str = "") -> Any:
    """One field read by ``read`` (None when absent); its problem as ``_Bad`` naming it."""
    raw = row.get(name)
    if raw is None:
        return None
    if name == "clients" and isinstance(raw, list) and all(isinstance(c, str) for c in raw):
        raw = " ".join(raw)
    if not isinstance(raw, str):
        raise _Bad(name, f"must be text, not {type(raw).__name__}")
    try:
        return read(raw)
    except ListError as e:
        raise _Bad(name, e.message) from None
    except (ValueError, OverflowError):
        shown = raw if len(raw) <= 80 else raw[:80] + "…"
        raise _Bad(name, f"{shown!r} is not " + (f"one of {expected}" if expected else "valid")) from None


# ---------------------------------------------------------------- the three formats


def _csv_rows(text: str, name: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise BadRows(name, [(1, "", "empty file; a CSV file starts with a header row")]) from None
    except csv.Error as e:
        raise BadRows(name, [(1, "", f"not CSV: {e}")]) from None
    unknown = [h for h in header if h not in FIELDS]
    if unknown or "value" not in header or len(set(header)) != len(header):
        why = (f"unknown column {unknown[0]!r}" if unknown else "no 'value' column" if "value" not in header
               else "a column named twice")
        raise BadRows(name, [(1, "", f"{why}; columns are {', '.join(FIELDS)}")])
    out: list[tuple[int, dict[str, Any]]] = []
    start = 2
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                if len(cells) != len(header):
                    raise BadRows(name, [(start, "", f"{len(cells)} cells; the header has {len(header)}")])
                out.append((start, dict(zip(header, cells))))
            start = reader.line_num + 1
    except csv.Error as e:
        raise BadRows(name, [(reader.line_num, "", f"not CSV: {e}")]) from None
    return out


def _json_rows(text: str, name: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRows(name, [(e.lineno, "", f"not JSON: {e.msg} (column {e.colno})")]) from None
    rules = doc.get("rules") if isinstance(doc, dict) else doc
    if not isinstance(rules, list):
        raise BadRows(name, [(1, "", 'a rule file is {"rules": [...]} or a JSON array of rules')])
    starts = _element_starts(text, isinstance(doc, dict))
    newlines = [i for i, c in enumerate(text) if c == "\n"]
    out: list[tuple[int, dict[str, Any]]] = []
    problems: list[tuple[int, str, str]] = []
    for i, rule in enumerate(rules):
        line = bisect.bisect_left(newlines, starts[i]) + 1 if i < len(starts) else 1
        if not isinstance(rule, dict):
            problems.append((line, "", f"rule #{i + 1} is not an object"))
            continue
        extra = sorted(set(rule) - set(FIELDS))
        if extra:
            problems.append((line, extra[0], f"unknown field; fields are {', '.join(FIELDS)}"))
            continue
        out.append((line, rule))
    if problems:
        raise BadRows(name, problems[:MAX_PROBLEMS], more=len(problems) > MAX_PROBLEMS)
    return out


def _element_starts(text: str, in_object: bool) -> list[int]:
    """Where each element of the rules array starts (the text is valid JSON already)."""
    scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
    i = _skip(text, 0)
    if in_object:
        i += 1
        array_at = -1
        while True:
            i = _skip(text, i)
            if text[i] == "}":
                break
            key, i = scan(text, i)
            i = _skip(text, _skip(text, i) + 1)  # past ':'
            if key == "rules":
                array_at = i
            _, i = scan(text, i)
            i = _skip(text, i)
            if text[i] == ",":
                i += 1
        i = array_at
    starts: list[int] = []
    i = _skip(text, i + 1)  # past '['
    while text[i] != "]":
        starts.append(i)
        _, i = scan(text, i)
        i = _skip(text, i)
        if text[i] == ",":
            i = _skip(text, i + 1)
    return starts


def _skip(text: str, i: int) -> int:
    """Past the whitespace at ``i``."""
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _plain_rows(text: str) -> Iterator[tuple[int, str]]:
    for n, raw in enumerate(text.splitlines(), 1):
        words = _COMMENT.sub("", raw).split()
        if not words:
            continue
        if len(words) > 1 and words[0] in _SINKS:  # a hosts-file line
            for word in words[1:]:
                if word.lower() not in _HOSTS_OWN:
                    yield n, word
            continue
        yield n, " ".join(words)  # one value; more words are the value's problem to name


# ---------------------------------------------------------------- export


def _row(e: Entry) -> dict[str, str]:
    return {"list": e.list.value, "kind": e.kind.value, "value": e.value, "clients": clients_text(e.clients),
            "expires": iso_time(e.expires) if e.expires is not None else "", "note": e.note,
            "added_by": e.added_by, "added": iso_time(e.created) if e.created else "", "origin": e.origin}


def _sorted(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (e.list.value, e.kind.value, e.value))


def export_csv(entries: list[Entry]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_row(e) for e in _sorted(entries))
    return out.getvalue()


def export_json(entries: list[Entry]) -> str:
    """One rule a line, so an import's problems are named by line here too."""
    rules = []
    for e in _sorted(entries):
        row: dict[str, Any] = _row(e)
        row["clients"] = [str(n) for n in e.clients]
        row["expires"] = row["expires"] or None
        rules.append(json.dumps(row, ensure_ascii=False))
    body = ",\n".join(rules)
    return f'{{"format": "rampart-lists", "version": 1, "rules": [\n{body}\n]}}\n' if rules else (
        '{"format": "rampart-lists", "version": 1, "rules": []}\n')


def export(entries: list[Entry], fmt: str) -> str:
    if fmt not in EXPORT_FORMATS:
        raise ListError(f"export format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    return export_csv(entries) if fmt == "csv" else export_json(entries)
