"""A pattern directory: building it from sources, opening it, and answering lookups (DESIGN §5).

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
    agent.bin            agent            the Smart Scan Agent Pattern (``proxy.agent``) over
                                          every malicious and suspicious MD5, SHA-1 and
                                          SHA-256 digest (clean ones need no query)

Tables are ``proxy.tables`` files. Codes: verdict 1 malicious, 2 suspicious,
3 clean; rating 1 dangerous, 2 highly_suspicious, 3 suspicious, 4 safe,
5 untested. Readers ignore patterns and top-level keys they do not know, so
later issues can add signatures, diffs and an agent pattern to the manifest.

A build given a ``base`` (the previous build) keeps the base's threat names
and categories at their ids and appends new ones, so strings.json only grows
and unchanged rows stay byte-identical (small table diffs; see ``proxy.repo``),
and it keeps the base agent pattern's prefix length unless more entries need
a longer one (small agent diffs).

Web, domain and IP lookups return the most severe match; among equally severe
ones the most specific: the longest host (domain suffix), then the longest path.
(Expression order is not specificity: Safe Browsing lists ``host/`` before
``host/a/``.)
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from proxy import sources
from proxy import urls as _urls
from proxy.errors import PatternError
from proxy.model import FileQuery, HashKind, Rating, Verdict
from proxy.tables import RangeTable, Table, fsync_dir, write_range_table, write_table

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STRINGS = "strings.json"
MANIFEST_FORMAT = 1
MAX_MANIFEST_BYTES = 1 << 20
MAX_STRINGS_BYTES = 256 << 20

SMART_SCAN = "smart-scan"
WEB_BLOCKING = "web-blocking"
SUSPICIOUS_URLS = "suspicious-urls"
DOMAIN_IP = "domain-ip"
AGENT = "agent"
AGENT_FILE = "agent.bin"

FILE_TABLES = {
    HashKind.MD5: "file-md5.tbl",
    HashKind.SHA1: "file-sha1.tbl",
    HashKind.SHA256: "file-sha256.tbl",
}
PATTERN_FILES: dict[str, tuple[str, ...]] = {
    SMART_SCAN: tuple(FILE_TABLES.values()),
    WEB_BLOCKING: ("web-blocking.tbl",),
    SUSPICIOUS_URLS: ("suspicious-urls.tbl",),
    DOMAIN_IP: ("domains.tbl", "ip4.tbl", "ip6.tbl"),
}
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
_VERSION = re.compile(r"\d{10}(?:\d{2}){0,2}")  # YYYYMMDDHH[MM[SS]]
_FILE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


@dataclass(frozen=True, slots=True)
class BuildReport:
    version: str
    md5: int
    sha1: int
    sha256: int
    web_blocking: int
    suspicious_urls: int
    domains: int
    ip4: int
    ip6: int
    agent: int = 0  # distinct prefixes in agent.bin; 0 when no agent pattern was built
    skipped: int = 0  # malformed lines skipped (skip_bad)
    skipped_examples: tuple[str, ...] = ()

    @property
    def hashes(self) -> int:
        return self.md5 + self.sha1 + self.sha256


# ---------------------------------------------------------------- building


class _Strings:
    """Interns threat names and categories; id 0 means none."""

    def __init__(self) -> None:
        self.threats: dict[str, int] = {"": 0}
        self.categories: dict[str, int] = {"": 0}

    @staticmethod
    def _intern(table: dict[str, int], value: str | None, limit: int, what: str) -> int:
        if not value:
            return 0
        found = table.get(value)
        if found is None:
            if len(table) > limit:
                raise PatternError(f"more than {limit} distinct {what}")
            found = table[value] = len(table)
        return found

    def threat(self, value: str | None) -> int:
        return self._intern(self.threats, value, 0xFFFFFFFF, "threat names")

    def category(self, value: str | None) -> int:
        return self._intern(self.categories, value, 0xFFFF, "categories")

    def to_json(self) -> dict[str, Any]:
        return {"format": 1, "threats": list(self.threats), "categories": list(self.categories)}

    @classmethod
    def from_base(cls, path: Path) -> _Strings:
        """Seeded with a previous build's strings, at the same ids."""
        out = cls()
        threats, categories = _load_strings(path)
        if threats[0] != "" or categories[0] != "":
            raise PatternError(f"{STRINGS}: id 0 is not the empty name")
        out.threats = {t: i for i, t in enumerate(threats)}
        out.categories = {c: i for i, c in enumerate(categories)}
        if len(out.threats) != len(threats) or len(out.categories) != len(categories):
            raise PatternError(f"{STRINGS}: a name is listed twice")
        return out


