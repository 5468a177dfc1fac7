"""What a query-door answer becomes in the query log, worked out in the writer thread.

The request path only queues ``(time, client, target, body, seconds, count)`` of 200 answers
(plain values the garbage collector stops tracking at once, so a queue of them adds no
work to its collections); here the rendered answer is read back (``json``) into one row
per item. The rows' fixed part (service, item, verdict, action, source, origin, matched,
threat, blocked) is kept per body object: the routes hand out the same answer for a
repeated local GET, so a busy single-item load is parsed once, not per request. A new
one-item answer (an unknown hash, say: a new body every request) is not parsed either:
it is cut at its item's quotes and the rest looked up as a *shape* learnt from an
earlier body (``Answers._single``). The writer calls ``Answers.batch`` once per batch;
``Answers.rows`` is the same reading one answer at a time, and the tests hold the two
equal to a full ``json`` reading of each body (tests/proxy/logs/test_entries_batch.py).

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
from collections.abc import Iterable
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
    rb'"([^"\\\x00-\x1f]*)",([^{}\[\]]*)\}\]\}')  # an item with an escape is read in full
_HEAD = re.compile(rb'\{"protocol":\d+,"pattern":"[^"\\]*","results":\[')  # a batch's envelope
_BRACKETS = frozenset(b"{}[]")
_ALONE = b'{"protocol":1,"pattern":"","results":[{"'  # one result alone, as a shape is learnt
_decode = json.JSONDecoder().raw_decode  # json.loads less its checks: the body is our own
_ENGINE_PATHS = tuple((r.path.encode(), r.service.value) for r in paths.ROUTES if r.service is not None)
_PLAIN = bytes(c for c in range(0x20, 0x7f) if c != 0x5C)  # printable ASCII but "\\"
_LONGEST = max(len(path) for path, _ in _ENGINE_PATHS)

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


Items = tuple[str, list[str], list[str], list[str]]
"""A batch answer's items by column (``proxy.wire.http.Response.items``): service, each
item's subject key, its value and the text after it in the body."""


class Logged:
    """A batch answer as the writer queues it: its body and its items by column, read by
    ``Answers`` instead of the body. Sized as twice its body for the queue's weighing of
    large answers (``MAX_QUEUED_BYTES``): the digests by column hold about as much again."""

    __slots__ = ("body", "items")

    def __init__(self, body: bytes, items: Items) -> None:
        self.body = body
        self.items = items

    def __len__(self) -> int:
        return 2 * len(self.body)


Entry = tuple[Any, ...]
"""A queued answer: time, client, request target, body, seconds it took; or, as the
writer queues them, the same with ``count`` identical answers after (seconds summed)."""
Row = tuple[Any, ...]
"""A query-log row, ``store.COLUMNS["query"]``."""


