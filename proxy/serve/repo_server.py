"""A small static HTTP server for an update source: ``rampart pattern serve``.

Any static web server can host an update source (the layout is ``proxy.updates.repo``'s);
this one needs nothing else installed. GET and HEAD only, strict paths, a bound
on concurrent requests and on open connections (in all and per client, as the
appliance's doors: each connection is a thread here), and ``Cache-Control:
no-cache`` on the manifest and its signature.
"""

from __future__ import annotations

import errno
import http.server
import logging
import os
import re
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError, RampartError
from proxy.serve.conns import ConnectionCaps, Slot
from proxy.updates.repo import MANIFEST, SIGNATURE

logger = logging.getLogger(__name__)

MAX_SERVE_CONNECTIONS = 64  # requests answered at once
MAX_OPEN_CONNECTIONS = 512  # connections (threads) open at once; one client may hold half
READ_TIMEOUT = 10  # seconds a connection may go without sending a byte
_SERVE_PATH = re.compile(r"/(?:[A-Za-z0-9][A-Za-z0-9._-]{0,127}/){0,4}[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def make_server(repo_dir: Path, host: str = "127.0.0.1", port: int = 0) -> RepoServer:
    """A small static HTTP server for an update source (GET and HEAD only).

    Paths are matched against a strict pattern (no ``..``, no dot files, no
    percent escapes, at most five segments) and must resolve inside the repo;
    anything else is 404. At most ``MAX_SERVE_CONNECTIONS`` requests are served
    at once (more get 503). Call ``serve_forever()``; ``server_address`` holds
    the bound port. An address that cannot be bound raises RampartError naming the
    flag to change (``--port`` for a busy port, ``--listen`` for an address this
    machine does not have).
    """
    root = Path(repo_dir).resolve()
    try:
        return RepoServer((host, port), root)
    except OSError as e:
        raise _bind_error(host, port, e) from None


def _bind_error(host: str, port: int, e: OSError) -> RampartError:
    """One line naming the flag to change: a busy port fails the operation (exit 1), an
    address this machine does not have is a wrong --listen (exit 2)."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if e.errno == errno.EADDRINUSE:
        return RampartError(f"cannot listen on {where}: the port is in use (by another "
                            "`rampart pattern serve`, or another server); choose another --port, "
                            "or stop what holds it")
    if e.errno == errno.EACCES:
        return RampartError(f"cannot listen on {where}: permission denied (ports below 1024 need "
                            "privileges); choose a --port of 1024 or more")
    return ConfigError(f"cannot listen on {where}: {e.strerror or e}; give --listen an address "
                       "of this machine (0.0.0.0 for every IPv4 address, :: for every IPv6 one)")


class RepoServer(http.server.ThreadingHTTPServer):
    """A thread per connection, within connection caps: one client may hold half of them."""

    daemon_threads = True
    server_address: tuple[str, int]  # AF_INET, as http.server binds: (host, port)

    def __init__(self, address: tuple[str, int], root: Path) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6  # --listen :: or another IPv6 address
        super().__init__(address, RepoHandler)
        self.root = root
        self.busy = threading.BoundedSemaphore(MAX_SERVE_CONNECTIONS)  # requests being answered
        self.caps = ConnectionCaps(MAX_OPEN_CONNECTIONS, MAX_OPEN_CONNECTIONS // 2)
        self.guard = threading.Lock()
        self.slots: dict[int, Slot] = {}  # id(request) -> its place in the caps

    def process_request(self, request: Any, client_address: Any) -> None:
        """A connection over the caps is closed at once, before it gets a thread."""
        client = str(client_address[0]) if client_address else "?"
        with self.guard:
            slot = self.caps.admit(client, "pattern-serve")
            if slot is not None:
                self.slots[id(request)] = slot  # given back when the connection ends
        if slot is None:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._give_back(request)
            raise

    def shutdown_request(self, request: Any) -> None:
        self._give_back(request)
        super().shutdown_request(request)

    def _give_back(self, request: Any) -> None:
        with self.guard:
            slot = self.slots.pop(id(request), None)
            if slot is not None:
                slot.release()


class RepoHandler(http.server.BaseHTTPRequestHandler):
    server: RepoServer
    server_version = "rampart-pattern-serve"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("serve: %s", format % args)

    def _file(self) -> Path | None:
        path = self.path.split("?", 1)[0]
        if _SERVE_PATH.fullmatch(path) is None:
            return None
        root = self.server.root
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return None
        return target

    def _answer(self, body: bool) -> None:
        if not self.server.busy.acquire(blocking=False):
            self.send_error(503, "busy")
            return
        try:
            target = self._file()
            if target is None:
                self.send_error(404)
                return
            with open(target, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/json" if target.suffix ==
                                 ".json" else "application/octet-stream")
                self.send_header("Content-Length", str(size))
                if target.name in (MANIFEST, SIGNATURE):
                    self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                if body:
                    shutil.copyfileobj(f, self.wfile, 1 << 20)
        finally:
            self.server.busy.release()

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)
