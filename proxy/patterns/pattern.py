"""A pattern directory: its layout, opening it, and answering lookups
(docs/architecture.md, “Patterns and updates”).

``proxy.patterns.build`` builds one from sources; ``proxy.patterns.manifest`` reads
its manifest (``read_manifest`` and ``pattern_info`` are re-exported here).

Layout of a pattern directory::

    manifest.json        {"format": 1, "version": "YYYYMMDDHH", "created": ISO-8601 UTC,
                          "files": {"strings.json": {"size", "sha256"}},
                          "patterns": {NAME: {"version", "entries",
                                              "files": {FILE: {"size", "sha256", "entries"}}}}}
    strings.json         {"format": 1, "threats": [...], "categories": [...]}; id 0 is "none"
    file-md5.tbl         smart-scan       key: MD5 (16 bytes)      verdict u1, threat u4
    file-sha1.tbl        smart-scan       key: SHA-1 (20 bytes)    verdict u1, threat u4
    file-sha256.tbl      smart-scan       key: SHA-256 (32 bytes)  verdict u1, threat u4
    web-blocking.tbl     web-blocking     key: SHA-256 of a URL expression; dangerous,
                                          highly_suspicious and safe; rating u1, score u1,
                                          category u2
    suspicious-urls.tbl  suspicious-urls  the same, for suspicious and untested
    domains.tbl          domain-ip        key: SHA-256 of a normalised domain name; as above
    ip4.tbl, ip6.tbl     domain-ip        range tables over big-endian addresses; as above
                                          plus prefix u1 (the source network's length)
    agent.bin            agent            the Smart Scan Agent Pattern (``proxy.patterns.agent``) over
                                          every malicious and suspicious MD5, SHA-1 and
                                          SHA-256 digest (clean ones need no query)

Tables are ``proxy.patterns.tables`` files; an installed version may hold one updated by
hourly diffs as ``FILE.base`` + ``FILE.overlay`` instead, listed under ``"overlays"``
(``proxy.patterns.overlays``), opened as an ``OverlaidTable`` that answers the same.
Codes: verdict 1 malicious, 2 suspicious, 3 clean; rating 1 dangerous, 2 highly_suspicious,
3 suspicious, 4 safe, 5 untested. Readers ignore patterns and top-level keys they do not know, so
later issues can add signatures, diffs and an agent pattern to the manifest.

A build given a ``base`` (the previous build) keeps the base's strings at
their ids, so strings.json only grows (see ``proxy.patterns.build``).

Web, domain and IP lookups return the most severe match; among equally severe
ones the most specific: the longest host (domain suffix), then the longest path.
(Expression order is not specificity: Safe Browsing lists ``host/`` before
``host/a/``.)
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from proxy.errors import PatternError
from proxy.files import read_json
from proxy.model import FileQuery, HashKind, Rating, Verdict
from proxy.patterns.layout import (
    DOMAIN_IP,
    DOMAINS_TABLE,
    FILE_TABLES,
    IP4_TABLE,
    IP6_TABLE,
    STRINGS_FILE,
    SUSPICIOUS_URLS,
    SUSPICIOUS_URLS_TABLE,
    WEB_BLOCKING,
    WEB_BLOCKING_TABLE,
)
from proxy.patterns.manifest import MANIFEST_FORMAT as MANIFEST_FORMAT
from proxy.patterns.manifest import PatternManifest, check_listed, manifest_info
from proxy.patterns.manifest import pattern_info as pattern_info
from proxy.patterns.manifest import read_manifest as read_manifest
from proxy.patterns.overlays import Overlay, open_table
from proxy.patterns.table_overlay import OverlaidTable
from proxy.patterns.tables import RangeTable, Table
from proxy.wire import urls as _urls

logger = logging.getLogger(__name__)

MAX_STRINGS_BYTES = 256 << 20

WEB_BLOCKING_RATINGS = frozenset({Rating.DANGEROUS, Rating.HIGHLY_SUSPICIOUS, Rating.SAFE})

VERDICT_CODES = {Verdict.MALICIOUS: 1, Verdict.SUSPICIOUS: 2, Verdict.CLEAN: 3}
RATING_CODES = {
    Rating.DANGEROUS: 1,
    Rating.HIGHLY_SUSPICIOUS: 2,
    Rating.SUSPICIOUS: 3,
    Rating.SAFE: 4,
    Rating.UNTESTED: 5,
}
_VERDICT_BY_CODE = {c: v for v, c in VERDICT_CODES.items()}
_RATING_BY_CODE = {c: r for r, c in RATING_CODES.items()}
_FILE_COLUMNS = {"verdict": "<u1", "threat": "<u4"}
_RATED_COLUMNS = {"rating": "<u1", "score": "<u1", "category": "<u2"}
_IP_COLUMNS = {**_RATED_COLUMNS, "prefix": "<u1"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AnyTable = Table | OverlaidTable  # a table file, or one held as base + overlay (hourly diffs)


@dataclass(frozen=True, slots=True)
class FileHit:
    verdict: Verdict
    threat: str | None  # None for a clean hash


@dataclass(frozen=True, slots=True)
class WebHit:
    rating: Rating
    score: int
    category: str | None
    pattern: str  # which pattern matched: web-blocking, suspicious-urls or domain-ip


# ---------------------------------------------------------------- lookups


def _specificity(expression: str) -> tuple[int, int]:
    """Longer host first, then longer path: ``a.b.test/`` > ``b.test/x/`` > ``b.test/``."""
    host, _, path = expression.partition("/")
    return len(host), len(path)


def load_strings(path: Path) -> tuple[list[str], list[str]]:
    """The threat names and categories of a strings.json, bounded and checked."""
    try:
        raw = read_json(path, MAX_STRINGS_BYTES, error=PatternError, label=STRINGS_FILE)
    except OSError as e:
        raise PatternError(f"{STRINGS_FILE}: cannot read: {e.strerror or e}") from None
    if not isinstance(raw, dict):
        raise PatternError(f"{STRINGS_FILE}: not an object")
    threats, categories = raw.get("threats"), raw.get("categories")
    for what, seq in (("threats", threats), ("categories", categories)):
        if not isinstance(seq, list) or not seq or not all(isinstance(s, str) for s in seq):
            raise PatternError(f"{STRINGS_FILE}: {what!r} is not a list of strings")
    assert isinstance(threats, list) and isinstance(categories, list)
    return threats, categories


class PatternSet:
    """Every table of one pattern directory, opened read-only; lookups are thread-safe."""

    def __init__(self, directory: Path, manifest: PatternManifest, tables: dict[str, AnyTable],
                 threats: list[str], categories: list[str]) -> None:
        self.directory = directory
        self._manifest = manifest
        self._tables = tables
        self._threats = threats
        self._categories = categories
        self._files = {kind: tables[name] for kind, name in FILE_TABLES.items()}
        self._file_hits: dict[tuple[int, int], FileHit] = {}

    @property
    def version(self) -> str:
        return self._manifest.version

    @property
    def created(self) -> datetime:
        return self._manifest.created

    @classmethod
    def open(cls, directory: Path, *, verify: bool = True) -> PatternSet:
        """Open and validate a pattern directory.

        Sizes are always checked against the manifest; with ``verify`` (the
        default) every file's SHA-256 too, which reads each file once.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        for spec in manifest.files:
            check_listed(directory, spec, manifest, verify=verify)
        threats, categories = load_strings(directory / STRINGS_FILE)
        tables: dict[str, AnyTable] = {}
        ov = manifest.overlays
        try:
            for kind, name in FILE_TABLES.items():
                tables[name] = _open_checked(directory / name, kind.size, _FILE_COLUMNS, ov)
            for name in (WEB_BLOCKING_TABLE, SUSPICIOUS_URLS_TABLE, DOMAINS_TABLE):
                tables[name] = _open_checked(directory / name, 32, _RATED_COLUMNS, ov)
            tables[IP4_TABLE] = _open_checked(directory / IP4_TABLE, 4, _IP_COLUMNS, ranges=True)
            tables[IP6_TABLE] = _open_checked(directory / IP6_TABLE, 16, _IP_COLUMNS, ranges=True)
        except BaseException:
            for t in tables.values():
                t.close()
            raise
        logger.info("opened pattern %s version %s", directory.name, manifest.version)
        return cls(directory, manifest, tables, threats, categories)

    def close(self) -> None:
        for t in self._tables.values():
            t.close()

    def __enter__(self) -> PatternSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def compacted(self) -> bool:
        """A table is served as base + overlay while its full file is in the directory now
        (``proxy.updates.compaction`` wrote it): opening the directory again serves the
        plain table, whose lookups skip the overlay's dict probe."""
        return any(isinstance(t, OverlaidTable) and t.path.is_file() for t in self._tables.values())

    def table(self, name: str) -> AnyTable:
        """One table by file name (e.g. ``file-sha256.tbl``), for the agent pattern and diffs.

        An overlaid one (``OverlaidTable``) answers ``column`` and ``sorted_keys`` as the
        merged table, built in memory; row numbers from its lookups are handles for
        ``value`` and ``values``, not indexes into those arrays.
        """
        return self._tables[name]

    # ------------------------------------------------------------ decoding

    def _file_hit(self, table: AnyTable, verdict_code: int, threat_id: int) -> FileHit:
        hit = self._file_hits.get((verdict_code, threat_id))
        if hit is None:
            verdict = _VERDICT_BY_CODE.get(verdict_code)
            if verdict is None or not 0 <= threat_id < len(self._threats):
                raise PatternError(f"{table.path.name}: bad record ({verdict_code}, {threat_id})")
            hit = FileHit(verdict, self._threats[threat_id] or None)
            self._file_hits[(verdict_code, threat_id)] = hit
        return hit

    def _web_hit(self, table: AnyTable, row: int, pattern: str) -> WebHit:
        hit = self.rated_hit(table.value("rating", row), table.value("category", row),
                             table.value("score", row), pattern)
        if hit is None:
            raise PatternError(f"{table.path.name}: bad record at row {row}")
        return hit

    def rated_hit(self, rating_code: int, category_id: int, score: int, pattern: str) -> WebHit | None:
        """What a rated table's record (its rating, category and score columns) says; None
        for a bad record (a rating code or category this pattern does not define)."""
        rating = _RATING_BY_CODE.get(rating_code)
        if rating is None or category_id >= len(self._categories):
            return None
        return WebHit(rating, score, self._categories[category_id] or None, pattern)

    # ------------------------------------------------------------ files

    def lookup_file(self, q: FileQuery) -> FileHit | None:
        table = self._files[q.kind]
        row = table.lookup(q.digest)
        if row is None:
            return None
        return self._file_hit(table, table.value("verdict", row), table.value("threat", row))

    def lookup_files(self, qs: Sequence[FileQuery]) -> list[FileHit | None]:
        """Many hashes at once, vectorised per hash kind; results in query order."""
        out: list[FileHit | None] = [None] * len(qs)
        for kind, table in self._files.items():
            idx = [i for i, q in enumerate(qs) if q.kind is kind]
            if not idx:
                continue
            rows = table.lookup_many([qs[i].digest for i in idx])
            hit_at = np.flatnonzero(rows >= 0)
            if not hit_at.size:
                continue
            hit_rows = rows[hit_at]
            verdicts = table.values("verdict", hit_rows).tolist()
            threats = table.values("threat", hit_rows).tolist()
            for j, v, t in zip(hit_at.tolist(), verdicts, threats, strict=True):
                out[idx[j]] = self._file_hit(table, v, t)
        return out

    def lookup_joined(self, kind: HashKind, raw: bytes) -> list[tuple[FileHit, list[int]]]:
        """Hits among ``raw``, the digests of one kind laid end to end.

        Returns each distinct hit with the indexes where it occurs: the query door's
        batch path, with no per-item object before or after the vectorised lookup.
        """
        table = self._files.get(kind)
        size = kind.size
        n = len(raw) // size
        if table is None or not n:
            return []
        if n <= 8:  # a few: the scalar path beats numpy's per-call overhead
            out = []
            for j in range(n):
                row = table.lookup(raw[j * size:(j + 1) * size])
                if row is not None:
                    hit = self._file_hit(table, table.value("verdict", row), table.value("threat", row))
                    out.append((hit, [j]))
            return out
        rows = table.lookup_many(np.frombuffer(raw, dtype=np.uint8).reshape(n, size))
        hit_at = np.flatnonzero(rows >= 0)
        if not hit_at.size:
            return []
        hit_rows = rows[hit_at]
        codes = (table.values("verdict", hit_rows).astype(np.uint64) << np.uint64(32)) | table.values(
            "threat", hit_rows).astype(np.uint64)
        uniq = np.unique(codes)
        if len(uniq) == 1:
            groups = [hit_at.tolist()]
        elif len(uniq) <= 8:  # a few distinct hits: one mask each costs less than sorting by hit
            groups = [hit_at[codes == c].tolist() for c in uniq]
        else:
            inverse = np.searchsorted(uniq, codes)
            order = np.argsort(inverse, kind="stable")
            bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
            groups = [g.tolist() for g in np.split(hit_at[order], bounds)]
        return [(self._file_hit(table, int(c >> 32), int(c & 0xFFFFFFFF)), g)
                for c, g in zip(uniq.tolist(), groups, strict=True)]

    # ------------------------------------------------------------ web

    def _best(self, candidates: Iterable[str], names: Sequence[tuple[str, str]]
              ) -> tuple[str, WebHit] | None:
        best: tuple[str, WebHit] | None = None
        tables = [(self._tables[f], p) for f, p in names]
        for text in candidates:
            key = _urls.digest(text)
            for table, pattern in tables:
                row = table.lookup(key)
                if row is None:
                    continue
                hit = self._web_hit(table, row, pattern)
                if best is None or (hit.rating.severity, _specificity(text)) > (
                        best[1].rating.severity, _specificity(best[0])):
                    best = (text, hit)
        return best

    def lookup_url(self, expressions: Sequence[str]) -> tuple[str, WebHit] | None:
        """The most severe entry among a URL's expressions (``proxy.wire.urls.expressions``)."""
        return self._best(expressions, ((WEB_BLOCKING_TABLE, WEB_BLOCKING),
                                        (SUSPICIOUS_URLS_TABLE, SUSPICIOUS_URLS)))

    def lookup_domain(self, name: str) -> tuple[str, WebHit] | None:
        """A normalised domain name and its parents; an IP literal goes to ``lookup_ip``."""
        ip = _urls.parse_ip(name)
        if ip is not None:
            return self.lookup_ip(ip)
        name = name.rstrip(".").lower()
        return self._best(_urls.domain_suffixes(name), ((DOMAINS_TABLE, DOMAIN_IP),))

    def lookup_ip(self, ip: IPAddress | str) -> tuple[str, WebHit] | None:
        """The source network holding ``ip`` (as CIDR, or the address for a single one)."""
        if isinstance(ip, str):
            parsed = _urls.parse_ip(ip)
            if parsed is None:
                raise ValueError(f"not an IP address: {ip[:64]!r}")
            ip = parsed
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        table = self._tables[IP4_TABLE if ip.version == 4 else IP6_TABLE]
        assert isinstance(table, RangeTable)
        row = table.lookup_ip(ip)
        if row is None:
            return None
        prefix = table.value("prefix", row)
        if prefix == ip.max_prefixlen:  # a single address: no network object to make (half the cost)
            matched = str(ip)
        else:
            net = ipaddress.ip_network((ip, prefix), strict=False)
            matched = str(net)
        return matched, self._web_hit(table, row, DOMAIN_IP)

    # ------------------------------------------------------------ info

    def info(self) -> dict[str, Any]:
        out = manifest_info(self._manifest, [])
        del out["problems"]
        out["tables"] = {name: {"entries": len(t), "size": _size(t)}
                         for name, t in self._tables.items()}
        return out


def _size(t: AnyTable) -> int:
    """Bytes on disk: the file's, or an overlaid table's base and overlay."""
    if isinstance(t, OverlaidTable):
        return os.path.getsize(t.base.path) + t.diff_bytes
    return os.path.getsize(t.path)


def _open_checked(path: Path, width: int, columns: dict[str, str],
                  overlays: Mapping[str, Overlay] | None = None, *,
                  ranges: bool = False) -> AnyTable:
    table: AnyTable = (RangeTable.open(path) if ranges else
                       open_table(path.parent, path.name, overlays or {}))
    try:
        if table.key_width != width or table.is_range != ranges:
            raise PatternError(f"{path.name}: key width {table.key_width}, expected {width}")
        base = table.base if isinstance(table, OverlaidTable) else table
        for cname, dtype in columns.items():
            if cname not in base.column_names or base.column(cname).dtype.str.replace(
                    "|", "<") != dtype:
                raise PatternError(f"{path.name}: column {cname!r} missing or of the wrong type")
    except BaseException:
        with contextlib.suppress(Exception):
            table.close()
        raise
    return table

