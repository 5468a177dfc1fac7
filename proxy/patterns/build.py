"""Building a pattern directory from threat sources (the layout is ``proxy.patterns.pattern``'s).

``build_pattern`` reads hash, URL, domain, ClamAV and hosts sources
(``proxy.patterns.sources``), compiles them into ``proxy.patterns.tables`` files, strings.json
and (when ``proxy.patterns.agent`` is available) agent.bin, and writes the manifest,
all in a temporary directory renamed into place at the end.

A build's sources are the whole pattern: an entry that is in none of them is not
in the build, and publishing the build removes it from the update source (as every
feed's full dump does; ``rampart pattern publish`` counts what it adds and removes
and refuses a large drop). A ``base`` (the previous build) adds no entries: it keeps
the base's threat names and categories at their ids and appends new ones, so
unchanged rows stay byte-identical, and it keeps the base agent pattern's prefix
length unless more entries need a longer one (small agent diffs). Publishing does
not need it: ``proxy.updates.publish`` renumbers a build's names onto the published
ones (``proxy.patterns.restring``).

Without a ``version`` the build takes its hour (``YYYYMMDDHH``) and its manifest
says so (``auto_version``): publish then gives it the next free version when the
update source has that hour already (``layout.next_version``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from proxy.clock import iso, to_the_second
from proxy.errors import ConfigError, PatternError
from proxy.files import fsync_dir, make_dirs, write_atomic
from proxy.model import HashKind, Verdict
from proxy.patterns import sources
from proxy.patterns.layout import (
    AGENT,
    AGENT_FILE,
    AUTO_VERSION,
    CREATED,
    DOMAINS_TABLE,
    ENTRIES,
    FILE_TABLES,
    FILES,
    FORMAT,
    IP4_TABLE,
    IP6_TABLE,
    MANIFEST,
    PATTERN_TABLES,
    PATTERNS,
    STRINGS_FILE,
    SUSPICIOUS_URLS_TABLE,
    VERSION,
    VERSION_NAME,
    WEB_BLOCKING_TABLE,
    FileSpec,
    file_specs_json,
    next_version,
)
from proxy.patterns.manifest import MANIFEST_FORMAT
from proxy.patterns.pattern import (
    RATING_CODES,
    VERDICT_CODES,
    WEB_BLOCKING_RATINGS,
    load_strings,
)
from proxy.patterns.tables import write_range_table, write_table
from proxy.wire import urls as _urls

logger = logging.getLogger(__name__)


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
    auto_version: bool = False  # the version was defaulted: publish may give the next free one

    @property
    def hashes(self) -> int:
        return self.md5 + self.sha1 + self.sha256

    @classmethod
    def of(cls, version: str, counts: dict[str, int], bad: sources.BadLines | None,
           auto_version: bool = False) -> BuildReport:
        """The report of a build that wrote ``counts`` entries per file and skipped ``bad``."""
        return cls(
            version=version,
            md5=counts[FILE_TABLES[HashKind.MD5]],
            sha1=counts[FILE_TABLES[HashKind.SHA1]],
            sha256=counts[FILE_TABLES[HashKind.SHA256]],
            web_blocking=counts[WEB_BLOCKING_TABLE],
            suspicious_urls=counts[SUSPICIOUS_URLS_TABLE],
            domains=counts[DOMAINS_TABLE],
            ip4=counts[IP4_TABLE],
            ip6=counts[IP6_TABLE],
            agent=counts.get(AGENT_FILE, 0),
            skipped=bad.count if bad is not None else 0,
            skipped_examples=tuple(bad.examples) if bad is not None else (),
            auto_version=auto_version,
        )




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
        threats, categories = load_strings(path)
        if threats[0] != "" or categories[0] != "":
            raise PatternError(f"{STRINGS_FILE}: id 0 is not the empty name")
        out.threats = {t: i for i, t in enumerate(threats)}
        out.categories = {c: i for i, c in enumerate(categories)}
        if len(out.threats) != len(threats) or len(out.categories) != len(categories):
            raise PatternError(f"{STRINGS_FILE}: a name is listed twice")
        return out


def _agent_module() -> Any:
    try:
        from proxy.patterns import agent
    except ImportError:  # pragma: no cover - the agent pattern ships with this package
        return None
    return agent


def _write_agent(path: Path, by_kind: dict[HashKind, list[sources.HashRecord]],
                 base: Path | None) -> int | None:
    """Build agent.bin from every non-clean digest; None if proxy.patterns.agent is missing."""
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


def _write_json(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, indent=1, ensure_ascii=False) + "\n").encode())


def _check_out(out_dir: Path, replace: bool) -> None:
    """Refuse an ``out_dir`` that holds anything, unless ``replace`` and it is a build: a
    mistyped ``--out`` must not lose a build, and ``--force`` must not lose anything else."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is not a directory; choose another --out")
    if not any(out_dir.iterdir()):
        return
    if not (out_dir / MANIFEST).is_file():
        raise ConfigError(f"refusing to replace {out_dir}: it holds files and is not a pattern "
                          "build (no manifest.json); choose another --out")
    if not replace:
        raise ConfigError(f"--out {out_dir} holds a build already; choose another --out, or "
                          "give --force to replace it")


