"""docs/configuration.md is generated from the config declarations and the command tree, so it
cannot drift: it must be exactly what `rampart config --markdown` prints now."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from addons.cli import rampart
from proxy import config as config_mod
from proxy.cli.config import REGENERATE

REFERENCE = Path(__file__).parent.parent / "docs" / "configuration.md"


def generated() -> str:
    result = CliRunner().invoke(rampart(), ["config", "--markdown"])
    assert result.exit_code == 0, result.output
    return result.output


def rows(text: str) -> dict[str, list[str]]:
    """The reference table: key -> its cells (type, default, range, flag, meaning)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\| `([a-z0-9_]+)` \| (.*) \|$", line)
        if m:
            out[m.group(1)] = [c.strip() for c in re.split(r"(?<!\\)\|", m.group(2))]
    return out


def test_configuration_reference_is_up_to_date() -> None:
    assert REFERENCE.exists(), f"docs/configuration.md is missing; generate it: {REGENERATE}"
    assert REFERENCE.read_text() == generated(), (
        f"docs/configuration.md is out of date with the config keys or flags; regenerate it: {REGENERATE}"
    )


def test_reference_has_every_key_with_type_default_range_flag_and_help() -> None:
    table = rows(generated())
    assert list(table) == list(config_mod.FIELDS)
    kind, default, bounds, flag, meaning = table["query_port"]
    assert (kind, default, bounds) == ("integer", "`8080`", "0 to 65535")
    assert flag == "`--query-port`: serve"
    assert meaning == config_mod.FIELDS["query_port"].metadata["help"]
    assert table["proxy_port"][3] == "`--proxy-port` (`$RAMPART_PROXY_PORT`): serve"
    assert table["update_source"][3].startswith("`--update-source` (`$RAMPART_UPDATE_SOURCE`): serve")
    assert "update now" in table["update_source"][3]
    assert table["cloud_ca"][1] == "not set"
    assert table["max_body"][3] == ""  # no flag: the file only
    assert "`$RAMPART_DATA_DIR`" in table["data_dir"][1]
    for key, cells in table.items():
        assert len(cells) == 5, key
        f = config_mod.FIELDS[key]
        if f.metadata.get("lo") is not None:
            assert cells[2], f"{key}: its range is missing"


def test_reference_tells_how_to_regenerate_it() -> None:
    assert REGENERATE in generated()
