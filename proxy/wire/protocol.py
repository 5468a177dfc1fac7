"""Wire protocol v1 (docs/protocol.md), requests: request bodies in, typed queries out.
Answers (rendered, and read back from the cloud) are ``proxy.wire.replies``.

Sans-IO and pure: the query door, the intercept door and the relay all speak
through these functions. Every parser validates the whole request before
anything is answered; one bad item rejects the request with a
:class:`~proxy.errors.ProtocolError` (HTTP 400) that names the item index.

Text must be valid Unicode: a lone surrogate (``"\\ud800"`` in JSON) in a URL, a
domain or anywhere in an inspect request (which is relayed as it is) is a 400. A
URL's host must be a host name once percent-decoded (``urls.check_host``): one
that decodes to bytes that are not UTF-8, or to controls, spaces or ``%``, is a
400 ``bad_url`` on every service taking URLs (web single and batch, inspect), as
such a name is a 400 ``bad_domain`` on the domain service. What goes out is valid
Unicode too (``proxy.wire.replies``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from proxy.config import default
from proxy.errors import ProtocolError, UrlError
from proxy.model import (
    DomainQuery,
    FileQuery,
    HashKind,
    InspectQuery,
    Policy,
    WebQuery,
)
from proxy.wire import urls
from proxy.wire.batch import KINDS as _KINDS
from proxy.wire.batch import FileBatch as FileBatch
from proxy.wire.batch import columns, read_common

_HEX = frozenset("0123456789abcdefABCDEF")
_POLICIES = {p.value: p for p in Policy}
MAX_NAME = 253
SURROGATE = re.compile("[\ud800-\udfff]")


def clip(text: str, n: int = 80) -> str:
    """``text``, cut to ``n`` characters for an error message."""
    return text if len(text) <= n else text[:n] + "…"


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one request may carry (see proxy.config for the defaults' help)."""

    max_batch: int = default("max_batch")
    max_url: int = default("max_url")
    max_inspect_content: int = default("max_inspect_content")


# ---------------------------------------------------------------- parsing


