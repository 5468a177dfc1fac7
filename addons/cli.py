"""The ``rampart`` console script: the core's command group (``proxy.cli``) with the two
commands that need mitmproxy, ``serve`` and ``capture``, added to it by :func:`main`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from proxy import config as config_mod
from proxy.cli import cli
from proxy.cli.common import (
    Run,
    config_flag,
    door_options,
    door_url,
    fail_cleanly,
    pass_run,
    say_error,
    setup_logging,
)

if TYPE_CHECKING:
    from addons.master import Doors

PORT = click.IntRange(0, 65535)


class _Workers(click.ParamType[int]):
    """``--workers``: a count from 1 to 256, or ``auto`` (config value 0: one per core)."""

    name = "N|auto"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return 0
        if text.isdigit() and 1 <= int(text) <= 256:
            return int(text)
        self.fail(f"{value!r} is not a number from 1 to 256 or auto", param, ctx)


WORKERS = _Workers()


def _port_help(what: str, key: str) -> str:
    """A port flag's help, its default taken from the config key it sets."""
    return f"{what} (default {config_mod.default(key)}; 0 turns it off)."


@click.command()
@door_options
@config_flag("--query-port", type=PORT, help=_port_help("Query door HTTP port", "query_port"))
@config_flag("--query-tls-port", type=PORT,
             help=_port_help("Query door HTTPS port", "query_tls_port"))
@config_flag("--cloud", multiple=True,
             help="Cloud endpoint https://host:port, in priority order (repeatable).")
@config_flag("--cloud-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True),
             help="CA bundle to verify the cloud with (default: the system bundle).")
@config_flag("--proxy-port", type=PORT, envvar="RAMPART_PROXY_PORT",
             help=_port_help("Intercept door, explicit HTTP(S) proxy port", "proxy_port"))
@config_flag("--transparent-port", type=PORT, envvar="RAMPART_TRANSPARENT_PORT",
             help=_port_help("Intercept door, transparent-mode port", "transparent_port"))
@config_flag("--intercept-host", "intercept_hosts", multiple=True,
             help="Cloud host name or *.domain whose reputation traffic is answered here "
                  "(repeatable; the --cloud hosts are included). All else passes through.")
@config_flag("--allow-client", "allow_clients", multiple=True,
             help="Client network (CIDR) the intercept door serves (repeatable; "
                  "default loopback and private ranges).")
@config_flag("--intercept-allow-destination", "intercept_allow_destinations", multiple=True,
             help="Destination on this machine, loopback or link-local the intercept door may "
                  "reach: HOST[:PORT], [V6]:PORT or CIDR (repeatable; default none, the --cloud "
                  "endpoints excepted).")
@config_flag("--console-port", type=PORT, envvar="RAMPART_CONSOLE_PORT",
             help=_port_help("Console door: admin API and web console over HTTPS", "console_port"))
@config_flag("--dns-port", type=PORT, envvar="RAMPART_DNS_PORT",
             help=_port_help("DNS door: DNSBL zones over UDP and TCP", "dns_port"))
@config_flag("--capture", type=click.Path(path_type=Path, dir_okay=False),
             help="Append reputation flows to this mitmproxy flow file (mitmdump -nr FILE).")
@config_flag("--capture-filter", help="mitmproxy filter expression for --capture, e.g. '~u /v1/file'.")
@config_flag("--capture-port", type=PORT, envvar="RAMPART_CAPTURE_PORT",
             help=_port_help("Loopback port `rampart capture` streams from", "capture_port"))
@config_flag("--query-client", "query_clients", multiple=True,
             help="Client network (CIDR) the query door answers (repeatable; default loopback and "
                  "private ranges; 0.0.0.0/0 and ::/0 for every client). /healthz answers loopback "
                  "always.")
@config_flag("--trusted-proxy", "trusted_proxies", multiple=True,
             help="Proxy (CIDR) in front of the query door, such as HAProxy: its requests count "
                  "as from the last X-Forwarded-For address, for --query-client, --rate-limit "
                  "and the logs (repeatable; default none).")
@config_flag("--rate-limit", type=click.FloatRange(0),
             help="Query-door requests per second per client, 429 above "
                  f"(default {config_mod.default('rate_limit'):g}: no limit).")
@config_flag("--degraded-action", type=click.Choice(list(config_mod.DEGRADED_ACTIONS)),
             help="Web action for an item a configured cloud did not answer in time, under the "
                  f"low and medium policies (default {config_mod.default('degraded_action')}; "
                  "high blocks it). It keeps retry_after: products flag it and ask again.")
@config_flag("--workers", type=WORKERS,
             help="Processes answering the query door on the same ports: a number, or auto for "
                  f"one per core (default {config_mod.default('workers')}). Above 1 this process "
                  "keeps the updater and the other doors, and restarts a worker that dies.")
@config_flag("--redis", envvar="RAMPART_REDIS",
             help="Redis server appliances share the cloud-answer cache, the lists and the rate "
                  "limits through: redis://HOST[:PORT][/DB], rediss://… or unix:///PATH. Put a "
                  "password in $RAMPART_REDIS or the config file, not on the command line.")
@config_flag("--update-source", envvar="RAMPART_UPDATE_SOURCE",
             help="Update source (a `rampart pattern publish` repository served over HTTP(S)).")
@config_flag("--update-key", type=click.Path(path_type=Path, dir_okay=False, exists=True),
             envvar="RAMPART_UPDATE_KEY", help="Ed25519 public key the update source signs with.")
