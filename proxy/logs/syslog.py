"""Forward the process's log lines to syslog (config keys ``syslog``, ``syslog_facility``).

The event loop never waits on the syslog server: a record goes into a bounded queue
(``QUEUED`` records; when full it is dropped and counted, like the query log's entries)
and a thread sends it, over UDP, TCP (RFC 6587 non-transparent framing: one line per message) or
a local socket (``/dev/log``). A target that cannot be reached is said on standard error
once a minute, and the thread tries again at each record; the server goes on either way.

Lines carry the syslog priority of the facility and level, the tag ``rampart[PID]:`` and
the same text (or JSON, with ``log_format = "json"``) the standard-error lines carry.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import queue
import socket
import sys
import time
from typing import Any

from proxy.config import Config
from proxy.forms import syslog_address

QUEUED = 10_000
WARN_EVERY = 60.0  # seconds between two complaints about an unreachable target


class _Sender(logging.handlers.SysLogHandler):
    """SysLogHandler that complains once a minute instead of a traceback per record, and
    connects again after a failure (the stock handler keeps a dead TCP socket)."""

    def __init__(self, target: str, facility: str) -> None:
        kind, address = syslog_address(target) or ("udp", ("127.0.0.1", 514))
        socktype = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
        self.target = target
        code = logging.handlers.SysLogHandler.facility_names[facility]
        self._warned = 0.0
        self.sent = 0
        self.failed = 0
        try:
            super().__init__(address, facility=code, socktype=socktype)
        except OSError as e:  # TCP and local sockets connect here: try again per record
            logging.Handler.__init__(self)
            self.address, self.facility, self.socktype = address, code, socktype
            self.unixsocket = kind == "unix"
            self.socket = None
            self._complain(e)
        self.append_nul = False  # one message per datagram or line; no NUL byte
        self.ident = ""

    def emit(self, record: logging.LogRecord) -> None:
        if self.socket is None:
            try:
                self.createSocket()
            except OSError as e:
                self.failed += 1
                self._complain(e)
                return
        before = self.failed
        super().emit(record)
        if self.failed == before:
            self.sent += 1

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.socktype == socket.SOCK_STREAM:  # one line per message: a traceback too
            return text.replace("\n", " ") + "\n"
        return text

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed += 1
        error = sys.exc_info()[1]
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.close()
            self.socket = None
        self._complain(error)

    def _complain(self, error: object) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            print(f"rampart: syslog {self.target}: cannot send: {error}", file=sys.stderr)


class _Queue(logging.handlers.QueueHandler):
    """Puts records on the bounded queue; a full queue drops the record and counts it."""

    def __init__(self, q: queue.Queue[Any]) -> None:
        super().__init__(q)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class Syslog:
    """The forwarding a Config asks for, on the root logger; ``close`` takes it off."""

    def __init__(self, target: str, facility: str, formatter: logging.Formatter) -> None:
        self.target, self.facility = target, facility
        self.sender = _Sender(target, facility)
        self.sender.setFormatter(formatter)
        self.handler = _Queue(queue.Queue(QUEUED))
        self.listener = logging.handlers.QueueListener(self.handler.queue, self.sender)
        self.listener.start()
        logging.getLogger().addHandler(self.handler)

    def close(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.listener.stop()  # sends what is queued
        self.sender.close()


def formatter(fmt: str) -> logging.Formatter:
    """The syslog line after its priority: ``rampart[PID]: `` and the text or JSON line."""
    if fmt == "json":
        from proxy.logs.jsonlog import json_formatter

        inner = json_formatter()

        class Tagged(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return f"rampart[{record.process}]: {inner.format(record)}"

        return Tagged()
    return logging.Formatter("rampart[%(process)d]: %(levelname)s %(name)s: %(message)s")


_current: Syslog | None = None  # the process's forwarding: one root logger, one target


def configure(cfg: Config | None) -> Syslog | None:
    """Forward as ``cfg`` asks (None: stop), keeping the running forwarding when its target
    and facility are the same; returns what now forwards."""
    global _current
    target = (cfg.syslog, cfg.syslog_facility) if cfg is not None and cfg.syslog else None
    if _current is not None and (_current.target, _current.facility) == target:
        return _current
    if _current is not None:
        _current.close()
        _current = None
    if cfg is not None and target is not None:
        _current = Syslog(cfg.syslog, cfg.syslog_facility, formatter(cfg.log_format))
    return _current
