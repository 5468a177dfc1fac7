"""proxy.settings: the console's saved settings and the precedence of the layers."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from proxy import settings
from proxy.errors import ConfigError


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    return d


def test_saved_settings_sit_between_the_defaults_and_the_file(data: Path, tmp_path: Path) -> None:
    settings.write_saved(data, {"log_retention_days": 9, "log_clients": "none", "log_level": "debug"})
    toml = tmp_path / "rampart.toml"
    toml.write_text(f'data_dir = "{data}"\nlog_clients = "truncated"\n')
    cfg, layers = settings.load(toml, {"log_level": "warning"})
    assert cfg.log_retention_days == 9  # saved, over the default
    assert cfg.log_clients == "truncated"  # the file's, over the saved
    assert cfg.log_level == "warning"  # the flag's, over both
    assert [layers.set_by(k) for k in ("log_retention_days", "log_clients", "log_level",
                                       "log_max_rows")] == [
        "console", "config file", "command line", "default"]


def test_written_whole_and_private_whatever_the_umask(data: Path) -> None:
    old = os.umask(0)
    try:
        settings.write_saved(data, {"query_log": False})
    finally:
        os.umask(old)
    path = data / settings.FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"query_log": False}
    assert settings.read_saved(data) == {"query_log": False}


@pytest.mark.parametrize(("text", "named"), [
    ("[1, 2]", "JSON object"),
    ("{not json", "not JSON"),
    ('{"query_port": 1}', "query_port"),
    ('{"log_retention_days": -1}', "log_retention_days"),
])
def test_a_bad_file_is_refused_naming_the_file_and_the_key(data: Path, text: str, named: str) -> None:
    (data / settings.FILE).write_text(text)
    with pytest.raises(ConfigError, match=named) as err:
        settings.read_saved(data)
    assert settings.FILE in err.value.message


def test_no_file_no_settings(data: Path) -> None:
    assert settings.read_saved(data) == {}
    assert settings.read_saved(data / "missing") == {}
