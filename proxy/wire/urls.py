"""URL canonicalization and lookup expressions, as Safe Browsing v4 specifies them.

A URL is matched against the Web Blocking List, the Suspicious URLs and the
administrator's URL rules in three steps (see "URLs and Hashing" in the Safe
Browsing v4 documentation):

1. ``canonicalize``: strip surrounding whitespace, remove tab/CR/LF, drop the
   fragment, percent-unescape until nothing changes, split scheme / host /
   path / query, canonicalize the host (userinfo and port removed, dots
   collapsed and trimmed, IDNA, IPv4 in any legal encoding written as four
   decimals, lower case) and the path (``/./``, ``/../`` and ``//`` resolved),
   then percent-escape every byte <= 0x20, >= 0x7f, ``#`` and ``%`` once, with
   upper-case hex. The scheme defaults to ``http``; the path to ``/``.
2. ``expressions``: up to 5 host suffixes x 6 path prefixes, without scheme.
3. ``digest``: SHA-256 of each expression.

The work is done on bytes, because percent-unescaping can produce any byte.
A ``str`` URL is taken as UTF-8 (with ``surrogateescape``, so text decoded
from raw bytes that way round-trips; another lone surrogate is a ``UrlError``);
``bytes`` are taken as they are. ``canonicalize`` keeps any host, as Safe Browsing
does (pattern sources and rules take what they are given); the query door refuses
a host ``check_host`` finds no host name.

The module also normalizes the names and expressions administrators and
pattern sources give (``normalize_domain``, ``normalize_expression``). IP hosts
(any IPv4 encoding, IPv6, ``parse_ip``) are read by ``proxy.wire.ip_hosts``.
Everything here is a pure function.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable

from proxy.errors import UrlError
from proxy.wire.ip_hosts import canonical_ipv6, parse_ipv4_any, show
from proxy.wire.ip_hosts import parse_ip as parse_ip  # part of this module's interface

logger = logging.getLogger(__name__)

MAX_URL_LENGTH = 8192
MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63
MAX_HOST_SUFFIXES = 4  # besides the exact host
MAX_PATH_PREFIXES = 4  # "/" and up to 3 directories


_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*")
_PORT_AFTER_COLON = re.compile(rb":\d+(?:/|$)")
_NEEDS_ESCAPE = re.compile(rb"[\x00-\x20\x7f-\xff#%]")
_MANY_DOTS = re.compile(rb"\.\.+")
# The Windows resolver takes "10.192.95.89 xy" (at most 15 characters) as the IP.
_IP_TRAILING_JUNK = re.compile(rb"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}) ")
_DOMAIN = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_DOMAIN_CHAR = re.compile(r"[^a-z0-9_.-]")
_HEX = frozenset(b"0123456789abcdefABCDEF")


# ---------------------------------------------------------------- canonicalize


def canonicalize(url: str | bytes, *, max_length: int = MAX_URL_LENGTH) -> str:
    """Return the canonical form of ``url``: ``scheme://host/path[?query]``.

    Raises ``UrlError`` for an empty or overlong URL, a URL without a host, a
    non-web URL (``mailto:x``), a bad port or a malformed IPv6 literal.
    """
    if len(url) > max_length:
        raise UrlError(f"URL longer than {max_length} characters")
    try:
        raw = url.encode("utf-8", "surrogateescape") if isinstance(url, str) else bytes(url)
    except UnicodeEncodeError as e:  # a surrogate that does not stand for a byte
        raise UrlError(f"lone surrogate {url[e.start]!r} at character {e.start}") from None
    if len(raw) > max_length:
        raise UrlError(f"URL longer than {max_length} bytes")
    raw = raw.strip()
    if b"\t" in raw or b"\r" in raw or b"\n" in raw:
        raw = raw.replace(b"\t", b"").replace(b"\r", b"").replace(b"\n", b"")
    raw = raw.partition(b"#")[0]
    if not raw:
        raise UrlError("empty URL")
    raw = _unescape_fully(raw)

    scheme, rest = _split_scheme(raw)
    if scheme and not rest.startswith(b"//"):
        raise UrlError(f"not a web URL: {show(scheme)}: is not followed by //")
    if scheme:
        rest = rest[2:]
    rest, has_query, query = rest.partition(b"?")
    slash = rest.find(b"/")
    if slash < 0:
        hostish, path = rest, b"/"
    else:
        hostish, path = rest[:slash], _normalize_path(rest[slash:])
    host = _canonical_host(hostish)

    out = (scheme.lower() or b"http") + b"://" + _escape(host) + _escape(path)
    if has_query:
        out += b"?" + _escape(query)
    return out.decode("ascii")


def _unescape_fully(s: bytes) -> bytes:
    """Percent-unescape until nothing changes (each round shortens ``s``)."""
    while b"%" in s:
        t = _unescape_once(s)
        if t == s:
            break
        s = t
    return s


def _unescape_once(s: bytes) -> bytes:
    parts = s.split(b"%")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) >= 2 and part[0] in _HEX and part[1] in _HEX:
            out.append(bytes((int(part[:2], 16),)))
            out.append(part[2:])
        else:
            out.append(b"%")
            out.append(part)
    return b"".join(out)


def _escape(s: bytes) -> bytes:
    if _NEEDS_ESCAPE.search(s) is None:
        return s
    return _NEEDS_ESCAPE.sub(lambda m: b"%%%02X" % m[0][0], s)


def _split_scheme(s: bytes) -> tuple[bytes, bytes]:
    """Split ``scheme:rest``; ``host:port/`` is not a scheme."""
    colon = s.find(b":")
    if colon <= 0 or _SCHEME.fullmatch(s, 0, colon) is None:
        return b"", s
    if _PORT_AFTER_COLON.match(s, colon):
        return b"", s
    return s[:colon], s[colon + 1 :]


def _normalize_path(path: bytes) -> bytes:
    """Resolve ``.`` and ``..`` segments and collapse runs of slashes."""
    if b"//" not in path and b"/." not in path:
        return path
    segments = path.split(b"/")
    out: list[bytes] = []
    for seg in segments[1:]:
        if seg in (b"", b"."):
            continue
        if seg == b"..":
            if out:
                out.pop()
            continue
        out.append(seg)
    if not out:
        return b"/"
    result = b"/" + b"/".join(out)
    if segments[-1] in (b"", b".", b".."):
        result += b"/"
    return result


def _canonical_host(hostish: bytes) -> bytes:
    host = hostish.rpartition(b"@")[2]
    if host.startswith(b".") and b"[" in host:
        host = host.lstrip(b".")  # ".[::1]": the brackets decide, as they will next time
    if host.startswith(b"["):
        return canonical_ipv6(host)
    colon = host.rfind(b":")
    if colon >= 0:
        port = host[colon + 1 :]
        if port and not (port.isdigit() and len(port) <= 5):
            raise UrlError(f"bad port {show(port)!r} in host {show(host)!r}")
        host = host[:colon]
        if b":" in host:
            raise UrlError(f"unexpected ':' in host {show(host)!r}")
    if b".." in host:
        host = _MANY_DOTS.sub(b".", host)
    host = host.strip(b".")
    if not host:
        raise UrlError("URL has no host")
    if not host.isascii():
        host = _idna_or_bytes(host)  # NFKC may turn other dots (U+3002, U+2024) into '.'
        if b".." in host:
            host = _MANY_DOTS.sub(b".", host)
        host = host.strip(b".")
        if not host:
            raise UrlError("URL has no host")
    host = host.lower()
    if len(host) <= 15 and b" " in host:
        m = _IP_TRAILING_JUNK.match(host)
        if m:
            host = m[1]
    ip = parse_ipv4_any(host)
    return host if ip is None else ip


def check_host(host: str) -> None:
    """Raise ``UrlError`` if a canonical host holds a percent-escape, naming why.

    The escapes stand for what no resolvable name holds (bytes that are not UTF-8,
    controls, spaces, ``%``, text IDNA cannot encode); ASCII punctuation that Safe
    Browsing keeps (``w!eird.com``) passes.
    """
    if "%" not in host:
        return
    raw = _unescape_once(host.encode("ascii"))
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UrlError(f"host {show(raw)!r} is not UTF-8 once percent-decoded") from None
    raise UrlError(f"host {show(raw)!r} is not a host name (it has characters such as "
                   "controls, spaces or '%' that no host name has)")


def _idna_or_bytes(host: bytes) -> bytes:
    """IDNA-encode a UTF-8 host; keep the bytes (escaped later) if that fails.

    A host with ASCII punctuation other than '-', '_' and '.' (a '%' above all) is not a name
    IDNA can mean: encoding it would move the punctuation into the punycode, where a
    later percent-unescaping pass would read it as an escape, so canonicalizing the
    canonical form would change it again.
    """
    if _NOT_LDH.search(host):
        return host
    try:
        return host.decode("utf-8").encode("idna")
    except UnicodeError:
        return host


_NOT_LDH = re.compile(rb"[\x00-\x2c\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]")  # ASCII but [-._0-9A-Za-z]


# ---------------------------------------------------------------- expressions


def strip_scheme(canonical_url: str) -> str:
    """``http://a.b.c/1/2.html?param=1`` -> ``a.b.c/1/2.html?param=1``."""
    i = canonical_url.find("://")
    return canonical_url if i < 0 else canonical_url[i + 3 :]


