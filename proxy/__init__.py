"""Rampart's core: everything that decides a reputation answer.

Protocol parsing and rendering, URL canonicalization, pattern tables, the
administrator's lists, the answer cache, the decision engine, the relay client,
config, the CLI and the query-door server. Nothing here imports mitmproxy; the
``addons`` package is the thin glue that hosts this core inside mitmproxy.
"""
