"""``rampart config``: every config key with its default and meaning, as a commented TOML file."""

from __future__ import annotations

import click

from proxy import config as config_mod


@click.command("config")
def config_cmd() -> None:
    """Print every config key with its default and meaning (a documented config file)."""
    for key, default, help_text in config_mod.describe():
        click.echo(f"# {help_text}")
        if default in ("None", "[]"):
            click.echo(f"# {key} = ")
        else:
            shown = default.replace("PosixPath(", "").rstrip(")") if "Path" in default else default
            click.echo(f"# {key} = {_toml_value(shown)}")
        click.echo()


def _toml_value(text: str) -> str:
    if text in ("True", "False"):
        return text.lower()
    return text.replace("'", '"')
