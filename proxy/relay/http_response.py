"""Reading one HTTP/1.1 response for ``proxy.relay.http_client``: httptools (llhttp)
callbacks that record it, the bounds checked as bytes arrive, what a close means, and
the ``Response`` value the client returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httptools

from proxy.errors import ConnectionLost, ProtocolViolation, TooLarge

MAX_HEAD_BYTES = 64 * 1024  # status line plus headers


class StaleConnection(ConnectionLost):
    """A pooled connection that gave back no response byte at all: retry candidate."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes


class ResponseState:
    """httptools callbacks; they only record, the read loop checks bounds."""

    __slots__ = (
        "body_parts",
        "body_size",
        "done",
        "extra",
        "head_size",
        "headers",
        "headers_done",
        "keep_alive",
        "parser",
        "status",
    )

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.head_size = 0
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.headers_done = False
        self.done = False
        self.extra = False  # bytes after the response: the connection is not reusable
        self.keep_alive = False  # llhttp forgets this once the message is complete
        self.status = 0

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.done:
            return
        self.head_size += len(name) + len(value) + 4
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        if not self.done:
            self.headers_done = True
            self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self.body_parts.append(body)
            self.body_size += len(body)

    def on_message_complete(self) -> None:
        if self.done:
            return
        if 100 <= self.status < 200 and self.status != 101:
            # an interim response (100 Continue, 103 Early Hints): the real one follows
            self.headers = {}
            self.headers_done = False
            return
        self.keep_alive = self.parser.should_keep_alive()
        self.done = True

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            return -1

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()


def check_bounds(state: ResponseState, host: str, received: int, max_body: int) -> None:
    if state.head_size > MAX_HEAD_BYTES or (not state.headers_done and received > MAX_HEAD_BYTES):
        raise TooLarge(host, f"response head over {MAX_HEAD_BYTES} bytes")
    if state.headers_done:
        length = state.content_length
        if length is not None and length > max_body:
            raise TooLarge(host, f"response body of {length} bytes over the {max_body} limit")
    if state.body_size > max_body:
        raise TooLarge(host, f"response body over the {max_body} byte limit")


def complete_at_eof(state: ResponseState, host: str, received: int, reused: bool) -> bool:
    """The server closed the connection: is the response complete? Raises when it is not."""
    if received == 0:
        if reused:
            raise StaleConnection(host, "pooled connection was closed")
        raise ConnectionLost(host, "closed the connection without a response")
    if not state.headers_done:
        raise ProtocolViolation(host, "closed the connection inside the response head")
    if state.content_length is None and not state.chunked:
        return True  # body delimited by the end of the connection
    raise ConnectionLost(host, "closed the connection before the end of the response body")


def response_of(state: ResponseState) -> Response:
    return Response(state.status, state.headers, b"".join(state.body_parts))
