"""The ``rampart`` command line: one click group, with a module per command group.

This module builds the group and adds every command of the core to it; the
mitmproxy-side commands (``serve``, ``capture``) are added by ``addons.cli``,
whose ``main`` is the console script. What the commands share (the run's context
object on ``ctx.obj``, error handling, logging, shared options) is in
``proxy.cli.common``. Each command's docstring is its help. Errors from the core
(RampartError) are printed as one line, ``rampart: error: …``, and exit with the
error's code.

May import: ``proxy`` (every core package), ``certs``, ``appliance``.
"""

from __future__ import annotations

import click

from proxy.cli.admin import admin_group
from proxy.cli.appliance import appliance_group
from proxy.cli.ca import ca_group
from proxy.cli.client import client_group
from proxy.cli.cloud import cloud
from proxy.cli.common import Run
from proxy.cli.config import config_cmd
from proxy.cli.lists import lists_group
from proxy.cli.pattern import pattern
from proxy.cli.query import query
from proxy.cli.update import update_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rampart")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Rampart: an open Smart Protection Server.

    Answers file, web and domain/IP reputation queries from hosted patterns and
    the administrator's lists, and relays the rest to the cloud. Start with
    `rampart serve`, then in another terminal ask about the EICAR test file:

    \b
      rampart query file 275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f
    """
    ctx.ensure_object(Run)  # the run's one context object, inherited by every subcommand


for command in (config_cmd, cloud, pattern, lists_group, query, update_group, ca_group,
                appliance_group, admin_group, client_group):
    cli.add_command(command)
