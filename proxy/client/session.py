"""One call to get a working client from its settings: what a product embedding the
library, and each ``rampart client`` command, opens and closes.

    session = open_session(ClientOptions(servers=("https://spa.corp.example:8443",)))
    try:
        verdicts = await session.client.check_files([Digests(sha256_hex)])
    finally:
        await session.close()

The pool's location decision and cool-downs are kept in the state between sessions, so
a command run a second later does not probe again.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from proxy.client.agent import AgentPattern
from proxy.client.client import Client
from proxy.client.options import ClientOptions
from proxy.client.servers import ServerPool, parse_server
from proxy.client.state import ClientState
from proxy.client.transport import HttpTransport


class Session:
    def __init__(self, opts: ClientOptions, *, transport: Any = None) -> None:
        self.opts = opts
        self.pool = ServerPool([parse_server(s) for s in opts.servers], order=opts.order,  # type: ignore[arg-type]
                               cooldown=opts.cooldown, probe_timeout=opts.probe_timeout)
        self.transport = transport or HttpTransport(ca_file=opts.ca)
        self.state = ClientState.open(opts.state_dir)
        self.agent = AgentPattern(opts.state_dir, self.state, interval=opts.agent_interval)
        self.client = Client(self.pool, self.state, self.transport, self.agent, query=opts.query,
                             fail_closed=opts.fail_closed, deadline=opts.deadline)
        with contextlib.suppress(ValueError):  # the last session's location and cool-downs
            self.pool.import_state(json.loads(self.state.get_meta("servers") or "{}"))

    async def close(self) -> None:
        try:
            self.state.set_meta("servers", json.dumps(self.pool.export_state()))
        finally:
            await self.transport.close()
            self.state.close()


def open_session(opts: ClientOptions, *, transport: Any = None) -> Session:
    """The parts ``opts`` asks for (``transport``: the I/O seam, HttpTransport by default)."""
    return Session(opts, transport=transport)