def host_of(canonical_url: str) -> str:
    """The canonical host of a canonical URL (IPv6 in brackets, no port)."""
    rest = strip_scheme(canonical_url)
    end = rest.find("/")
    return rest if end < 0 else rest[:end]


def _is_ip_host(host: str) -> bool:
    if host.startswith("["):
        return True
    return host.count(".") == 3 and host.replace(".", "").isdigit()


def expressions(canonical_url: str) -> list[str]:
    """The host-suffix x path-prefix expressions of a canonical URL, most specific first.

    Hosts: the exact host, then up to 4 suffixes formed from the last five
    components, never the bare top-level domain; an IP host only as it is.
    Paths: the exact path with the query, without it, then ``/`` and up to
    three successive directories. No scheme; duplicates removed.
    """
    rest = strip_scheme(canonical_url)
    slash = rest.find("/")
    if slash < 0:
        host, full_path = rest, "/"
    else:
        host, full_path = rest[:slash], rest[slash:]
    path, has_query, query = full_path.partition("?")

    paths = [full_path] if has_query and query else []
    paths.append(path)
    if path != "/":
        paths.append("/")
        dirs = path.split("/")[1:-1]
        prefix = "/"
        for d in dirs[: MAX_PATH_PREFIXES - 1]:
            prefix = f"{prefix}{d}/"
            paths.append(prefix)

    hosts = [host]
    if not _is_ip_host(host):
        labels = host.split(".")
        n = len(labels)
        for i in range(max(1, n - MAX_HOST_SUFFIXES - 1), n - 1):
            hosts.append(".".join(labels[i:]))

    return list(dict.fromkeys(h + p for h in hosts for p in paths))


