"""What the ``rampart`` commands share: the run's context object, error handling, logging
and the options several commands take.

A run's settings live on one :class:`Run`, created by the group (``proxy.cli``) and
carried on click's ``ctx.obj``. The shared options do not hand their values to the
command function; they fill the Run as click parses them (``--config`` its config
file, a flag naming a config key its ``flags``, ``--json`` its output form), and the
command takes the Run with :func:`pass_run`. The Config is loaded from the Run on
first use, inside the command, so a bad file or flag is reported like every other
RampartError by :func:`fail_cleanly`.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from proxy import config as config_mod
from proxy import settings
from proxy.errors import ConfigError, RampartError

F = TypeVar("F", bound=Callable[..., Any])

LOG_LEVELS = click.Choice(list(config_mod.LOG_LEVELS))
"""The values of config key log_level (proxy.config.validate checks the same four)."""


@dataclass(frozen=True)
class Server:
    """The server a client command asks (``rampart query``): base URL, CA file, timeout."""

    url: str
    ca: str | None
    timeout: float


@dataclass
class Run:
    """One run of the command line: what its options said, and the Config they make."""

    config_file: Path | None = None
    """``--config``: the TOML file the Config is loaded from (None: defaults and flags only)."""
    flags: dict[str, Any] = field(default_factory=dict)
    """Command-line values of config keys, by key (None or empty: not given)."""
    as_json: bool = False
    """``--json``: print JSON instead of text."""
    server: Server | None = None
    """The server ``rampart query`` asks (set by its group)."""
    _config: config_mod.Config | None = field(default=None, init=False, repr=False)
    _layers: settings.Layers | None = field(default=None, init=False, repr=False)

    @property
    def config(self) -> config_mod.Config:
        """Defaults < the console's saved settings < the config file < the flags, loaded
        once (``proxy.settings``); raises ConfigError."""
        if self._config is None:
            self._config, self._layers = settings.load(self.config_file, self.flags)
        return self._config

    @property
    def layers(self) -> settings.Layers:
        """Where each key of :attr:`config` is set (what the console may change)."""
        self.config  # noqa: B018 - loads both
        assert self._layers is not None
        return self._layers

    @property
    def data_dir(self) -> Path:
        """``--data-dir``, else the config file's data_dir, else the default data directory
        (``$RAMPART_DATA_DIR`` or ~/.local/share/rampart); no config is loaded without a file."""
        given = self.flags.get("data_dir")
        if given is not None:
            return Path(given)
        if self.config_file is not None:
            return self.config.data_dir
        return config_mod.default_data_dir()

    def existing_data_dir(self) -> Path:
        """:attr:`data_dir`, which must exist: what read-only commands and commands that work on
        a server's state take, so a mistyped ``--data-dir`` is refused instead of created."""
        where = self.data_dir
        if not where.is_dir():
            hint = ("is not a directory" if where.exists() else
                    "does not exist (a mistyped --data-dir? `rampart serve` creates it)")
            raise ConfigError(f"data directory {where} {hint}")
        return where


def open_list_store(run: Run) -> Any:
    """The data directory's list store; with a Redis in the config (or $RAMPART_REDIS), its
    writes go through the shared lists as a running appliance's do (``proxy.shared.lists``):
    refused, and nothing changed, while Redis cannot be reached."""
    import os

    from proxy.decide.lists import ListStore

    store = ListStore.open(run.existing_data_dir())
    cfg = run.config
    url = cfg.redis or os.environ.get("RAMPART_REDIS", "")
    if url:
        from proxy.shared.link import Link
        from proxy.shared.lists import SharedLists

        try:
            link = Link(url, prefix=cfg.redis_prefix, timeout=cfg.redis_timeout, serving=False)
        except ValueError as e:
            store.close()
            raise ConfigError(f"the Redis URL is not usable: {e}") from None
        store.share(SharedLists(link, store, "cli", run.existing_data_dir()))
    return store


pass_run = click.make_pass_decorator(Run, ensure=True)
"""Hand the run's :class:`Run` to a command as its first argument."""


