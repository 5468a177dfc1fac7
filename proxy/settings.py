"""Settings an administrator changes from the console while the appliance runs, and where
every config key's value comes from.

Precedence, lowest first: built-in defaults < the console's saved settings
(``DATA_DIR/settings.json``) < the TOML file (``--config``) < command-line flags and
their environment variables. A key the file or a flag sets is *fixed*: the console shows
it, with where it is set, and refuses to change it (409), because the next start would
take the file's or the flag's value again and the change would be lost without a word.

Only the keys in ``LIVE`` may be saved: each takes effect in the running server at once
(``proxy.serve.app.App.apply_settings``) and needs no restart. Everything else is set
in the config file.

``settings.json`` is one JSON object, key to value, written whole (temporary file and
rename, mode 0600); a file that is not that, or holds a key not in ``LIVE``, is refused
at start naming the file and the key: a hand edit is never silently half taken.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy import config as config_mod
from proxy.errors import ConfigError
from proxy.files import read_json, write_atomic

FILE = "settings.json"
MAX_BYTES = 64 << 10
LIVE = (
    "degraded_action", "query_log", "log_clients", "log_client_networks", "log_retention_days",
    "log_max_rows", "log_level", "syslog", "syslog_facility",
)
"""The keys the console may change: each applies to the running server at once."""

CHOICES: dict[str, tuple[str, ...]] = {
    "degraded_action": config_mod.DEGRADED_ACTIONS, "log_clients": config_mod.LOG_CLIENTS,
    "log_level": config_mod.LOG_LEVELS, "log_format": config_mod.LOG_FORMATS,
    "syslog_facility": config_mod.SYSLOG_FACILITIES,
}


@dataclass(frozen=True)
class Layers:
    """Which keys the config file and the flags set, and what the console saved."""

    config_file: Path | None = None
    file_keys: frozenset[str] = frozenset()
    flag_keys: frozenset[str] = frozenset()
    saved: dict[str, Any] = field(default_factory=dict)

    def set_by(self, key: str) -> str:
        if key in self.flag_keys:
            return "command line"
        if key in self.file_keys:
            return "config file"
        if key in self.saved:
            return "console"
        return "default"

    def fixed(self, key: str) -> bool:
        return key in self.flag_keys or key in self.file_keys


def load(config_file: Path | None, flags: Mapping[str, Any]) -> tuple[config_mod.Config, Layers]:
    """The Config of a run (defaults, saved settings, file, flags) and its layers."""
    file_keys = frozenset(config_mod.read_file(config_file)) if config_file is not None else frozenset()
    flag_keys = frozenset(config_mod.given(flags))
    cfg = config_mod.load(config_file, flags)
    saved = read_saved(cfg.data_dir)
    layers = Layers(config_file, file_keys, flag_keys, saved)
    usable = {k: v for k, v in saved.items() if not layers.fixed(k)}
    return (cfg.replace(**usable) if usable else cfg), layers


def read_saved(data_dir: Path) -> dict[str, Any]:
    """The console's saved settings in ``data_dir`` ({} when there are none)."""
    path = Path(data_dir) / FILE
    if not path.is_file():
        return {}
    doc = read_json(path, MAX_BYTES, error=ConfigError)
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: must be a JSON object of settings")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in LIVE:
            raise ConfigError(f"{path}: {str(key)[:64]!r} is not a setting the console keeps"
                              f" (those are {', '.join(LIVE)}); set it in the config file")
        out[key] = value
    try:
        config_mod.Config().replace(**out)  # every value checked as a flag would be
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.message}") from None
    return out


def write_saved(data_dir: Path, saved: Mapping[str, Any]) -> None:
    """Replace the saved settings with ``saved`` (whole, atomically, mode 0600)."""
    data = json.dumps(dict(saved), indent=1, sort_keys=True) + "\n"
    write_atomic(Path(data_dir) / FILE, data.encode())


def describe(cfg: config_mod.Config, layers: Layers) -> list[dict[str, Any]]:
    """Every config key as the console's settings page shows it."""
    out = []
    for name, f in config_mod.FIELDS.items():
        kind = str(f.type).replace(" | None", "")
        out.append({
            "key": name, "value": _json(getattr(cfg, name)),
            "default": _json(config_mod.default(name)), "help": f.metadata["help"],
            "type": "path" if kind.startswith("Path") else kind,
            "choices": list(CHOICES[name]) if name in CHOICES else None,
            "editable": name in LIVE and not layers.fixed(name), "set_by": layers.set_by(name),
        })
    return out


def _json(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value
