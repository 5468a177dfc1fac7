"""What a query-door answer becomes in the query log, worked out in the writer thread.

The request path only queues ``(time, client, target, body, seconds)`` of a 200 answer
(plain values the garbage collector stops tracking at once, so a queue of them adds no
work to its collections); here the rendered answer is read back (``json``) into one row
per item. The rows' fixed part (service, item, verdict, action, source, origin, matched,
threat, blocked) is kept per body object: the routes hand out the same answer for a
repeated local GET, so a busy single-item load is parsed once, not per request.

``origin`` says which list or pattern decided, for the Blocked Access log: the lists
(``blocked-list``, ``approved-list``), the Smart Scan Pattern (``smart-scan``), the Web
Blocking List (``web-blocking``: a URL entry rated dangerous, highly suspicious or safe),
the Suspicious URLs (``suspicious-urls``: a URL entry rated suspicious or untested), the
domain/IP list (``domain-ip``), the cloud (``cloud``: answered now or from the cache),
``local`` (no cloud configured) or ``degraded`` (a cloud that did not answer in time).

An item is *blocked* when its action is ``block``; without a policy in the request, a
file rated ``malicious`` and a URL or domain rated ``dangerous`` or ``highly_suspicious``
(what the ``medium`` policy blocks).
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any
from urllib.parse import urlsplit

from proxy.logs.clients import ClientMask
from proxy.logs.store import clip
from proxy.wire import paths

MAX_ITEM = 256  # characters of an item (a URL is kept without its query, then clipped)
MAX_TEXT = 200  # matched entries, threats, categories
MAX_RESULTS = 10_000  # rows one answer may give (the protocol's batches are smaller)
MEMO = 4096
ORIGINS = ("blocked-list", "approved-list", "smart-scan", "web-blocking", "suspicious-urls",
           "domain-ip", "cloud", "local", "degraded")
_HASHES = ("sha256", "sha1", "md5")
_SUBJECTS = frozenset({*_HASHES, "url", "domain", "ip"})  # the renderer writes it first
_BLOCKING = frozenset({"malicious", "dangerous", "highly_suspicious"})
_WEB_BLOCKING = frozenset({"dangerous", "highly_suspicious", "safe"})

_ONE = re.compile(  # one flat result, its subject first: what replies.render_* write for one item
    rb'\{"protocol":\d+,"pattern":"[^"\\]*","results":\[\{"(sha256|sha1|md5|url|domain|ip)":'
    rb'"([^"\\]*)",([^{}\[\]]*)\}\]\}')  # an item with an escape is read in full
_decode = json.JSONDecoder().raw_decode  # json.loads less its checks: the body is our own
_ENGINE_PATHS = tuple((r.path.encode(), r.service.value) for r in paths.ROUTES if r.service is not None)

Template = tuple[str, str, str, str, str, str, str, str, int]
"""service, item, verdict, action, source, origin, matched, threat, blocked"""


def url_item(url: str) -> str:
    """A URL as the log keeps it: scheme, host and path, without user info, query or
    fragment (they may hold secrets), at most ``MAX_ITEM`` characters."""
    text = url.split("#", 1)[0].split("?", 1)[0]
    if "@" in text:  # user info, perhaps: only then is the URL taken apart
        try:
            parts = urlsplit(text)
            host = parts.netloc.rpartition("@")[2]
            text = f"{parts.scheme}://{host}{parts.path}" if parts.scheme else host + parts.path
        except ValueError:
            text = text.rpartition("@")[2]
    return clip(text, MAX_ITEM)


def origin_of(service: str, source: str, rating: str, matched: str) -> str:
    """Which list or pattern decided an item (see the module's docstring)."""
    if source in ("blocked-list", "approved-list", "local", "degraded"):
        return source
    if source in ("cloud", "cache"):
        return "cloud"
    if service == "file":
        return "smart-scan"
    if service == "web" and "/" in matched and not _is_network(matched):
        return "web-blocking" if rating in _WEB_BLOCKING else "suspicious-urls"
    return "domain-ip"


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def template(service: str, result: dict[str, Any]) -> Template | None:
    """The fixed part of one result's row; None for a result that is not an object."""
    if not isinstance(result, dict):
        return None
    key, value = next(((k, v) for k, v in result.items() if k in _SUBJECTS), ("", ""))
    item = url_item(value) if key == "url" and isinstance(value, str) else clip(value, MAX_ITEM)
    get = result.get
    verdict = clip(get("verdict") or get("rating"), 32)
    action = clip(get("action"), 16)
    source = clip(get("source"), 32)
    matched = clip(get("matched"), MAX_TEXT)
    threat = clip(get("threat") or get("category"), MAX_TEXT)
    blocked = action == "block" if action else verdict in _BLOCKING
    return (service, item, verdict, action, source, origin_of(service, source, verdict, matched),
            matched, threat, int(blocked))


def templates(service: str, body: bytes) -> list[Template]:
    """Every result of a rendered answer, in order; none for a body that is not one."""
    try:
        doc = _decode(body.decode("utf-8", "replace"))[0]
    except ValueError:
        return []
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list):
        return []
    out = [template(service, r) for r in results[:MAX_RESULTS]]
    return [t for t in out if t is not None]


