"""The embedded mitmproxy Master that hosts every door, with only the addons Rampart needs.

Not DumpMaster: its 35 default addons cost most of mitmproxy's time per flow
(DESIGN §1). ``connection_strategy=lazy`` so an addon can answer while the
upstream is down.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from mitmproxy import options
from mitmproxy.addons import core, errorcheck
from mitmproxy.master import Master

from addons.query_door import QueryDoor
from proxy.config import Config


def build(cfg: Config) -> tuple[Master, QueryDoor]:
    opts = options.Options()
    master = Master(opts)
    door = QueryDoor(cfg)
    master.addons.add(core.Core(), errorcheck.ErrorCheck(), door)
    opts.update(confdir=str(cfg.data_dir / "mitmproxy"))
    if "connection_strategy" in opts:  # declared by the proxyserver addon, once a proxy door runs
        opts.update(connection_strategy="lazy")
    return master, door


async def run(cfg: Config, announce: Callable[[QueryDoor], None] | None = None) -> str | None:
    """Run until SIGINT/SIGTERM; returns the start error, if any."""
    master, door = build(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    if announce is not None:

        async def announce_when_up() -> None:
            while not door.started and not door.error:
                await asyncio.sleep(0.01)
            if door.started:
                announce(door)

        task = loop.create_task(announce_when_up())
    await master.run()
    if announce is not None:
        task.cancel()
    return door.error
