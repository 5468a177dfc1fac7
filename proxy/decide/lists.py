"""The administrator's approved and blocked lists.

Entries live in SQLite (``DIR/lists.sqlite``, WAL mode) so the server, the
CLI (and the planned console) can all change them; each is a file hash, a domain (with
all its subdomains; an IP literal is a domain entry matching that IP) or a URL
prefix (a canonical expression without scheme). A value is on at most one
list: adding it to the other list moves it.

The request path never touches SQLite: the server takes an immutable
``ListSnapshot`` (sets and dicts in memory) and takes a new one when
``ListStore.changed()`` says another process or this one committed a change.
In a snapshot the blocked list always wins over the approved list, whatever
the specificity of the rules.
"""

from __future__ import annotations

import enum
import logging
import re
import sqlite3
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from proxy.errors import ListError, UrlError
from proxy.files import check_private_dir, create_private
from proxy.wire import urls

logger = logging.getLogger(__name__)

FILENAME = "lists.sqlite"
MAX_VALUE_LENGTH = 2048
MAX_NOTE_LENGTH = 1024
MAX_BATCH = 10_000
SCHEMA_VERSION = 1

_HEX = frozenset(string.hexdigits)
_HASH_LENGTHS = (32, 40, 64)  # MD5, SHA-1, SHA-256
_MIN_HASHLIKE = 20  # this many hex digits and no dot: a hash with digits missing, not a name
_CIDR = re.compile(r"[0-9A-Fa-f.:\[\]]+/[0-9]{1,3}")  # 10.0.0.0/8, 2001:db8::/32


class ListName(enum.Enum):
    BLOCKED = "blocked"
    APPROVED = "approved"


class EntryKind(enum.Enum):
    HASH = "hash"
    DOMAIN = "domain"
    URL = "url"


@dataclass(frozen=True, slots=True)
class Entry:
    list: ListName
    kind: EntryKind
    value: str
    note: str
    created: float


# ---------------------------------------------------------------- values


def classify(value: str, kind: EntryKind | None = None) -> tuple[EntryKind, str]:
    """Tell an entry's kind from its form (or check it against ``kind``) and normalise it.

    A 32/40/64-character hex string is a hash (lower case); anything with a
    scheme, a ``/`` or a ``?`` is a URL prefix (``urls.normalize_expression``);
    everything else is a domain or an IP (``urls.normalize_domain``).
    A guessed kind is also checked for the usual slips (``_doubt``): a mistyped hash
    or an IP range would otherwise be stored as a rule that never matches, so it is
    refused with a hint; a given ``kind`` insists and skips that check.
    Raises ``ListError`` naming the value and why it was refused.
    """
    text = value.strip()
    shown = text if len(text) <= 80 else text[:80] + "…"
    if not text:
        raise ListError("empty list value")
    if len(text) > MAX_VALUE_LENGTH:
        raise ListError(f"{shown!r}: longer than {MAX_VALUE_LENGTH} characters")
    if kind is None:
        kind = _guess_kind(text)
        doubt = _doubt(text, kind)
        if doubt:
            raise ListError(f"{shown!r} {doubt}")
    try:
        if kind is EntryKind.HASH:
            normal = _normalize_hash(text)
        elif kind is EntryKind.URL:
            normal = _normalize_url(text)
        else:
            normal = urls.normalize_domain(text)
    except (UrlError, ValueError) as e:
        raise ListError(f"{shown!r} is not a valid {kind.value}: {e}") from None
    if len(normal) > MAX_VALUE_LENGTH:  # percent-escaping can lengthen a URL
        raise ListError(f"{shown!r}: longer than {MAX_VALUE_LENGTH} characters once normalised")
    return kind, normal


def _guess_kind(text: str) -> EntryKind:
    if len(text) in _HASH_LENGTHS and all(c in _HEX for c in text):
        return EntryKind.HASH
    if "/" in text or "?" in text or "://" in text:
        return EntryKind.URL
    return EntryKind.DOMAIN


