"""The ``rampart`` console script: the core's CLI plus ``serve``, which runs mitmproxy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from proxy.cli import cli, door_options, fail_cleanly, load_config, setup_logging


@cli.command()
@door_options
@click.option("--query-port", type=click.IntRange(0, 65535),
              help="Query door HTTP port (default 8080; 0 turns it off).")
@click.option("--query-tls-port", type=click.IntRange(0, 65535),
              help="Query door HTTPS port (default 8443; 0 turns it off).")
@click.option("--cloud", multiple=True,
              help="Cloud endpoint https://host:port, in priority order (repeatable).")
@click.option("--cloud-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="CA bundle to verify the cloud with (default: the system bundle).")
@click.option("--proxy-port", type=click.IntRange(0, 65535), envvar="RAMPART_PROXY_PORT",
              help="Intercept door, explicit HTTP(S) proxy port (default 3128; 0 turns it off).")
@click.option("--transparent-port", type=click.IntRange(0, 65535), envvar="RAMPART_TRANSPARENT_PORT",
              help="Intercept door, transparent-mode port (default 8081; 0 turns it off).")
@click.option("--intercept-host", "intercept_hosts", multiple=True,
              help="Cloud host name or *.domain whose reputation traffic is answered here "
                   "(repeatable; the --cloud hosts are included). All else passes through.")
@click.option("--allow-client", "allow_clients", multiple=True,
              help="Client network (CIDR) the intercept door serves (repeatable; "
                   "default loopback and private ranges).")
@click.option("--intercept-allow-destination", "intercept_allow_destinations", multiple=True,
              help="Destination on this machine, loopback or link-local the intercept door may "
                   "reach: HOST[:PORT], [V6]:PORT or CIDR (repeatable; default none, the --cloud "
                   "endpoints excepted).")
@click.option("--capture", type=click.Path(path_type=Path, dir_okay=False),
              help="Append reputation flows to this mitmproxy flow file (mitmdump -nr FILE).")
@click.option("--capture-filter", help="mitmproxy filter expression for --capture, e.g. '~u /v1/file'.")
@click.option("--capture-port", type=click.IntRange(0, 65535), envvar="RAMPART_CAPTURE_PORT",
              help="Loopback port `rampart capture` streams from (default 4344; 0 turns it off).")
@click.option("--query-client", "query_clients", multiple=True,
              help="Client network (CIDR) the query door answers (repeatable; default: every client).")
@click.option("--rate-limit", type=click.FloatRange(0),
              help="Query-door requests per second per client, 429 above (default 0: no limit).")
@click.option("--update-source", envvar="RAMPART_UPDATE_SOURCE",
              help="Update source (a `rampart pattern publish` repository served over HTTP(S)).")
@click.option("--update-key", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              envvar="RAMPART_UPDATE_KEY", help="Ed25519 public key the update source signs with.")
@fail_cleanly
def serve(config_file: Path | None, **flags: Any) -> None:
    """Run the appliance: every door on one engine, on embedded defaults.

    With no options it serves the bundled sample pattern, keeps its state in
    the data directory and creates its CA there (DATA_DIR/ca.pem is the
    certificate products should trust).
    """
    import uvloop

    from addons import master

    cfg = load_config(config_file, **flags)
    setup_logging(cfg.log_level)

    def announce(doors: Any) -> None:
        app = doors.door.app
        ports = app.ports()
        host = "127.0.0.1" if cfg.listen in ("0.0.0.0", "") else cfg.listen
        lines = [f"rampart serve: pattern {app.engine.version}, data {cfg.data_dir}"]
        if "http" in ports:
            lines.append(f"  query door  http://{host}:{ports['http']}")
        if "https" in ports:
            lines.append(f"  query door  https://{host}:{ports['https']}  (CA: {cfg.data_dir / 'ca.pem'})")
        if cfg.proxy_port:
            lines.append(f"  intercept   proxy http://{host}:{cfg.proxy_port}")
        if cfg.transparent_port:
            lines.append(f"  intercept   transparent port {cfg.transparent_port}")
        if doors.intercept is not None:
            shown = sorted(doors.intercept.hosts.exact) + [f"*{s}" for s in doors.intercept.hosts.suffixes]
            lines.append("  intercepts  " + (", ".join(shown) or "nothing (every host passes through)"))
        if doors.capture.bound_port:
            lines.append(f"  capture     http://127.0.0.1:{doors.capture.bound_port}/v1/capture")
        lines.append("  cloud       " + (", ".join(cfg.cloud) or "none (unknown items come back degraded)"))
        click.echo("\n".join(lines), err=True)

    error = uvloop.run(master.run(cfg, announce))
    if error:
        click.echo(f"rampart: error: {error}", err=True)
        sys.exit(1)


@cli.command()
@click.option("-w", "--write", "out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Flow file to write (overwritten); `mitmdump -nr FILE` and `mitmproxy -r FILE` read it.")
@click.option("--host", help="Only flows to this host (a name or *.domain).")
@click.option("--service", type=click.Choice(["file", "web", "domain", "inspect"]),
              help="Only flows of this service.")
@click.option("--server", default="http://127.0.0.1:4344", show_default=True,
              envvar="RAMPART_CAPTURE_SERVER", help="The running appliance's capture port.")
@click.option("--count", type=click.IntRange(1), help="Stop after this many flows.")
@fail_cleanly
def capture(out: Path, host: str | None, service: str | None, server: str, count: int | None) -> None:
    """Capture a running appliance's reputation flows to a mitmproxy flow file until Ctrl-C.

    Both doors' engine requests are captured (query and intercept), each flow
    with the engine's decision in its metadata (``rampart``: sources, matched
    entries, latency) and the X-Rampart-Source header. The file is flushed
    after every flow and never ends in half a flow.
    """
    from addons.capture import stream_capture

    stream_capture(server, out, host=host, service=service, count=count,
                   say=lambda text: click.echo(text, err=True))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
