"""A small static HTTP server for an update source: ``rampart pattern serve``.

Any static web server can host an update source (the layout is ``proxy.repo``'s);
this one needs nothing else installed. GET and HEAD only, strict paths, a bound
on concurrent requests, and ``Cache-Control: no-cache`` on the manifest and its
signature.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from proxy.repo import MANIFEST, SIGNATURE

logger = logging.getLogger(__name__)

MAX_SERVE_CONNECTIONS = 64
_SERVE_PATH = re.compile(r"/(?:[A-Za-z0-9][A-Za-z0-9._-]{0,127}/){0,4}[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def make_server(repo_dir: Path, host: str = "127.0.0.1", port: int = 0) -> Any:
    """A small static HTTP server for an update source (GET and HEAD only).

    Paths are matched against a strict pattern (no ``..``, no dot files, no
    percent escapes, at most five segments) and must resolve inside the repo;
    anything else is 404. At most ``MAX_SERVE_CONNECTIONS`` requests are served
    at once (more get 503). Call ``serve_forever()``; ``server_address`` holds
    the bound port.
    """
    import http.server
    import shutil
    import threading

    root = Path(repo_dir).resolve()
    slots = threading.BoundedSemaphore(MAX_SERVE_CONNECTIONS)

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "rampart-pattern-serve"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        timeout = 30

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("serve: %s", format % args)

        def _file(self) -> Path | None:
            path = self.path.split("?", 1)[0]
            if _SERVE_PATH.fullmatch(path) is None:
                return None
            target = (root / path.lstrip("/")).resolve()
            if not target.is_relative_to(root) or not target.is_file():
                return None
            return target

        def _answer(self, body: bool) -> None:
            if not slots.acquire(blocking=False):
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
                slots.release()

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
