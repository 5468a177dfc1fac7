"""``rampart admin``: the console's users and API keys, on a data directory directly.

Works on ``DATA_DIR/console.sqlite`` (``proxy.console``) whether or not a server runs
there; a running server sees every change on the next request. Every command takes the
data directory from ``--data-dir`` or the config file (``--config``) and refuses one
that does not exist, so a mistyped directory never gets accounts nobody serves.
Passwords are prompted twice (hidden) or read from standard input with
``--password-stdin``, never taken as an argument (it would be in the shell history and
the process list).
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from proxy.cli.common import (
    Run,
    config_file_option,
    data_dir_option,
    fail_cleanly,
    json_option,
    pass_run,
)

F = TypeVar("F", bound=Callable[..., Any])
ROLE = click.Choice(["admin", "operator", "viewer"])
ROLE_HELP = "admin: everything; operator: also edit lists and run updates; viewer: read only."


def where(fn: F) -> F:
    """--config and --data-dir, which every admin command takes."""
    fn = data_dir_option(fn)
    return config_file_option("TOML config file whose data_dir is used (see `rampart config`).")(fn)


password_stdin = click.option("--password-stdin", is_flag=True,
                              help="Read the password from the first line of standard input "
                                   "instead of prompting.")


@contextmanager
def _accounts(run: Run) -> Iterator[Any]:
    """The accounts of the run's data directory, which must exist (see the module docstring)."""
    from proxy.console.accounts import Accounts

    accounts = Accounts.open(run.existing_data_dir())
    try:
        yield accounts
    finally:
        accounts.close()


def _read_password(from_stdin: bool) -> str:
    """A new password, checked (at least 12 characters) before anything is written."""
    from proxy.console.passwords import MAX_LENGTH, check_new_password

    if from_stdin:
        line = sys.stdin.readline(MAX_LENGTH + 2)
        password = line.removesuffix("\n").removesuffix("\r")
    else:
        password = click.prompt("New password", hide_input=True,
                                confirmation_prompt="Repeat the new password")
    return check_new_password(password)


def _when(value: str | None) -> str:
    return value or "-"


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _creator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


@click.group("admin")
def admin_group() -> None:
    """Manage the console's users and API keys in a data directory.

    The first start of `rampart serve` creates user admin with a random password
    and prints it once; `rampart admin passwd` sets a new one. Changes apply to a
    running server at once.
    """


@admin_group.command("passwd")
@where
@password_stdin
@click.argument("user", default="admin")
@pass_run
@fail_cleanly
def admin_passwd(run: Run, password_stdin: bool, user: str) -> None:
    """Set a user's password (default admin).

    Sets the password of USER and ends their browser sessions. Prompts twice, or
    reads one line from standard input with --password-stdin. A password has at
    least 12 characters. When the data directory has no admin yet,
    `passwd admin` creates user admin with this password (before the first start,
    say, so the serve banner has none to print).
    """
    from proxy.console.accounts import FIRST_ADMIN
    from proxy.console.errors import NotFound

    with _accounts(run) as accounts:
        password = _read_password(password_stdin)
        try:
            accounts.set_password(user, password)
        except NotFound:
            if user.lower() != FIRST_ADMIN or any(u.role == "admin" for u in accounts.users()):
                raise
            accounts.add_user(FIRST_ADMIN, "admin", password)
            click.echo(f"created user {FIRST_ADMIN} (admin) with this password")
            return
    click.echo(f"password of {user} changed; their browser sessions were ended")


@admin_group.group("users", invoke_without_command=True)
@where
@json_option("Print JSON.")
@pass_run
@click.pass_context
@fail_cleanly
def admin_users(ctx: click.Context, run: Run) -> None:
    """List users, or add, remove or re-role one.

    Without a subcommand, lists the users with their roles and when their
    passwords were set.
    """
    if ctx.invoked_subcommand is not None:
        return
    with _accounts(run) as accounts:
        users = accounts.users()
    if run.as_json:
        click.echo(json.dumps([u.as_dict() for u in users], indent=2))
        return
    if not users:
        click.echo("no users (`rampart serve` creates admin on its first start)")
        return
    _table([("NAME", "ROLE", "CREATED", "PASSWORD SET")] +
           [(d["name"], d["role"], d["created"], d["password_changed"]) for d in
            (u.as_dict() for u in users)])


