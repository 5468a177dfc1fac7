"""One host holding slow connections must not lock every other client out (a real appliance).

The appliance runs with its open-file limit lowered to 256 so the test stays
small: 300 connections from 127.0.0.1 that trickle a request head used to take
every descriptor, and then every door refused everyone. Now that host is held
to its share, other hosts (127.0.0.2, 127.0.0.3) are answered, the refusals are
counted and logged once, and the held connections end at the head deadline.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import EICAR_SHA256, Proc, free_port

pytestmark = pytest.mark.integration

FD_LIMIT = 256
SLOW = 300
# Lowers the descriptor limit (soft and hard), then runs the console script as usual.
LIMITED = [
    sys.executable, "-c",
    "import os, resource, sys\n"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT}))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'addons.cli', *sys.argv[1:]])",
]


def from_address(source: str, port: int, path: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=5) as client:
        return client.get(f"http://127.0.0.1:{port}{path}")


def test_a_slow_host_is_held_to_its_share_and_others_are_answered(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "rampart.toml"
    config.write_text("head_timeout = 6.0\n")
    data = tmp_path / "appliance"
    args = [*LIMITED, "serve", "--config", str(config), "--data-dir", str(data), "--listen", "127.0.0.1",
            "--query-port", str(port), "--query-tls-port", "0", "--proxy-port", "0",
            "--transparent-port", "0", "--log-level", "warning"]
    proc = Proc(args, data, tmp_path / "appliance.log").start(f"http://127.0.0.1:{port}/healthz")
    slow: list[socket.socket] = []
    try:
        refused = 0
        for _ in range(SLOW):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /v1/file/" + EICAR_SHA256.encode() + b" HTTP/1.1\r\nX-Slow: ")
            slow.append(s)
        for s in slow:  # a refused connection is answered and closed at once
            s.settimeout(0.05)
            try:
                first = s.recv(64)
            except TimeoutError:
                continue
            if first.startswith(b"HTTP/1.1 429"):
                refused += 1
        held = SLOW - refused
        assert 0 < held < FD_LIMIT // 2, f"{held} slow connections held"

        # every other host is still answered, on every door's path
        answer = from_address("127.0.0.2", port, f"/v1/file/{EICAR_SHA256}")
        assert answer.status_code == 200
        assert answer.json()["results"][0]["verdict"] == "malicious"
        metrics = from_address("127.0.0.3", port, "/metrics").text
        counted = [line for line in metrics.splitlines()
                   if line.startswith("rampart_connections_refused_total{")
                   and 'reason="client_cap"' in line]
        assert counted and float(counted[0].rsplit(" ", 1)[1]) == refused
        log = proc.output()
        assert log.count("refusing query-http-door connections from 127.0.0.1") == 1

        # the head deadline ends the held connections with a 408
        timed_out = 0
        deadline = time.monotonic() + 20
        for s in slow:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                reply = s.recv(64)
            except (TimeoutError, ConnectionResetError):
                continue
            if reply.startswith(b"HTTP/1.1 408"):
                timed_out += 1
        assert timed_out == held
    finally:
        for s in slow:
            s.close()
        proc.stop()
