"""The ``rampart`` console script: the core's CLI plus ``serve``, which runs mitmproxy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from proxy.cli import cli, door_options, fail_cleanly, load_config, setup_logging


@cli.command()
@door_options
@click.option("--query-port", type=click.IntRange(0, 65535),
              help="Query door HTTP port (default 8080; 0 turns it off).")
@click.option("--query-tls-port", type=click.IntRange(0, 65535),
              help="Query door HTTPS port (default 8443; 0 turns it off).")
@click.option("--cloud", multiple=True, help="Cloud endpoint https://host:port, in priority order (repeatable).")
@click.option("--cloud-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="CA bundle to verify the cloud with (default: the system bundle).")
@fail_cleanly
def serve(config_file: Path | None, **flags: Any) -> None:
    """Run the appliance: every door on one engine, on embedded defaults.

    With no options it serves the bundled sample pattern, keeps its state in
    the data directory and creates its CA there (DATA_DIR/ca.pem is the
    certificate products should trust).
    """
    import uvloop

    from addons import master

    cfg = load_config(config_file, **flags)
    setup_logging(cfg.log_level)

    def announce(door: Any) -> None:
        app = door.app
        ports = app.ports()
        host = "127.0.0.1" if cfg.listen in ("0.0.0.0", "") else cfg.listen
        lines = [f"rampart serve: pattern {app.engine.version}, data {cfg.data_dir}"]
        if "http" in ports:
            lines.append(f"  query door  http://{host}:{ports['http']}")
        if "https" in ports:
            lines.append(f"  query door  https://{host}:{ports['https']}  (CA: {cfg.data_dir / 'ca.pem'})")
        lines.append("  cloud       " + (", ".join(cfg.cloud) or "none (unknown items come back degraded)"))
        click.echo("\n".join(lines), err=True)

    error = uvloop.run(master.run(cfg, announce))
    if error:
        click.echo(f"rampart: error: {error}", err=True)
        sys.exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
