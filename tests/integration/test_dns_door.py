"""The DNS door of a real `rampart serve`, asked by real, unmodified clients: dig (BIND) and
kdig (Knot), over UDP and TCP, IPv4 and IPv6 names, the RFC 5782 test entries, list changes
and a pattern swap while it runs, and refusals outside its zones."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RAMPART, Proc, free_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("dig") is None or shutil.which("kdig") is None,
                                 reason="dig and kdig (bind9-dnsutils, knot-dnsutils) are needed")]

IP, DN = "ip.rampart.local", "dn.rampart.local"


def rampart(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAMPART, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("dns")
    http, dns = free_port(), free_port()
    proc = Proc([*RAMPART, "serve", "--data-dir", str(tmp / "d"), "--listen", "127.0.0.1",
                 "--query-port", str(http), "--query-tls-port", "0", "--dns-port", str(dns),
                 "--log-level", "info"], tmp / "d", tmp / "serve.log", {"http": http, "dns": dns})
    proc.start(f"http://127.0.0.1:{http}/healthz")
    yield proc
    proc.stop()


def ask(tool: str, door: Proc, name: str, rtype: str = "A", *extra: str) -> str:
    """The client's full answer text (``+tcp`` in ``extra`` for TCP)."""
    once = "+tries=1" if tool == "dig" else "+retry=0"
    args = [tool, "@127.0.0.1", "-p", str(door.ports["dns"]), name, rtype, "+time=5", once, *extra]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


def status(text: str) -> str:
    """The answer's status as dig (``status: NOERROR,``) and kdig (``status: NOERROR;``) print it."""
    found = re.search(r"status: ([A-Z]+)", text)
    assert found is not None, f"no status in:\n{text}"
    return found[1]


def flags(text: str) -> list[str]:
    """The header flags as dig (``flags: qr aa;``) and kdig (``Flags: qr aa;``) print them."""
    found = re.search(r"[Ff]lags: ([a-z ]*);", text)
    assert found is not None, f"no flags in:\n{text}"
    return found[1].split()


def short(door: Proc, name: str, rtype: str = "A", *extra: str) -> list[str]:
    done = subprocess.run(["dig", "@127.0.0.1", "-p", str(door.ports["dns"]), name, rtype, "+short",
                           "+time=5", "+tries=1", *extra], capture_output=True, text=True, timeout=30)
    return done.stdout.split()


@pytest.mark.parametrize("tool", ["dig", "kdig"])
@pytest.mark.parametrize("transport", [(), ("+tcp",)], ids=["udp", "tcp"])
@pytest.mark.parametrize(("name", "code"), [
    (f"7.2.0.192.{IP}", "127.0.0.4"),  # 192.0.2.0/24: suspicious
    (f"7.100.51.198.{IP}", "127.0.0.2"),  # 198.51.100.7: dangerous
    (f"5.113.0.203.{IP}", "127.0.0.3"),  # 203.0.113.0/25: highly suspicious
    # 2001:db8:bad::1, reversed nibbles (RFC 5782 §2.4)
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.a.b.0.8.b.d.0.1.0.0.2." + IP, "127.0.0.2"),
    (f"malware.example.test.{DN}", "127.0.0.2"),
    (f"www.deep.malware.example.test.{DN}", "127.0.0.2"),  # a subdomain of a listed one
    (f"adware.example.{DN}", "127.0.0.3"),
    (f"2.0.0.127.{IP}", "127.0.0.2"),  # the RFC 5782 test entries
    (f"test.{DN}", "127.0.0.2"),
])
def test_listed_names_answer_their_code(door: Proc, tool: str, transport: tuple[str, ...],
                                        name: str, code: str) -> None:
    text = ask(tool, door, name, "A", *transport)
    assert status(text) == "NOERROR", text
    assert code in text and "aa" in flags(text), text


