"""Tests for certs/follow.py (a running door follows its TLS material on disk) and
certs/serving.py (what a running door records for `rampart ca show`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from certs import CA
from certs.ca import CA_LOCK_FILE, fingerprint, key_pem
from certs.files import lock_file, read_pem, write_pem
from certs.follow import DoorTls
from certs.rotate import rotate
from certs.serving import Serving, running
from certs.tls import leaf_path

NAMES = ["localhost", "127.0.0.1"]


def trusted_by(context: ssl.SSLContext, cafile: Path) -> bool:
    """Whether a client trusting only ``cafile`` accepts the certificate ``context`` presents
    (a handshake over a socket pair)."""
    client_ctx = ssl.create_default_context(cafile=str(cafile))
    a, b = socket.socketpair()
    ok: list[bool] = []

    def serve() -> None:
        try:
            with context.wrap_socket(a, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname="localhost"):
            ok.append(True)
    except ssl.SSLCertVerificationError:
        ok.append(False)
    t.join(10)
    return ok[0]


async def follow_until(tls: DoorTls, count: int, timeout: float = 20) -> list[ssl.SSLContext]:
    got: list[ssl.SSLContext] = []
    task = asyncio.create_task(tls.follow(got.append, interval=0.05))
    try:
        async with asyncio.timeout(timeout):
            while len(got) < count:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
    return got


def test_a_rotation_is_followed_and_presents_the_new_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    CA.ensure(data)
    tls = DoorTls(data, NAMES)
    first = tls.first()
    old = tmp_path / "old.pem"
    old.write_bytes((data / "ca.pem").read_bytes())
    assert trusted_by(first, old)

    rotate(data)
    [context] = asyncio.run(follow_until(tls, 1))
    assert trusted_by(context, data / "ca.pem") and not trusted_by(context, old)
    tls.close()


def test_a_half_replaced_pair_is_not_loaded_and_the_old_certificate_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key replaced by hand without its certificate: the door keeps what it presents,
    says why once, and takes the pair when the certificate follows."""
    data = tmp_path / "data"
    CA.ensure(data)
    tls = DoorTls(data, NAMES)
    tls.first()
    new = CA.create()

    async def scenario() -> list[ssl.SSLContext]:
        got: list[ssl.SSLContext] = []
        task = asyncio.create_task(tls.follow(got.append, interval=0.05))
        write_pem(data / "ca-key.pem", key_pem(new.key), private=True)
        await asyncio.sleep(0.5)
        assert got == []  # the mismatched pair was refused, the old context stays
        write_pem(data / "ca.pem", new.cert_pem(), private=False)
        async with asyncio.timeout(20):
            while not got:
                await asyncio.sleep(0.05)
        task.cancel()
        return got

    [context] = asyncio.run(scenario())
    assert trusted_by(context, data / "ca.pem")
    refusals = [r for r in caplog.records if "keeps its certificate" in r.getMessage()]
    assert len(refusals) == 1 and "not the private key" in refusals[0].getMessage()
    tls.close()


def test_a_load_waits_for_an_install_holding_the_ca_lock(tmp_path: Path) -> None:
    """``rotate``/``import`` hold DATA/.ca.lock while they write the set: a door loading
    meanwhile waits and then sees the whole new set (a new CA, its key, a reissued leaf)."""
    data = tmp_path / "data"
    CA.ensure(data)
    tls = DoorTls(data, NAMES)
    tls.first()
    new = CA.create()
    loaded: list[ssl.SSLContext] = []
    with lock_file(data / CA_LOCK_FILE):
        write_pem(data / "ca-key.pem", key_pem(new.key), private=True)  # half-way through
        loader = threading.Thread(target=lambda: loaded.append(tls._locked_load()))
        loader.start()
        loader.join(0.5)
        assert loader.is_alive() and loaded == []  # waiting on the lock, nothing loaded
        write_pem(data / "ca.pem", new.cert_pem(), private=False)
    loader.join(20)
    assert len(loaded) == 1 and trusted_by(loaded[0], data / "ca.pem")
    tls.close()


def test_the_door_records_what_it_presents_and_a_killed_servers_record_is_ignored(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    ca = CA.ensure(data)
    tls = DoorTls(data, NAMES)
    tls.first()
    [record] = running(data)
    assert record.door == "query" and record.ca_sha256 == ca.fingerprint_sha256()
    leaf = x509.load_pem_x509_certificates((data / "tls" / "tls-server.pem").read_bytes())[0]
    assert record.certificate_sha256 == fingerprint(leaf)
    assert record.pid == os.getpid()
    assert oct((data / "tls" / "serving-query.json").stat().st_mode & 0o777) == "0o600"

    # a crash: the lock goes with the process, the record stays on disk
    assert tls.serving._fd is not None
    os.close(tls.serving._fd)
    tls.serving._fd = None
    assert (data / "tls" / "serving-query.json").exists()
    assert running(data) == []


def test_a_second_server_on_the_same_data_directory_leaves_the_record_to_the_first(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    ca = CA.ensure(data)
    first = Serving(data, "query", "query door")
    first.record(ca.cert, None)
    second = Serving(data, "query", "query door")
    second.record(CA.create().cert, None)  # serves, but does not overwrite the first's record
    [record] = running(data)
    assert record.ca_sha256 == ca.fingerprint_sha256()
    first.close()
    assert running(data) == [] and not (data / "tls" / "serving-query.json").exists()


def test_a_certificate_entering_its_last_30_days_is_reissued_while_running(
        tmp_path: Path) -> None:
    """No restart to renew: the hourly look finds the served certificate due and reissues it."""
    data = tmp_path / "data"
    CA.ensure(data)
    clock = [time.time()]
    tls = DoorTls(data, NAMES, clock=lambda: clock[0])
    tls.first()
    first = served_leaf(data)
    clock[0] = (first.not_valid_after_utc - dt.timedelta(days=10)).timestamp()  # time passed
    [context] = asyncio.run(follow_until(tls, 1))
    renewed = served_leaf(data)
    assert renewed.not_valid_after_utc - first.not_valid_after_utc > dt.timedelta(days=300)
    assert isinstance(context, ssl.SSLContext)
    assert not tls.due()  # the next look is an hour away
    tls.close()


def served_leaf(data: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(read_pem(leaf_path(data / "tls"), private=True))[0]
