"""Pattern files: the memory-mapped tables under every pattern, table diffs, the
plain-text sources a publisher compiles, a build, an open pattern directory that
answers lookups, and the Smart Scan Agent Pattern products keep.

May import: the bottom layer and ``proxy.wire``.
"""
