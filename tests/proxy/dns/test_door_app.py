"""The DNS door on a real App with the real Answerer, asked by dig (BIND) over UDP and TCP:
the answers a mail server reads, a list change seen without a restart, the counters in
/metrics and the query-log rows the log search shows."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from proxy.config import Config
from proxy.decide.lists import ListName
from proxy.dns.door import start_dns
from proxy.logs.search import Search, search
from proxy.serve import metrics
from proxy.serve.app import App
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) is needed")

IP, DN = "ip.rampart.local", "dn.rampart.local"


async def dig(port: int, name: str, rtype: str = "A", *extra: str) -> tuple[str, list[str]]:
    """dig's status and its answer lines (type and data) for ``name``."""
    proc = await asyncio.create_subprocess_exec(
        "dig", "@127.0.0.1", "-p", str(port), name, rtype, "+time=5", "+tries=1", "+noall",
        "+comments", "+answer", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    status = next((w.strip(",") for line in text.splitlines() if "status:" in line
                   for w in line.split("status:")[1].split()[:1]), "")
    answers = [" ".join(line.split()[3:]) for line in text.splitlines()
               if line and not line.startswith(";")]
    return status, answers


async def test_dig_reads_the_zones_of_a_real_app(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    app = App(Config(data_dir=data, listen="127.0.0.1", query_port=0, query_tls_port=0, lists_poll=0.05))
    await app.start()
    try:
        door = await start_dns(app.cfg, app, port=0)
        try:
            port = door.port
            for tcp in ((), ("+tcp",)):
                assert await dig(port, f"2.0.0.127.{IP}", "A", *tcp) == ("NOERROR", ["A 127.0.0.2"])
                assert (await dig(port, f"1.0.0.127.{IP}", "A", *tcp))[0] == "NXDOMAIN"
                assert await dig(port, f"malware.example.test.{DN}", "A", *tcp) == (
                    "NOERROR", ["A 127.0.0.2"])
                assert (await dig(port, "example.com", "A", *tcp))[0] == "REFUSED"
            assert (await dig(port, f"evil.example.test.{DN}"))[0] == "NXDOMAIN"
            app.lists_store.add(ListName.BLOCKED, [(None, "evil.example.test")])
            app.engine.lists = app.lists_store.snapshot()  # what the list watcher does
            assert await dig(port, f"sub.evil.example.test.{DN}") == ("NOERROR", ["A 127.0.0.10"])
            text = metrics.render(app.registry).decode()
        finally:
            await door.stop()
    finally:
        await app.stop()  # writes what is queued
    assert 'rampart_dns_queries_total{rcode="NOERROR",source="pattern",zone="domain"} 2.0' in text
    assert 'rampart_dns_queries_total{rcode="NOERROR",source="blocked-list",zone="domain"} 1.0' in text
    assert 'rampart_dns_refused_total{reason="rate"} 0.0' in text
    assert app.logs is not None
    rows = search(app.logs.store, Search(where=(("service", "domain"),))).rows
    seen = [(r["item"], r["verdict"], r["source"], r["origin"], r["blocked"], r["client"]) for r in rows]
    assert ("malware.example.test", "dangerous", "pattern", "domain-ip", 1, "127.0.0.1") in seen
    assert seen[0][:4] == ("sub.evil.example.test", "dangerous", "blocked-list", "blocked-list")
    assert all(r["latency_ms"] >= 0 for r in rows)


async def test_a_name_the_cloud_must_answer_is_servfail_when_it_does_not(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    closed = free_port()  # nothing listens there: the relay cannot connect
    app = App(Config(data_dir=data, listen="127.0.0.1", query_port=0, query_tls_port=0,
                     cloud=[f"http://127.0.0.1:{closed}"], total_timeout=2.0, dns_timeout=1.0))
    await app.start()
    try:
        door = await start_dns(app.cfg, app, port=0)
        try:
            for tcp in ((), ("+tcp",)):
                assert (await dig(door.port, f"unknown.example.org.{DN}", "A", *tcp))[0] == "SERVFAIL"
            assert await dig(door.port, f"2.0.0.127.{IP}") == ("NOERROR", ["A 127.0.0.2"])  # still local
            assert door.pending == 0
            assert door.queries[("domain", "SERVFAIL", "degraded")] == 2  # the Answerer's, not the door's
        finally:
            await door.stop()
    finally:
        await app.stop()