class Answers:
    """Turns queued answers into query-log rows; one per writer thread (not thread-safe)."""

    def __init__(self, clients: str | ClientMask) -> None:
        self.mask = clients if isinstance(clients, ClientMask) else ClientMask(clients)
        self._memo: dict[int, tuple[bytes, tuple[Template, ...]]] = {}
        self._tails: dict[tuple[str, bytes], tuple[Any, ...]] = {}

    def rows(self, t: float, client: str, target: bytes, body: bytes,
             seconds: float, count: int = 1) -> list[tuple[Any, ...]]:
        """The rows of one 200 answer's ``body`` (``count`` identical ones, ``seconds`` their
        mean latency). Keyed by the body object: holding it, its id cannot be reused."""
        memo = self._memo.get(id(body))
        if memo is not None and memo[0] is body:
            found = memo[1]
        else:
            service = service_of(target)
            if service is None:
                found = ()
            else:
                found = self._single(service, body) or tuple(templates(service, body))
            if len(body) <= 4096:  # single answers repeat; batches seldom do
                if len(self._memo) >= MEMO:
                    self._memo.clear()
                self._memo[id(body)] = (body, found)
        if not found:
            return []
        head = (t, self.mask(client), round(seconds * 1000, 3), count)
        return [head + tmpl for tmpl in found]

    def _single(self, service: str, body: bytes) -> tuple[Template] | None:
        """A one-result answer, read quickly: items differ, what follows them repeats (the
        renderer's fragment for one verdict and source), so the rest of the row is kept per
        fragment and only the item is decoded. None when ``body`` is not that shape (a
        batch, an inspection, an item with an escape, text with brackets): then it is
        read in full."""
        m = _ONE.fullmatch(body)
        if m is None:
            return None
        key, raw, rest = m.groups()
        tail = self._tails.get((service, rest))
        if tail is None:
            whole = templates(service, body)
            if len(whole) != 1:
                return None
            tail = whole[0][2:]
            if len(self._tails) >= MEMO:
                self._tails.clear()
            self._tails[(service, rest)] = tail
        value = raw.decode("ascii", "replace")  # the renderer writes ASCII
        item = url_item(value) if key == b"url" else clip(value, MAX_ITEM)
        return ((service, item, *tail),)


def service_of(target: bytes) -> str | None:
    """The engine service a request target asks (``proxy.wire.paths``), or None. Only for
    answered (200) requests: a path the table does not serve was answered 404."""
    for path, service in _ENGINE_PATHS:
        if target.startswith(path):
            return service
    return None