@pass_run
@fail_cleanly
def serve(run: Run) -> None:
    """Run the appliance: every door on one engine, on embedded defaults.

    With no options it serves the bundled sample pattern, keeps its state in
    the data directory and creates its CA there (DATA_DIR/ca.pem is the
    certificate products should trust).
    """
    import uvloop

    from addons import master
    from proxy.serve import startup

    cfg = run.config
    setup_logging(cfg.log_level, cfg.log_format, syslog=cfg)
    with startup.checked(cfg, "appliance", lambda text: click.echo(f"rampart serve: {text}", err=True)):
        error = uvloop.run(master.run(cfg, lambda doors: click.echo(_started(cfg, doors), err=True),
                                      run.layers))
    if error:
        say_error(error, 1)


def _started(cfg: config_mod.Config, doors: Doors) -> str:
    """What `serve` prints once every door is up: the pattern, where each door listens and whom
    it answers, the cloud."""
    app = doors.door.app
    ports = doors.door.ports()
    lines = [f"rampart serve: pattern {app.engine.version}, data {cfg.data_dir}"]
    workers = doors.door.workers
    if workers is not None:
        pids = ", ".join(str(s.pid) for s in workers.slots)
        lines.append(f"  workers     {workers.count} processes answer the query door (pids {pids};"
                     " --workers)")
    if "http" in ports:
        lines.append(f"  query door  {door_url('http', cfg.listen, ports['http'])}")
    if "https" in ports:
        lines.append(f"  query door  {door_url('https', cfg.listen, ports['https'])}"
                     f"  (CA: {cfg.data_dir / 'ca.pem'})")
    if ports:
        lines.append(f"              answers {_networks(cfg.query_clients)} (--query-client)")
    if cfg.proxy_port:
        lines.append(f"  intercept   proxy {door_url('http', cfg.listen, cfg.proxy_port)}")
    if cfg.transparent_port:
        where = cfg.listen if cfg.listen not in ("", "0.0.0.0") else "every address"
        lines.append(f"  intercept   transparent port {cfg.transparent_port} on {where}"
                     " (the gateway's firewall redirects products here)")
    if cfg.proxy_port or cfg.transparent_port:
        lines.append(f"              serves {_networks(cfg.allow_clients)} (--allow-client)")
    if doors.intercept is not None:
        shown = sorted(doors.intercept.hosts.exact) + [f"*{s}" for s in doors.intercept.hosts.suffixes]
        lines.append("  intercepts  " + (", ".join(shown) or "nothing (every host passes through)"))
    dns = doors.door.dns
    if dns is None and cfg.dns_port:
        lines.append(f"  DNS door    off: port {cfg.dns_port} is in use (mDNS uses it too);"
                     " choose another with --dns-port")
    if dns is not None:
        lines.append(f"  DNS door    {cfg.listen or '0.0.0.0'}:{dns.port} udp and tcp, zones"
                     f" {cfg.dns_ip_zone} and {cfg.dns_domain_zone}")
        lines.append(f"              answers {_networks(cfg.dns_clients)} (dns_clients)")
    console = doors.door.console
    if console is not None:
        lines.append(f"  console     {door_url('https', cfg.listen, console.port)}")
        if console.first_password is not None:
            lines.append(f"              first login: admin / {console.first_password}  (shown once;"
                         " change it: rampart admin passwd)")
    if doors.capture.bound_port:
        lines.append(f"  capture     http://127.0.0.1:{doors.capture.bound_port}/v1/capture")
    lines.append("  cloud       " + (", ".join(cfg.cloud) or "none (unknown items are answered"
                                     " unknown; --cloud to relay them)"))
    if app.shared is not None:
        redis = app.shared.status()
        state = {"up": "", "down": f": unreachable, answering from local state"
                 f" ({redis.get('last_error', '?')})"}.get(redis["state"], ": connecting")
        lines.append(f"  shared      cloud answers, lists and rate limits through Redis at"
                     f" {redis['url']}{state}")
    return "\n".join(lines)


def _networks(cidrs: list[str]) -> str:
    """Client networks as the banner shows them: the default set by name, others listed."""
    if not cidrs:
        return "every client"
    if tuple(cidrs) == config_mod.LOCAL_NETWORKS:
        return "loopback and private networks"
    return ", ".join(cidrs)


@click.command()
@click.option("-w", "--write", "out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Flow file to write (overwritten); `mitmdump -nr FILE` and `mitmproxy -r FILE` read it.")
@click.option("--host", help="Only flows to this host (a name or *.domain).")
@click.option("--service", type=click.Choice(["file", "web", "domain", "inspect"]),
              help="Only flows of this service.")
@click.option("--server", default=f"http://127.0.0.1:{config_mod.default('capture_port')}",
              show_default=True, envvar="RAMPART_CAPTURE_SERVER",
              help="The running appliance's capture port.")
@click.option("--count", type=click.IntRange(1), help="Stop after this many flows.")
@fail_cleanly
def capture(out: Path, host: str | None, service: str | None, server: str, count: int | None) -> None:
    """Capture a running appliance's reputation flows to a mitmproxy flow file until Ctrl-C.

    Both doors' engine requests are captured (query and intercept), each flow
    with the engine's decision in its metadata (key rampart: sources, matched
    entries, latency) and the X-Rampart-Source header. The file is flushed
    after every flow and never ends in half a flow.
    """
    from addons.capture import stream_capture

    stream_capture(server, out, host=host, service=service, count=count,
                   say=lambda text: click.echo(text, err=True))


def rampart() -> click.Group:
    """The whole command line: the core group (``proxy.cli.cli``) with serve and capture added."""
    cli.add_command(serve)
    cli.add_command(capture)
    return cli


def main() -> None:
    """The ``rampart`` console script."""
    rampart()()


if __name__ == "__main__":
    main()
