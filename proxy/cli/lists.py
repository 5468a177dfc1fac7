"""``rampart lists``: edit, show and test the approved/blocked lists of a data directory.

The lists are a SQLite store in the data directory (``proxy.decide.lists``); a server
running on it sees a change within ``lists_poll`` seconds. Every command takes the data
directory from ``--data-dir`` or the config file (``--config``) and refuses one that does
not exist, ``lists add`` included: entries written into a mistyped directory would be read
by no server, so the administrator would believe something blocked that is not.
"""

from __future__ import annotations

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
    pass_run,
)
from proxy.errors import ConfigError, ProtocolError


@click.group("lists")
def lists_group() -> None:
    """Edit the approved/blocked lists (a running server sees changes within seconds)."""


def _store(run: Run) -> Any:
    """The list store of the run's data directory, which must exist (see the module docstring)."""
    from proxy.decide.lists import ListStore

    return ListStore.open(run.existing_data_dir())


def _kind(kind: str | None) -> Any:
    from proxy.decide.lists import EntryKind

    return EntryKind(kind) if kind else None


KIND = click.Choice(["hash", "domain", "url"])
KIND_HELP = ("Take every value as this kind instead of telling it from the form "
             "(also stores a value refused as a likely slip, e.g. --kind domain).")
config_option = config_file_option("TOML config file whose data_dir is used (see `rampart config`).")


@lists_group.command("add")
@config_option
@data_dir_option
@click.option("--blocked", is_flag=True, help="Add to the blocked list.")
@click.option("--approved", is_flag=True, help="Add to the approved list.")
@click.option("--kind", type=KIND, help=KIND_HELP)
@click.option("--note", default="", help="A note stored with the entries.")
@click.argument("values", nargs=-1, required=True)
@pass_run
@fail_cleanly
def lists_add(run: Run, blocked: bool, approved: bool, kind: str | None, note: str,
              values: tuple[str, ...]) -> None:
    """Add VALUES (hex digests, domains, URL prefixes) to a list.

    The kind is told from the form: a 32/40/64-digit hex string is a file hash,
    a value with a scheme or a path is a URL prefix, anything else a domain
    (which also covers its subdomains) or an IP address. A value that looks like
    a slip (a hash with digits missing, a number, an IP range) is refused with a
    hint; --kind stores it as given.
    """
    from proxy.decide.lists import ListName, classify

    if blocked and approved:
        raise ConfigError("--blocked and --approved conflict: a value is on one list at a time; "
                          "give one of them")
    if not (blocked or approved):
        raise ConfigError("say which list: --blocked or --approved")
    entries = [classify(v, _kind(kind)) for v in values]
    which = "blocked" if blocked else "approved"
    store = _store(run)
    try:
        for message in store.add(ListName(which), entries, note=note):
            click.echo(message)
    finally:
        store.close()


@lists_group.command("remove")
@config_option
@data_dir_option
@click.option("--kind", type=KIND, help=KIND_HELP)
@click.argument("values", nargs=-1, required=True)
@pass_run
@fail_cleanly
def lists_remove(run: Run, kind: str | None, values: tuple[str, ...]) -> None:
    """Remove VALUES from whichever list holds them."""
    from proxy.decide.lists import classify

    entries = [classify(v, _kind(kind)) for v in values]
    store = _store(run)
    try:
        n = store.remove(entries)
    finally:
        store.close()
    click.echo(f"removed {n} of {len(entries)}")
    if n < len(entries):
        sys.exit(1)


@lists_group.command("test")
@config_option
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
    from proxy.wire import protocol

    for url in urls:  # before anything is opened: a bad URL is a wrong command (exit 2)
        try:
            protocol.parse_url(url, protocol.Limits())
        except ProtocolError as e:
            raise ConfigError(f"{e.message}; give a URL such as http://example.test/page") from None
    cfg = run.config
    store = _store(run)
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
@config_option
@data_dir_option
@json_option("Print JSON.")
@pass_run
@fail_cleanly
def lists_show(run: Run) -> None:
    """Show both lists."""
    store = _store(run)
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
