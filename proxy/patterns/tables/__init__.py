"""Memory-mapped sorted fixed-width tables: the storage under every pattern
(docs/architecture.md, “Patterns and updates”).

A table maps fixed-width binary keys (digests, or the start addresses of IP
ranges) to a row of small integer columns. It is written once, sorted, and then
only read, through ``mmap`` and zero-copy numpy views: opening one costs a
header parse however many entries it holds, and a lookup touches one small
window of the key block.

File format (version 1, all integers little-endian, sections 64-byte aligned)::

    offset  size  field
    0       4     magic b"RMPT"
    4       2     format version (1)
    6       2     flags: bit 0 = range table (an "ends" block follows the keys)
    8       4     key width W in bytes (4..64)
    12      4     index bits B (16..24): the bucket index covers the first B key bits
    16      8     count N (rows)
    24      4     column count C
    28      4     largest bucket (rows), bounds the batched binary search
    32      32    content SHA-256: of bytes [0, 32) followed by bytes [64, EOF)
    64      32*C  column descriptors: name (24 bytes ASCII, NUL padded),
                  dtype (8 bytes ASCII, NUL padded: "<u1", "<u2", "<u4" or "<u8")
    ...           index: 2**B + 1 uint64 row offsets; bucket b holds rows
                  [index[b], index[b + 1]) whose keys start with the B bits b
    ...           keys: N * W raw bytes, sorted by memcmp, no duplicates
    ...           ends (range tables only): N * W raw bytes, ends[i] >= keys[i],
                  and keys[i + 1] > ends[i] (ranges never overlap)
    ...           one block per column, in descriptor order: N * itemsize bytes

The file size must equal what the header implies, so a truncated file is
refused on open; ``Table.verify`` recomputes the content digest. B grows with
N (16 bits up to ~1M rows, one more bit per doubling, at most 24) so a bucket
holds about 16 rows: measured here, a single lookup then stays above 750k/s at
10M entries, where a fixed 16-bit index (about 150 rows per bucket) gave 500k/s.

Keys are compared as raw bytes everywhere. Never through numpy ``S`` scalars,
which drop trailing NUL bytes (one SHA-256 in 256 ends in one).

Diffs between two tables, and merging one into a base table, are
``proxy.patterns.table_diff``. Modules: ``format`` (the constants and key helpers),
``write`` and ``read``; the names below are re-exported here.
"""

from proxy.patterns.tables.format import MAX_INDEX_BITS as MAX_INDEX_BITS
from proxy.patterns.tables.format import MIN_INDEX_BITS as MIN_INDEX_BITS
from proxy.patterns.tables.format import index_bits_for as index_bits_for
from proxy.patterns.tables.read import RangeTable as RangeTable
from proxy.patterns.tables.read import Table as Table
from proxy.patterns.tables.write import write_range_table as write_range_table
from proxy.patterns.tables.write import write_table as write_table
