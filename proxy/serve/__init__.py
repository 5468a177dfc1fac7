"""The query door and what runs it: connection caps and the listener, the HTTP/1.1
server, the routes (serving the table of ``proxy.wire.paths``), the gate (client
networks and rates, also used by the intercept door), the intercept door's rules
(``intercept``: host patterns, engine paths, the decision of an answer) and its
destinations, metrics, the pattern keeper, the static update-source server, and
``app``, which wires them up.

May import: every core package but ``proxy.cli``.
"""