def _agent_module() -> Any:
    try:
        from proxy import agent
    except ImportError:  # pragma: no cover - the agent pattern ships with this package
        return None
    return agent


def _write_agent(path: Path, by_kind: dict[HashKind, list[sources.HashRecord]],
                 base: Path | None) -> int | None:
    """Build agent.bin from every non-clean digest; None if proxy.agent is missing."""
    agent = _agent_module()
    if agent is None:
        return None
    digests = [r.digest for recs in by_kind.values() for r in recs
               if r.verdict is not Verdict.CLEAN]
    k = agent.choose_prefix_bits(len(digests))
    if base is not None and (base / AGENT_FILE).is_file():
        k = max(k, agent.read_agent(base / AGENT_FILE).prefix_bits)
    data = agent.build_agent(digests, prefix_bits=k)
    agent.write_agent(path, data)
    return len(agent.AgentFilter.from_bytes(data))


def _threat_of(r: sources.HashRecord) -> str | None:
    if r.verdict is Verdict.CLEAN:
        return r.threat
    return r.threat or sources.DEFAULT_THREAT


def _write_file_table(path: Path, kind: HashKind, recs: list[sources.HashRecord],
                      strings: _Strings) -> int:
    keys = [r.digest for r in recs]
    write_table(path, keys, {
        "verdict": np.array([VERDICT_CODES[r.verdict] for r in recs], dtype="<u1"),
        "threat": np.array([strings.threat(_threat_of(r)) for r in recs], dtype="<u4"),
    }, key_width=kind.size)
    return len(recs)


def _rated_columns(recs: Sequence[sources.UrlRecord | sources.DomainRecord |
                                  sources.NetworkRecord],
                   strings: _Strings) -> dict[str, np.ndarray[Any, Any]]:
    return {
        "rating": np.array([RATING_CODES[r.rating] for r in recs], dtype="<u1"),
        "score": np.array([r.score for r in recs], dtype="<u1"),
        "category": np.array([strings.category(r.category) for r in recs], dtype="<u2"),
    }


def _write_digest_table(path: Path, keyed: Sequence[tuple[str, sources.UrlRecord |
                                                          sources.DomainRecord]],
                        strings: _Strings) -> int:
    keys = [_urls.digest(text) for text, _ in keyed]
    write_table(path, keys, _rated_columns([r for _, r in keyed], strings), key_width=32)
    return len(keyed)


def _write_ip_table(path: Path, ranges: list[sources.IpRange], width: int,
                    strings: _Strings) -> int:
    recs = [r.record for r in ranges]
    columns = _rated_columns(recs, strings)
    columns["prefix"] = np.array([r.network.prefixlen for r in recs], dtype="<u1")
    write_range_table(path, [r.first.to_bytes(width, "big") for r in ranges],
                      [r.last.to_bytes(width, "big") for r in ranges], columns, key_width=width)
    return len(ranges)


def _file_entry(path: Path, entries: int) -> dict[str, Any]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": path.stat().st_size, "sha256": digest, "entries": entries}


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _is_replaceable(out_dir: Path) -> bool:
    if not out_dir.exists():
        return True
    if not out_dir.is_dir():
        return False
    return (out_dir / MANIFEST).is_file() or not any(out_dir.iterdir())


