"""The intercept door's rules, kept in the core so the door's mitmproxy hooks
(``addons.intercept``) and the capture addon only apply them:

- ``HostPatterns`` and ``intercept_patterns``: the hosts whose TLS the door opens
  (``intercept_hosts`` and every cloud endpoint's host); all else passes through;
- ``engine_service``: which paths on those hosts the engine answers (the rest
  goes to the real host);
- ``decision``: what an answer decided (its sources and matched entries), read
  off the rendered body for a flow's metadata and the ``X-Rampart-Source`` header.

Who may use the door is ``proxy.serve.gate.ClientNetworks``; where it may connect,
``proxy.serve.destinations``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy.config import Config
from proxy.wire import paths
from proxy.wire.http import Response


def _norm(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class HostPatterns:
    """Exact host names/addresses and ``*.domain`` wildcards (any depth below ``domain``)."""

    exact: frozenset[str]
    suffixes: tuple[str, ...]  # ".domain"

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> HostPatterns:
        exact: set[str] = set()
        suffixes: list[str] = []
        for raw in patterns:
            p = _norm(raw)
            if not p or "/" in p or (":" in p and not _is_ip(p)):
                raise ValueError(f"bad host pattern {raw!r}")
            if p.startswith("*."):
                rest = p[2:]
                if not rest or "*" in rest or _is_ip(rest):
                    raise ValueError(f"bad host pattern {raw!r}")
                suffixes.append("." + rest)
            elif "*" in p:
                raise ValueError(f"bad host pattern {raw!r}: only a leading '*.' is allowed")
            else:
                exact.add(p)
        return cls(frozenset(exact), tuple(sorted(set(suffixes))))

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str) or not host:
            return False
        h = _norm(host)
        return h in self.exact or h.endswith(self.suffixes)

    def __bool__(self) -> bool:
        return bool(self.exact or self.suffixes)

    def allow_regexes(self) -> list[str]:
        """The same patterns as mitmproxy ``allow_hosts`` expressions (matched on ``host:port``)."""
        out = [rf"^\[?{re.escape(h)}\]?:\d+$" for h in sorted(self.exact)]
        out += [rf"^(?:[^.:/]+\.)+{re.escape(s[1:])}\.?:\d+$" for s in self.suffixes]
        return out


def intercept_patterns(cfg: Config) -> HostPatterns:
    """``intercept_hosts`` plus the host of every configured cloud endpoint."""
    hosts = list(cfg.intercept_hosts)
    hosts += [h for h in (urlsplit(url).hostname for url in cfg.cloud) if h]
    return HostPatterns.parse(hosts)


def engine_service(path: str) -> str | None:
    """The service an engine path belongs to (its name), or None for paths forwarded to the
    real host (the table is ``proxy.wire.paths``)."""
    service = paths.engine_service(path)
    return None if service is None else service.value


_SOURCE = re.compile(rb'"source":"([a-z-]{1,32})"')
_MATCHED = re.compile(rb'"(?:matched|threat)":("(?:[^"\\]|\\.){0,400}")')


def decision(body: bytes) -> dict[str, Any]:
    """Sources (in order, distinct) and matched entries or threats, read off a rendered answer."""
    sources: list[str] = []
    for m in _SOURCE.finditer(body):
        s = m.group(1).decode()
        if s not in sources:
            sources.append(s)
    matched: list[str] = []
    for m in _MATCHED.finditer(body):
        text = m.group(1)[1:-1].decode("ascii", "replace").replace('\\"', '"')
        if text not in matched:
            matched.append(text)
        if len(matched) >= 32:
            break
    return {"sources": sources, "matched": matched}


# id(response) -> (response, decision): the routes hand out the same Response object for a
# repeated local GET, so its decision is read once. Holding the response keeps its id from
# being reused while memoised.
_DECISIONS: dict[int, tuple[Response, dict[str, Any]]] = {}


def decision_of(response: Response) -> dict[str, Any]:
    """``decision`` of a 200 answer (memoised for small ones); no sources for any other status."""
    if response.status != 200:
        return {"sources": [], "matched": []}
    memo = _DECISIONS.get(id(response))
    if memo is not None and memo[0] is response:
        return memo[1]
    found = decision(response.body)
    if len(response.body) <= 4096:  # single answers repeat; batches seldom do, and are large
        if len(_DECISIONS) >= 4096:
            _DECISIONS.clear()
        _DECISIONS[id(response)] = (response, found)
    return found
