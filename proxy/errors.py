"""Rampart's error tree.

    RampartError                 exit code 1
    ├── ConfigError              a bad config key or value (exit 2)
    ├── PatternError             a pattern file or source that cannot be used
    │   └── SourceError          a malformed source line (names file and line)
    ├── ProtocolError            a request that breaks the wire protocol (HTTP 4xx)
    ├── ListError                a bad approved/blocked list value
    └── RelayError               the cloud did not give a usable answer

Each error carries what it maps to: ``status`` for HTTP answers, ``exit_code``
for the CLI, and ``code`` for the JSON error body.
"""

from __future__ import annotations


class RampartError(Exception):
    exit_code = 1
    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RampartError):
    exit_code = 2
    code = "bad_config"


class PatternError(RampartError):
    code = "bad_pattern"


class SourceError(PatternError):
    """A malformed line in a pattern source; the message names file and line."""

    def __init__(self, path: str, line_no: int, message: str) -> None:
        super().__init__(f"{path}:{line_no}: {message}")
        self.path = path
        self.line_no = line_no


class ListError(RampartError):
    exit_code = 2
    status = 400
    code = "bad_list_value"


class ProtocolError(RampartError):
    """A request the query door refuses; ``status`` is the HTTP status to answer with."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        item: int | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.item = item
        self.headers = headers


class RelayError(RampartError):
    code = "relay_failed"
