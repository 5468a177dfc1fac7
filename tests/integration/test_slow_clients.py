"""One host holding slow connections must not lock every other client out (a real appliance).

The appliance runs with its open-file limit lowered to 256 so the test stays
small: 300 connections from 127.0.0.1 that trickle a request head used to take
every descriptor, and then every door refused everyone. Now that host is held
to its share, other hosts (127.0.0.2, 127.0.0.3) are answered, the refusals are
counted and logged once, and the held connections end at the head deadline.
"""

from __future__ import annotations

import select
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


def start_limited(tmp_path: Path, *flags: str) -> Proc:
    config = tmp_path / "rampart.toml"
    config.write_text("head_timeout = 6.0\n")
    data = tmp_path / "appliance"
    args = [*LIMITED, "serve", "--config", str(config), "--data-dir", str(data), "--listen", "127.0.0.1",
            "--query-tls-port", "0", "--transparent-port", "0", "--log-level", "info", *flags]
    return Proc(args, data, tmp_path / "appliance.log")


def open_slow(port: int, head: bytes) -> tuple[list[socket.socket], list[socket.socket]]:
    """SLOW connections that each send part of a request head: all of them, and those held
    (not refused with a 429 or a close within 2 s; held ones hear nothing before the deadline)."""
    slow: list[socket.socket] = []
    for _ in range(SLOW):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(head)
        slow.append(s)
    pending = set(slow)
    deadline = time.monotonic() + 2
    while pending and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(list(pending), [], [], left)
        for s in ready:
            pending.discard(s)
            try:
                first = s.recv(64)
            except ConnectionResetError:
                first = b""
            assert first == b"" or first.startswith(b"HTTP/1.1 429"), first
    return slow, [s for s in slow if s in pending]


def refused_count(metrics: str, door: str, reason: str) -> float:
    for line in metrics.splitlines():
        if (line.startswith("rampart_connections_refused_total{") and f'door="{door}"' in line
                and f'reason="{reason}"' in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def ended_by_deadline(slow: list[socket.socket], answer: bytes) -> int:
    """How many of the connections the server ended (with ``answer``, or closed) within 20 s."""
    ended = 0
    deadline = time.monotonic() + 20
    for s in slow:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            reply = s.recv(64)
        except TimeoutError:
            continue
        except ConnectionResetError:
            reply = b""
        if reply.startswith(answer):
            ended += 1
    return ended


def test_a_slow_host_is_held_to_its_share_and_others_are_answered(tmp_path: Path) -> None:
    port = free_port()
    proc = start_limited(tmp_path, "--query-port", str(port), "--proxy-port", "0")
    proc.start(f"http://127.0.0.1:{port}/healthz")
    slow: list[socket.socket] = []
    try:
        slow, held = open_slow(port, b"GET /v1/file/" + EICAR_SHA256.encode() + b" HTTP/1.1\r\nX-Slow: ")
        assert 0 < len(held) < FD_LIMIT // 2, f"{len(held)} slow connections held"

        # every other host is still answered
        answer = from_address("127.0.0.2", port, f"/v1/file/{EICAR_SHA256}")
        assert answer.status_code == 200
        assert answer.json()["results"][0]["verdict"] == "malicious"
        metrics = from_address("127.0.0.3", port, "/metrics").text
        assert refused_count(metrics, "query-http", "client_cap") == SLOW - len(held)
        assert proc.output().count("query-http door, client 127.0.0.1: refusing its connections") == 1

        # the head deadline ends the held connections with a 408
        assert ended_by_deadline(held, b"HTTP/1.1 408") == len(held)
    finally:
        for s in slow:
            s.close()
        proc.stop()


def test_the_intercept_door_shares_the_caps_and_cuts_clients_that_never_begin(tmp_path: Path) -> None:
    port, proxy = free_port(), free_port()
    proc = start_limited(tmp_path, "--query-port", str(port), "--proxy-port", str(proxy),
                         "--intercept-host", "cloud.test")
    proc.start(f"http://127.0.0.1:{port}/healthz")
    slow: list[socket.socket] = []
    try:
        slow, held = open_slow(proxy, b"GET http://cloud.test/v1/file/" + EICAR_SHA256.encode()
                                  + b" HTTP/1.1\r\nX-Slow: ")
        assert 0 < len(held) < FD_LIMIT // 2, f"{len(held)} slow connections held"

        # another host is still answered through the proxy, and on the query door
        # (a raw request: httpx does not take local_address to its proxy)
        with socket.create_connection(("127.0.0.1", proxy), 5, source_address=("127.0.0.2", 0)) as c:
            c.sendall(f"GET http://cloud.test/v1/file/{EICAR_SHA256} HTTP/1.1\r\n"
                      "Host: cloud.test\r\nConnection: close\r\n\r\n".encode())
            through = c.makefile("rb").read()
        assert through.startswith(b"HTTP/1.1 200"), through[:200]
        assert b"X-Rampart-Source: pattern" in through
        assert from_address("127.0.0.3", port, "/healthz").status_code == 200
        metrics = from_address("127.0.0.3", port, "/metrics").text
        # (mitmproxy's listen backlog is short: the kernel may drop a few of the refused ones)
        admitted = SLOW - refused_count(metrics, "intercept", "client_cap")
        assert len(held) <= admitted < FD_LIMIT // 2
        assert proc.output().count("intercept door, client 127.0.0.1: refusing its connections") == 1

        # connections that never finish a head are cut at head_timeout
        assert ended_by_deadline(held, b"") == len(held)
        metrics = from_address("127.0.0.3", port, "/metrics").text
        assert refused_count(metrics, "intercept", "head_timeout") == admitted
        cut = "intercept door, client 127.0.0.1: closing connections that sent no request"
        assert proc.output().count(cut) == 1
    finally:
        for s in slow:
            s.close()
        proc.stop()
