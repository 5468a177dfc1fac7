"""Pattern files: their vocabulary (``layout``: file, pattern and manifest field names),
the memory-mapped tables under every pattern, table diffs, the plain-text sources a
publisher compiles and their records, a build, a pattern directory's manifest, an open
pattern directory that answers lookups, and the Smart Scan Agent Pattern products keep.

May import: the bottom layer and ``proxy.wire``.
"""
