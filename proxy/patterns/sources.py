"""Pattern sources: the plain-text lists a publisher compiles patterns from
(docs/architecture.md, “Patterns and updates”).

Three line formats, one record per line; blank lines and lines starting with
``#`` are skipped, and `` #…`` (whitespace, then ``#``) ends a line early::

    hashes   HASH[,THREAT[,VERDICT]]
             MD5, SHA-1 or SHA-256 told by hex length (32, 40, 64).
             VERDICT: malicious (default) | suspicious | clean.
             THREAT: printable ASCII without commas, at most 128 characters;
             a malicious or suspicious hash without one is "Unnamed-Threat".
    urls     URL_OR_EXPRESSION[,RATING[,CATEGORY[,SCORE]]]
             canonicalized by ``proxy.wire.urls.normalize_expression`` (scheme
             optional). A comma inside a URL must be written %2C.
    domains  DOMAIN_OR_IP_OR_CIDR[,RATING[,CATEGORY[,SCORE]]]
             a domain (two labels at least) covers its subdomains; an IP or a
             CIDR block (host bits clear) covers its addresses.

RATING: dangerous (default) | highly_suspicious | suspicious | safe | untested
(``-`` may stand for ``_``). CATEGORY: ``[a-z0-9][a-z0-9_.-]*``, at most 64
characters; omitted, it is "malware" for a dangerous entry and none otherwise.
SCORE: 0..100, default ``Rating.default_score``. An empty field takes the default.

Duplicates (the same digest, expression, domain or network, in one source or
across several) merge by one rule: **the most severe wins** (verdict
malicious > suspicious > clean; ratings by ``Rating.severity``); at equal
severity the higher score wins, then the earlier line, whose missing threat or
category is filled from the later one. Overlapping IP networks are flattened the
same way, address by address (``flatten_networks``); at equal severity the
narrower network wins.

More formats, told by the file's extension (``detect_format``) or named::

    clamav   ClamAV hash signatures, ``HASH:SIZE:NAME[:FLEVEL[:FLEVEL]]``.
             ``.hdb``: HASH is an MD5; ``.hsb``: a SHA-1 or SHA-256 (or MD5),
             told by length; another extension takes any of the three.
             SIZE is a decimal byte count or ``*`` (unknown); it is checked
             but not stored. NAME becomes the threat name, verdict malicious.
    hosts    hosts-file lines ``ADDRESS NAME [NAME...]`` (``0.0.0.0 ads.test``,
             ``127.0.0.1 ads.test``): every NAME becomes a dangerous domain
             entry, category "malware"; localhost-style names (localhost,
             localhost.localdomain, broadcasthost, ip6-*, local, …) and
             single-label names are ignored, not errors.
    domains  (above) also reads plain domain lists and plain IPv4/IPv6
             address and CIDR lists: every field but the first is optional.

A malformed line raises ``SourceError`` naming the file, the line and the
problem; or, given a ``BadLines`` (``--skip-bad``), is counted there, the first
few kept as examples, and skipped. Files are read line by line, each bounded
to ``MAX_LINE_BYTES``. The records and their merging are ``proxy.patterns.records``
(re-exported here).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from proxy.errors import SourceError, UrlError
from proxy.model import HashKind, Rating, Verdict
from proxy.patterns.records import DomainRecord as DomainRecord
from proxy.patterns.records import HashRecord as HashRecord
from proxy.patterns.records import IpRange as IpRange
from proxy.patterns.records import NetworkRecord as NetworkRecord
from proxy.patterns.records import UrlRecord as UrlRecord
from proxy.patterns.records import flatten_networks as flatten_networks
from proxy.patterns.records import merge_by as merge_by
from proxy.patterns.records import merge_hash as merge_hash
from proxy.patterns.records import merge_hashes as merge_hashes
from proxy.patterns.records import merge_rated as merge_rated
from proxy.wire import urls

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = urls.MAX_URL_LENGTH + 256
MAX_THREAT_LENGTH = 128
MAX_CATEGORY_LENGTH = 64
DEFAULT_THREAT = "Unnamed-Threat"
DEFAULT_VERDICT = Verdict.MALICIOUS
DEFAULT_RATING = Rating.DANGEROUS
DEFAULT_CATEGORY = "malware"  # for dangerous entries without a category

_HEX = re.compile(r"[0-9a-fA-F]+")
_THREAT = re.compile(r"[!-+\--~][ -+\--~]*")  # printable ASCII, no comma, no leading space
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_INLINE_COMMENT = re.compile(r"\s+#.*$")
_VERDICTS = {v.value: v for v in (Verdict.MALICIOUS, Verdict.SUSPICIOUS, Verdict.CLEAN)}
_RATINGS = {r.value: r for r in Rating}


# ---------------------------------------------------------------- lines


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank, non-comment line, without comments."""
    name = str(path)
    with open(path, "rb") as f:
        line_no = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 2)
            if not raw:
                return
            line_no += 1
            if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
                raise SourceError(name, line_no, f"line longer than {MAX_LINE_BYTES} bytes")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SourceError(name, line_no, f"not UTF-8 (byte {e.start})") from None
            if line_no == 1:
                text = text.removeprefix("\ufeff")
            text = _INLINE_COMMENT.sub("", text).strip()
            if text and not text.startswith("#"):
                yield line_no, text


