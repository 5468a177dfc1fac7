"""The decision chain (docs/architecture.md, “The decision chain”): blocked list ▸
approved list ▸ pattern ▸ cache ▸ relay (``engine``); the administrator's lists
(``lists``, the store, over ``list_rules`` the rule values, ``list_schema`` the SQLite
layout, ``list_match`` the indexed snapshot, ``list_io`` import and export,
``list_audit`` the changes, ``list_mirror`` the store's side of lists shared through
Redis); the answer cache (``cache``); and ``explain``, which says which link answered and
why. The shared state itself (``proxy.shared``) is reached through protocols
(``engine.SharedCache``, ``list_mirror.ListMirror``), not imported.

May import: the bottom layer, ``proxy.wire`` and ``proxy.patterns``. The relay is
reached through the engine's ``Ask`` seam, not imported.
"""
