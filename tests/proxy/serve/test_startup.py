"""What `serve` and `cloud` check before starting (proxy.serve.startup), with real sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.config import Config
from proxy.errors import ConfigError, RampartError
from proxy.serve import startup
from proxy.serve.gate import Gate
from tests.conftest import free_port

OFF = {"query_port": 0, "query_tls_port": 0, "proxy_port": 0, "transparent_port": 0,
       "capture_port": 0, "console_port": 0, "dns_port": 0}


@pytest.fixture
def busy() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_the_query_door_by_default_answers_loopback_and_private_networks_only() -> None:
    gate = Gate(Config().query_clients)
    assert gate.admits("127.0.0.1") and gate.admits("192.168.4.2") and gate.admits("::1")
    assert not gate.admits("203.0.113.9") and not gate.admits("2001:db8::1")
    assert Config().query_clients == Config().allow_clients


def test_every_door_off_is_refused_naming_the_flags(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path, **OFF)
    with pytest.raises(ConfigError, match=r"every door is off.*--query-port"):
        startup.check_doors(cfg)
    startup.check_doors(Config(data_dir=tmp_path, **{**OFF, "proxy_port": 3128}))
    startup.check_doors(Config(data_dir=tmp_path, **{**OFF, "dns_port": 5353}))  # a DNSBL alone


@pytest.mark.parametrize(("key", "flag"), [("query_port", "--query-port"),
                                           ("proxy_port", "--proxy-port"),
                                           ("capture_port", "--capture-port")])
def test_a_busy_port_names_its_flag(tmp_path: Path, busy: int, key: str, flag: str) -> None:
    cfg = Config(data_dir=tmp_path, listen="127.0.0.1", **{**OFF, key: busy})
    with pytest.raises(RampartError, match=f"port {busy} .* in use by another program.*{flag}"):
        startup.check_ports(cfg)


def test_free_ports_pass(tmp_path: Path) -> None:
    startup.check_ports(Config(data_dir=tmp_path, listen="127.0.0.1",
                               **{**OFF, "query_port": free_port()}))


def test_a_port_held_by_another_server_on_the_data_directory_says_so(tmp_path: Path,
                                                                     busy: int) -> None:
    cfg = Config(data_dir=tmp_path, listen="127.0.0.1", **{**OFF, "query_port": busy})
    # another process holds the data directory's lock, as a running `rampart serve` does
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, pathlib; from proxy.config import Config; from proxy.serve import startup;"
         f"c = startup.claim(Config(data_dir=pathlib.Path({str(tmp_path)!r})));"
         "print(c.other, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "None"
        mine = startup.claim(cfg)
        assert mine.other == holder.pid
        with pytest.raises(RampartError, match=f"another rampart server \\(pid {holder.pid}\\)"
                                               f" on data directory {tmp_path}.*--query-port"):
            startup.check_ports(cfg, mine)
        mine.release()
    finally:
        holder.communicate("")


def test_the_data_directory_is_made_private_and_belongs_to_one_role(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        where = tmp_path / "new" / "data"
        assert startup.prepare_data_dir(Config(data_dir=where), "appliance") is True
    finally:
        os.umask(old)
    assert where.stat().st_mode & 0o777 == 0o700
    assert (where / "role").stat().st_mode & 0o777 == 0o600
    assert startup.prepare_data_dir(Config(data_dir=where), "appliance") is False
    with pytest.raises(ConfigError, match=r"is rampart serve.s.*give rampart cloud its own"):
        startup.prepare_data_dir(Config(data_dir=where), "cloud")
