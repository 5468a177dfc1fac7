"""The Smart Scan Agent Pattern: a compact "may this digest be bad?" filter
(docs/architecture.md, “Patterns and updates”). Its modules: ``codec`` (constants,
digest keys, Rice coding), ``filter`` (the file, building and querying it) and
``diff`` (diffs between two files); the names below are re-exported here.

Products load it, apply hourly diffs, and ask it before they ask a server. It has
no false negatives: every digest it was built from answers True. "Not in the
filter" means no query is needed; "in the filter" means ask the server, which
knows whether the hit is real or one of the documented false positives.

How a product queries it
------------------------
The filter is built from every SHA-256, SHA-1 and MD5 digest of the Smart Scan
Pattern, all in one key space. The key of a digest (of any of the three kinds)
is its first 8 bytes read as a big-endian unsigned 64-bit integer, and the
filter stores the top ``k`` bits of each key (``k`` = ``prefix_bits``)::

    prefix = int.from_bytes(digest[:8], "big") >> (64 - k)

The digests are uniform hashes already, so no second hash is needed, and the
build over tens of millions of digests is a vectorised shift. A file needs a
server query when ``may_contain`` is True for any digest the product computed
for it: its SHA-256 always, and its SHA-1 and MD5 too where the pattern holds
such entries (ClamAV ``.hdb``/``.hsb`` sources). A product that computes only
the SHA-256 will miss pattern entries that exist only as MD5 or SHA-1; that is
a property of those entries, not of the filter. Cross-kind prefix collisions
are ordinary false positives.

False positives: a digest that is not a member answers True with probability
``len(filter) / 2**k``. ``build_agent`` picks ``k = ceil(log2(n / fp_rate))``
unless told otherwise: 32 bits for 10M entries at the default 0.3 %, which
gives 0.23 %. A publisher keeps ``k`` across versions (pass ``prefix_bits=``)
so that diffs stay small; a diff across a change of ``k`` replaces everything.

Coding
------
The sorted, distinct prefixes are cut into blocks of ``block_size`` entries.
The block index holds each block's first prefix and where its unary bits
start. Every other prefix is coded as the gap from its predecessor, Rice coded
with parameter ``r`` (chosen as the one that minimises the total size): the
low ``r`` bits of every gap go, fixed width, into one remainder stream (the
gap of coded entry ``j`` sits at bit ``j * r``), and the quotient ``gap >> r``
goes into the unary stream as that many 0 bits followed by a 1 bit, each
block starting on a byte boundary. A lookup is a binary search of the block
index and the decode of one block. Bit order is most significant first.

File format (version 1, all integers little-endian)::

    offset  size          field
    0       4             magic b"RMAG"
    4       2             format version (1)
    6       1             prefix bits k (1..64)
    7       1             Rice parameter r (0..56)
    8       4             block size B (entries per block, 2..65536)
    12      4             reserved, 0
    16      8             count N (distinct prefixes)
    24      8             unary stream length U (bytes)
    32      NB * W        block index: first prefix of each block, W = 4 if k <= 32 else 8
    ...     NB * 4        block index: byte offset of each block's unary bits (first is 0)
    ...     ceil(M*r/8)   remainder stream, M = N - NB coded gaps
    ...     U             unary stream
    EOF-32  32            SHA-256 of every byte before it

``NB = ceil(N / B)``. The size must equal what the header implies.

Diff format (version 1)::

    0       4             magic b"RMAD"
    4       2             format version (1)
    6       1             flags: bit 0 = replace (the result is built from the added set alone)
    7       1             prefix bits k of the result
    8       4             block size of the result
    12      8             added count A
    20      8             removed count R
    28      8             added unary length (bytes)
    36      8             removed unary length (bytes)
    44      1             added Rice parameter
    45      1             removed Rice parameter
    46      2             reserved, 0
    48      32            SHA-256 of the base file the diff applies to
    80      32            SHA-256 of the resulting file
    112     ...           added set: remainder stream, unary stream
    ...     ...           removed set: remainder stream, unary stream
    EOF-32  32            SHA-256 of every byte before it

The added set holds prefixes; the removed set holds *positions* in the base
filter's sorted prefixes (about 11 bits each for 10k of 10M instead of 20).
Both are sorted and Rice coded as gaps (the first gap from 0). Applying a diff
rebuilds the result and checks it against the result digest, so
``apply_diff(old, make_diff(old, new)) == new`` byte for byte or an error.
"""

from proxy.patterns.agent.codec import AGENT_FORMAT as AGENT_FORMAT
from proxy.patterns.agent.codec import DEFAULT_BLOCK_SIZE as DEFAULT_BLOCK_SIZE
from proxy.patterns.agent.codec import DEFAULT_FP_RATE as DEFAULT_FP_RATE
from proxy.patterns.agent.codec import DIGEST_SIZES as DIGEST_SIZES
from proxy.patterns.agent.codec import MAGIC as MAGIC
from proxy.patterns.agent.codec import MAX_FILE_BYTES as MAX_FILE_BYTES
from proxy.patterns.agent.codec import choose_prefix_bits as choose_prefix_bits
from proxy.patterns.agent.codec import digest_key as digest_key
from proxy.patterns.agent.codec import digest_keys as digest_keys
from proxy.patterns.agent.diff import DIFF_FORMAT as DIFF_FORMAT
from proxy.patterns.agent.diff import DIFF_MAGIC as DIFF_MAGIC
from proxy.patterns.agent.diff import apply_diff as apply_diff
from proxy.patterns.agent.diff import make_diff as make_diff
from proxy.patterns.agent.filter import AgentFilter as AgentFilter
from proxy.patterns.agent.filter import build_agent as build_agent
from proxy.patterns.agent.filter import read_agent as read_agent
from proxy.patterns.agent.filter import write_agent as write_agent