def _fields(text: str, most: int, form: str) -> list[str]:
    fields = [f.strip() for f in text.split(",")]
    if len(fields) > most:
        raise ValueError(f"{len(fields)} fields, expected {form}")
    return fields + [""] * (most - len(fields))


def _rating(text: str) -> Rating:
    rating = _RATINGS.get(text.lower().replace("-", "_"))
    if rating is None:
        raise ValueError(f"unknown rating {text!r} (expected one of {', '.join(_RATINGS)})")
    return rating


def _category(text: str, rating: Rating) -> str | None:
    if not text:
        return DEFAULT_CATEGORY if rating is Rating.DANGEROUS else None
    cat = text.lower()
    if len(cat) > MAX_CATEGORY_LENGTH or _CATEGORY.fullmatch(cat) is None:
        raise ValueError(f"bad category {text[:80]!r} (letters, digits, '_', '.', '-', "
                         f"at most {MAX_CATEGORY_LENGTH})")
    return cat


def _score(text: str, rating: Rating) -> int:
    if not text:
        return rating.default_score
    if not text.isdigit() or int(text) > 100:
        raise ValueError(f"bad score {text[:20]!r} (expected 0..100)")
    return int(text)


# ---------------------------------------------------------------- line parsers


def parse_hash_line(text: str) -> HashRecord:
    """``HASH[,THREAT[,VERDICT]]``; raises ValueError naming the problem."""
    h, threat, verdict = _fields(text, 3, "HASH[,THREAT[,VERDICT]]")
    kind = HashKind.from_hex_length(len(h))
    if kind is None or _HEX.fullmatch(h) is None:
        raise ValueError(f"{h[:80]!r} is not an MD5, SHA-1 or SHA-256 hex digest "
                         f"(32, 40 or 64 hex digits)")
    if threat and (len(threat) > MAX_THREAT_LENGTH or _THREAT.fullmatch(threat) is None):
        raise ValueError(f"bad threat name {threat[:80]!r} (printable ASCII, at most "
                         f"{MAX_THREAT_LENGTH})")
    v = DEFAULT_VERDICT
    if verdict:
        found = _VERDICTS.get(verdict.lower())
        if found is None:
            raise ValueError(f"unknown verdict {verdict!r} (expected malicious, suspicious "
                             f"or clean)")
        v = found
    return HashRecord(kind, bytes.fromhex(h), v, threat or None)


def parse_url_line(text: str) -> UrlRecord:
    """``URL_OR_EXPRESSION[,RATING[,CATEGORY[,SCORE]]]``."""
    url, rating_s, cat, score = _fields(text, 4, "URL[,RATING[,CATEGORY[,SCORE]]] "
                                                 "(write a comma inside a URL as %2C)")
    try:
        expr = urls.normalize_expression(url)
    except UrlError as e:
        raise ValueError(f"bad URL: {e}") from None
    rating = _rating(rating_s) if rating_s else DEFAULT_RATING
    return UrlRecord(expr, rating, _score(score, rating), _category(cat, rating))


def parse_domain_line(text: str) -> DomainRecord | NetworkRecord:
    """``DOMAIN_OR_IP_OR_CIDR[,RATING[,CATEGORY[,SCORE]]]``."""
    item, rating_s, cat, score_s = _fields(text, 4, "DOMAIN_OR_IP_OR_CIDR[,RATING[,CATEGORY"
                                                    "[,SCORE]]]")
    rating = _rating(rating_s) if rating_s else DEFAULT_RATING
    category = _category(cat, rating)
    score = _score(score_s, rating)
    if not item:
        raise ValueError("empty domain, IP or CIDR")
    if "/" in item:
        try:
            net = ipaddress.ip_network(item, strict=True)
        except ValueError as e:
            raise ValueError(f"bad CIDR block {item[:80]!r}: {e}") from None
        return NetworkRecord(net, rating, score, category)
    ip = urls.parse_ip(item)
    if ip is not None:
        return NetworkRecord(ipaddress.ip_network(ip), rating, score, category)
    try:
        name = urls.normalize_domain(item)
    except UrlError as e:
        raise ValueError(f"bad domain: {e}") from None
    if "." not in name:
        raise ValueError(f"{name!r} is a single label; a domain entry needs two labels at least")
    return DomainRecord(name, rating, score, category)


# ---------------------------------------------------------------- files

R = TypeVar("R")


class BadLines:
    """Malformed lines skipped under ``--skip-bad``: a count and the first few messages."""

    MAX_EXAMPLES = 10

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, error: SourceError) -> None:
        self.count += 1
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(error.message)
        logger.debug("skipped %s", error.message)


def _read(path: Path, parse: Callable[[str], R], bad: BadLines | None = None) -> Iterator[R]:
    yield from _read_many(path, lambda text: (parse(text),), bad)


