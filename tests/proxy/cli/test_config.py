"""`rampart config`: a config file with every key, valid TOML as printed and with every line
uncommented, which changes none of the defaults."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from proxy import config as config_mod
from proxy.cli import cli
from proxy.cli.config import toml_value


def printed(*args: str) -> str:
    result = CliRunner().invoke(cli, ["config", *args])
    assert result.exit_code == 0, result.output
    return result.output


def uncomment_every_key(text: str) -> tuple[str, list[str]]:
    """The file with every ``# key = value`` line uncommented, and the keys found."""
    found: list[str] = []
    lines = []
    for line in text.splitlines():
        m = re.match(r"# ([a-z0-9_]+) = ", line)
        if m and m.group(1) in config_mod.FIELDS:
            found.append(m.group(1))
            line = line[2:]
        lines.append(line)
    return "\n".join(lines) + "\n", found


@pytest.mark.parametrize("variant", [[], ["--appliance"]], ids=["plain", "appliance"])
def test_every_key_uncommented_is_valid_toml_and_changes_no_default(variant: list[str],
                                                                    tmp_path: Path) -> None:
    text = printed(*variant)
    assert tomllib.loads(text) == ({"data_dir": "/var/lib/rampart"} if variant else {})
    uncommented, found = uncomment_every_key(text)
    assert found == [k for k in config_mod.FIELDS if not (variant and k == "data_dir")]
    doc = tomllib.loads(uncommented)  # every shown value is TOML
    assert set(doc) == set(config_mod.FIELDS)
    path = tmp_path / "rampart.toml"
    path.write_text(uncommented)
    expected = config_mod.Config()
    if variant:
        expected = expected.replace(data_dir="/var/lib/rampart")
    assert config_mod.load(path) == expected


def test_each_key_is_shown_with_its_help_and_range() -> None:
    text = printed()
    block = text.split("\n\n")
    query_port = next(b for b in block if b.endswith("# query_port = 8080"))
    assert "query door, plain HTTP; 0 turns it off" in query_port
    assert "(integer, 0 to 65535)" in query_port
    tls_names = next(b for b in block if b.endswith("# tls_names = []"))
    assert "(list of strings)" in tls_names
    cloud_ca = next(b for b in block if b.endswith('# cloud_ca = ""'))
    assert "(path or empty)" in cloud_ca


@pytest.mark.parametrize(
    "value",
    ["", "plain", 'quote " and back\\slash', "tab\there\nnewline", "é ü 東京", "\x01",
     0, 8080, 1 << 40, 0.002, 3600.0, 1e-07, True, False, [], ["a", "b c"], ["127.0.0.0/8", "::1/128"]],
)
def test_values_round_trip_through_toml(value: Any) -> None:
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_a_missing_optional_value_is_the_empty_string() -> None:
    assert toml_value(None) == '""'
    assert toml_value(Path("/var/lib/rampart")) == '"/var/lib/rampart"'


def test_markdown_and_appliance_do_not_go_together() -> None:
    result = CliRunner().invoke(cli, ["config", "--markdown", "--appliance"])
    assert result.exit_code == 2
    assert "--appliance and --markdown do not go together" in result.output