def _doubt(text: str, kind: EntryKind) -> str | None:
    """Why a value of a guessed kind is probably a slip, with the fix; None if it looks right.

    Each of these would be stored as a rule that never matches what was meant: a
    digest with a digit missing as a domain, ``12345`` or ``10.1.1`` as a domain
    (a URL host of that form is read as an IP address, so no query names it), an
    IP range as a URL prefix with the path ``/8``.
    """
    if kind is EntryKind.DOMAIN:
        if len(text) >= _MIN_HASHLIKE and all(c in _HEX for c in text):
            return (f"looks like a mistyped file hash: {len(text)} hex digits, but MD5, SHA-1 and "
                    "SHA-256 have 32, 40 and 64; check it, or add --kind domain if it is a name")
        last = text.rstrip(".").rpartition(".")[2]
        if last.isdigit() and urls.parse_ip(text.rstrip(".")) is None:
            return ("is neither a host name (its last label is a number) nor an IP address; "
                    "write an IPv4 address as four decimal numbers (192.0.2.7), "
                    "or add --kind domain to store it as a name anyway")
    elif kind is EntryKind.URL and _CIDR.fullmatch(text):
        address = text.partition("/")[0]
        if urls.parse_ip(address) is not None:
            return (f"is an IP range; lists hold single addresses, not ranges: add each address "
                    f"({address}, ...), or write a URL prefix with its scheme (http://{text})")
    return None


def _normalize_url(text: str) -> str:
    """A URL prefix rule, refused when its host is one the query door refuses (it could never match)."""
    normal = urls.normalize_expression(text)
    urls.check_host(urls.host_of(normal))
    return normal


def _normalize_hash(text: str) -> str:
    if len(text) not in _HASH_LENGTHS:
        raise ValueError(f"{len(text)} characters; MD5, SHA-1 and SHA-256 have 32, 40 or 64")
    if not all(c in _HEX for c in text):
        raise ValueError("not hexadecimal")
    return text.lower()


# ---------------------------------------------------------------- snapshot