class Answers:
    """Turns queued answers into query-log rows; one per writer thread (not thread-safe)."""

    def __init__(self, clients: str | ClientMask) -> None:
        self.mask = clients if isinstance(clients, ClientMask) else ClientMask(clients)
        self._memo: dict[int, tuple[bytes | Logged, tuple[Template, ...]]] = {}
        self._prefix = b"\0"  # the envelope of the last shape learnt
        # (service, envelope or subject, text after the item): bytes read from a body, or
        # str from a batch's items by column (the two never equal each other)
        self._shapes: dict[tuple[str, bytes | str, bytes | str], tuple[bool, tuple[Any, ...]]] = {}
        self._services: dict[bytes, str | None] = {}

    def rows(self, t: float, client: str, target: bytes, body: bytes,
             seconds: float, count: int = 1) -> list[Row]:
        """The rows of one 200 answer's ``body`` (``count`` identical ones, ``seconds`` their
        mean latency): the plain path, one answer at a time (``batch`` is the writer's)."""
        found = self._templates(target, body)
        if not found:
            return []
        head = (t, self.mask(client), round(seconds * 1e6) / 1000, count)  # ms, to the µs
        return [head + tmpl for tmpl in found]

    def batch(self, entries: Iterable[Entry]) -> list[Row]:
        """The rows of a writer batch: identical answers (the same body object, which the
        routes' memo hands out again, to the same client in the same second) are one row
        with their ``count`` and mean latency, in the order first seen.

        Equal to ``rows`` per group (tests/proxy/logs/test_entries_batch.py holds it so), but
        shaped as one loop, because the writer runs it for every answer, in the server's
        process, taking the CPU and the GIL from the event loop. A body's first entry is
        keyed by its id alone (``_grouped``), so distinct answers (unknown hashes, say)
        cost one dict entry each; only a body seen again is memoised (a repeated answer
        is then one dict lookup, this batch and the next). The client
        mask is looked up once per client and batch (``mask`` is read once: a
        ``set_clients`` takes effect from the next batch) and the head is built inline.
        """
        out: list[Row] = []
        mask, masked = self.mask, dict[str, str]()
        memo, read = self._memo, self._read
        for key, group in _grouped(entries).items():
            if len(group) == 5:
                t, client, target, body, seconds = group
                count = 1
            else:
                t, client, target, body, seconds, count = group
                if count != 1:
                    seconds /= count
            found = memo.get(id(body))
            if found is not None and found[0] is body:
                tmpls = found[1]
            else:  # kept when seen again: a repeated answer
                tmpls = read(target, body, count > 1 or type(key) is tuple)
            if not tmpls:
                continue
            shown = masked.get(client)
            if shown is None:
                shown = masked[client] = mask(client)
            head = (t, shown, round(seconds * 1e6) / 1000, count)  # as ``rows``: quicker
            if len(tmpls) == 1:
                out.append(head + tmpls[0])
            else:
                out += [head + tmpl for tmpl in tmpls]
        return out

    def _templates(self, target: bytes, body: bytes | Logged) -> tuple[Template, ...]:
        """The fixed part of each of ``body``'s rows, memoised by the body object (holding
        it, its id cannot be reused) when it is small: single answers repeat, batches
        seldom do."""
        memo = self._memo.get(id(body))
        if memo is not None and memo[0] is body:
            return memo[1]
        return self._read(target, body, len(body) <= 4096)

    def _read(self, target: bytes, body: bytes | Logged, keep: bool) -> tuple[Template, ...]:
        """``_templates`` for a body not in the memo; kept there when ``keep``."""
        prefix = target[:_LONGEST]  # service_of reads no further
        service = self._services.get(prefix, "")
        if service == "":
            service = service_of(prefix)
            if len(self._services) >= MEMO:
                self._services.clear()
            self._services[prefix] = service
        if service is None:
            found: tuple[Template, ...] = ()
        else:
            by_column, raw = (self._by_column(service, body.items), body.body) if isinstance(
                body, Logged) else (None, body)
            found = (by_column or self._single(service, raw) or self._many(service, raw)
                     or tuple(templates(service, raw)))
        if keep:
            if len(self._memo) >= MEMO:
                self._memo.clear()
            self._memo[id(body)] = (body, found)
        return found

    def _single(self, service: str, body: bytes) -> tuple[Template] | None:
        """A one-result answer, read quickly. Items differ; what is around them repeats (the
        envelope, the renderer's fragment for one verdict and source). So a body is cut at
        its first item's quotes (``startswith`` the last envelope seen, else ``find``: C,
        quick), and when the text before and after is a *shape* seen before and the item
        is plain (no escape, no control character), the row is the shape's with this
        item: the same as reading the whole body, since a plain item changes no other
        token. A shape is learnt only from a body that ``_ONE`` matches (one flat result,
        cut at the same places) and whose full reading agrees. None when ``body`` is not
        that shape (a batch, an inspection, an escaped item, text with brackets): then it
        is read in full."""
        prefix = self._prefix
        if body.startswith(prefix):
            start = len(prefix)
        else:
            start = body.find(b'":"', body.find(b'"results":[{"')) + 3
            if start < 3:
                return None
            prefix = body[:start]
        end = body.find(b'"', start)
        if end < 0:
            return None
        raw = body[start:end]
        shape = (service, prefix, body[end:])
        known = self._shapes.get(shape)
        if known is None or (not raw.isalnum() and raw.translate(None, _PLAIN)):
            known = self._learn(shape, body, start, end)
            if known is None:
                return None
            self._prefix = prefix  # a bytes object keeps its hash: the next key is quicker
        is_url, tail = known
        value = raw.decode("utf-8", "replace")
        return ((service, url_item(value) if is_url else value[:MAX_ITEM]) + tail,)  # noqa: RUF005 (see _many)

    def _by_column(self, service: str, items: Items) -> tuple[Template, ...] | None:
        """A file batch's rows from its items by column (``Response.items``: the kinds, hex
        digests and result ends the renderer joined into the body), with nothing read back:
        each result end is a shape learnt once, as ``_many`` learns it, from a full reading
        of that one result (``_learn``), so a row is what reading the body would give. The
        result ends are the renderer's memoised strings (their hashes kept), so an item
        costs a dict lookup and a tuple. None when any result end is not learnable (then
        the body is read)."""
        kind_of, names, hexes, tails = items
        if kind_of != service:
            return None
        shapes, learn, out = self._shapes, self._learn, []
        for name, digest, tail in zip(names, hexes, tails):
            shape = (service, name, tail)
            known = shapes.get(shape)
            if known is None:
                head = _ALONE + f'{name}":"'.encode()
                value = digest.encode()
                known = learn(shape, head + value + tail.encode() + b"]}", len(head),
                              len(head) + len(value))
                if known is None:
                    return None
            out.append((service, url_item(digest) if known[0] else digest[:MAX_ITEM]) + known[1])
        return tuple(out[:MAX_RESULTS])

    def _many(self, service: str, body: bytes) -> tuple[Template, ...] | None:
        """A batch answer read by its results' shapes, as ``_single`` reads one result.

        Why: a 1,000-item batch read in full (``json`` and ``template`` per result, with a
        ``clip`` per field) cost the writer some 4.5 µs an item, more than answering it.
        Here the results are cut apart where one ends and the next begins (``},{"``) and
        each piece taken as ``SUBJECT":"ITEM",TAIL``: a plain item (no quote, escape or
        control character) and a tail looked up as a shape learnt from a full reading
        of that one result (``_learn``; a batch has few tails, one per verdict, source
        and threat, and many items). A tail is learnt only without escape or bracket,
        so its strings cannot hold a ``},{"`` and every cut is between two results (a
        piece cut inside a string is no learnable result). Any other body (an escape, a
        nested object, a result not flat) gives None and is read in full.
        tests/proxy/logs/test_entries_batch.py holds the rows equal to the full reading.
        """
        head = _HEAD.match(body)
        if head is None or not body.endswith(b"}]}"):
            return None
        pos = head.end()
        if body[pos:pos + 2] != b'{"':
            return None
        shapes, learn, out = self._shapes, self._learn, []
        for piece in body[pos + 2:-3].split(b'},{"'):
            kind, _, rest = piece.partition(b'":"')
            raw, sep, tail = rest.partition(b'",')
            shape = (service, kind, tail)
            known = shapes.get(shape)
            if known is None or not sep or (not raw.isalnum() and raw.translate(None, _PLAIN)):
                at = len(_ALONE) + len(kind) + 3
                learnable = sep and b"\\" not in tail and not _BRACKETS.intersection(tail)
                known = learn(shape, _ALONE + piece + b"}]}", at, at + len(raw)) if learnable else None
                if known is None:
                    return None
            value = raw.decode("utf-8", "replace")
            # (a, b) + tail: one tuple built in C, where (a, b, *tail) goes through a list
            out.append((service, url_item(value) if known[0] else value[:MAX_ITEM]) + known[1])
        return tuple(out[:MAX_RESULTS])

    def _learn(self, shape: tuple[str, bytes | str, bytes | str], body: bytes, start: int,
               end: int) -> tuple[bool, tuple[Any, ...]] | None:
        """The shape of ``body`` (cut at ``start``, ``end``), read in full and kept; None
        when it is not one flat result cut there."""
        m = _ONE.fullmatch(body)
        if m is None or m.span(2) != (start, end):
            return None
        whole = templates(shape[0], body)
        is_url = m[1] == b"url"
        value = m[2].decode("utf-8", "replace")
        if len(whole) != 1 or whole[0][1] != (url_item(value) if is_url else value[:MAX_ITEM]):
            return None
        if len(self._shapes) >= MEMO:
            self._shapes.clear()
        known = self._shapes[shape] = (is_url, whole[0][2:])
        return known


