"""The wire: the v1 protocol's request parsing and answer rendering (docs/protocol.md), the
one table of its paths and methods (``paths``), the HTTP request and response values both
doors share (``http``), and URL canonicalization. Bytes in, typed values out, and back.

May import: the bottom layer (``proxy.errors``, ``proxy.model``).
"""