@admin_users.command("add")
@where
@click.option("--role", type=ROLE, required=True, help=ROLE_HELP)
@password_stdin
@click.argument("name")
@pass_run
@fail_cleanly
def users_add(run: Run, role: str, password_stdin: bool, name: str) -> None:
    """Add a user with a role and a password.

    The password is prompted twice, or read with --password-stdin. A name is 1 to
    64 letters, digits and . _ @ -, unique whatever its case.
    """
    from proxy.console.store import check_name

    check_name(name, "NAME")
    with _accounts(run) as accounts:
        accounts.add_user(name, role, _read_password(password_stdin))
    click.echo(f"added user {name} ({role})")


@admin_users.command("remove")
@where
@click.argument("name")
@pass_run
@fail_cleanly
def users_remove(run: Run, name: str) -> None:
    """Remove a user and end their browser sessions.

    The last admin cannot be removed: make another user admin first.
    """
    with _accounts(run) as accounts:
        accounts.remove_user(name)
    click.echo(f"removed user {name}")


@admin_users.command("role")
@where
@click.argument("name")
@click.argument("role", type=ROLE)
@pass_run
@fail_cleanly
def users_role(run: Run, name: str, role: str) -> None:
    """Change a user's role.

    User NAME gets ROLE (admin, operator or viewer); their browser sessions take it
    at once. The last admin keeps the admin role: make another user admin first.
    """
    with _accounts(run) as accounts:
        accounts.set_role(name, role)
    click.echo(f"user {name} is now {role}")


@admin_group.group("key")
def admin_key() -> None:
    """Create, list and revoke named API keys.

    Scripts and monitoring send a key to the admin API as `Authorization: Bearer KEY`;
    a key has a role and, optionally, an expiry.
    """


@admin_key.command("create")
@where
@click.option("--name", required=True, help="A name for the key, e.g. what uses it (grafana, backup).")
@click.option("--role", type=ROLE, required=True, help=ROLE_HELP)
@click.option("--expires", "expires_days", type=int, metavar="DAYS",
              help="Days until the key stops working (1 to 3650; default never).")
@pass_run
@fail_cleanly
def key_create(run: Run, name: str, role: str, expires_days: int | None) -> None:
    """Create an API key and print it once, alone on the last line.

    Only a digest of the key is kept: copy it now (`... | tail -n 1`); a lost key
    is revoked and made again.
    """
    from proxy.console.store import when

    with _accounts(run) as accounts:
        key_id, secret = accounts.create_key(name, role, expires_days, _creator())
        expires = None if expires_days is None else when(accounts.store.now() + expires_days * 86400)
    until = f"expires {expires}" if expires else "never expires"
    click.echo(f"created API key {name} (id {key_id}, role {role}, {until}); it is shown only this once:")
    click.echo(secret)


@admin_key.command("list")
@where
@json_option("Print JSON.")
@pass_run
@fail_cleanly
def key_list(run: Run) -> None:
    """List the API keys: name, id, role, who made them, expiry and last use (never the key)."""
    import time

    with _accounts(run) as accounts:
        found = accounts.list_keys()
    now = time.time()
    shown = [k.as_dict(now) for k in found]
    if run.as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    if not shown:
        click.echo("no API keys")
        return
    _table([("NAME", "ID", "ROLE", "CREATED", "BY", "EXPIRES", "LAST USED")] + [
        (d["name"], d["id"], d["role"], d["created"], d["created_by"],
         _when(d["expires"]) + (" (expired)" if d["expired"] else ""), _when(d["last_used"]))
        for d in shown])


@admin_key.command("revoke")
@where
@click.argument("name")
@pass_run
@fail_cleanly
def key_revoke(run: Run, name: str) -> None:
    """Revoke the API key NAME (or with that id): it stops working at once."""
    with _accounts(run) as accounts:
        info = accounts.revoke_key(name)
    click.echo(f"revoked API key {info.name} (id {info.id})")