def build_pattern(
    out_dir: Path,
    *,
    hashes: Sequence[Path] = (),
    urls: Sequence[Path] = (),
    domains: Sequence[Path] = (),
    clamav: Sequence[Path] = (),
    hosts: Sequence[Path] = (),
    skip_bad: bool = False,
    base: Path | None = None,
    version: str | None = None,
    now: datetime | None = None,
) -> BuildReport:
    """Compile sources into a pattern directory, atomically.

    ``hashes``, ``urls`` and ``domains`` are read in their own formats unless
    the extension says otherwise (``sources.detect_format``: ``.hdb``/``.hsb``
    are ClamAV, ``.hosts`` and ``hosts`` are hosts files); ``clamav`` and
    ``hosts`` are read as named. With ``skip_bad`` malformed lines are counted
    (``BuildReport.skipped``) instead of failing the build. ``base`` is the
    previous build (see the module docstring). The agent pattern is built when
    ``proxy.agent`` is available.

    Everything is written into a temporary directory beside ``out_dir`` and
    renamed into place at the end; a failed build leaves nothing behind. An
    existing ``out_dir`` is replaced only if it is a pattern directory or empty.
    """
    out_dir = Path(out_dir)
    created = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    version = version if version is not None else created.strftime("%Y%m%d%H")
    if _VERSION.fullmatch(version) is None:
        raise PatternError(f"bad pattern version {version!r} (expected YYYYMMDDHH[MM[SS]])")
    if not _is_replaceable(out_dir):
        raise PatternError(f"refusing to replace {out_dir.name}: not a pattern directory")

    # Parse everything first: a bad line stops the build before anything is written.
    bad = sources.BadLines() if skip_bad else None
    named = ([(p, sources.detect_format(p, "hashes")) for p in hashes]
             + [(p, sources.detect_format(p, "urls")) for p in urls]
             + [(p, sources.detect_format(p, "domains")) for p in domains]
             + [(p, "clamav") for p in clamav] + [(p, "hosts") for p in hosts])
    hash_recs: list[sources.HashRecord] = []
    url_recs: list[sources.UrlRecord] = []
    domain_recs: list[sources.DomainRecord] = []
    net_recs: list[sources.NetworkRecord] = []
    for p, form in named:
        if form == "hashes":
            hash_recs.extend(sources.read_hashes(p, bad))
        elif form == "clamav":
            hash_recs.extend(sources.read_clamav(p, bad))
        elif form == "urls":
            url_recs.extend(sources.read_urls(p, bad))
        elif form == "hosts":
            domain_recs.extend(sources.read_hosts(p, bad))
        else:
            for rec in sources.read_domains(p, bad):
                if isinstance(rec, sources.DomainRecord):
                    domain_recs.append(rec)
                else:
                    net_recs.append(rec)
    merged_hashes = sources.merge_hashes(hash_recs)
    merged_urls = sources.merge_by(url_recs, lambda r: r.expression)
    merged_domains = sources.merge_by(domain_recs, lambda r: r.name)
    ranges4 = sources.flatten_networks(r for r in net_recs if r.network.version == 4)
    ranges6 = sources.flatten_networks(r for r in net_recs if r.network.version == 6)

    by_kind: dict[HashKind, list[sources.HashRecord]] = {k: [] for k in HashKind}
    for hrec in merged_hashes.values():
        by_kind[hrec.kind].append(hrec)
    blocking = [(r.expression, r) for r in merged_urls.values()
                if r.rating in WEB_BLOCKING_RATINGS]
    suspicious = [(r.expression, r) for r in merged_urls.values()
                  if r.rating not in WEB_BLOCKING_RATINGS]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        strings = _Strings.from_base(Path(base) / STRINGS) if base is not None else _Strings()
        counts: dict[str, int] = {}
        for kind, name in FILE_TABLES.items():
            counts[name] = _write_file_table(tmp / name, kind, by_kind[kind], strings)
        counts["web-blocking.tbl"] = _write_digest_table(tmp / "web-blocking.tbl", blocking,
                                                         strings)
        counts["suspicious-urls.tbl"] = _write_digest_table(tmp / "suspicious-urls.tbl",
                                                            suspicious, strings)
        counts["domains.tbl"] = _write_digest_table(
            tmp / "domains.tbl", [(r.name, r) for r in merged_domains.values()], strings)
        counts["ip4.tbl"] = _write_ip_table(tmp / "ip4.tbl", ranges4, 4, strings)
        counts["ip6.tbl"] = _write_ip_table(tmp / "ip6.tbl", ranges6, 16, strings)
        _write_json(tmp / STRINGS, strings.to_json())
        agent_entries = _write_agent(tmp / AGENT_FILE, by_kind, base)
        written = dict(PATTERN_FILES)
        if agent_entries is not None:
            counts[AGENT_FILE] = agent_entries
            written[AGENT] = (AGENT_FILE,)

        patterns: dict[str, Any] = {}
        for pname, files in written.items():
            entries = {f: _file_entry(tmp / f, counts[f]) for f in files}
            patterns[pname] = {
                "version": version,
                "entries": sum(counts[f] for f in files),
                "files": entries,
            }
        strings_entry = _file_entry(tmp / STRINGS, 0)
        del strings_entry["entries"]
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "created": created.isoformat().replace("+00:00", "Z"),
            "files": {STRINGS: strings_entry},
            "patterns": patterns,
        }
        _write_json(tmp / MANIFEST, manifest)
        fsync_dir(tmp)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report = BuildReport(
        version=version,
        md5=counts["file-md5.tbl"],
        sha1=counts["file-sha1.tbl"],
        sha256=counts["file-sha256.tbl"],
        web_blocking=counts["web-blocking.tbl"],
        suspicious_urls=counts["suspicious-urls.tbl"],
        domains=counts["domains.tbl"],
        ip4=counts["ip4.tbl"],
        ip6=counts["ip6.tbl"],
        agent=counts.get(AGENT_FILE, 0),
        skipped=bad.count if bad is not None else 0,
        skipped_examples=tuple(bad.examples) if bad is not None else (),
    )
    logger.info("built pattern %s version %s: %d hashes, %d urls, %d domains, %d ip ranges",
                out_dir.name, version, report.hashes, report.web_blocking +
                report.suspicious_urls, report.domains, report.ip4 + report.ip6)
    return report


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    if not _is_replaceable(out_dir):
        raise PatternError(f"refusing to replace {out_dir.name}: not a pattern directory")
    old: Path | None = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old",
                                    dir=out_dir.parent))
        os.rename(out_dir, old / out_dir.name)
    os.rename(tmp, out_dir)
    fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- manifest


