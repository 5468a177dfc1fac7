"""Settings changed while the appliance runs (the console's settings page): checked,
saved, then applied to the running App, in that order, so a change that is refused
changes nothing and one that is applied survives a restart (``proxy.settings``).

Each key of ``proxy.settings.LIVE`` has its effect here: the engine's degraded action,
the query log on or off (the update, relay and audit logs are kept either way), how
the log writer stores client addresses and how long it keeps rows, the log level, and
syslog forwarding.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from proxy import settings
from proxy.config import Config, default
from proxy.errors import ConfigError
from proxy.logs import syslog
from proxy.logs.hub import client_mask

logger = logging.getLogger(__name__)


class SettingFixed(ConfigError):
    status = 409
    code = "setting_fixed"


class NotLive(ConfigError):
    code = "not_editable"


async def apply_settings(app: Any, changes: Mapping[str, Any]) -> Config:
    """Change ``changes`` (key: value; None puts a key back to its default) on ``app``, a
    started ``proxy.serve.app.App``; raises ConfigError naming the key (nothing changed)."""
    layers: settings.Layers = app.layers
    for key in changes:
        if key not in settings.LIVE:
            raise NotLive(f"setting {str(key)[:64]!r} cannot be changed from the console (those"
                          f" are {', '.join(settings.LIVE)}); set it in the config file")
        if layers.fixed(key):
            where = (f"the config file {layers.config_file}" if layers.set_by(key) == "config file"
                     else "the command line")
            raise SettingFixed(f"setting {key!r} is set by {where}; change it there")
    new: Config = app.cfg.replace(**{k: default(k) if v is None else v for k, v in changes.items()})
    saved = dict(layers.saved)
    for key, value in changes.items():
        if value is None:
            saved.pop(key, None)
        else:
            saved[key] = _plain(getattr(new, key))
    await asyncio.to_thread(settings.write_saved, app.cfg.data_dir, saved)
    app.layers = dataclasses.replace(layers, saved=saved)
    take(app, new)
    logger.info("settings changed: %s", ", ".join(f"{k}={getattr(new, k)!r}" for k in changes))
    return new


def take(app: Any, new: Config) -> None:
    """Make the running ``app`` follow ``new`` in every LIVE key."""
    old, app.cfg = app.cfg, new
    app.engine.block_degraded = new.degraded_action == "block"
    logs = app.logs
    if logs is not None:
        if new.query_log and logs.observe not in app.observers:
            app.observers.append(logs.observe)
        elif not new.query_log and logs.observe in app.observers:
            app.observers.remove(logs.observe)
        if (old.log_clients, old.log_client_networks) != (new.log_clients, new.log_client_networks):
            logs.writer.set_clients(client_mask(new))
        logs.writer.days, logs.writer.max_rows = new.log_retention_days, new.log_max_rows
    if new.log_level != old.log_level:
        logging.getLogger().setLevel(new.log_level.upper())
    if (new.syslog, new.syslog_facility) != (old.syslog, old.syslog_facility):
        syslog.configure(new)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
