"""proxy.cli.common: errors become one line and their exit code; a run's options fill one Run."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from proxy.cli.common import (
    Run,
    config_file_option,
    config_flag,
    data_dir_option,
    fail_cleanly,
    json_option,
    pass_run,
)
from proxy.errors import CertError, ConfigError, RampartError


def _failing(error: Exception) -> click.Command:
    @click.command()
    @fail_cleanly
    def cmd() -> None:
        raise error

    return cmd


@pytest.mark.parametrize("error", [CertError("ca.key: not a key"), ConfigError("bad key"),
                                   RampartError("it broke")])
def test_a_rampart_error_is_one_line_and_its_exit_code(error):
    r = CliRunner().invoke(_failing(error), [])
    assert r.exit_code == error.exit_code
    assert r.output == f"rampart: error: {error.message}\n"


def test_other_errors_are_not_swallowed():
    r = CliRunner().invoke(_failing(KeyError("x")), [])
    assert isinstance(r.exception, KeyError)


def _probe(seen: list[Run]) -> click.Command:
    @click.command()
    @config_file_option("config")
    @data_dir_option
    @config_flag("--listen")
    @json_option("json")
    @pass_run
    def cmd(run: Run) -> None:
        seen.append(run)

    return cmd


def test_the_shared_options_fill_the_run(tmp_path):
    seen: list[Run] = []
    cfg = tmp_path / "rampart.toml"
    cfg.write_text('listen = "127.0.0.1"\n')
    r = CliRunner().invoke(_probe(seen), ["--config", str(cfg), "--data-dir", str(tmp_path / "d"),
                                          "--json"])
    assert r.exit_code == 0, r.output
    (run,) = seen
    assert run.config_file == cfg and run.as_json
    assert run.flags == {"data_dir": tmp_path / "d", "listen": None}
    assert run.data_dir == tmp_path / "d"
    assert run.config is run.config  # loaded once
    assert run.config.listen == "127.0.0.1" and run.config.data_dir == tmp_path / "d"


def test_the_data_directory_comes_from_the_flag_then_the_config_file_then_the_default(
        tmp_path, monkeypatch):
    monkeypatch.setenv("RAMPART_DATA_DIR", str(tmp_path / "env"))
    assert Run().data_dir == tmp_path / "env"
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "file"}"\n')
    assert Run(config_file=cfg).data_dir == tmp_path / "file"
    assert Run(config_file=cfg, flags={"data_dir": Path("flag")}).data_dir == Path("flag")
