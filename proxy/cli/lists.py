"""``rampart lists``: edit, show, test, import, export and audit the approved/blocked lists.

The lists are a SQLite store in the data directory (``proxy.decide.lists``); a server
running on it sees a change within ``lists_poll`` seconds. Every command takes the data
directory from ``--data-dir`` or the config file (``--config``) and refuses one that does
not exist, ``lists add`` included: entries written into a mistyped directory would be read
by no server, so the administrator would believe something blocked that is not. Changes
are audited as made by the user running the command, from ``cli``.

With ``--server`` (``proxy.cli.remote``) every command works on a running appliance
through its admin API instead (``proxy.cli.remote_lists.RemoteLists`` stands in for the
store), checks its input the same way first and prints the same output.
"""

from __future__ import annotations

import json
import sys
import time
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
    open_list_store,
    pass_run,
    say_error,
)
from proxy.cli.remote import remote_for, remote_options
from proxy.errors import ConfigError, ListError, ProtocolError


@click.group("lists")
def lists_group() -> None:
    """Edit the approved/blocked lists (a running server sees changes within seconds)."""


def _store(run: Run, *local: str) -> Any:
    """The appliance's lists through its API with --server, else the list store of the data
    directory, which must exist (see the module docstring). ``local``: options --server
    conflicts with (see ``remote_for``)."""
    remote = remote_for(run, *local)
    if remote is not None:
        from proxy.cli.remote_lists import RemoteLists

        return RemoteLists(remote)
    return open_list_store(run)


def _kind(kind: str | None) -> Any:
    from proxy.decide.lists import EntryKind

    return EntryKind(kind) if kind else None


def _which(blocked: bool, approved: bool, *, required: bool = True) -> Any:
    """The list the flags name (None when neither is given and none is required)."""
    from proxy.decide.lists import ListName

    if blocked and approved:
        raise ConfigError("--blocked and --approved conflict: a value is on one list at a time; "
                          "give one of them")
    if not (blocked or approved):
        if required:
            raise ConfigError("say which list: --blocked or --approved")
        return None
    return ListName.BLOCKED if blocked else ListName.APPROVED


KINDS = ["hash", "domain", "url", "keyword", "regex"]
KIND = click.Choice(KINDS)
KIND_HELP = ("Take every value as this kind instead of telling it from the form (keyword and "
             "regex are always given; also stores a value refused as a likely slip, e.g. --kind domain).")
config_option = config_file_option("TOML config file whose data_dir is used (see `rampart config`).")
blocked_option = click.option("--blocked", is_flag=True, help="The blocked list.")
approved_option = click.option("--approved", is_flag=True, help="The approved list.")


@lists_group.command("add")
@config_option
@data_dir_option
@remote_options
@blocked_option
@approved_option
@click.option("--kind", type=KIND, help=KIND_HELP)
@click.option("--client", "clients", multiple=True, metavar="CIDR",
              help="Apply only to clients in this network (repeatable; default: every client).")
@click.option("--expires", metavar="WHEN",
              help="Stop matching after a duration (30m, 12h, 7d, 2w) or at an ISO time (2026-03-01T12:00Z).")
@click.option("--note", default="", help="A note stored with the rules.")
@click.argument("values", nargs=-1, required=True)
@pass_run
@fail_cleanly
def lists_add(run: Run, blocked: bool, approved: bool, kind: str | None, clients: tuple[str, ...],
              expires: str | None, note: str, values: tuple[str, ...]) -> None:
    """Add VALUES (hex digests, domains, URL prefixes, keywords, regexes) to a list.

    The kind is told from the form: a 32/40/64-digit hex string is a file hash,
    a value with a scheme or a path is a URL prefix, anything else a domain
    (which also covers its subdomains) or an IP address. A value that looks like
    a slip (a hash with digits missing, a number, an IP range) is refused with a
    hint; --kind stores it as given. A keyword matches URLs containing it (any
    case); a regex (RE2 syntax) is searched in the canonical URL, scheme included.
    Adding a value already on the list updates its note, clients and expiry.
    """
    from proxy.decide.list_rules import parse_clients, parse_expiry
    from proxy.decide.lists import classify, local_actor

    name = _which(blocked, approved)
    entries = [classify(v, _kind(kind)) for v in values]
    parse_clients(clients)  # checked before the store is opened
    when = parse_expiry(expires, time.time()) if expires else None
    store = _store(run)
    try:
        for message in store.add(name, entries, note=note, clients=clients or None, expires=when,
                                 actor=local_actor()):
            click.echo(message)
    finally:
        store.close()


@lists_group.command("remove")
@config_option
@data_dir_option
@remote_options
@click.option("--kind", type=KIND, help=KIND_HELP)
@click.argument("values", nargs=-1, required=True)
@pass_run
@fail_cleanly
def lists_remove(run: Run, kind: str | None, values: tuple[str, ...]) -> None:
    """Remove VALUES from whichever list holds them."""
    from proxy.decide.lists import classify, local_actor

    entries = [classify(v, _kind(kind)) for v in values]
    store = _store(run)
    try:
        n = store.remove(entries, actor=local_actor())
    finally:
        store.close()
    click.echo(f"removed {n} of {len(entries)}")
    if n < len(entries):
        sys.exit(1)


