"""Starts the query door (the lean HTTP server of proxy.serve.server) in mitmproxy's loop.

The door is a ``proxy.serve.app.App``; this addon only ties its life to mitmproxy's:
``running`` starts it, ``done`` stops it. A start failure (a port in use, a bad
pattern) is reported and shuts the master down with the reason.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx

from proxy.config import Config
from proxy.errors import RampartError
from proxy.serve.app import App
from proxy.serve.conns import ConnectionCaps

logger = logging.getLogger(__name__)


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):  # a data directory or file we cannot use: say which and why
        where = f" {e.filename}" if e.filename else ""
        return f"cannot use{where}: {e.strerror or e}"
    return str(getattr(e, "message", e))


class QueryDoor:
    def __init__(self, cfg: Config, caps: ConnectionCaps | None = None) -> None:
        self.app = App(cfg, caps=caps)
        self.start_error: str | None = None  # not `error`: that name is a mitmproxy hook
        self.started = False

    async def running(self) -> None:
        try:
            await self.app.start()
            self.started = True
        except (RampartError, OSError) as e:
            self.start_error = _reason(e)
            logger.error("cannot start: %s", self.start_error)
            ctx.master.shutdown()

    async def done(self) -> None:
        if self.started:
            await self.app.stop()
