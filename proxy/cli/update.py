"""``rampart update now`` and ``rampart pattern rollback``: the update commands.

Both work on a data directory; a server running on it notices the new
``current`` version within ``pattern_poll`` seconds and swaps to it live.
``update now`` runs exactly what the server's schedule runs (``Updater.update_once``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from proxy.cli import cli, data_dir_option, fail_cleanly, load_config, pattern, setup_logging

EXIT_UPDATE_FAILED = 3


@cli.group("update")
def update_group() -> None:
    """Take pattern updates from the configured update source."""


@update_group.command("now")
@data_dir_option
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              envvar="RAMPART_CONFIG", help="TOML config file (the one `serve` uses).")
@click.option("--update-source", help="Update source URL (config key update_source).")
@click.option("--update-key", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Ed25519 public key manifests must be signed with (config key update_key).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@fail_cleanly
def update_now(config_file: Path | None, as_json: bool, **flags: Any) -> None:
    """Run one update of every pattern into the data directory, now.

    Prints the version installed, the path taken (diff or full), the bytes
    fetched and the time taken. Exits 0 when the patterns are current
    (installed or already up to date), 3 with the reason when the update
    failed (nothing is changed then), 2 for a configuration error.
    """
    from proxy.serve.keeper import make_updater
    from proxy.updates.store import PatternStore

    cfg = load_config(config_file, **flags)
    setup_logging(cfg.log_level if flags.get("log_level") else "error")  # the result is printed
    store = PatternStore.open(cfg.data_dir / "patterns", keep=cfg.keep_versions)
    updater, fetcher = make_updater(cfg, store)

    async def once() -> Any:
        try:
            return await updater.update_once()
        finally:
            await fetcher.close()

    result = asyncio.run(once())
    if as_json:
        click.echo(json.dumps(result.to_json(), sort_keys=True))
    else:
        click.echo(result.line(), err=not result.ok)
    if not result.ok:
        sys.exit(EXIT_UPDATE_FAILED)


@pattern.command("rollback")
@data_dir_option
@fail_cleanly
def pattern_rollback(data_dir: Path | None) -> None:
    """Go back to the pattern version installed before the current one.

    The version rolled back from is not installed again by scheduled updates;
    the next newer published version is. A running server swaps within seconds.
    """
    from proxy.config import default_data_dir
    from proxy.updates.store import PatternStore

    root = (data_dir or default_data_dir()) / "patterns"
    store = PatternStore.open(root)
    before = store.current_version()
    after = store.rollback()
    click.echo(f"rolled back from {before} to {after}")


@pattern.command("versions")
@data_dir_option
@fail_cleanly
def pattern_versions(data_dir: Path | None) -> None:
    """List the pattern versions kept in the data directory (the current one marked *)."""
    from proxy.config import default_data_dir
    from proxy.updates.store import PatternStore

    store = PatternStore.open((data_dir or default_data_dir()) / "patterns")
    current, refused = store.current_version(), store.refused()
    for v in store.versions():
        mark = "*" if v == current else " "
        click.echo(f"{mark} {v}" + ("  (rolled back)" if v in refused else ""))
