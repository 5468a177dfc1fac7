"""The wire: the v1 protocol's request parsing and answer rendering (docs/protocol.md) and
URL canonicalization. Pure functions from bytes to typed values and back.

May import: the bottom layer (``proxy.errors``, ``proxy.model``).
"""