def _set_flag(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    assert param.name is not None
    ctx.ensure_object(Run).flags[param.name] = value
    return value


def _set_config_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    ctx.ensure_object(Run).config_file = value
    return value


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.ensure_object(Run).as_json = value
    return value


def config_flag(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """An option whose value is a config key's (its parameter name): kept in ``Run.flags``."""
    return click.option(*decls, expose_value=False, callback=_set_flag, **attrs)


def config_file_option(help: str) -> Callable[[F], F]:
    """``--config FILE`` (or $RAMPART_CONFIG), kept as ``Run.config_file``."""
    return click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
                        envvar="RAMPART_CONFIG", help=help, expose_value=False,
                        callback=_set_config_file)


def json_option(help: str) -> Callable[[F], F]:
    """``--json``, kept as ``Run.as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help, expose_value=False,
                        callback=_set_json)


data_dir_option = config_flag(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), envvar="RAMPART_DATA_DIR",
    default=None, help="Data directory (default: $RAMPART_DATA_DIR or ~/.local/share/rampart).",
)
"""``--data-dir`` (or $RAMPART_DATA_DIR): config key data_dir."""

log_level_option = config_flag(
    "--log-level", type=LOG_LEVELS,
    help=f"How much to log on standard error (default {config_mod.default('log_level')}).",
)
"""``--log-level``: config key log_level."""


def door_options(fn: F, data_dir: Callable[[Any], Any] = data_dir_option) -> F:
    """Options shared by `serve` and `cloud`, each mapping to a config key (``data_dir``: the
    command's own --data-dir option, since the cloud's default folder is not the appliance's)."""
    for decorator in reversed([
        config_file_option("TOML config file (see `rampart config`)."),
        data_dir,
        config_flag("--listen",
                    help=f"Address the doors listen on (default {config_mod.default('listen')}: "
                         "every IPv4 address; 127.0.0.1 for this machine only, :: for IPv6 too)."),
        config_flag("--tls-name", "tls_names", multiple=True,
                    help="Extra name or address for the HTTPS certificate (repeatable)."),
        config_flag("--pattern", "pattern_dir", type=click.Path(path_type=Path, file_okay=False),
                    help="Serve this pattern directory instead of the data directory's."),
        log_level_option,
        config_flag("--log-format", type=click.Choice(list(config_mod.LOG_FORMATS)),
                    help="Standard-error log lines as text or json, one object a line (default "
                         f"{config_mod.default('log_format')})."),
        config_flag("--syslog", envvar="RAMPART_SYSLOG",
                    help="Also send log lines to syslog: udp://HOST[:514], tcp://HOST[:514] or a "
                         "local socket such as /dev/log (facility: config key syslog_facility)."),
    ]):
        fn = decorator(fn)
    return fn


def door_url(scheme: str, listen: str, port: int) -> str:
    """A door's address as it listens, and when that is every address, how to reach it here:
    ``http://0.0.0.0:8080 (every address; here http://127.0.0.1:8080)``."""
    if listen in ("0.0.0.0", "", "::"):
        here = "[::1]" if listen == "::" else "127.0.0.1"
        shown = "[::]" if listen == "::" else "0.0.0.0"
        return f"{scheme}://{shown}:{port} (every address; here {scheme}://{here}:{port})"
    host = f"[{listen}]" if ":" in listen else listen
    return f"{scheme}://{host}:{port}"


def say_error(message: str, exit_code: int) -> NoReturn:
    """Print ``rampart: error: MESSAGE`` on standard error and exit with ``exit_code``."""
    click.echo(f"rampart: error: {message}", err=True)
    sys.exit(exit_code)


def fail_cleanly(fn: F) -> F:
    """Turn a RampartError (certificate errors included) into one clear line and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RampartError as e:
            say_error(e.message, e.exit_code)

    return wrapper  # type: ignore[return-value]


def setup_logging(level: str, fmt: str = "text", *, syslog: config_mod.Config | None = None) -> None:
    """Log to standard error at ``level`` (a log_level value; unknown names mean info), as
    text lines or, with ``fmt`` json (config key log_format), one JSON object a line; and
    to syslog as the ``syslog`` Config's keys say (``proxy.logs.syslog``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from proxy.logs.jsonlog import json_formatter

        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    if syslog is not None and syslog.syslog:
        from proxy.logs import syslog as forwarding

        forwarding.configure(syslog)
        atexit.register(forwarding.configure, None)  # what is queued is sent before exit


def run_async(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` on uvloop; ``stop`` is set on SIGINT/SIGTERM."""
    import uvloop

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    uvloop.run(runner())