def _grouped(entries: Iterable[Entry]) -> dict[Any, Any]:
    """``entries`` by group, in the order first seen. The first entry of a body is keyed
    by the body's id (cheap: with distinct answers that is every entry); a later one
    joins it when in the same second from the same client, else the group keyed by
    (second, client, body id). A group of two or more entries is a list ``[t, client,
    target, body, seconds summed, count]``; a tuple key means the body was seen before."""
    groups: dict[Any, Any] = {}
    get = groups.get
    for entry in entries:
        slot: Any = id(entry[3])  # ids are distinct: entries hold the bodies
        group = get(slot)
        if group is None:
            groups[slot] = entry
            continue
        if int(group[0]) != int(entry[0]) or group[1] != entry[1]:
            slot = (int(entry[0]), entry[1], slot)
            group = get(slot)
            if group is None:
                groups[slot] = entry
                continue
        n = entry[5] if len(entry) == 6 else 1
        if type(group) is list:
            group[4] += entry[4]
            group[5] += n
        else:  # the second entry of its kind: now a group that counts
            groups[slot] = [*group[:4], group[4] + entry[4], (group[5] if len(group) == 6 else 1) + n]
    return groups


def service_of(target: bytes) -> str | None:
    """The engine service a request target asks (``proxy.wire.paths``), or None. Only for
    answered (200) requests: a path the table does not serve was answered 404."""
    for path, service in _ENGINE_PATHS:
        if target.startswith(path):
            return service
    return None
