"""`rampart query` (proxy/cli/query.py) without a server: items and --server are checked
before anything is sent (exit 2, naming what was wrong), and a server that cannot be
reached is one line naming its URL (exit 1)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner, Result

from proxy.cli import cli
from tests.conftest import free_port

SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


def query(*args: str) -> Result:
    return CliRunner().invoke(cli, ["query", *args], env={"RAMPART_SERVER": None})


@pytest.fixture
def closed() -> str:
    """host:port of a loopback port nothing listens on: a request sent there fails with exit 1."""
    return f"127.0.0.1:{free_port()}"


@pytest.mark.parametrize(("given", "url"), [
    ("localhost:8080", "http://localhost:8080"),
    ("localhost:8443", "https://localhost:8443"),
    ("appliance.example:443", "https://appliance.example:443"),
    ("localhost", "http://localhost:8080"),
    ("[::1]:8443", "https://[::1]:8443"),
    ("https://localhost:9443/", "https://localhost:9443"),
    ("http://localhost:8443", "http://localhost:8443"),  # a scheme given is kept
])
def test_server_takes_host_port_as_http_and_https_on_the_tls_port(given: str, url: str) -> None:
    from proxy.cli.query import server_url

    assert server_url(given) == url


def test_host_port_is_asked_over_http_and_an_unreachable_server_is_one_line(closed: str) -> None:
    r = query("--server", closed, "file", SHA256)
    assert r.exit_code == 1
    assert r.output.startswith(f"rampart: error: cannot reach http://{closed}: ")
    assert r.output.count("\n") == 1 and "unknown url type" not in r.output


@pytest.mark.parametrize(("server", "problem"), [
    ("ftp://localhost", "use http:// or https://, not ftp://"),
    ("localhost:80x", "give a URL (http://HOST:8080) or HOST:PORT"),
    ("http://", "names no host"),
])
def test_a_bad_server_is_a_wrong_command(server: str, problem: str) -> None:
    r = query("--server", server, "file", SHA256)
    assert r.exit_code == 2, r.output
    assert problem in r.output and f"--server {server!r}" in r.output


@pytest.mark.parametrize(("args", "problem"), [
    (["file", "z" * 64], f"hash {'z' * 64!r} is not hexadecimal"),
    (["file", SHA256, SHA256[:-1]], "item 2 of 2: hash"),
    (["url", "http://exa mple.test/"], "URL 'http://exa mple.test/'"),
    (["domain", "evil..example"], "'evil..example': empty label"),
])
def test_a_bad_item_is_refused_here_naming_it(closed: str, args: list[str], problem: str) -> None:
    r = query("--server", closed, *args)
    assert r.exit_code == 2, r.output  # not sent: the closed port would have made it exit 1
    assert problem in r.output and "nothing was asked" in r.output