class ListSnapshot:
    """An immutable in-memory view of both lists; every lookup is a few dict probes."""

    __slots__ = ("_counts", "_domains", "_hashes", "_prefixes")

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        hashes: dict[str, Entry] = {}
        domains: dict[str, Entry] = {}
        prefixes: dict[str, list[Entry]] = {}
        counts: dict[tuple[ListName, EntryKind], int] = {}
        for e in entries:
            key = (e.list, e.kind)
            counts[key] = counts.get(key, 0) + 1
            if e.kind is EntryKind.HASH:
                hashes[e.value] = e
            elif e.kind is EntryKind.DOMAIN:
                domains[e.value] = e
            else:
                prefixes.setdefault(urls.host_of(e.value), []).append(e)
        self._hashes = hashes
        self._domains = domains
        self._prefixes = {h: tuple(es) for h, es in prefixes.items()}
        self._counts = counts

    def __len__(self) -> int:
        return sum(self._counts.values())

    def count(self, name: ListName | None = None, kind: EntryKind | None = None) -> int:
        """How many entries are on a list (or both), of a kind (or all kinds)."""
        return sum(
            n
            for (ln, k), n in self._counts.items()
            if (name is None or ln is name) and (kind is None or k is kind)
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"blocked": {"hash": 3, "domain": 1, "url": 0}, "approved": {...}}``."""
        return {ln.value: {k.value: self._counts.get((ln, k), 0) for k in EntryKind} for ln in ListName}

    # -- lookups

    def match_hexes(self, hexes: Iterable[str]) -> dict[str, tuple[ListName, str]]:
        """Hash rules matching any of these lowercase hex digests (one set operation)."""
        if not self._hashes:
            return {}
        found = self._hashes.keys() & set(hexes)
        return {h: (self._hashes[h].list, self._hashes[h].value) for h in found}

    def match_url(self, canonical_url: str) -> tuple[ListName, str] | None:
        """The deciding entry for a canonical URL: any blocked rule beats every approved rule."""
        return _decide(self.url_entries(canonical_url))

    def match_domain(self, name: str) -> tuple[ListName, str] | None:
        """The deciding entry for a normalised domain name or IP text."""
        return _decide(self.domain_entries(name))

    def url_entries(self, canonical_url: str) -> list[Entry]:
        """Every entry matching the URL, most specific first (for explaining a decision)."""
        host = urls.host_of(canonical_url)
        found = self.domain_entries(host[1:-1] if host.startswith("[") else host)
        rules = self._prefixes.get(host)
        if rules:
            target = urls.strip_scheme(canonical_url)
            hits = [e for e in rules if target.startswith(e.value)]
            hits.sort(key=lambda e: len(e.value), reverse=True)
            found = hits + found
        return found

    def domain_entries(self, name: str) -> list[Entry]:
        """Every domain entry matching ``name`` or one of its parents, most specific first."""
        if not self._domains:
            return []
        name = name.lower().rstrip(".")
        if urls.parse_ip(name) is not None:
            e = self._domains.get(name)
            return [] if e is None else [e]
        found = []
        for suffix in urls.domain_suffixes(name):
            e = self._domains.get(suffix)
            if e is not None:
                found.append(e)
        return found


def _decide(found: list[Entry]) -> tuple[ListName, str] | None:
    if not found:
        return None
    for e in found:
        if e.list is ListName.BLOCKED:
            return e.list, e.value
    return found[0].list, found[0].value


# ---------------------------------------------------------------- store

_SIDECARS = ("-wal", "-shm", "-journal")


def _make_private(path: Path) -> None:
    """Create the database 0600 before SQLite does (it would make it 0644 minus the umask).

    SQLite gives the files it adds beside it (``-wal``, ``-shm``, ``-journal``)
    the database's mode; ones left by an older release are narrowed too.
    """
    create_private(path)
    for suffix in _SIDECARS:
        side = path.with_name(path.name + suffix)
        if side.exists():
            create_private(side)



class ListStore:
    """The lists in SQLite; every write is one transaction (all of a batch or nothing)."""

    def __init__(self, conn: sqlite3.Connection, now: Callable[[], float]) -> None:
        self._conn = conn
        self._now = now
        self._lock = threading.Lock()
        self._seen_version: int | None = None  # data_version when the last snapshot was read
        self._dirty = True  # this connection committed since the last snapshot

    @classmethod
    def open(cls, data_dir: Path, *, now: Callable[[], float] = time.time) -> ListStore:
        path = check_private_dir(data_dir) / FILENAME
        try:
            _make_private(path)
        except OSError as e:
            raise ListError(f"cannot open the list store {FILENAME}: {e.strerror or e}") from None
        try:
            conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            _create_schema(conn)
        except sqlite3.Error as e:
            raise ListError(f"cannot open the list store {FILENAME}: {e}") from e
        logger.debug("list store opened", extra={"file": FILENAME})
        return cls(conn, now)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ListStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes

    def add(
        self,
        name: ListName,
        values: Iterable[tuple[EntryKind | None, str]],
        note: str = "",
    ) -> list[str]:
        """Put values on a list; a value on the other list moves. Returns one message per value."""
        items = _validate(values)
        if len(note) > MAX_NOTE_LENGTH:
            raise ListError(f"note longer than {MAX_NOTE_LENGTH} characters")
        if any(c in note for c in "\r\n\x00"):
            raise ListError("note must be one line of text")
        other = ListName.APPROVED if name is ListName.BLOCKED else ListName.BLOCKED
        now = self._now()
        messages: list[str] = []
        added = moved = 0
        with self._write() as cur:
            for kind, value in items:
                row = cur.execute(
                    "SELECT list FROM entries WHERE kind = ? AND value = ?", (kind.value, value)
                ).fetchone()
                if row is None:
                    cur.execute(
                        "INSERT INTO entries (list, kind, value, note, created) VALUES (?, ?, ?, ?, ?)",
                        (name.value, kind.value, value, note, now),
                    )
                    messages.append(f"added {kind.value} {value} to the {name.value} list")
                    added += 1
                elif row[0] == name.value:
                    if note:
                        cur.execute(
                            "UPDATE entries SET note = ? WHERE kind = ? AND value = ?",
                            (note, kind.value, value),
                        )
                    messages.append(f"{kind.value} {value} is already on the {name.value} list")
                else:
                    cur.execute(
                        "UPDATE entries SET list = ?, note = ?, created = ? WHERE kind = ? AND value = ?",
                        (name.value, note, now, kind.value, value),
                    )
                    messages.append(
                        f"moved {kind.value} {value} from the {other.value} list to the {name.value} list"
                    )
                    moved += 1
        logger.info(
            "list entries added",
            extra={"list": name.value, "added": added, "moved": moved, "given": len(items)},
        )
        return messages

    def remove(
        self,
        values: Iterable[tuple[EntryKind | None, str]],
        *,
        name: ListName | None = None,
    ) -> int:
        """Remove values (normalised first) from whichever list holds them, or only ``name``."""
        items = _validate(values)
        removed = 0
        with self._write() as cur:
            for kind, value in items:
                if name is None:
                    cur.execute("DELETE FROM entries WHERE kind = ? AND value = ?", (kind.value, value))
                else:
                    cur.execute(
                        "DELETE FROM entries WHERE kind = ? AND value = ? AND list = ?",
                        (kind.value, value, name.value),
                    )
                removed += max(cur.rowcount, 0)
        logger.info("list entries removed", extra={"removed": removed, "given": len(items)})
        return removed

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            except sqlite3.Error as e:
                raise ListError(f"the list store refused the change: {e}") from e
            finally:
                cur.close()
            self._dirty = True

    # -- reads

    def entries(self, name: ListName | None = None) -> list[Entry]:
        with self._lock:
            return self._read_entries(name)

    def _read_entries(self, name: ListName | None) -> list[Entry]:
        sql = "SELECT list, kind, value, note, created FROM entries"
        args: tuple[str, ...] = ()
        if name is not None:
            sql += " WHERE list = ?"
            args = (name.value,)
        sql += " ORDER BY list, kind, value"
        out: list[Entry] = []
        for ln, kind, value, note, created in self._conn.execute(sql, args):
            try:
                out.append(Entry(ListName(ln), EntryKind(kind), value, note, float(created)))
            except (ValueError, TypeError):
                logger.warning("skipping a malformed list row", extra={"kind": str(kind)[:16]})
        return out

    def changed(self) -> bool:
        """Whether any process committed a change since the last ``snapshot()``."""
        with self._lock:
            if self._dirty or self._seen_version is None:
                return True
            return self._data_version() != self._seen_version

    def snapshot(self) -> ListSnapshot:
        """Read both lists into an immutable in-memory snapshot."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                version = self._data_version()
                entries = self._read_entries(None)
            finally:
                self._conn.execute("COMMIT")
            self._seen_version = version
            self._dirty = False
        return ListSnapshot(entries)

    def _data_version(self) -> int:
        row = self._conn.execute("PRAGMA data_version").fetchone()
        return int(row[0])


def _create_schema(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ListError(f"{FILENAME} has schema version {version}; this Rampart reads {SCHEMA_VERSION}")
    conn.execute(
        """CREATE TABLE IF NOT EXISTS entries (
            id INTEGER PRIMARY KEY,
            list TEXT NOT NULL CHECK (list IN ('blocked', 'approved')),
            kind TEXT NOT NULL CHECK (kind IN ('hash', 'domain', 'url')),
            value TEXT NOT NULL CHECK (length(value) BETWEEN 1 AND 2048),
            note TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            UNIQUE (kind, value)
        )"""
    )
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _validate(values: Iterable[tuple[EntryKind | None, str]]) -> list[tuple[EntryKind, str]]:
    """Classify every value before anything is written; refuse the batch on the first bad one."""
    items: list[tuple[EntryKind, str]] = []
    for kind, value in values:
        if len(items) >= MAX_BATCH:
            raise ListError(f"more than {MAX_BATCH} values in one change")
        if not isinstance(value, str):
            raise ListError(f"list value #{len(items) + 1} is not text")
        try:
            items.append(classify(value, kind))
        except ListError as e:
            raise ListError(f"value #{len(items) + 1}: {e.message}; nothing was changed") from None
    return items