@lists_group.command("test")
@config_option
@data_dir_option
@remote_options
@config_flag("--pattern", "pattern_dir",
             type=click.Path(path_type=Path, file_okay=False, exists=True),
             help="Test against this pattern directory instead of the data directory's.")
@click.option("--client", metavar="ADDR",
              help="As asked by this client address (rules scoped to other networks do not apply).")
@click.argument("urls", nargs=-1, required=True)
@pass_run
@fail_cleanly
def lists_test(run: Run, client: str | None, urls: tuple[str, ...]) -> None:
    """Explain which list rule or pattern entry decides each URL, and why."""
    from proxy.decide.explain import explain_url
    from proxy.decide.list_match import client_ip
    from proxy.serve.app import sample_sources
    from proxy.serve.keeper import PatternKeeper
    from proxy.wire import protocol

    for url in urls:  # before anything is opened: a bad URL is a wrong command (exit 2)
        try:
            protocol.parse_url(url, protocol.Limits())
        except ProtocolError as e:
            raise ConfigError(f"{e.message}; give a URL such as http://example.test/page") from None
    if client is not None and client_ip(client) is None:
        raise ConfigError(f"--client {client!r} is not an IP address (e.g. 10.1.2.3 or 2001:db8::7)")
    remote = remote_for(run, "pattern_dir")
    if remote is not None:
        from proxy.cli.remote_lists import test_urls

        explained, version = test_urls(remote, urls, client)
        for i, lines in enumerate(explained):
            if i:
                click.echo()
            for line in lines:
                click.echo(line)
        click.echo(f"(pattern {version})")
        return
    cfg = run.config
    store = _store(run)
    patterns = PatternKeeper(cfg, sample_sources("appliance")).open()
    try:
        lists = store.snapshot()
        for i, url in enumerate(urls):
            if i:
                click.echo()
            for line in explain_url(url, lists, patterns, client).lines():
                click.echo(line)
        click.echo(f"(pattern {patterns.version})")
    finally:
        patterns.close()
        store.close()


@lists_group.command("show")
@config_option
@data_dir_option
@remote_options
@blocked_option
@approved_option
@click.option("--kind", type=KIND, help="Only rules of this kind.")
@json_option("Print JSON.")
@pass_run
@fail_cleanly
def lists_show(run: Run, blocked: bool, approved: bool, kind: str | None) -> None:
    """Show both lists (or one): each rule's clients, expiry, who added it and when, note."""
    name = _which(blocked, approved, required=False)
    store = _store(run)
    try:
        entries = [e for e in store.entries(name) if kind is None or e.kind.value == kind]
    finally:
        store.close()
    now = time.time()
    if run.as_json:
        click.echo(json.dumps([_shown_json(e, now) for e in entries], indent=2))
        return
    if not entries:
        click.echo("both lists are empty" if name is None and kind is None else "no rules")
    for e in entries:
        click.echo(_shown_line(e, now))


@lists_group.command("edit")
@config_option
@data_dir_option
@remote_options
@click.option("--blocked", is_flag=True, help="Move the rule to the blocked list.")
@click.option("--approved", is_flag=True, help="Move the rule to the approved list.")
@click.option("--kind", type=KIND, help="The rule's kind, when its form does not tell it (keyword, regex).")
@click.option("--note", help="The new note ('' clears it).")
@click.option("--client", "clients", multiple=True, metavar="CIDR",
              help="Apply only to clients in this network from now on (repeatable; replaces the rule's).")
@click.option("--every-client", is_flag=True, help="Apply to every client again.")
@click.option("--expires", metavar="WHEN",
              help="A new expiry: a duration (30m, 12h, 7d, 2w), an ISO time, or never.")
@json_option("Print the rule as JSON (as `lists show --json` does).")
@click.argument("value")
@pass_run
@fail_cleanly
def lists_edit(run: Run, blocked: bool, approved: bool, kind: str | None, note: str | None,
               clients: tuple[str, ...], every_client: bool, expires: str | None, value: str) -> None:
    """Change the rule for VALUE in place: its list, note, client networks or expiry.

    What is not given stays as it is; the rule keeps who added it and when. Prints the
    rule as `lists show` does. A value no list holds is refused (exit 2).
    """
    from proxy.decide.list_rules import classify, parse_clients, parse_expiry
    from proxy.decide.lists import KEEP, local_actor

    to = _which(blocked, approved, required=False)
    if clients and every_client:
        raise ConfigError("--client and --every-client conflict: give one of them")
    if to is None and note is None and not clients and not every_client and expires is None:
        raise ConfigError("say what to change: --blocked or --approved, --note, --client, "
                          "--every-client or --expires")
    entry_kind, value = classify(value, _kind(kind))
    scope = list(parse_clients(clients)) if clients else [] if every_client else None
    when: Any = KEEP if expires is None else None if expires.strip().lower() == "never" else (
        parse_expiry(expires, time.time()))
    store = _store(run)
    try:
        entry = store.edit(entry_kind, value, to=to, note=note,
                           clients=None if scope is None else [str(n) for n in scope], expires=when,
                           actor=local_actor())
    finally:
        store.close()
    now = time.time()
    click.echo(json.dumps(_shown_json(entry, now), indent=2) if run.as_json else _shown_line(entry, now))


