"""mitmproxy glue: addons that start Rampart's doors inside mitmproxy's event loop.

Thin by rule: an addon turns mitmproxy events into calls on the core
(``proxy``) and the core's answers into responses. Decisions live in ``proxy``.
"""
