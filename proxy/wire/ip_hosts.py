"""IP hosts as URLs and names spell them: IPv4 in any legal encoding (decimal, octal,
hex, fewer than four parts), bracketed IPv6 (IPv4-mapped and NAT64 read as the IPv4
address inside), and ``parse_ip`` for a name that is an address. Pure functions, for
``proxy.wire.urls``.
"""

from __future__ import annotations

import functools
import ipaddress

from proxy.errors import UrlError
from proxy.model import Address

_HEX = frozenset(b"0123456789abcdefABCDEF")
_OCT = frozenset(b"01234567")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def show(b: bytes) -> str:
    """Bytes of a URL as text for an error message (cut, undecodable bytes escaped)."""
    return b[:80].decode("utf-8", "backslashreplace")


def canonical_ipv6(host: bytes) -> bytes:
    end = host.find(b"]")
    if end < 0:
        raise UrlError(f"missing ']' in IPv6 host {show(host)!r}")
    after = host[end + 1 :]
    if after and not (after[:1] == b":" and (after[1:].isdigit() or after == b":")):
        raise UrlError(f"unexpected {show(after)!r} after IPv6 host")
    try:
        ip = ipaddress.IPv6Address(host[1:end].decode("ascii"))
    except (UnicodeError, ValueError) as e:
        raise UrlError(f"bad IPv6 host {show(host[: end + 1])!r}: {e}") from None
    v4 = _embedded_ipv4(ip)
    if v4 is not None:
        return str(v4).encode()
    return b"[" + str(ip).encode() + b"]"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped or NAT64 (64:ff9b::/96) address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def parse_ipv4_any(host: bytes) -> bytes | None:
    """Read ``host`` as an IPv4 address in any legal encoding, or return None.

    Decimal, octal (leading 0) and hex (0x) components; fewer than four
    components fill the remaining bytes from the last one ("3279880203",
    "10.1", "0x12.0x43.0x44.0x01").
    """
    if not host[:1].isdigit() or host.count(b".") > 3:
        return None
    parts = host.split(b".")
    values: list[int] = []
    for part in parts:
        v = _parse_ip_number(part)
        if v is None:
            return None
        values.append(v)
    out = [v & 0xFF for v in values[:-1]]
    last, width = values[-1], 5 - len(parts)
    out.extend((last >> (8 * i)) & 0xFF for i in reversed(range(width)))
    return b".".join(b"%d" % v for v in out)


def _parse_ip_number(s: bytes) -> int | None:
    try:
        if s[:2] == b"0x":
            digits = s[2:]
            if not digits or not all(c in _HEX for c in digits):
                return None
            v = int(digits, 16)
        elif not s.isdigit():
            return None
        elif len(s) > 1 and s[0] == 0x30:
            if not all(c in _OCT for c in s):
                return None
            v = int(s, 8)
        else:
            v = int(s)
    except ValueError:  # more digits than int() accepts
        return None
    return v if v <= 0xFFFFFFFF else None


def parse_ip(text: str) -> Address | None:
    """The IP address ``text`` spells (IPv6 may be bracketed), or None."""
    s = text.strip()
    if not s or len(s) > 64:
        return None
    if s[0] == "[" and s[-1] == "]":
        s = s[1:-1]
    if not s or not (s[0].isdigit() or ":" in s):
        return None
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def peer_address(client: str | None) -> Address | None:
    """A connection's peer address as rules and logs compare it: a scope id and brackets
    dropped, an IPv4-mapped IPv6 address read as its IPv4; None when it is not one.
    Remembered: the same few clients ask again and again."""
    if not client:
        return None
    try:
        ip = ipaddress.ip_address(client.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
