"""Rampart's core: everything that decides a reputation answer, and the servers that give it.

The bottom layer, which every package may import and which imports nothing
above it: ``errors`` (the whole error tree), ``model`` (the values every part
shares, network addresses and allowed destinations among them), ``config`` (every
config key, its default and its help), ``files`` (private directories, bounded
reads, atomic writes, locks) and ``clock`` (UTC times and their ISO-8601 form).

Above it, one subpackage per part of the architecture (docs/architecture.md):

- ``wire``: the v1 wire protocol and URL canonicalization: bytes in, typed values out.
- ``patterns``: pattern files: tables, sources, builds, the agent pattern.
- ``updates``: the signed update source: publishing, fetching, verifying, installing.
- ``decide``: the decision chain: lists, pattern, cache, relay, and its explanation.
- ``relay``: the verified-TLS HTTP client and the relay to the cloud.
- ``serve``: the query door's HTTP server, its routes, the gate, metrics and the app.
- ``cli``: the ``rampart`` command line.

Nothing here imports mitmproxy; ``addons`` hosts this core inside mitmproxy.
"""