def _read_many(path: Path, parse: Callable[[str], Iterable[R]],
               bad: BadLines | None) -> Iterator[R]:
    for line_no, text in iter_lines(path):
        try:
            recs = list(parse(text))
        except ValueError as e:
            err = SourceError(str(path), line_no, str(e))
            if bad is None:
                raise err from None
            bad.add(err)
            continue
        yield from recs


def read_hashes(path: Path, bad: BadLines | None = None) -> Iterator[HashRecord]:
    return _read(path, parse_hash_line, bad)


def read_urls(path: Path, bad: BadLines | None = None) -> Iterator[UrlRecord]:
    return _read(path, parse_url_line, bad)


def read_domains(path: Path, bad: BadLines | None = None
                 ) -> Iterator[DomainRecord | NetworkRecord]:
    return _read(path, parse_domain_line, bad)


# ---------------------------------------------------------------- more formats

_EXTENSIONS = {".hdb": "clamav", ".hsb": "clamav", ".hosts": "hosts"}
_CLAMAV_KINDS = {
    ".hdb": frozenset({HashKind.MD5}),
    ".hsb": frozenset(HashKind),
}
_CLAMAV_NAME = re.compile(r"[!-9;-~][ -9;-~]*")  # printable ASCII without ':'
_HOSTS_IGNORED = frozenset({
    "localhost", "localhost.localdomain", "local", "broadcasthost", "localhost4",
    "localhost4.localdomain4", "localhost6", "localhost6.localdomain6", "ip6-localhost",
    "ip6-loopback", "ip6-localnet", "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters",
    "ip6-allhosts", "0.0.0.0",
})


def detect_format(path: Path, default: str) -> str:
    """A source's format from its extension (``.hdb``/``.hsb``, ``.hosts``; a file named
    ``hosts``), else ``default``."""
    path = Path(path)
    if path.name == "hosts":
        return "hosts"
    return _EXTENSIONS.get(path.suffix.lower(), default)


def parse_clamav_line(text: str, kinds: frozenset[HashKind] = frozenset(HashKind)
                      ) -> HashRecord:
    """``HASH:SIZE:NAME[:FLEVEL[:FLEVEL]]``; raises ValueError naming the problem."""
    fields = text.split(":")
    if not 3 <= len(fields) <= 5:
        raise ValueError(f"{len(fields)} fields, expected HASH:SIZE:NAME[:FLEVEL[:FLEVEL]]")
    h, size, name = fields[0].strip(), fields[1].strip(), fields[2].strip()
    kind = HashKind.from_hex_length(len(h))
    if kind is None or _HEX.fullmatch(h) is None:
        raise ValueError(f"{h[:80]!r} is not an MD5, SHA-1 or SHA-256 hex digest")
    if kind not in kinds:
        allowed = ", ".join(sorted(k.value for k in kinds))
        raise ValueError(f"a {kind.value} hash where this file holds {allowed}")
    if size != "*" and (not size.isdigit() or len(size) > 15):
        raise ValueError(f"bad size {size[:20]!r} (a byte count or '*')")
    if not name or len(name) > MAX_THREAT_LENGTH or _CLAMAV_NAME.fullmatch(name) is None \
            or "," in name:
        raise ValueError(f"bad signature name {name[:80]!r} (printable ASCII without ',' "
                         f"or ':', at most {MAX_THREAT_LENGTH})")
    for lvl in fields[3:]:
        if lvl.strip() and not lvl.strip().isdigit():
            raise ValueError(f"bad functionality level {lvl[:20]!r}")
    return HashRecord(kind, bytes.fromhex(h), Verdict.MALICIOUS, name)


def parse_hosts_line(text: str) -> list[DomainRecord]:
    """``ADDRESS NAME [NAME...]``: the names as dangerous domains (localhost-style ignored)."""
    fields = text.split()
    if len(fields) < 2:
        raise ValueError("expected ADDRESS NAME [NAME...]")
    if urls.parse_ip(fields[0]) is None:
        raise ValueError(f"{fields[0][:80]!r} is not an IP address")
    out = []
    for item in fields[1:]:
        if item.lower().rstrip(".") in _HOSTS_IGNORED:
            continue
        try:
            name = urls.normalize_domain(item)
        except UrlError as e:
            raise ValueError(f"bad host name {item[:80]!r}: {e}") from None
        if "." not in name or urls.parse_ip(name) is not None:
            continue  # single labels (local names) and addresses are not list entries
        out.append(DomainRecord(name, DEFAULT_RATING, DEFAULT_RATING.default_score,
                                DEFAULT_CATEGORY))
    return out


def read_clamav(path: Path, bad: BadLines | None = None) -> Iterator[HashRecord]:
    kinds = _CLAMAV_KINDS.get(Path(path).suffix.lower(), frozenset(HashKind))
    return _read(path, lambda text: parse_clamav_line(text, kinds), bad)


def read_hosts(path: Path, bad: BadLines | None = None) -> Iterator[DomainRecord]:
    return _read_many(path, parse_hosts_line, bad)


# ---------------------------------------------------------------- merging
