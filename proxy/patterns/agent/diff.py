"""Agent pattern diffs: the prefixes added and the positions removed, Rice coded, and
applying one to rebuild the result byte for byte (``proxy.patterns.agent`` describes the
format).
"""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from proxy.errors import PatternError
from proxy.patterns.agent.codec import (
    _TRAILER,
    MAX_ENTRIES,
    MAX_FILE_BYTES,
    MAX_RICE,
    U64,
    _check_params,
    _decode_set,
    _encode_set,
    _max_unary_bits,
)
from proxy.patterns.agent.filter import _encode, _load

logger = logging.getLogger(__name__)

DIFF_MAGIC = b"RMAD"
DIFF_FORMAT = 1
FLAG_REPLACE = 1
_DIFF_HEADER = struct.Struct("<4sHBBIQQQQBB2x32s32s")  # 112 bytes
assert _DIFF_HEADER.size == 112




def make_diff(old: bytes, new: bytes) -> bytes:
    """The diff that turns agent file ``old`` into agent file ``new``."""
    (a, old_keys), (b, new_keys) = _load(old), _load(new)
    flags = 0
    if a.prefix_bits == b.prefix_bits:
        added = new_keys[~_members(new_keys, old_keys)]
        removed = np.flatnonzero(~_members(old_keys, new_keys)).astype(np.uint64)
    else:
        flags = FLAG_REPLACE
        added, removed = new_keys, np.zeros(0, dtype=np.uint64)
    ar, arem, aun = _encode_set(added)
    rr, rrem, run = _encode_set(removed)
    body = b"".join(
        [
            _DIFF_HEADER.pack(
                DIFF_MAGIC, DIFF_FORMAT, flags, b.prefix_bits, b.block_size,
                len(added), len(removed), len(aun), len(run), ar, rr,
                hashlib.sha256(old).digest(), hashlib.sha256(new).digest(),
            ),
            arem, aun, rrem, run,
        ]
    )  # fmt: skip
    return body + hashlib.sha256(body).digest()


def _members(x: U64, sorted_set: U64) -> npt.NDArray[np.bool_]:
    if len(sorted_set) == 0:
        return np.zeros(len(x), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, x), len(sorted_set) - 1)
    found: npt.NDArray[np.bool_] = sorted_set[pos] == x
    return found


@dataclass(frozen=True, slots=True)
class _Diff:
    """A checked diff: its header and the two decoded sets."""

    replace: bool
    prefix_bits: int
    block_size: int
    base_sha256: bytes
    result_sha256: bytes
    added: U64  # prefixes, sorted
    removed: U64  # positions in the base's sorted prefixes, sorted


def _read_diff(diff: bytes, old: bytes) -> _Diff:
    """Check a diff's header, size, trailing SHA-256 and base (``old``), and decode its sets."""
    if len(diff) > MAX_FILE_BYTES:
        raise PatternError(f"agent diff: {len(diff)} bytes is over the limit of {MAX_FILE_BYTES}")
    if len(diff) < _DIFF_HEADER.size + _TRAILER:
        raise PatternError(f"agent diff: truncated ({len(diff)} bytes)")
    (magic, version, flags, k, bs, na, nr, aul, rul, ar, rr, base, result) = _DIFF_HEADER.unpack_from(diff)
    if magic != DIFF_MAGIC:
        raise PatternError(f"agent diff: bad magic {magic!r} (want {DIFF_MAGIC!r})")
    if version != DIFF_FORMAT:
        raise PatternError(f"agent diff: format version {version} (this code reads {DIFF_FORMAT})")
    if flags & ~FLAG_REPLACE or ar > MAX_RICE or rr > MAX_RICE or na > MAX_ENTRIES or nr > MAX_ENTRIES:
        raise PatternError("agent diff: bad header (flags, Rice parameter or counts)")
    try:
        _check_params(k, bs)
    except ValueError as e:
        raise PatternError(f"agent diff: {e}") from None
    if aul * 8 > _max_unary_bits(na, 1) or rul * 8 > _max_unary_bits(nr, 1):
        raise PatternError("agent diff: a unary stream is too long for its entry count")
    arl, rrl = (na * ar + 7) // 8, (nr * rr + 7) // 8
    want = _DIFF_HEADER.size + arl + aul + rrl + rul + _TRAILER
    if len(diff) != want:
        what = "truncated" if len(diff) < want else "trailing bytes"
        raise PatternError(f"agent diff: {what}: {len(diff)} bytes, header says {want}")
    if hashlib.sha256(diff[:-_TRAILER]).digest() != diff[-_TRAILER:]:
        raise PatternError("agent diff: content SHA-256 mismatch (corrupt diff)")
    if hashlib.sha256(old).digest() != base:
        raise PatternError(
            f"agent diff: made for base {base.hex()[:16]}…, not for "
            f"{hashlib.sha256(old).hexdigest()[:16]}…", reason="wrong_base")
    p = _DIFF_HEADER.size
    added = _decode_set(diff[p : p + arl], diff[p + arl : p + arl + aul], na, ar, "added")
    p += arl + aul
    removed = _decode_set(diff[p : p + rrl], diff[p + rrl : p + rrl + rul], nr, rr, "removed")
    return _Diff(bool(flags & FLAG_REPLACE), k, bs, base, result, added, removed)


def apply_diff(old: bytes, diff: bytes) -> bytes:
    """Apply ``diff`` to agent file ``old``; the result is checked against the diff's digest.

    Raises PatternError for a diff made against another base (reason ``wrong_base``),
    a corrupt or truncated diff, or a result that does not match.
    """
    d = _read_diff(diff, old)
    k, added, removed = d.prefix_bits, d.added, d.removed
    if k < 64 and len(added) and int(added[-1]) >> k:
        raise PatternError(f"agent diff: an added entry is wider than {k} bits")
    base_filter, old_keys = _load(old)
    if d.replace:
        if len(removed):
            raise PatternError("agent diff: a replacing diff removes nothing")
        merged = added
    else:
        if k != base_filter.prefix_bits:
            raise PatternError(
                f"agent diff: prefix bits {k} differ from the base's {base_filter.prefix_bits}",
                reason="wrong_base",
            )
        if len(removed) and int(removed[-1]) >= len(old_keys):
            raise PatternError(f"agent diff: removes entry {int(removed[-1])} of {len(old_keys)}")
        kept = np.delete(old_keys, removed.astype(np.int64))
        if bool(_members(added, kept).any()):
            raise PatternError("agent diff: adds an entry the base already holds", reason="wrong_base")
        merged = np.sort(np.concatenate([kept, added]), kind="stable")
    out = _encode(merged, k, d.block_size)
    if hashlib.sha256(out).digest() != d.result_sha256:
        raise PatternError("agent diff: the result does not match the diff's result SHA-256")
    logger.debug("agent diff applied", extra={
        "base": d.base_sha256.hex()[:16], "result": d.result_sha256.hex()[:16],
        "added": len(added), "removed": len(removed)})
    return out
