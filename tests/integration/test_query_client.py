"""`rampart query` against a real appliance whose cloud cannot be reached (every unknown
item is answered `degraded` with `retry_after`): --json in either position, host:port,
the HTTPS door's certificate, and how a degraded result reads in the table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from proxy.cli import cli
from tests.conftest import EICAR_SHA256, Proc, free_port, start_appliance

pytestmark = pytest.mark.integration

UNKNOWN_URL = "http://unknown.example.test/page"


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("query")
    p = start_appliance(tmp, None, "--cloud", f"https://127.0.0.1:{free_port()}")  # nothing there
    yield p
    p.stop()


def query(*args: str) -> Result:
    return CliRunner().invoke(cli, ["query", *args], env={"RAMPART_SERVER": None})


def http(p: Proc) -> str:
    return f"http://127.0.0.1:{p.ports['http']}"


def test_host_port_means_http(appliance: Proc) -> None:
    r = query("--server", f"127.0.0.1:{appliance.ports['http']}", "file", EICAR_SHA256)
    assert r.exit_code == 0, r.output
    assert "pattern" in r.output.splitlines()[1]


def test_json_works_before_and_after_the_subcommand(appliance: Proc) -> None:
    before = query("--server", http(appliance), "--json", "file", EICAR_SHA256)
    after = query("--server", http(appliance), "file", EICAR_SHA256, "--json")
    assert before.exit_code == after.exit_code == 0, before.output + after.output
    assert json.loads(before.output)["results"] == json.loads(after.output)["results"]
    assert json.loads(after.output)["results"][0]["source"] == "pattern"


@pytest.mark.parametrize(("policy", "reads"), [("low", "allowed for now"), ("high", "blocked for now")])
def test_a_degraded_result_reads_as_for_now_with_when_to_ask_again(
        appliance: Proc, policy: str, reads: str) -> None:
    raw = query("--server", http(appliance), "--json", "url", "--policy", policy, UNKNOWN_URL)
    result = json.loads(raw.output)["results"][0]
    assert result["source"] == "degraded"
    r = query("--server", http(appliance), "url", "--policy", policy, UNKNOWN_URL)
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if line.startswith(UNKNOWN_URL))
    assert f"{reads}, ask again in {result['retry_after']} s" in row
    assert f" {result['action']} " not in row  # never a bare allow or block


def test_a_degraded_result_without_a_policy_says_to_ask_again(appliance: Proc) -> None:
    r = query("--server", http(appliance), "domain", "unknown.example.test")
    assert r.exit_code == 0, r.output
    assert "for now, ask again in " in r.output and "degraded" in r.output


def test_an_https_server_is_trusted_with_the_appliance_ca_and_says_so_without(
        appliance: Proc, tmp_path: Path) -> None:
    from certs import CA

    https = f"https://127.0.0.1:{appliance.ports['https']}"
    r = query("--server", https, "file", EICAR_SHA256)
    assert r.exit_code == 1
    assert r.output == (f"rampart: error: {https}: certificate not trusted: "
                        "use --ca DATA_DIR/ca.pem (the appliance CA)\n")
    r = query("--server", https, "--ca", str(appliance.data_dir / "ca.pem"), "file", EICAR_SHA256)
    assert r.exit_code == 0 and "pattern" in r.output, r.output

    other = CA.ensure(tmp_path / "other")
    del other
    r = query("--server", https, "--ca", str(tmp_path / "other" / "ca.pem"), "file", EICAR_SHA256)
    assert r.exit_code == 1 and "certificate not trusted by --ca" in r.output, r.output


def test_an_https_door_asked_over_http_is_one_line(appliance: Proc) -> None:
    r = query("--server", f"http://127.0.0.1:{appliance.ports['https']}", "file", EICAR_SHA256)
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "Traceback" not in r.output
