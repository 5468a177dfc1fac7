"""Rampart's error tree: every error any part of Rampart raises is defined here.

    RampartError                     exit 1, HTTP 500, code "internal"
    ├── ConfigError                  a bad config key, value or flag (exit 2)
    ├── CertError                    a CA, key or certificate that cannot be used (exit 2)
    ├── PatternError                 a pattern file, build or update that cannot be used
    │   ├── SourceError              a malformed source line (names file and line)
    │   ├── Refused                  a genuinely signed update that must not be followed
    │   ├── AlreadyCurrent           an install under the current version's name
    │   └── Superseded               an install older than what was installed meanwhile
    ├── FetchError                   a download from an update source that failed
    ├── ProtocolError                a request that breaks the wire protocol (HTTP 4xx)
    ├── UrlError                     a URL, expression or domain that cannot be used (also ValueError)
    ├── ListError                    a bad approved/blocked list value (exit 2, HTTP 400)
    └── RelayError                   the cloud did not give a usable answer
        ├── RelayUnavailable         no endpoint answered; carries ``retry_after``
        ├── UpstreamStatus           an endpoint answered with a status other than 200 (kind "status")
        ├── BadAnswer                an answer that breaks the wire protocol (kind "bad_answer";
        │                            also ValueError)
        └── HttpClientError          one failed upstream exchange; names the peer
            ├── ConnectError, ConnectionLost                kind "connect"
            ├── HttpTimeout: ConnectTimeout, ReadTimeout,   kind "timeout"
            │   DeadlineExceeded
            ├── TlsError                                    kind "tls"
            └── ProtocolViolation, TooLarge                 kind "bad_answer"

Each class carries what it maps to: ``status`` for an HTTP answer, ``exit_code``
for the command line, ``code`` for the JSON error body, and where a metric counts
it, ``reason`` (update failures) or ``kind`` (relay outcomes). Nothing is classified
by its class name or message text. This module imports nothing from Rampart, so
every package, ``certs`` included, may import it.
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


class CertError(RampartError):
    """A CA, key or certificate that cannot be created, loaded or used.

    The message names the file or value that was wrong and, where there is one, the fix.
    """

    exit_code = 2
    code = "bad_certificate"


# ---------------------------------------------------------------- patterns and updates


class PatternError(RampartError):
    """A pattern that cannot be used; ``reason`` is its update-failure metric label."""

    code = "bad_pattern"

    def __init__(self, message: str, *, reason: str = "bad_pattern") -> None:
        super().__init__(message)
        self.reason = reason


class SourceError(PatternError):
    """A malformed line in a pattern source; the message names file and line."""

    def __init__(self, path: str, line_no: int, message: str) -> None:
        super().__init__(f"{path}:{line_no}: {message}", reason="bad_source")
        self.path = path
        self.line_no = line_no


class Refused(PatternError):
    """A genuinely signed manifest that must not be followed; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)


class AlreadyCurrent(PatternError):
    """An install under the name of the current version (another process may just have made it)."""


class Superseded(PatternError):
    """An install from an update older than the high-water mark: something newer came meanwhile."""


class FetchError(RampartError):
    """A download that failed; ``reason`` is a failure reason, ``missing`` a 404."""

    def __init__(self, message: str, *, reason: str = "fetch_failed", missing: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.missing = missing


# ---------------------------------------------------------------- requests


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


class UrlError(RampartError, ValueError):
    """A URL, expression or domain name that cannot be used; the message says why."""

    exit_code = 2
    status = 400
    code = "bad_url"


class ListError(RampartError):
    exit_code = 2
    status = 400
    code = "bad_list_value"


# ---------------------------------------------------------------- the relay


class RelayError(RampartError):
    """The cloud gave no usable answer; ``kind`` is the relay-outcome metric label."""

    code = "relay_failed"
    kind = "error"

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class RelayUnavailable(RelayError):
    """No endpoint gave a usable answer.

    ``retry_after`` is a hint in seconds: how long until an endpoint will be
    tried again (0 when one is available now, e.g. after a deadline).
    """

    def __init__(self, message: str, *, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamStatus(RelayError):
    kind = "status"


class BadAnswer(RelayError, ValueError):
    """An upstream answer that is not ``{"protocol": 1, "results": [...]}`` with one object per item."""

    kind = "bad_answer"


class HttpClientError(RelayError):
    """A failed upstream exchange; ``host`` names the peer (host:port)."""

    def __init__(self, host: str, cause: str) -> None:
        super().__init__(f"{host}: {cause}")
        self.host = host
        self.cause = cause


class ConnectError(HttpClientError):
    kind = "connect"


class ConnectionLost(HttpClientError):
    kind = "connect"


class HttpTimeout(HttpClientError):
    kind = "timeout"


class ConnectTimeout(HttpTimeout):
    pass


class ReadTimeout(HttpTimeout):
    pass


class DeadlineExceeded(HttpTimeout):
    pass


class TlsError(HttpClientError):
    kind = "tls"


class ProtocolViolation(HttpClientError):
    kind = "bad_answer"


class TooLarge(HttpClientError):
    kind = "bad_answer"
