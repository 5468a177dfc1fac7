"""The help of `rampart` and of every subcommand, compared with tests/proxy/cli/help.txt.

The walk is the whole command line as the console script runs it (the core group with
`serve` and `capture` from addons), each command invoked with --help at width 100.
After a deliberate change of help, regenerate the file from ``help_tree()``.
"""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

from addons.cli import rampart

GOLDEN = Path(__file__).with_name("help.txt")


def help_tree() -> str:
    group = rampart()
    out: list[str] = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        result = CliRunner().invoke(group, [*path, "--help"], terminal_width=100)
        assert result.exit_code == 0, (path, result.output)
        out.append(f"=== rampart {' '.join(path)}\n{result.output}\n")
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.list_commands(click.Context(cmd))):
                sub = cmd.get_command(click.Context(cmd), name)
                assert sub is not None
                walk(sub, [*path, name])

    walk(group, [])
    return "".join(out)


def test_every_command_has_the_help_it_had():
    assert help_tree() == GOLDEN.read_text()


def test_the_walk_sees_the_mitmproxy_side_commands_too():
    assert {"serve", "capture", "pattern", "ca"} <= set(rampart().commands)


def _commands() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []

    def walk(cmd: click.Command, path: str) -> None:
        found.append((path, cmd))
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(click.Context(cmd)):
                sub = cmd.get_command(click.Context(cmd), name)
                assert sub is not None
                walk(sub, f"{path} {name}")

    walk(rampart(), "rampart")
    return found


def test_every_option_says_what_it_does_in_plain_text():
    for path, cmd in _commands():
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert param.help, f"{path} {param.opts[0]} has no help"
    assert "``" not in help_tree()  # reStructuredText quoting shows literally in a terminal


def test_every_command_that_takes_a_data_directory_takes_the_config_file_too():
    for path, cmd in _commands():
        names = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
        if "--data-dir" in names:
            assert "--config" in names, f"{path} has --data-dir but no --config"
