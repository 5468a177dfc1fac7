"""The decision chain (docs/architecture.md, “The decision chain”): blocked list ▸
approved list ▸ pattern ▸ cache ▸ relay, the administrator's lists, the answer cache,
and ``explain``, which says which link answered and why.

May import: the bottom layer, ``proxy.wire`` and ``proxy.patterns``. The relay is
reached through the engine's ``Ask`` seam, not imported.
"""
