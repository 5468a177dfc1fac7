"""Syslog forwarding to real sockets on 127.0.0.1 and in a temporary folder."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.config import Config
from proxy.logs.syslog import Syslog, configure, formatter

LOG = logging.getLogger("rampart.test.syslog")


@pytest.fixture
def info_level() -> Iterator[None]:
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    yield
    root.setLevel(before)


def _receive_udp(sock: socket.socket) -> str:
    sock.settimeout(10)
    return sock.recv(65536).decode()


def test_udp_lines_carry_priority_tag_and_text(info_level: None) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        forward = Syslog(f"udp://127.0.0.1:{port}", "local3", formatter("text"))
        try:
            LOG.warning("pattern %s is stale", "202612011300")
            line = _receive_udp(sock)
        finally:
            forward.close()
    # local3 (19) * 8 + warning (4) = 156
    assert line == (f"<156>rampart[{os.getpid()}]: WARNING rampart.test.syslog:"
                    " pattern 202612011300 is stale")


def test_json_lines_when_the_log_format_is_json(info_level: None) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        forward = Syslog(f"udp://127.0.0.1:{sock.getsockname()[1]}", "daemon", formatter("json"))
        try:
            LOG.info("hello")
            line = _receive_udp(sock)
        finally:
            forward.close()
    assert line.startswith(f"<30>rampart[{os.getpid()}]: {{") and '"hello"' in line


def test_tcp_one_line_per_message_even_a_traceback(info_level: None) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        forward = Syslog(f"tcp://127.0.0.1:{server.getsockname()[1]}", "daemon", formatter("text"))
        try:
            conn, _ = server.accept()
            try:
                raise ValueError("boom")
            except ValueError:
                LOG.exception("it failed")
            LOG.info("after")
            conn.settimeout(10)
            got = b""
            while got.count(b"\n") < 2:
                got += conn.recv(65536)
            conn.close()
        finally:
            forward.close()
    first, second = got.decode().splitlines()[:2]
    assert "it failed" in first and "ValueError: boom" in first
    assert second.endswith("INFO rampart.test.syslog: after")


def test_a_local_socket_and_a_target_that_is_not_there(tmp_path: Path, info_level: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        forward = Syslog(str(path), "user", formatter("text"))
        try:
            LOG.error("local")
            sock.settimeout(10)
            assert sock.recv(65536).decode().endswith("ERROR rampart.test.syslog: local")
        finally:
            forward.close()
    missing = Syslog(str(tmp_path / "nothing-here"), "user", formatter("text"))
    try:
        LOG.error("lost")  # said on standard error, not raised
        deadline = time.monotonic() + 10
        while missing.sender.failed == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        missing.close()
    assert missing.sender.failed >= 1
    assert "cannot send" in capsys.readouterr().err


def test_configure_keeps_replaces_and_stops_the_forwarding() -> None:
    cfg = Config(syslog="udp://127.0.0.1:9", syslog_facility="daemon")
    first = configure(cfg)
    try:
        assert first is not None and configure(cfg) is first
        second = configure(Config(syslog="udp://127.0.0.1:9", syslog_facility="local0"))
        assert second is not first and first.handler not in logging.getLogger().handlers
    finally:
        assert configure(Config()) is None
    assert second is not None and second.handler not in logging.getLogger().handlers