@pytest.mark.parametrize("tool", ["dig", "kdig"])
@pytest.mark.parametrize("name", [
    f"8.8.8.8.{IP}", f"1.0.0.127.{IP}", f"example.org.{DN}", f"good.example.test.{DN}",
    f"invalid.{DN}",
])
def test_not_listed_and_safe_names_are_nxdomain(door: Proc, tool: str, name: str) -> None:
    text = ask(tool, door, name)
    assert status(text) == "NXDOMAIN", text
    assert "127.0.0." not in text.split("ANSWER SECTION")[-1] or "ANSWER SECTION" not in text
    assert "SOA" in text  # the negative answer carries the zone's SOA (its minimum: the negative TTL)


def test_a_txt_record_gives_the_reason(door: Proc) -> None:
    (txt,) = [line for line in ask("dig", door, f"malware.example.test.{DN}", "TXT").splitlines()
              if re.search(r"\sTXT\s", line) and not line.startswith(";")]
    assert "malware" in txt and "dangerous" in txt


def test_the_apex_has_soa_and_ns_and_no_recursion_is_offered(door: Proc) -> None:
    soa = ask("dig", door, IP, "SOA")
    assert status(soa) == "NOERROR" and "\tSOA\t" in soa
    ns = ask("kdig", door, DN, "NS")
    assert status(ns) == "NOERROR" and "NS" in ns
    assert "ra" not in flags(soa) and "aa" in flags(soa)


@pytest.mark.parametrize("name", ["example.com", "www.google.com", "1.0.0.127.in-addr.arpa"])
def test_names_outside_the_zones_are_refused(door: Proc, name: str) -> None:
    assert status(ask("dig", door, name)) == "REFUSED"
    assert status(ask("kdig", door, name, "A", "+tcp")) == "REFUSED"


def test_any_gets_a_minimal_answer_no_larger_than_a_records(door: Proc) -> None:
    text = ask("dig", door, f"malware.example.test.{DN}", "ANY")
    assert status(text) == "NOERROR"
    answer = text.split("ANSWER SECTION:")[1].split("\n\n")[0].strip().splitlines()
    assert 1 <= len(answer) <= 2, text


