"""``rampart cloud``: the reference cloud, the same engine run authoritative over HTTPS only."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from proxy.cli.common import (
    Run,
    config_flag,
    door_options,
    door_url,
    fail_cleanly,
    pass_run,
    run_async,
    setup_logging,
)
from proxy.config import Config, default_data_dir
from proxy.serve import startup


def _cloud_data_dir(fn: Callable[..., Any]) -> Callable[..., Any]:
    return config_flag(
        "--data-dir", type=click.Path(path_type=Path, file_okay=False),
        envvar="RAMPART_CLOUD_DATA_DIR", default=None,
        help="Data directory (default: $RAMPART_CLOUD_DATA_DIR or ~/.local/share/rampart-cloud;"
             " never an appliance's).",
    )(fn)


@click.command()
@functools.partial(door_options, data_dir=_cloud_data_dir)
@click.option("--port", type=click.IntRange(0, 65535), default=9443, show_default=True,
              help="HTTPS port of the reference cloud.")
@pass_run
@fail_cleanly
def cloud(run: Run, port: int) -> None:
    """Run the reference cloud: the same engine, authoritative, over HTTPS only.

    It never relays: what it does not know is `unknown`/`untested` from `cloud`.
    Its CA certificate is written to DATA_DIR/ca.pem for appliances to trust
    (`rampart serve --cloud https://localhost:PORT --cloud-ca DATA_DIR/ca.pem`).
    """
    # What makes it the cloud, set ahead of the door flags.
    run.flags = {"query_port": 0, "query_tls_port": port, "authoritative": True,
                 "proxy_port": 0, "transparent_port": 0, "capture_port": 0, "console_port": 0,
                 "dns_port": 0, **run.flags}
    cfg = run.config
    if run.flags.get("data_dir") is None and cfg.data_dir == default_data_dir():
        cfg = cfg.replace(data_dir=default_data_dir("cloud"))  # no folder given: the cloud's own
    setup_logging(cfg.log_level, cfg.log_format, syslog=cfg)
    with startup.checked(cfg, "cloud", lambda text: click.echo(f"rampart cloud: {text}", err=True)):
        run_async(functools.partial(_serve, cfg))


async def _serve(cfg: Config, stop: asyncio.Event) -> None:
    from proxy.serve.app import App

    app = App(cfg, authoritative=True, sample="cloud")
    await app.start()
    url = door_url("https", cfg.listen, app.ports()["https"])
    click.echo(f"rampart cloud: {url} (pattern {app.engine.version}, CA {cfg.data_dir / 'ca.pem'})",
               err=True)
    try:
        await stop.wait()
    finally:
        await app.stop()


