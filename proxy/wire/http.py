"""HTTP values both doors share: the ``Request`` a route reads, the ``Response`` it gives,
and how an error becomes one (``error_response``; ``respond``/``settle`` turn any
exception a route raises into the answer a client gets: a ``ProtocolError`` its own,
anything else a logged 500).

The query door (``proxy.serve.server``) writes a ``Response`` to its transport; the
intercept door (``addons.intercept``) turns it into a mitmproxy response.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from proxy.errors import ProtocolError
from proxy.wire.replies import render_error

logger = logging.getLogger(__name__)

_REASONS = {
    200: "OK", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable",
}


@dataclass(slots=True)
class Request:
    method: str
    target: bytes  # path and query, as sent
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: str  # peer address

    def header(self, name: bytes) -> bytes | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    # what the query log reads instead of the body, when the route has it at hand: for a
    # file batch ("file", names, hexes, result ends) (proxy.logs.entries.Answers)
    items: tuple[str, list[str], list[str], list[str]] | None = field(
        default=None, compare=False, repr=False)
    # head + body for a keep-alive answer, made once: memoised responses are sent many times
    _wire: bytes | None = field(default=None, init=False, compare=False, repr=False)

    def wire(self) -> bytes:
        """The whole keep-alive answer on the wire."""
        wire = self._wire
        if wire is None:
            wire = self.head(True) + self.body
            object.__setattr__(self, "_wire", wire)
        return wire

    def head(self, keep_alive: bool) -> bytes:
        key = (self.status, self.content_type, len(self.body), keep_alive, self.headers)
        head = _HEADS.get(key)
        if head is None:
            head = self._head(keep_alive)
            if len(_HEADS) > 4096:
                _HEADS.clear()
            _HEADS[key] = head
        return head

    def _head(self, keep_alive: bool) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers)
        conn = "" if keep_alive else "Connection: close\r\n"
        return (
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Status')}\r\n"
            f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
            f"{extra}{conn}\r\n"
        ).encode()


_HEADS: dict[tuple[object, ...], bytes] = {}

Handler = Callable[[Request], "Response | Awaitable[Response]"]
Again = tuple[Callable[[], bool], Callable[[], None]]
"""(holds, answered): whether an answer given still holds, and what counts and observes
it as sent once more: what the query door's server needs to send it again without
parsing the request (``proxy.serve.server``)."""
Repeat = Callable[[Request, Response], "Again | None"]
"""Given a request and the answer just sent for it: what to call before sending that
answer again for the same bytes (``Again``), or None when it must be made afresh."""


def error_response(error: ProtocolError) -> Response:
    return Response(error.status, render_error(error), headers=error.headers)


def internal_error() -> Response:
    """What a client is told when a route fails unexpectedly (the failure is logged)."""
    return error_response(ProtocolError("internal", "internal error", status=500))


def respond(handler: Handler, request: Request) -> Response | Awaitable[Response]:
    """``handler``'s answer to ``request``; an error it raises as the answer a client gets."""
    try:
        return handler(request)
    except ProtocolError as e:
        return error_response(e)
    except Exception:
        logger.exception("handler failed for %s", request.target[:100])
        return internal_error()


async def settle(pending: Awaitable[Response], target: bytes) -> Response:
    """The answer ``pending`` gives (``respond``'s awaitable), errors included as ``respond``'s."""
    try:
        return await pending
    except ProtocolError as e:
        return error_response(e)
    except Exception:
        logger.exception("handler failed for %s", target[:100])
        return internal_error()


def coded(value: bytes, plain: bytes) -> bool:
    """Whether a Content-Encoding or Transfer-Encoding value names a coding other than
    ``plain`` (``identity``, or ``chunked``, which the servers decode themselves)."""
    return any(c.strip().lower() not in (b"", plain) for c in value.split(b","))


def coding_refused(name: bytes, value: bytes) -> ProtocolError | None:
    """The refusal of a request header (``name`` lower-case) that would have its body
    misread as plain bytes: any content coding (415), any transfer coding but chunked
    (501), which the servers decode themselves; None for any other header or value."""
    if name == b"content-encoding" and coded(value, b"identity"):
        return ProtocolError(
            "unsupported_encoding",
            f"Content-Encoding {value[:40].decode('latin-1')!r} is not accepted: send the body"
            " uncompressed", status=415)
    if name == b"transfer-encoding" and coded(value, b"chunked"):
        return ProtocolError(
            "unsupported_encoding",
            f"Transfer-Encoding {value[:40].decode('latin-1')!r} is not supported: only chunked",
            status=501)
    return None
