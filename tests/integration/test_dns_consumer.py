"""A real DNSBL consumer, unmodified, reads the DNS door: rspamd (Debian's) with an `rbl`
rule for the appliance's IP zone, its resolver pointed at the door. A message from a
listed address is rejected; one from an unlisted address is not."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RAMPART, Proc, free_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("rspamd") is None or shutil.which("rspamc") is None,
                                 reason="rspamd (Debian rspamd) is needed")]

MESSAGE = (b"From: sender@example.test\r\nTo: rcpt@example.test\r\nSubject: hello\r\n"
           b"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\nhello\r\n")


def _config(root: Path, dns_port: int, worker: int, controller: int) -> None:
    """rspamd's own configuration, with only these overrides (its LOCAL_CONFDIR)."""
    local = root / "conf" / "local.d"
    local.mkdir(parents=True)
    for d in ("run", "db", "log"):
        (root / d).mkdir()
    (local / "options.inc").write_text(
        f'dns {{ nameserver = ["127.0.0.1:{dns_port}"]; timeout = 2s; retransmits = 2; }}\n'
        "local_addrs = [];\n")
    (local / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{worker}";\n')
    (local / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{controller}";\n')
    for off in ("worker-proxy.inc", "worker-fuzzy.inc"):
        (local / off).write_text("enabled = false;\n")
    (local / "logging.inc").write_text(
        f'type = "file"; filename = "{root}/log/rspamd.log"; level = "info";\n')
    (local / "rbl.conf").write_text(
        "rbls { rampart { rbl = \"ip.rampart.local\"; from = true; received = false; ipv6 = true;\n"
        "  returncodes { RAMPART_DANGEROUS = \"127.0.0.2\"; RAMPART_SUSPICIOUS = \"127.0.0.4\";\n"
        "                RAMPART_BLOCKED = \"127.0.0.10\"; } } }\n")
    (local / "rbl_group.conf").write_text(
        "symbols { RAMPART_DANGEROUS { weight = 20.0; } RAMPART_BLOCKED { weight = 20.0; }"
        " RAMPART_SUSPICIOUS { weight = 1.0; } }\n")


@pytest.fixture(scope="module")
def consumer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, int]]:
    tmp = tmp_path_factory.mktemp("rspamd")
    http, dns, worker, controller = free_port(), free_port(), free_port(), free_port()
    door = Proc([*RAMPART, "serve", "--data-dir", str(tmp / "d"), "--listen", "127.0.0.1",
                 "--query-port", str(http), "--query-tls-port", "0", "--dns-port", str(dns)],
                tmp / "d", tmp / "serve.log", {"http": http, "dns": dns})
    door.start(f"http://127.0.0.1:{http}/healthz")
    _config(tmp / "rspamd", dns, worker, controller)
    r = tmp / "rspamd"
    log = (tmp / "rspamd.out").open("wb")
    proc = subprocess.Popen(
        ["rspamd", "-f", "-u", "root", "-g", "root", "-i", "-c", "/etc/rspamd/rspamd.conf",
         f"--var=LOCAL_CONFDIR={r}/conf", f"--var=RUNDIR={r}/run", f"--var=DBDIR={r}/db",
         f"--var=LOGDIR={r}/log"], stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 120  # rspamd compiles its TLD list on start
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"rspamd exited {proc.returncode}: {(tmp / 'rspamd.out').read_text()}")
            ready = subprocess.run(["rspamc", "-h", f"127.0.0.1:{worker}", "-t", "5", "symbols"],
                                   input=MESSAGE.decode(), capture_output=True, text=True)
            if "Action:" in ready.stdout:
                break
            time.sleep(1)
        else:
            raise RuntimeError("rspamd did not come up")
        yield door, worker
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        door.stop()


def check(worker: int, ip: str) -> str:
    done = subprocess.run(["rspamc", "-h", f"127.0.0.1:{worker}", "-t", "20", "-i", ip, "symbols"],
                          input=MESSAGE.decode(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_message_from_a_listed_address_is_rejected(consumer: tuple[Proc, int]) -> None:
    _, worker = consumer
    out = check(worker, "198.51.100.7")  # dangerous in the appliance's pattern
    assert "RAMPART_DANGEROUS" in out and "Action: reject" in out, out


def _ip_zone_nxdomains(door: Proc) -> float:
    text = httpx.get(f"http://127.0.0.1:{door.ports['http']}/metrics", timeout=10).text
    return sum(float(n) for n in re.findall(
        r'^rampart_dns_queries_total\{[^}]*rcode="NXDOMAIN"[^}]*zone="ip"[^}]*\} (\S+)$|'
        r'^rampart_dns_queries_total\{[^}]*zone="ip"[^}]*rcode="NXDOMAIN"[^}]*\} (\S+)$',
        text, re.M) for n in n if n)


def test_a_message_from_an_unlisted_address_is_not(consumer: tuple[Proc, int]) -> None:
    door, worker = consumer
    before = _ip_zone_nxdomains(door)
    out = check(worker, "203.0.113.200")  # beside 203.0.113.0/25, which is listed
    assert "RAMPART_" not in out and "Action: reject" not in out, out
    assert _ip_zone_nxdomains(door) > before  # rspamd did ask the door, and heard "not listed"


def test_an_address_the_administrator_blocks_is_rejected_within_seconds(
        consumer: tuple[Proc, int]) -> None:
    door, worker = consumer
    done = subprocess.run([*RAMPART, "lists", "add", "--blocked", "198.51.100.99", "--data-dir",
                           str(door.data_dir)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 10  # the door takes a list change within 2 s
    out = check(worker, "198.51.100.99")
    while "RAMPART_BLOCKED" not in out and time.monotonic() < deadline:
        time.sleep(0.5)
        out = check(worker, "198.51.100.99")
    assert "RAMPART_BLOCKED" in out and "Action: reject" in out, out
