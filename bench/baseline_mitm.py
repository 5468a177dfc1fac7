"""Baseline: a bare mitmproxy addon answering from a dict (run by hand, via bench/run.py).

An embedded mitmproxy ``Master`` in reverse mode with only the addons a proxy
needs (core, proxyserver, next_layer, tlsconfig) plus ``DictAnswer``, whose
``request`` hook sets ``flow.response`` from a dict keyed by path: no upstream
is ever contacted (``connection_strategy=lazy``). With ``--full`` it loads
mitmproxy's whole default addon set instead (what ``mitmdump`` runs).

    python3 bench/baseline_mitm.py --port 8090 --body-file body.json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from mitmproxy import http, options
from mitmproxy.addons import core, default_addons, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

logger = logging.getLogger(__name__)


class DictAnswer:
    """Answers every request from ``answers`` (by path), 404 for anything else."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self.headers = {"Content-Type": "application/json"}

    def request(self, flow: http.HTTPFlow) -> None:
        body = self.answers.get(flow.request.path)
        if body is None:
            flow.response = http.Response.make(404, b'{"error":"not found"}', self.headers)
        else:
            flow.response = http.Response.make(200, body, self.headers)


async def run(port: int, answers: dict[str, bytes], full: bool) -> None:
    opts = options.Options()
    master = Master(opts)
    if full:
        master.addons.add(*default_addons())
    else:
        master.addons.add(
            core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig()
        )
    master.addons.add(DictAnswer(answers))
    opts.update(
        mode=["reverse:http://127.0.0.1:1"],
        listen_host="127.0.0.1",
        listen_port=port,
        connection_strategy="lazy",
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--body-file", type=Path, required=True, help="the body every known path gets")
    ap.add_argument("--path", action="append", default=[], help="a known path (repeatable)")
    ap.add_argument("--full", action="store_true", help="mitmproxy's whole default addon set")
    args = ap.parse_args()
    body = args.body_file.read_bytes()
    answers = {p: body for p in (args.path or ["/"])}
    answers.setdefault("/healthz", b'{"status":"alive"}')
    try:
        import uvloop

        uvloop.run(run(args.port, answers, args.full))
    except ImportError:
        asyncio.run(run(args.port, answers, args.full))


if __name__ == "__main__":
    main()