def _load(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError("bad_json", f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ProtocolError("bad_json", "request body is nested too deeply") from None


def _object(body: bytes) -> dict[str, Any]:
    doc = _load(body)
    if not isinstance(doc, dict):
        raise ProtocolError("bad_request", "request body must be a JSON object")
    return doc


def _array(doc: dict[str, Any], key: str, limits: Limits) -> list[Any]:
    items = doc.get(key)
    if not isinstance(items, list):
        raise ProtocolError("bad_request", f'request must have "{key}": a JSON array')
    if not items:
        raise ProtocolError("bad_request", f'"{key}" is empty')
    if len(items) > limits.max_batch:
        raise ProtocolError(
            "batch_too_large",
            f'"{key}" has {len(items)} items; the maximum is {limits.max_batch}',
            status=413,
        )
    return items


def parse_hash(text: object, kind: HashKind | None = None, item: int | None = None) -> FileQuery:
    """A hex digest; its kind is told by its length unless given."""
    if not isinstance(text, str):
        raise ProtocolError("bad_hash", "a hash must be a hex string", item=item)
    found = HashKind.from_hex_length(len(text))
    if kind is None:
        kind = found
    if kind is None or found is not kind:
        want = f"{kind.size * 2} hex digits for {kind.value}" if kind else "32, 40 or 64 hex digits"
        raise ProtocolError(
            "bad_hash", f"hash {clip(text)!r} has {len(text)} characters; want {want}", item=item
        )
    if not _HEX.issuperset(text):
        raise ProtocolError("bad_hash", f"hash {clip(text)!r} is not hexadecimal", item=item)
    return FileQuery(kind, bytes.fromhex(text))


def parse_file_request(body: bytes, limits: Limits) -> FileBatch:
    """A file batch: the common shape read fast (``proxy.wire.batch``), anything else read
    item by item (``parse_file_request_plain``), which words every error."""
    batch = read_common(body, limits.max_batch)
    if batch is not None:
        return batch
    items = _array(_object(body), "items", limits)
    batch = columns(items)  # the common items among other members
    return batch if batch is not None else _file_items(items)


def parse_file_request_plain(body: bytes, limits: Limits) -> FileBatch:
    """The plain reading: ``json.loads``, then one query per item. ``parse_file_request``
    gives the same batch or the same error (tests/proxy/wire/test_batch.py)."""
    return _file_items(_array(_object(body), "items", limits))


def _file_items(items: list[Any]) -> FileBatch:
    out: list[FileQuery] = []
    for i, it in enumerate(items):
        if type(it) is not dict or len(it) != 1:
            raise ProtocolError(
                "bad_item", 'each item must be an object with one of "sha256", "sha1", "md5"', item=i
            )
        ((name, value),) = it.items()
        kind = _KINDS.get(name)
        if kind is None:
            raise ProtocolError(
                "bad_item", f'unknown hash type "{clip(name)}"; use sha256, sha1 or md5', item=i
            )
        out.append(parse_hash(value, kind, i))
    return FileBatch.of(out)


def parse_url(text: object, limits: Limits, item: int | None = None) -> WebQuery:
    if not isinstance(text, str):
        raise ProtocolError("bad_url", "a URL must be a string", item=item)
    if len(text) > limits.max_url:
        raise ProtocolError(
            "url_too_long", f"URL has {len(text)} characters; the maximum is {limits.max_url}",
            item=item,
        )
    bad = lone_surrogate(text)
    if bad is not None:
        raise ProtocolError("bad_url", f"URL {clip(text)!r}: {bad}", item=item)
    try:
        canonical = urls.canonicalize(text, max_length=limits.max_url)
        host = urls.host_of(canonical)
        urls.check_host(host)
    except UrlError as e:
        raise ProtocolError("bad_url", f"URL {clip(text)!r}: {e}", item=item) from None
    return WebQuery(text, canonical, host)


def lone_surrogate(text: str) -> str | None:
    """What is wrong with text holding a lone surrogate, or None: it cannot be UTF-8."""
    if text.isascii():
        return None
    found = SURROGATE.search(text)
    if found is None:
        return None
    return (f"lone surrogate {found[0]!r} at character {found.start()} "
            "(text must be valid Unicode)")


def parse_policy(value: object) -> Policy | None:
    if value is None:
        return None
    policy = _POLICIES.get(value) if isinstance(value, str) else None
    if policy is None:
        raise ProtocolError("bad_policy", f'policy must be "low", "medium" or "high", not {value!r}')
    return policy


def parse_web_request(body: bytes, limits: Limits) -> tuple[list[WebQuery], Policy | None]:
    doc = _object(body)
    items = _array(doc, "urls", limits)
    policy = parse_policy(doc.get("policy"))
    return [parse_url(u, limits, i) for i, u in enumerate(items)], policy


def parse_domain(text: object, item: int | None = None) -> DomainQuery:
    if not isinstance(text, str):
        raise ProtocolError("bad_domain", "a domain or IP must be a string", item=item)
    if len(text) > MAX_NAME + 2:
        raise ProtocolError(
            "bad_domain", f"name has {len(text)} characters; the maximum is {MAX_NAME}", item=item
        )
    bad = lone_surrogate(text)
    if bad is not None:
        raise ProtocolError("bad_domain", f"{clip(text)!r}: {bad}", item=item)
    ip = urls.parse_ip(text)
    if ip is not None:
        return DomainQuery(text, ip.compressed, ip)
    try:
        name = urls.normalize_domain(text)
    except UrlError as e:
        raise ProtocolError("bad_domain", f"{clip(text)!r}: {e}", item=item) from None
    return DomainQuery(text, name)


def parse_domain_request(body: bytes, limits: Limits) -> list[DomainQuery]:
    items = _array(_object(body), "items", limits)
    return [parse_domain(t, i) for i, t in enumerate(items)]


def parse_inspect_request(body: bytes, limits: Limits) -> InspectQuery:
    doc = _object(body)
    url = doc.get("url")
    web = parse_url(url, limits)
    bad = lone_surrogate_in(doc)  # the whole document is relayed, as UTF-8
    if bad is not None:
        raise ProtocolError("bad_request", f"request {bad}")
    content = doc.get("content")
    if content is not None:
        if not isinstance(content, str):
            raise ProtocolError("bad_content", '"content" must be base64 text')
        if len(content) > limits.max_inspect_content * 4 // 3 + 4:
            raise ProtocolError(
                "content_too_large",
                f'"content" is over {limits.max_inspect_content} bytes',
                status=413,
            )
        try:
            decoded = base64.b64decode(content, validate=True)
        except ValueError:
            raise ProtocolError("bad_content", '"content" is not valid base64') from None
        if len(decoded) > limits.max_inspect_content:
            raise ProtocolError(
                "content_too_large",
                f'"content" is over {limits.max_inspect_content} bytes',
                status=413,
            )
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return InspectQuery(web.url, hashlib.sha256(canonical).hexdigest(), canonical)


def lone_surrogate_in(doc: dict[str, Any]) -> str | None:
    """Where in ``doc`` a lone surrogate is, and what it is; None if nowhere.

    Walked with a stack, not recursion: the document may be nested as deep as JSON allows.
    """
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for key, member in value.items():
                stack.append((f"{where}[{key!r}]", member))
                stack.append((f"{where} (a key)", key))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", member) for i, member in enumerate(value))
        elif isinstance(value, str):
            bad = lone_surrogate(value)
            if bad is not None:
                return f"member {where[:120]}: {bad}"
    return None