@dataclass(frozen=True, slots=True)
class _Parsed:
    """Every source record, merged and sorted into the tables they go to."""

    by_kind: dict[HashKind, list[sources.HashRecord]]
    blocking: list[tuple[str, sources.UrlRecord]]
    suspicious: list[tuple[str, sources.UrlRecord]]
    domains: list[tuple[str, sources.DomainRecord]]
    ranges4: list[sources.IpRange]
    ranges6: list[sources.IpRange]


def _parse(named: Sequence[tuple[Path, str]], bad: sources.BadLines | None) -> _Parsed:
    """Read every source (path, format) and merge duplicates (``proxy.patterns.sources``)."""
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
    by_kind: dict[HashKind, list[sources.HashRecord]] = {k: [] for k in HashKind}
    for hrec in sources.merge_hashes(hash_recs).values():
        by_kind[hrec.kind].append(hrec)
    merged_urls = sources.merge_by(url_recs, lambda r: r.expression)
    return _Parsed(
        by_kind,
        [(r.expression, r) for r in merged_urls.values() if r.rating in WEB_BLOCKING_RATINGS],
        [(r.expression, r) for r in merged_urls.values() if r.rating not in WEB_BLOCKING_RATINGS],
        [(r.name, r) for r in sources.merge_by(domain_recs, lambda r: r.name).values()],
        sources.flatten_networks(r for r in net_recs if r.network.version == 4),
        sources.flatten_networks(r for r in net_recs if r.network.version == 6),
    )


def _write_files(tmp: Path, parsed: _Parsed, base: Path | None) -> dict[str, int]:
    """Write every table, strings.json and agent.bin into ``tmp``; entries per file written."""
    strings = _Strings.from_base(Path(base) / STRINGS_FILE) if base is not None else _Strings()
    counts: dict[str, int] = {}
    for kind, name in FILE_TABLES.items():
        counts[name] = _write_file_table(tmp / name, kind, parsed.by_kind[kind], strings)
    counts[WEB_BLOCKING_TABLE] = _write_digest_table(tmp / WEB_BLOCKING_TABLE, parsed.blocking,
                                                     strings)
    counts[SUSPICIOUS_URLS_TABLE] = _write_digest_table(tmp / SUSPICIOUS_URLS_TABLE,
                                                        parsed.suspicious, strings)
    counts[DOMAINS_TABLE] = _write_digest_table(tmp / DOMAINS_TABLE, parsed.domains, strings)
    counts[IP4_TABLE] = _write_ip_table(tmp / IP4_TABLE, parsed.ranges4, 4, strings)
    counts[IP6_TABLE] = _write_ip_table(tmp / IP6_TABLE, parsed.ranges6, 16, strings)
    _write_json(tmp / STRINGS_FILE, strings.to_json())
    agent_entries = _write_agent(tmp / AGENT_FILE, parsed.by_kind, base)
    if agent_entries is not None:
        counts[AGENT_FILE] = agent_entries
    return counts