@dataclass(frozen=True, slots=True)
class _FileSpec:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class _Manifest:
    version: str
    created: datetime
    raw: dict[str, Any]
    files: tuple[_FileSpec, ...]  # every file the manifest lists


def _bad(what: str) -> PatternError:
    return PatternError(f"{MANIFEST}: {what}")


def _file_specs(where: str, files: Any) -> list[_FileSpec]:
    if not isinstance(files, dict):
        raise _bad(f"{where}: 'files' is not an object")
    out = []
    for name, spec in files.items():
        if not isinstance(name, str) or _FILE_NAME.fullmatch(name) is None:
            raise _bad(f"{where}: bad file name {str(name)[:80]!r}")
        if not isinstance(spec, dict):
            raise _bad(f"{where}: {name}: not an object")
        size, digest = spec.get("size"), spec.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(f"{where}: {name}: bad size")
        if not isinstance(digest, str) or _SHA256_HEX.fullmatch(digest) is None:
            raise _bad(f"{where}: {name}: bad sha256")
        out.append(_FileSpec(name, size, digest))
    return out


def read_manifest(directory: Path) -> _Manifest:
    path = Path(directory) / MANIFEST
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise PatternError(f"{MANIFEST}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise _bad(f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise _bad("not an object")
    if raw.get("format") != MANIFEST_FORMAT:
        raise _bad(f"format {raw.get('format')!r} not supported (expected {MANIFEST_FORMAT})")
    version = raw.get("version")
    if not isinstance(version, str) or _VERSION.fullmatch(version) is None:
        raise _bad(f"bad version {str(version)[:40]!r}")
    try:
        created = datetime.fromisoformat(str(raw.get("created")))
    except ValueError:
        raise _bad(f"bad created time {str(raw.get('created'))[:40]!r}") from None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    specs = _file_specs("top level", raw.get("files"))
    if STRINGS not in {s.name for s in specs}:
        raise _bad(f"{STRINGS} not listed")
    patterns = raw.get("patterns")
    if not isinstance(patterns, dict):
        raise _bad("'patterns' is not an object")
    for pname, files in PATTERN_FILES.items():
        entry = patterns.get(pname)
        if not isinstance(entry, dict):
            raise _bad(f"pattern {pname!r} missing")
        pspecs = _file_specs(pname, entry.get("files"))
        missing = set(files) - {s.name for s in pspecs}
        if missing:
            raise _bad(f"{pname}: {', '.join(sorted(missing))} not listed")
        specs.extend(pspecs)
    return _Manifest(version, created, raw, tuple(specs))


def _check_file(directory: Path, spec: _FileSpec, *, verify: bool) -> None:
    path = directory / spec.name
    try:
        size = path.stat().st_size
    except OSError as e:
        raise PatternError(f"{spec.name}: cannot read: {e.strerror or e}") from None
    if size != spec.size:
        state = "truncated" if size < spec.size else "wrong size"
        raise PatternError(f"{spec.name}: {state}: {size} bytes, manifest says {spec.size}")
    if verify:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != spec.sha256:
            raise PatternError(f"{spec.name}: SHA-256 does not match the manifest (corrupt)")


def pattern_info(directory: Path) -> dict[str, Any]:
    """Versions, entries and sizes from the manifest, and whether the files have those sizes."""
    directory = Path(directory)
    m = read_manifest(directory)
    problems = []
    for spec in m.files:
        try:
            _check_file(directory, spec, verify=False)
        except PatternError as e:
            problems.append(e.message)
    return _info(m, problems)


def _info(m: _Manifest, problems: list[str]) -> dict[str, Any]:
    patterns = {}
    for name, entry in m.raw["patterns"].items():
        if not isinstance(entry, dict):
            continue
        listed = entry.get("files")
        files: dict[str, Any] = listed if isinstance(listed, dict) else {}
        patterns[name] = {
            "version": entry.get("version"),
            "entries": entry.get("entries"),
            "size": sum(f.get("size", 0) for f in files.values() if isinstance(f, dict)),
        }
    return {
        "format": MANIFEST_FORMAT,
        "version": m.version,
        "created": m.created.isoformat().replace("+00:00", "Z"),
        "patterns": patterns,
        "problems": problems,
    }


# ---------------------------------------------------------------- lookups


def _specificity(expression: str) -> tuple[int, int]:
    """Longer host first, then longer path: ``a.b.test/`` > ``b.test/x/`` > ``b.test/``."""
    host, _, path = expression.partition("/")
    return len(host), len(path)


def _load_strings(path: Path) -> tuple[list[str], list[str]]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STRINGS_BYTES + 1)
        if len(data) > MAX_STRINGS_BYTES:
            raise PatternError(f"{STRINGS}: larger than {MAX_STRINGS_BYTES} bytes")
        raw = json.loads(data)
    except OSError as e:
        raise PatternError(f"{STRINGS}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PatternError(f"{STRINGS}: not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise PatternError(f"{STRINGS}: not an object")
    threats, categories = raw.get("threats"), raw.get("categories")
    for what, seq in (("threats", threats), ("categories", categories)):
        if not isinstance(seq, list) or not seq or not all(isinstance(s, str) for s in seq):
            raise PatternError(f"{STRINGS}: {what!r} is not a list of strings")
    assert isinstance(threats, list) and isinstance(categories, list)
    return threats, categories


class PatternSet:
    """Every table of one pattern directory, opened read-only; lookups are thread-safe."""

    def __init__(self, directory: Path, manifest: _Manifest, tables: dict[str, Table],
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
            _check_file(directory, spec, verify=verify)
        threats, categories = _load_strings(directory / STRINGS)
        tables: dict[str, Table] = {}
        try:
            for kind, name in FILE_TABLES.items():
                tables[name] = _open_checked(directory / name, kind.size, _FILE_COLUMNS)
            for name in ("web-blocking.tbl", "suspicious-urls.tbl", "domains.tbl"):
                tables[name] = _open_checked(directory / name, 32, _RATED_COLUMNS)
            tables["ip4.tbl"] = _open_checked(directory / "ip4.tbl", 4, _IP_COLUMNS, ranges=True)
            tables["ip6.tbl"] = _open_checked(directory / "ip6.tbl", 16, _IP_COLUMNS, ranges=True)
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

    def table(self, name: str) -> Table:
        """One table by file name (e.g. ``file-sha256.tbl``), for the agent pattern and diffs."""
        return self._tables[name]

    # ------------------------------------------------------------ decoding

    def _file_hit(self, table: Table, verdict_code: int, threat_id: int) -> FileHit:
        hit = self._file_hits.get((verdict_code, threat_id))
        if hit is None:
            verdict = _VERDICT_BY_CODE.get(verdict_code)
            if verdict is None or not 0 <= threat_id < len(self._threats):
                raise PatternError(f"{table.path.name}: bad record ({verdict_code}, {threat_id})")
            hit = FileHit(verdict, self._threats[threat_id] or None)
            self._file_hits[(verdict_code, threat_id)] = hit
        return hit

    def _web_hit(self, table: Table, row: int, pattern: str) -> WebHit:
        rating = _RATING_BY_CODE.get(table.value("rating", row))
        cat_id = table.value("category", row)
        if rating is None or cat_id >= len(self._categories):
            raise PatternError(f"{table.path.name}: bad record at row {row}")
        return WebHit(rating, table.value("score", row), self._categories[cat_id] or None,
                      pattern)

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
            verdicts = table.column("verdict")[hit_rows].tolist()
            threats = table.column("threat")[hit_rows].tolist()
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
        codes = (table.column("verdict")[hit_rows].astype(np.uint64) << np.uint64(32)) | table.column(
            "threat")[hit_rows].astype(np.uint64)
        uniq, inverse = np.unique(codes, return_inverse=True)
        if len(uniq) == 1:
            groups = [hit_at.tolist()]
        else:
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
        """The most severe entry among a URL's expressions (``proxy.urls.expressions``)."""
        return self._best(expressions, (("web-blocking.tbl", WEB_BLOCKING),
                                        ("suspicious-urls.tbl", SUSPICIOUS_URLS)))

    def lookup_domain(self, name: str) -> tuple[str, WebHit] | None:
        """A normalised domain name and its parents; an IP literal goes to ``lookup_ip``."""
        ip = _urls.parse_ip(name)
        if ip is not None:
            return self.lookup_ip(ip)
        name = name.rstrip(".").lower()
        return self._best(_urls.domain_suffixes(name), (("domains.tbl", DOMAIN_IP),))

    def lookup_ip(self, ip: IPAddress | str) -> tuple[str, WebHit] | None:
        """The source network holding ``ip`` (as CIDR, or the address for a single one)."""
        if isinstance(ip, str):
            parsed = _urls.parse_ip(ip)
            if parsed is None:
                raise ValueError(f"not an IP address: {ip[:64]!r}")
            ip = parsed
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        table = self._tables["ip4.tbl" if ip.version == 4 else "ip6.tbl"]
        assert isinstance(table, RangeTable)
        row = table.lookup_ip(ip)
        if row is None:
            return None
        prefix = table.value("prefix", row)
        net = ipaddress.ip_network((ip, prefix), strict=False)
        matched = str(net.network_address) if prefix == net.max_prefixlen else str(net)
        return matched, self._web_hit(table, row, DOMAIN_IP)

    # ------------------------------------------------------------ info

    def info(self) -> dict[str, Any]:
        out = _info(self._manifest, [])
        del out["problems"]
        out["tables"] = {name: {"entries": len(t), "size": os.path.getsize(t.path)}
                         for name, t in self._tables.items()}
        return out


def _open_checked(path: Path, width: int, columns: dict[str, str], *,
                  ranges: bool = False) -> Table:
    table: Table = RangeTable.open(path) if ranges else Table.open(path)
    try:
        if table.key_width != width or table.is_range != ranges:
            raise PatternError(f"{path.name}: key width {table.key_width}, expected {width}")
        for cname, dtype in columns.items():
            if cname not in table.column_names or table.column(cname).dtype.str.replace(
                    "|", "<") != dtype:
                raise PatternError(f"{path.name}: column {cname!r} missing or of the wrong type")
    except BaseException:
        with contextlib.suppress(Exception):
            table.close()
        raise
    return table