def _shown_line(e: Any, now: float) -> str:
    from proxy.decide.list_rules import clients_text, iso_time

    parts = [f"{e.list.value:<9} {e.kind.value:<7} {e.value}"]
    if e.clients:
        parts.append(f"clients {clients_text(e.clients)}")
    if e.expires is not None:
        parts.append(f"{'EXPIRED' if e.expired(now) else 'expires'} {iso_time(e.expires)}")
    if e.added_by or e.created:
        parts.append(f"added {iso_time(e.created)}" + (f" by {e.added_by}" if e.added_by else ""))
    return "  ".join(parts) + (f"  # {e.note}" if e.note else "")


def _shown_json(e: Any, now: float) -> dict[str, Any]:
    from proxy.decide.list_rules import iso_time

    return {"list": e.list.value, "kind": e.kind.value, "value": e.value, "note": e.note,
            "clients": [str(n) for n in e.clients],
            "expires": iso_time(e.expires) if e.expires is not None else None, "expired": e.expired(now),
            "added": iso_time(e.created), "added_by": e.added_by, "origin": e.origin}


@lists_group.command("import")
@config_option
@data_dir_option
@remote_options
@blocked_option
@approved_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "plain"]),
              help="The file's format (default: from its extension, .csv or .json, else plain).")
@click.option("--kind", type=KIND, help="Plain lists: every line is a value of this kind.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@pass_run
@fail_cleanly
def lists_import(run: Run, blocked: bool, approved: bool, fmt: str | None, kind: str | None,
                 file: Path) -> None:
    """Import the rules in FILE: all of them, or none when any row is bad.

    CSV and JSON hold every field (as `lists export` writes them); a row without a
    list goes on --blocked or --approved. A plain list holds one value a line (a
    hash, domain or URL prefix; # starts a comment) and needs one of them.
    """
    from proxy.cli.remote_lists import RemoteLists
    from proxy.decide import list_io
    from proxy.decide.lists import local_actor
    from proxy.files import read_bounded

    form = list_io.format_of(file, fmt)
    name = _which(blocked, approved, required=form == "plain")
    if kind is not None and form != "plain":
        raise ConfigError("--kind is for plain lists; CSV and JSON rows say their kind")
    store = _store(run)
    try:
        try:
            data = read_bounded(file, list_io.MAX_FILE_BYTES, error=ListError)
        except OSError as e:
            raise ListError(f"cannot read {file}: {e.strerror or e}") from None
        try:  # checked here with --server too: the same lines, naming this file
            loaded = list_io.parse(data, file.name, form, default_list=name, kind=_kind(kind),
                                   now=time.time())
        except list_io.BadRows as e:
            for line in e.lines:
                click.echo(line, err=True)
            more = f" (stopped after {len(e.problems)})" if e.more else ""
            say_error(f"{file}: {len(e.problems)} bad row(s){more}; nothing was imported", e.exit_code)
        if isinstance(store, RemoteLists):  # the appliance reads the file's text itself
            result = store.import_text(data.decode("utf-8-sig"), form, name=name, kind=_kind(kind))
        else:
            result = store.import_entries(loaded.entries, source=file.name, complete=loaded.complete,
                                          actor=local_actor())
    finally:
        store.close()
    click.echo(result.message(file.name))


@lists_group.command("export")
@config_option
@data_dir_option
@remote_options
@blocked_option
@approved_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="CSV or JSON, every field (what `lists import` reads back).")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write this file (0600) instead of standard output.")
@pass_run
@fail_cleanly
def lists_export(run: Run, blocked: bool, approved: bool, fmt: str, output: Path | None) -> None:
    """Export both lists (or one), expired rules included."""
    from proxy.decide import list_io
    from proxy.files import write_atomic

    name = _which(blocked, approved, required=False)
    store = _store(run)
    try:
        text = list_io.export(store.entries(name), fmt)
    finally:
        store.close()
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        write_atomic(output, text.encode("utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot write {output}: {e.strerror or e}") from None
    click.echo(f"exported to {output}")


@lists_group.command("audit")
@config_option
@data_dir_option
@remote_options
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="How many entries, newest first.")
@click.option("--value", help="Only changes to this value (as stored: normalised).")
@json_option("Print JSON.")
@pass_run
@fail_cleanly
def lists_audit(run: Run, limit: int, value: str | None) -> None:
    """Show who changed the lists, when, from where and what."""
    store = _store(run)
    try:
        found = store.audit(limit=limit, value=value)
    finally:
        store.close()
    if run.as_json:
        click.echo(json.dumps([a.as_json() for a in found], indent=2))
        return
    if not found:
        click.echo("no changes recorded")
    for a in found:
        click.echo(a.line())
