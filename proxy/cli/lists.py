"""``rampart lists``: edit, show and test the approved/blocked lists of a data directory.

The lists are a SQLite store in the data directory (``proxy.decide.lists``); a server
running on it sees a change within ``lists_poll`` seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from proxy.cli.common import Run, config_flag, data_dir_option, fail_cleanly, json_option, pass_run
from proxy.errors import ConfigError


@click.group("lists")
def lists_group() -> None:
    """Edit the approved/blocked lists (a running server sees changes within seconds)."""


def _store(data_dir: Path) -> Any:
    from proxy.decide.lists import ListStore

    return ListStore.open(data_dir)


def _kind(kind: str | None) -> Any:
    from proxy.decide.lists import EntryKind

    return EntryKind(kind) if kind else None


KIND = click.Choice(["hash", "domain", "url"])


@lists_group.command("add")
@data_dir_option
@click.option("--blocked", "which", flag_value="blocked", help="Add to the blocked list.")
@click.option("--approved", "which", flag_value="approved", help="Add to the approved list.")
@click.option("--kind", type=KIND, help="Force the kind instead of telling it from the form.")
@click.option("--note", default="", help="A note stored with the entries.")
@click.argument("values", nargs=-1, required=True)
@pass_run
@fail_cleanly
def lists_add(run: Run, which: str | None, kind: str | None, note: str, values: tuple[str, ...]) -> None:
    """Add VALUES (hex digests, domains, URL prefixes) to a list.

    The kind is told from the form: a 32/40/64-digit hex string is a file hash,
    a value with a scheme or a path is a URL prefix, anything else a domain
    (which also covers its subdomains).
    """
    from proxy.decide.lists import ListName, classify

    if which is None:
        raise ConfigError("say which list: --blocked or --approved")
    entries = [classify(v, _kind(kind)) for v in values]
    store = _store(run.data_dir)
    try:
        for message in store.add(ListName(which), entries, note=note):
            click.echo(message)
    finally:
        store.close()


@lists_group.command("remove")
@data_dir_option
@click.option("--kind", type=KIND, help="Force the kind instead of telling it from the form.")
@click.argument("values", nargs=-1, required=True)
@pass_run
@fail_cleanly
def lists_remove(run: Run, kind: str | None, values: tuple[str, ...]) -> None:
    """Remove VALUES from whichever list holds them."""
    from proxy.decide.lists import classify

    entries = [classify(v, _kind(kind)) for v in values]
    store = _store(run.data_dir)
    try:
        n = store.remove(entries)
    finally:
        store.close()
    click.echo(f"removed {n} of {len(entries)}")
    if n < len(entries):
        sys.exit(1)


@lists_group.command("test")
@data_dir_option
@config_flag("--pattern", "pattern_dir",
             type=click.Path(path_type=Path, file_okay=False, exists=True),
             help="Test against this pattern directory instead of the data directory's.")
@click.argument("urls", nargs=-1, required=True)
@pass_run
@fail_cleanly
def lists_test(run: Run, urls: tuple[str, ...]) -> None:
    """Explain which list rule or pattern entry decides each URL, and why."""
    from proxy.decide.explain import explain_url
    from proxy.serve.app import sample_sources
    from proxy.serve.keeper import PatternKeeper

    cfg = run.config
    store = _store(cfg.data_dir)
    patterns = PatternKeeper(cfg, sample_sources("appliance")).open()
    try:
        lists = store.snapshot()
        for i, url in enumerate(urls):
            if i:
                click.echo()
            for line in explain_url(url, lists, patterns).lines():
                click.echo(line)
        click.echo(f"(pattern {patterns.version})")
    finally:
        patterns.close()
        store.close()


@lists_group.command("show")
@data_dir_option
@json_option("Print JSON.")
@pass_run
@fail_cleanly
def lists_show(run: Run) -> None:
    """Show both lists."""
    store = _store(run.data_dir)
    try:
        entries = store.entries()
    finally:
        store.close()
    if run.as_json:
        click.echo(json.dumps([
            {"list": e.list.value, "kind": e.kind.value, "value": e.value, "note": e.note}
            for e in entries
        ], indent=2))
        return
    if not entries:
        click.echo("both lists are empty")
    for e in entries:
        click.echo(f"{e.list.value:<9} {e.kind.value:<7} {e.value}" + (f"  # {e.note}" if e.note else ""))
