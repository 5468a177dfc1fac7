"""The client's errors: a ``ClientError`` names what it could not do and why."""

from __future__ import annotations

from proxy.errors import RampartError


class ClientError(RampartError):
    code = "client_error"


class NoServer(ClientError):
    """No configured server answered in time; the message lists each one tried and why."""

    code = "no_server"