def _manifest_json(tmp: Path, version: str, created: datetime, counts: dict[str, int],
                   auto_version: bool) -> dict[str, Any]:
    """The manifest of the files written into ``tmp`` (``counts``: entries per file)."""
    written = dict(PATTERN_TABLES)
    if AGENT_FILE in counts:
        written[AGENT] = (AGENT_FILE,)
    patterns: dict[str, Any] = {}
    for pname, files in written.items():
        patterns[pname] = {
            VERSION: version,
            ENTRIES: sum(counts[f] for f in files),
            FILES: file_specs_json(FileSpec.of(tmp / f, counts[f]) for f in files),
        }
    return {
        FORMAT: MANIFEST_FORMAT,
        VERSION: version,
        CREATED: iso(created),
        AUTO_VERSION: auto_version,
        FILES: file_specs_json([FileSpec.of(tmp / STRINGS_FILE)]),
        PATTERNS: patterns,
    }


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
    replace: bool = False,
) -> BuildReport:
    """Compile sources into a pattern directory, atomically.

    ``hashes``, ``urls`` and ``domains`` are read in their own formats unless
    the extension says otherwise (``sources.detect_format``: ``.hdb``/``.hsb``
    are ClamAV, ``.hosts`` and ``hosts`` are hosts files); ``clamav`` and
    ``hosts`` are read as named. With ``skip_bad`` malformed lines are counted
    (``BuildReport.skipped``) instead of failing the build. ``base`` is the
    previous build (see the module docstring). The agent pattern is built when
    ``proxy.patterns.agent`` is available.

    Without ``version`` the build takes the hour of ``now`` and records that
    it did (see the module docstring).

    Everything is written into a temporary directory beside ``out_dir`` and
    renamed into place at the end; a failed build leaves nothing behind. An
    ``out_dir`` that holds anything is refused (ConfigError), except a build
    when ``replace`` (``--force``).
    """
    out_dir = Path(out_dir)
    created = to_the_second(now)
    auto_version = version is None
    version = version if version is not None else next_version(None, created)
    if VERSION_NAME.fullmatch(version) is None:
        raise ConfigError(f"bad pattern version {version!r} (expected YYYYMMDDHH[MM[SS]])")
    _check_out(out_dir, replace)

    # Parse everything first: a bad line stops the build before anything is written.
    bad = sources.BadLines() if skip_bad else None
    named = ([(p, sources.detect_format(p, "hashes")) for p in hashes]
             + [(p, sources.detect_format(p, "urls")) for p in urls]
             + [(p, sources.detect_format(p, "domains")) for p in domains]
             + [(p, "clamav") for p in clamav] + [(p, "hosts") for p in hosts])
    parsed = _parse(named, bad)
    make_dirs(out_dir.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        counts = _write_files(tmp, parsed, base)
        _write_json(tmp / MANIFEST, _manifest_json(tmp, version, created, counts, auto_version))
        fsync_dir(tmp)
        _swap_into_place(tmp, out_dir, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report = BuildReport.of(version, counts, bad, auto_version)
    logger.info("built pattern %s version %s: %d hashes, %d urls, %d domains, %d ip ranges",
                out_dir.name, version, report.hashes, report.web_blocking +
                report.suspicious_urls, report.domains, report.ip4 + report.ip6)
    return report


def _swap_into_place(tmp: Path, out_dir: Path, replace: bool) -> None:
    _check_out(out_dir, replace)  # again: the sources took a while to read
    old: Path | None = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old",
                                    dir=out_dir.parent))
        os.rename(out_dir, old / out_dir.name)
    os.rename(tmp, out_dir)
    fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


