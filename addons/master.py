"""The embedded mitmproxy Master that hosts every door, with only the addons Rampart needs.

Not DumpMaster: its 35 default addons cost most of mitmproxy's time per flow
(docs/architecture.md, “The picture”). The intercept door adds exactly what a proxy needs (the proxy
server, next-layer detection, TLS) and ``addons.intercept``;
``connection_strategy=lazy`` so an addon can answer while the upstream is down.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import certifi
from mitmproxy import certs as mitmproxy_certs
from mitmproxy import options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

import certs
from addons.capture import Capture
from addons.certstore import CertReload
from addons.connections import Connections
from addons.intercept import Intercept
from addons.query_door import QueryDoor
from proxy.config import Config
from proxy.errors import ConfigError
from proxy.files import check_private_dir, write_atomic
from proxy.serve.app import connection_caps
from proxy.serve.intercept import intercept_patterns
from proxy.settings import Layers

UPSTREAM_BUNDLE = "upstream-ca.pem"
MAX_CA_FILE = 1 << 20


def upstream_bundle(cfg: Config, confdir: Path) -> str | None:
    """The CAs intercepted traffic is verified with upstream: the system bundle plus ``cloud_ca``.

    mitmproxy takes one file, which replaces its default bundle, so the cloud's
    CA is added to (never substituted for) the system one. None: the default.
    """
    if cfg.cloud_ca is None:
        return None
    try:
        with cfg.cloud_ca.open("rb") as f:
            extra = f.read(MAX_CA_FILE + 1)
    except OSError as e:
        raise ConfigError(f"config key 'cloud_ca': cannot read {cfg.cloud_ca.name!r}: {e.strerror}") from None
    if len(extra) > MAX_CA_FILE or b"-----BEGIN CERTIFICATE-----" not in extra:
        raise ConfigError(f"config key 'cloud_ca': {cfg.cloud_ca.name!r} is not a PEM CA bundle")
    bundle = confdir / UPSTREAM_BUNDLE
    data = Path(certifi.where()).read_bytes() + b"\n" + extra
    if not bundle.exists() or bundle.read_bytes() != data:
        write_atomic(bundle, data)  # 0600 in the private confdir, whatever the umask
    return str(bundle)


def mitmproxy_dhparam(confdir: Path) -> None:
    """Write mitmproxy's DH parameters file before it does: it would use the umask's mode
    (0666 under umask 000); ours is 0600 like the rest of the confdir."""
    path = confdir / "mitmproxy-dhparam.pem"
    if not path.exists():
        write_atomic(path, mitmproxy_certs.DEFAULT_DHPARAM)


def proxy_modes(cfg: Config) -> list[str]:
    modes = []
    if cfg.proxy_port:
        modes.append(f"regular@{cfg.proxy_port}")
    if cfg.transparent_port:
        modes.append(f"transparent@{cfg.transparent_port}")
    return modes


class Rampart:
    """Rampart's addons as one element of mitmproxy's chain.

    mitmproxy enters a context manager and a generator per chain element for every event
    of every flow; children (``addons``) are reached by a plain traversal. Measured with
    mitmproxy's own dispatch (four HTTP events and their update events per flow): three
    flat addons cost about 60 µs per flow over the baseline, nested about 20 µs.
    """

    def __init__(self, children: list[Any]) -> None:
        self.addons = children


class Doors:
    """What ``build`` assembled: the master and the addons ``run`` reports on."""

    def __init__(self, master: Master, door: QueryDoor, capture: Capture,
                 intercept: Intercept | None) -> None:
        self.master = master
        self.door = door
        self.capture = capture
        self.intercept = intercept

    @property
    def error(self) -> str | None:
        return self.door.start_error or self.capture.start_error


def assemble(cfg: Config, layers: Layers | None = None) -> Doors:
    confdir = cfg.data_dir / certs.MITMPROXY_DIR
    modes = proxy_modes(cfg)
    check_private_dir(cfg.data_dir)  # before the CA or mitmproxy's confdir is read or written
    if modes:
        certs.CA.ensure(cfg.data_dir)  # before TlsConfig reads confdir, or mitmproxy makes its own CA
        mitmproxy_dhparam(confdir)
    opts = options.Options(confdir=str(confdir))
    master = Master(opts)
    caps = connection_caps(cfg)  # every door's connections count against these
    door = QueryDoor(cfg, caps, layers)
    capture = Capture(cfg, caps)
    capture.attach(door.app.observers)  # while capturing only
    door.capture = capture  # the query-door workers' flows reach it too (proxy.serve.feed)
    addons: list[Any] = [core.Core(), errorcheck.ErrorCheck(repeat_errors_on_stderr=True)]
    ours: list[Any] = [door]
    intercept: Intercept | None = None
    if modes:
        intercept = Intercept(cfg, lambda: getattr(door.app, "routes", None),
                              lambda: getattr(door.app, "stats", None), door.app.log_answer)
        tls = tlsconfig.TlsConfig()
        addons += [proxyserver.Proxyserver(), next_layer.NextLayer(), tls]
        # the intercept door's connections count against the query door's caps;
        # CertReload puts a rotated or imported CA into TlsConfig while running
        ours += [Connections(caps, cfg.head_timeout), intercept, CertReload(cfg.data_dir, tls)]
    ours.append(capture)
    master.addons.add(*addons, Rampart(ours))
    if modes:
        if cfg.log_level != "debug":  # one line per connection is debug detail for an appliance
            logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)
        hosts = intercept_patterns(cfg)
        opts.update(
            mode=modes,
            listen_host=cfg.listen,
            connection_strategy="lazy",
            http2=True,
            ssl_insecure=False,
            ssl_verify_upstream_trusted_ca=upstream_bundle(cfg, confdir),
            # anything larger than a query is relayed as it arrives, never buffered
            stream_large_bodies=str(cfg.max_body),
            # everything but the intercept hosts is relayed as raw TCP (no TLS interception)
            allow_hosts=hosts.allow_regexes() or [r"^$"],
        )
    return Doors(master, door, capture, intercept)


async def run(cfg: Config, announce: Callable[[Doors], None] | None = None,
              layers: Layers | None = None) -> str | None:
    """Run until SIGINT/SIGTERM; returns the start error, if any."""
    doors = assemble(cfg, layers)
    master, door = doors.master, doors.door
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    if announce is not None:

        async def announce_when_up() -> None:
            while not (door.started and doors.capture.started) and not doors.error:
                await asyncio.sleep(0.01)
            if not doors.error:
                # What start-up made (mitmproxy's modules, the pattern's and the lists' objects)
                # lives as long as the process: frozen out of the collector's full passes,
                # which a busy door's short-lived rows otherwise set walking all of it again.
                gc.freeze()
                announce(doors)

        task = loop.create_task(announce_when_up())
    await master.run()
    if announce is not None:
        task.cancel()
    return doors.error
