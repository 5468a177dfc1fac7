"""The intercept door's rules (proxy.serve.intercept, proxy.serve.gate.ClientNetworks):
pure functions, no mitmproxy. Its hooks are tested in tests/addons/test_intercept.py."""

from __future__ import annotations

import re

import pytest

from proxy.config import Config
from proxy.serve.gate import ClientNetworks
from proxy.serve.intercept import HostPatterns, decision, engine_service, intercept_patterns
from tests.conftest import EICAR_SHA256


@pytest.mark.parametrize(
    "patterns, host, hit",
    [
        (["cloud.rampart.test"], "cloud.rampart.test", True),
        (["cloud.rampart.test"], "CLOUD.Rampart.test.", True),
        (["cloud.rampart.test"], "x.cloud.rampart.test", False),
        (["cloud.rampart.test"], "rampart.test", False),
        (["*.trendmicro.com"], "a.trendmicro.com", True),
        (["*.trendmicro.com"], "a.b.trendmicro.com", True),
        (["*.trendmicro.com"], "trendmicro.com", False),
        (["*.trendmicro.com"], "eviltrendmicro.com", False),
        (["*.trendmicro.com"], "trendmicro.com.evil.test", False),
        (["192.0.2.9"], "192.0.2.9", True),
        (["::1"], "[::1]", True),
        ([], "anything.test", False),
        (["a.test"], "", False),
    ],
)
def test_host_patterns(patterns: list[str], host: str, hit: bool) -> None:
    hosts = HostPatterns.parse(patterns)
    assert (host in hosts) is hit
    # mitmproxy's allow_hosts gets the same rule, matched on "host:port"
    regexes = hosts.allow_regexes()
    h = host.strip("[]").rstrip(".").lower()
    if h:
        assert any(re.search(r, f"{h}:443", re.IGNORECASE) for r in regexes) is hit


@pytest.mark.parametrize("bad", ["", "*", "a.*.test", "*.192.0.2.1", "host:443", "http://x/", "a*.test"])
def test_bad_host_patterns_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="host pattern"):
        HostPatterns.parse([bad])


def test_cloud_hosts_are_always_intercepted() -> None:
    cfg = Config(intercept_hosts=["*.vendor.test"], cloud=["https://spn.cloud.test:9443"])
    hosts = intercept_patterns(cfg)
    assert "spn.cloud.test" in hosts and "x.vendor.test" in hosts and "cloud.test" not in hosts


@pytest.mark.parametrize(
    "address, allowed",
    [
        ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("10.1.2.3", True),
        ("172.16.0.1", True), ("172.32.0.1", False), ("192.168.7.7", True), ("fd00::5", True),
        ("::ffff:192.168.1.1", True), ("::ffff:8.8.8.8", False), ("8.8.8.8", False),
        ("2001:db8::1", False), ("fe80::1%eth0", False), ("not-an-ip", False), ("?", False),
    ],
)
def test_default_client_networks(address: str, allowed: bool) -> None:
    assert ClientNetworks.parse(Config().allow_clients).allows(address) is allowed


@pytest.mark.parametrize(
    "path, service",
    [
        ("/v1/file", "file"), ("/v1/file/" + EICAR_SHA256, "file"), ("/v1/web?url=http://x/", "web"),
        ("/v1/web", "web"), ("/v1/domain", "domain"), ("/v1/domain/example.test", "domain"),
        ("/v1/inspect", "inspect"), ("/v1/file/", None), ("/v1/agent-pattern", None),
        ("/healthz", None), ("/readyz", None), ("/", None), ("/v1/filex", None), ("/v2/file", None),
    ],
)
def test_engine_paths(path: str, service: str | None) -> None:
    assert engine_service(path) == service


@pytest.mark.parametrize(
    "body, sources, matched",
    [
        (b'{"results":[{"sha256":"aa","verdict":"malicious","threat":"EICAR-Test-File",'
         b'"source":"pattern"}]}', ["pattern"], ["EICAR-Test-File"]),
        (b'{"results":[{"url":"u","matched":"bad.test/","source":"blocked-list"},'
         b'{"url":"v","source":"cloud"},{"url":"w","source":"cloud"}]}',
         ["blocked-list", "cloud"], ["bad.test/"]),
        (b'{"results":[{"sha256":"aa","verdict":"unknown","source":"degraded","retry_after":60}]}',
         ["degraded"], []),
        (b'{"results":[{"matched":"say \\"hi\\"","source":"approved-list"}]}',
         ["approved-list"], ['say "hi"']),
        (b"", [], []),
    ],
)
def test_decision_read_off_the_answer(body: bytes, sources: list[str], matched: list[str]) -> None:
    assert decision(body) == {"sources": sources, "matched": matched}
