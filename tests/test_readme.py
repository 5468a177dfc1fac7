"""The README as a stranger reads it: every `rampart` command line in its examples names a
command and flags that exist, and what it points at ships with the repository."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click

from addons.cli import rampart

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _command_lines(text: str) -> list[str]:
    """Every `rampart …` command in the README's sh blocks, continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in re.split(r"&&|;|\||&(?!&)", line):
                part = part.strip()
                if part.startswith("rampart "):
                    lines.append(part)
    return lines


def _options(cmd: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for p in cmd.params:
        names.update(getattr(p, "opts", []))
        names.update(getattr(p, "secondary_opts", []))
    return names


def test_the_readme_has_examples_to_check() -> None:
    assert len(_command_lines(README.read_text())) >= 25


def test_every_readme_command_and_flag_exists() -> None:
    group = rampart()
    for line in _command_lines(README.read_text()):
        words = shlex.split(line.replace("~", "HOME"))[1:]
        cmd: click.Command = group
        while isinstance(cmd, click.Group) and words and not words[0].startswith("-"):
            sub = cmd.get_command(click.Context(cmd), words[0])
            assert sub is not None, f"{line!r}: no command {words[0]!r}"
            cmd, words = sub, words[1:]
        for word in words:
            if word.startswith("--"):
                flag = word.split("=", 1)[0]
                assert flag in _options(cmd), f"{line!r}: {cmd.name} has no {flag}"


def test_the_readme_refers_to_files_the_repository_ships() -> None:
    text = README.read_text()
    for path in re.findall(r"\((docs/[\w./-]+?)(?:#[\w-]+)?\)", text):
        assert (ROOT / path).is_file(), path
    for path in re.findall(r"`((?:proxy|appliance)/[\w./-]+)`", text):
        assert (ROOT / path).exists(), path
    assert "../" not in text


def test_the_license_file_is_the_one_pyproject_names() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "Apache-2.0"
    assert "Apache License\n                           Version 2.0" in (ROOT / "LICENSE").read_text()
