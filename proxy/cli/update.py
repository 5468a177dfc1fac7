"""``rampart update now``: one update of every pattern into a data directory, now.

It runs exactly what the server's schedule runs (``Updater.update_once``); a server
running on the same data directory notices the new ``current`` version within
``pattern_poll`` seconds and swaps to it live. (``rampart pattern rollback`` goes
the other way; see ``proxy.cli.pattern``.) With ``--server`` (``proxy.cli.remote``) the
running appliance runs it (``POST /api/updates/now``) and the command prints its result
the same way.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from proxy.cli.common import (
    Run,
    config_file_option,
    config_flag,
    data_dir_option,
    fail_cleanly,
    json_option,
    log_level_option,
    pass_run,
    setup_logging,
)
from proxy.cli.remote import UPDATE_TIMEOUT, Remote, field_of, remote_for, remote_options
from proxy.errors import ConfigError

EXIT_UPDATE_FAILED = 1  # the operation failed (the README's exit-code table)


@click.group("update")
def update_group() -> None:
    """Take pattern updates from the configured update source."""


@update_group.command("now")
@data_dir_option
@config_file_option("TOML config file (the one `serve` uses).")
@config_flag("--update-source", help="Update source URL (config key update_source).")
@config_flag("--update-key", type=click.Path(path_type=Path, dir_okay=False, exists=True),
             help="Ed25519 public key manifests must be signed with (config key update_key).")
@remote_options
@json_option("Print the result as JSON.")
@log_level_option
@pass_run
@fail_cleanly
def update_now(run: Run) -> None:
    """Run one update of every pattern into the data directory, now.

    Prints the version installed, the path taken (diff or full), the bytes
    fetched and the time taken. Exits 0 when the patterns are current
    (installed or already up to date), 1 with the reason when the update
    failed (nothing is changed then), 2 for a configuration error (no update
    source or key, a bad flag or config value, a missing data directory). With
    --server the appliance updates itself from its own update source.
    """
    remote = remote_for(run, "update_source", "update_key")
    if remote is not None:
        _show(run, _remote_update(remote))
        return
    from proxy.serve.keeper import make_updater
    from proxy.updates.store import PatternStore

    cfg = run.config
    if not cfg.update_source:
        raise ConfigError("no update source configured (--update-source or config key update_source)")
    if cfg.update_key is None:
        raise ConfigError("no update key configured (--update-key or config key update_key)")
    run.existing_data_dir()
    # Quiet unless --log-level is given: the result is printed.
    setup_logging(cfg.log_level if run.flags.get("log_level") else "error")
    store = PatternStore.open(cfg.data_dir / "patterns", keep=cfg.keep_versions)
    updater, fetcher = make_updater(cfg, store)

    async def once() -> Any:
        try:
            return await updater.update_once()
        finally:
            await fetcher.close()

    result = asyncio.run(once())
    if cfg.query_log:  # the update log holds the updates run from here too
        _log_update(cfg.data_dir, result.to_json())
    _show(run, result)


def _show(run: Run, result: Any) -> None:
    """Print an ``UpdateResult`` (a line, or its JSON) and exit 1 when it failed."""
    if run.as_json:
        click.echo(json.dumps(result.to_json(), sort_keys=True))
    else:
        click.echo(result.line(), err=not result.ok)
    if not result.ok:
        sys.exit(EXIT_UPDATE_FAILED)


def _remote_update(remote: Remote) -> Any:
    """The appliance's update, run now (409 without an update source: exit 2), as an
    ``UpdateResult`` read back from its JSON."""
    from proxy.updates.updater import UpdateResult

    path = "/api/updates/now"
    doc = remote.post(path, {}, timeout=UPDATE_TIMEOUT)

    def get(name: str, kind: type | tuple[type, ...]) -> Any:
        return None if isinstance(doc, dict) and doc.get(name) is None and kind is not bool else (
            field_of(remote, path, doc, name, kind))

    return UpdateResult(
        ok=get("ok", bool), changed=get("changed", bool), version=get("version", str),
        path=get("path", str) or "none", bytes=get("bytes", int) or 0,
        seconds=float(get("seconds", (int, float)) or 0.0), reason=get("reason", str),
        message=get("message", str) or "", at=float(get("at", (int, float)) or 0))


def _log_update(data_dir: Path, result: dict[str, Any]) -> None:
    from proxy.errors import RampartError
    from proxy.logs.store import LogStore

    try:
        store = LogStore.open(data_dir)
        try:
            store.record_update(result)
        finally:
            store.close()
    except (RampartError, OSError) as e:  # the update happened; a log we cannot write is said
        click.echo(f"rampart: warning: the update log was not written: {e}", err=True)
