"""``rampart appliance``: transparent-mode network setup.

The rules are built by the pure functions of ``appliance.netrules``; this module runs
them (or, with ``--dry-run``, prints them: a dry run needs neither nft nor iptables on
this machine). The appliance's config file is ``rampart config --appliance``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from proxy import config as config_mod
from proxy.cli.common import Run, config_file_option, fail_cleanly, pass_run
from proxy.errors import ConfigError, RampartError

if TYPE_CHECKING:
    from appliance.netrules import Backend, Plan


@click.group("appliance")
def appliance_group() -> None:
    """Deployment helpers: transparent-mode network rules. The appliance's config file is
    what `rampart config --appliance` prints."""



def _run(argv: Sequence[str], stdin: str | None) -> tuple[int, str]:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return 127, f"{argv[0]} is not installed"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]} did not finish within 60 s"
    return done.returncode, done.stderr


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value + "\n")


def _transparent_port(run: Run, port: int | None) -> int:
    if port is not None:
        return port
    configured = run.config.transparent_port
    if not configured:
        raise ConfigError("the transparent door is off (transparent_port = 0); give --port")
    return configured


def _execute(plan: Plan, dry_run: bool) -> None:
    """Print the plan (a dry run, which needs none of the tools it names), or run it; a tool
    missing here is refused before the first step, so nothing is half done."""
    from appliance import netrules

    missing = netrules.missing_tools(plan.backend, shutil.which)
    install = (f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed on"
               f" this machine: install {netrules.PACKAGES[plan.backend]}")
    if dry_run:
        click.echo(f"# backend: {plan.backend.value}")
        for step in plan.steps:
            click.echo(step.shown())
        for note in plan.notes:
            click.echo(f"# {note}")
        if missing:
            click.echo(f"# {install} before running this without --dry-run")
        return
    if missing:
        other = "iptables" if plan.backend.value == "nft" else "nft"
        raise ConfigError(f"{install} (or use --backend {other})")
    try:
        for line in netrules.apply(plan, _run, _write_sysctl):
            click.echo(f"done: {line.splitlines()[0]}")
    except RuntimeError as e:
        raise RampartError(f"{e} (transparent setup needs root or CAP_NET_ADMIN)") from None
    for note in plan.notes:
        click.echo(note)


BACKEND = click.option(
    "--backend", type=click.Choice(["auto", "nft", "iptables"]), default="auto", show_default=True,
    help="Firewall tool: auto is nftables, or iptables where only it is installed (a dry run "
         "needs neither).",
)


def _interface(name: str) -> str:
    """The interface name, checked before anything else: it ends up in rules and commands."""
    from appliance import netrules

    try:
        return netrules.check_interface(name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _backend(wanted: str) -> Backend:
    from appliance import netrules

    return netrules.choose_backend(shutil.which, wanted)


@appliance_group.command("setup")
@click.option("--transparent", is_flag=True,
              help="Set up transparent mode (the only mode that needs network rules).")
@click.option("--interface", required=True, help="The interface facing the products.")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Transparent door port (default: transparent_port from --config, else "
                   f"{config_mod.default('transparent_port')}).")
@config_file_option("Take the transparent port from this config file.")
@BACKEND
@click.option("--dry-run", is_flag=True,
              help="Print the commands and rules; change nothing (nft and iptables need not be "
                   "installed).")
@pass_run
@fail_cleanly
def appliance_setup(run: Run, transparent: bool, interface: str, port: int | None, backend: str,
                    dry_run: bool) -> None:
    """Turn on forwarding and redirect products' TCP 80/443 arriving on INTERFACE to the
    transparent door. The appliance's own upstream traffic is never redirected (the rule
    is in prerouting, for that interface only)."""
    from appliance import netrules

    if not transparent:
        raise ConfigError("say which mode to set up: --transparent (explicit proxy mode needs no rules)")
    _interface(interface)
    try:
        plan = netrules.setup_plan(
            interface, port=_transparent_port(run, port), backend=_backend(backend)
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _execute(plan, dry_run)


@appliance_group.command("teardown")
@click.option("--interface", help="The interface given to setup (needed for iptables).")
@BACKEND
@click.option("--dry-run", is_flag=True,
              help="Print the commands; change nothing (nft and iptables need not be installed).")
@fail_cleanly
def appliance_teardown(interface: str | None, backend: str, dry_run: bool) -> None:
    """Remove the transparent-mode redirect rules (forwarding is left as it is)."""
    from appliance import netrules

    if interface is not None:
        _interface(interface)
    try:
        plan = netrules.teardown_plan(interface, backend=_backend(backend))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _execute(plan, dry_run)