def digest(expression: str) -> bytes:
    """SHA-256 of the UTF-8 expression."""
    return hashlib.sha256(expression.encode("utf-8")).digest()


def digests(exprs: Iterable[str]) -> list[bytes]:
    sha256 = hashlib.sha256
    return [sha256(e.encode("utf-8")).digest() for e in exprs]


# ---------------------------------------------------------------- names and rules


def normalize_expression(text: str) -> str:
    """Canonical expression (no scheme) for a rule or pattern source line.

    ``http://Example.test/x`` and ``example.test/x`` give ``example.test/x``;
    ``example.test`` gives ``example.test/``.
    """
    if not text.strip():
        raise UrlError("empty URL expression")
    return strip_scheme(canonicalize(text))


def normalize_domain(text: str) -> str:
    """A domain name as rules and queries compare it, or an IP literal's compressed text.

    Lower case, IDNA (punycode) for non-ASCII names, no trailing dot; labels
    of letters, digits, ``-`` and ``_``, each at most 63 long, at most 253 in
    all. Raises ``UrlError`` naming what is wrong.
    """
    name = text.strip()
    if not name:
        raise UrlError("empty domain name")
    if len(name) > 4 * MAX_DOMAIN_LENGTH:
        raise UrlError(f"domain name longer than {MAX_DOMAIN_LENGTH} characters")
    ip = parse_ip(name)
    if ip is not None:
        return str(ip)
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise UrlError(f"{_cut(text)!r} is not a valid international domain name: {e}") from None
    name = name.lower()
    if len(name) > MAX_DOMAIN_LENGTH:
        raise UrlError(f"domain name longer than {MAX_DOMAIN_LENGTH} characters")
    if _DOMAIN.fullmatch(name) is None:
        bad = _DOMAIN_CHAR.search(name)
        if bad is not None:
            hint = " (a domain rule already covers every subdomain)" if bad[0] == "*" else ""
            raise UrlError(f"invalid character {bad[0]!r} in domain name {_cut(text)!r}{hint}")
        raise UrlError(f"empty label in domain name {_cut(text)!r}")
    for label in name.split("."):
        if len(label) > MAX_LABEL_LENGTH:
            raise UrlError(f"label longer than {MAX_LABEL_LENGTH} characters in {_cut(text)!r}")
    return name


def _cut(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "…"


def domain_suffixes(name: str) -> list[str]:
    """The name, then each parent with at least two labels.

    ``a.b.example.com`` -> ``["a.b.example.com", "b.example.com", "example.com"]``.
    """
    out = [name]
    i = name.find(".")
    while i >= 0:
        rest = name[i + 1 :]
        if "." not in rest:
            break
        out.append(rest)
        i = name.find(".", i + 1)
    return out
