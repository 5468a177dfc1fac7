"""``rampart cloud``: the reference cloud, the same engine run authoritative over HTTPS only."""

from __future__ import annotations

import asyncio

import click

from proxy.cli.common import (
    Run,
    door_options,
    fail_cleanly,
    pass_run,
    run_async,
    setup_logging,
    shown_host,
)


@click.command()
@door_options
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
    from proxy.serve.app import App

    # What makes it the cloud, set ahead of the door flags.
    run.flags = {"query_port": 0, "query_tls_port": port, "authoritative": True, **run.flags}
    cfg = run.config
    setup_logging(cfg.log_level)

    async def serve(stop: asyncio.Event) -> None:
        app = App(cfg, authoritative=True, sample="cloud")
        await app.start()
        click.echo(
            f"rampart cloud: https://{shown_host(cfg.listen)}:{app.ports().get('https')} "
            f"(pattern {app.engine.version}, CA {cfg.data_dir / 'ca.pem'})",
            err=True,
        )
        try:
            await stop.wait()
        finally:
            await app.stop()

    run_async(serve)

