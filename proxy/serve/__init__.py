"""The query door and what runs it: connection caps and the listener, the HTTP/1.1
server, the one table of paths and methods (``routes``), the gate (client networks
and rates, also used by the intercept door), intercept destinations, metrics, the
pattern keeper, the static update-source server, and ``app``, which wires them up.

May import: every core package but ``proxy.cli``.
"""
