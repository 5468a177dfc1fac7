"""The console's errors: each a RampartError with the HTTP ``status`` and ``code`` the admin
API answers with, and the ``exit_code`` ``rampart admin`` exits with.

``field`` names the request field that was wrong (400) and ``headers`` holds extra
response headers (``Retry-After`` on 429), like ``ProtocolError``'s, so the API renders
every one of them the same way: ``{"error": {"code", "message", "field"}}``.
"""

from __future__ import annotations

from proxy.errors import ConfigError, RampartError


class ConsoleError(RampartError):
    """Base of the console's errors; ``field`` and ``headers`` are empty unless a subclass sets them."""

    field: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


class BadCredentials(ConsoleError):
    """A login or key that does not authenticate. One message for an unknown user and a wrong
    password, so a caller cannot tell which names exist."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str = "wrong user name or password") -> None:
        super().__init__(message)


class Forbidden(ConsoleError):
    """An authenticated caller whose role does not allow what it asked."""

    status = 403
    code = "forbidden"


class NotFound(ConsoleError):
    """A user, key or session that does not exist (exit 1, like ``lists remove`` of a missing value)."""

    status = 404
    code = "not_found"


class Conflict(ConsoleError):
    """A change that would break a rule: a name taken, the last admin removed or demoted."""

    status = 409
    code = "conflict"


class BadInput(ConfigError, ConsoleError):
    """A bad value in a request or on the command line (exit 2, HTTP 400); ``field`` names it."""

    status = 400
    code = "bad_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class TooManyAttempts(ConsoleError):
    """A client that failed to log in too often: it must wait ``retry_after`` seconds (HTTP 429)."""

    status = 429
    code = "too_many_attempts"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins from this address; try again in {retry_after} s")
        self.retry_after = retry_after
        self.headers = (("Retry-After", str(retry_after)),)


class StoreError(ConsoleError):
    """console.sqlite cannot be opened or refused a change (exit 1, HTTP 500)."""
