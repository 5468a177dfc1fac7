"""What a config value of a given form must look like: URLs, host patterns, syslog
targets. Pure checks, no Config: ``proxy.config`` calls them while validating and says
which key was wrong."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from proxy.model import HOST_LABEL


def syslog_address(value: str) -> tuple[str, Any] | None:
    """``syslog``'s target as (``udp``/``tcp``, (host, port)) or (``unix``, path); None when
    it is neither."""
    if value.startswith("/"):
        return ("unix", value) if len(value) < 108 else None  # sun_path holds 108 bytes
    try:
        parts = urlsplit(value)
        port = parts.port or 514
    except ValueError:
        return None
    if parts.scheme not in ("udp", "tcp") or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    return parts.scheme, (parts.hostname, port)


def source_ok(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https") and bool(parts.hostname) and len(url) <= 2048
        and not (parts.query or parts.fragment or parts.username or parts.password)
        and not url.endswith(("?", "#"))
    )


def host_pattern_ok(pattern: str) -> bool:
    """An exact host name, an IP address, or ``*.`` followed by a host name."""
    name = pattern.lower().removeprefix("*.")
    try:
        ipaddress.ip_address(name)
        return name == pattern.lower()  # no wildcard before an address
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    return len(name) <= 253 and all(HOST_LABEL.fullmatch(label) for label in labels)


def endpoint_ok(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:  # also a broken [IPv6] literal
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.path in ("", "/")
        and not (parts.query or parts.fragment or parts.username or parts.password)
        and not url.endswith(("?", "#"))
    )


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redis_url_ok(url: str) -> bool:
    """``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``, ``rediss://`` the same over TLS, or
    ``unix:///PATH[?db=N]``; the database a number."""
    if len(url) > 2048 or any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    if parts.fragment:
        return False
    if parts.scheme == "unix":
        return parts.path.startswith("/") and len(parts.path) < 108 and not parts.netloc
    if parts.scheme not in ("redis", "rediss") or not parts.hostname or parts.query:
        return False
    db = parts.path.strip("/")
    return db == "" or (db.isdigit() and int(db) < 1 << 16)