def test_a_list_change_is_answered_within_two_seconds(door: Proc) -> None:
    name = f"added-now.example.test.{DN}"
    assert short(door, name) == []
    done = rampart("lists", "add", "--blocked", "added-now.example.test", "--data-dir", str(door.data_dir))
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 2.5
    while short(door, name) != ["127.0.0.10"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert short(door, name) == ["127.0.0.10"]  # blocked by the administrator
    phish = f"phish.example.test.{DN}"  # listed by the pattern; approved now, so not listed
    assert short(door, phish) == ["127.0.0.2"]
    done = rampart("lists", "add", "--approved", "phish.example.test", "--data-dir", str(door.data_dir))
    assert done.returncode == 0
    deadline = time.monotonic() + 2.5
    while status(ask("dig", door, phish)) != "NXDOMAIN" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status(ask("dig", door, phish)) == "NXDOMAIN"


def test_a_pattern_swap_is_answered_without_a_restart(door: Proc, tmp_path: Path) -> None:
    name = f"swapped-in.example.test.{DN}"
    assert short(door, name) == []
    sample = Path(__file__).resolve().parents[2] / "proxy" / "samples" / "appliance" / "domains.txt"
    (tmp_path / "domains.txt").write_text(sample.read_text() + "swapped-in.example.test,dangerous,malware\n")
    version = time.strftime("%Y%m%d%H%M%S", time.gmtime())  # newer than the sample's hour
    for args in (("pattern", "keygen", "--out", str(tmp_path / "key")),
                 ("pattern", "build", "--out", str(tmp_path / "b"),
                  "--domains", str(tmp_path / "domains.txt"), "--version", version),
                 ("pattern", "publish", "--from", str(tmp_path / "b"), "--repo", str(tmp_path / "repo"),
                  "--key", str(tmp_path / "key"))):
        done = rampart(*args)
        assert done.returncode == 0, done.stderr
    port = free_port()
    source = Proc([*RAMPART, "pattern", "serve", str(tmp_path / "repo"), "--port", str(port)], tmp_path,
                  tmp_path / "source.log", {"http": port})
    source.start(f"http://127.0.0.1:{port}/manifest.json")
    try:
        done = rampart("update", "now", "--data-dir", str(door.data_dir), "--update-source",
                       f"http://127.0.0.1:{port}/", "--update-key", str(tmp_path / "key.pub"))
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        source.stop()
    deadline = time.monotonic() + 10  # the running server swaps within pattern_poll
    while short(door, name) != ["127.0.0.2"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert short(door, name) == ["127.0.0.2"]
    assert short(door, f"malware.example.test.{DN}") == ["127.0.0.2"]  # the rest as before


def test_ten_thousand_hostile_packets_leave_the_door_answering(door: Proc) -> None:
    """Random bytes, truncated and mutated real queries, label loops and pointers out of
    range, sent to the running door: every answer fits what its query allowed (512 bytes
    without EDNS), and dig is answered afterwards."""
    import random
    import socket

    import dns.message

    rng = random.Random(12)
    seeds = [dns.message.make_query(n, t).to_wire() for n in
             (f"malware.example.test.{DN}", f"7.2.0.192.{IP}", "example.com") for t in ("A", "TXT", "ANY")]
    loop = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"  # points at itself
    far = b"\x12\x35\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc3\xff\x00\x01\x00\x01"  # out of range
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.0)
        for i in range(10_000):
            kind = i % 4
            if kind == 0:
                packet = rng.randbytes(rng.randrange(1, 600))
            elif kind == 1:
                base = rng.choice(seeds)
                packet = base[:rng.randrange(len(base))]
            elif kind == 2:
                packet = bytearray(rng.choice(seeds))
                for _ in range(rng.randrange(1, 6)):
                    packet[rng.randrange(len(packet))] = rng.randrange(256)
                packet = bytes(packet)
            else:
                packet = rng.choice((loop, far, b"\x00" * 12 + b"\x3f" * 300))
            s.sendto(packet, ("127.0.0.1", door.ports["dns"]))
            while True:  # drain what came back so far, checking each answer's size
                try:
                    got = s.recv(65536)
                except BlockingIOError:
                    break
                answered += 1
                assert len(got) <= 1232
    assert status(ask("dig", door, f"malware.example.test.{DN}")) == "NOERROR"
    assert status(ask("kdig", door, f"7.2.0.192.{IP}", "A", "+tcp")) == "NOERROR"
    assert answered > 1000  # many were answered (FORMERR, REFUSED, NXDOMAIN, ...), none crashed it


def test_the_default_port_in_use_turns_the_door_off_not_the_appliance(tmp_path: Path) -> None:
    """5353 is also mDNS's (avahi holds it on many machines): on the default port, a port in
    use is a warning and the rest of the appliance runs; a port given with --dns-port must
    be free."""
    import contextlib
    import os
    import socket

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):  # something holds it already: the same situation
        holder.bind(("0.0.0.0", 5353))
    http = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAMPART_DNS_PORT"}
    try:
        proc = subprocess.Popen([*RAMPART, "serve", "--data-dir", str(tmp_path / "d"), "--listen", "0.0.0.0",
                                 "--query-port", str(http), "--query-tls-port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 30
            up = False
            while not up and time.monotonic() < deadline and proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", http), timeout=1):
                        up = True
                except OSError:
                    time.sleep(0.2)
            assert up, "the appliance did not come up"
            time.sleep(1)
        finally:
            proc.terminate()
            out = proc.communicate(timeout=20)[0].decode()
        assert "the DNS door is off" in out and "DNS door    off: port 5353 is in use" in out, out
        busy = subprocess.run([*RAMPART, "serve", "--data-dir", str(tmp_path / "e"), "--listen", "0.0.0.0",
                               "--query-port", str(free_port()), "--query-tls-port", "0",
                               "--dns-port", "5353"], capture_output=True, text=True, timeout=60, env=env)
        assert busy.returncode != 0 and "--dns-port" in busy.stderr
    finally:
        holder.close()
