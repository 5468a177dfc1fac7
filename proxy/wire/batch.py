"""File batches (``POST /v1/file``) by column, and their fast reading.

A batch of 1,000 hashes is the heaviest common request an appliance gets. Its plain
reading (``json.loads``, then one ``FileQuery`` per item, in ``proxy.wire.protocol``)
costs more than the lookups and the answer together. ``read_common`` reads the shape
products send, ``{"items": [{"<kind>": "<hex>"}, ...]}``, with orjson, and ``columns``
checks and splits its items with builtins that loop in C and with numpy: no Python
code and no object per item. Whatever is not exactly that shape (another member, an
odd item, text orjson refuses) gives None, and the plain reading decides with its own
error messages; so what is accepted, what it means and every error stay the plain
reading's (tests/proxy/wire/test_batch.py holds the two equal over generated bodies).

Why orjson is exact here: it parses a subset of what ``json`` parses (it refuses NaN,
integers over 64 bits, lone surrogates, a byte order mark, other encodings, nesting
past 1,024), and where it succeeds on a document of this shape (depth 3, strings only)
both give the same values, a repeated key keeping its last value in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson

from proxy.model import FileQuery, HashKind

KINDS = {k.value: k for k in HashKind}
_HEX_LENGTH = {k.value: k.size * 2 for k in HashKind}  # a kind's name -> its digest's hex digits


@dataclass(frozen=True, slots=True)
class FileBatch:
    """A file request, by column: what the engine and the renderer need, no object per item.

    ``names`` and ``hexes`` hold each item's hash type and lowercase hex digest in
    request order; ``groups`` holds, per hash kind, the items' positions (None when
    every item is of that kind) and their raw digests laid end to end.
    """

    names: list[str]
    hexes: list[str]
    groups: dict[HashKind, tuple[list[int] | None, bytes]]

    def __len__(self) -> int:
        return len(self.hexes)

    @classmethod
    def of(cls, queries: Sequence[FileQuery]) -> FileBatch:
        names = [q.kind.value for q in queries]
        groups: dict[HashKind, tuple[list[int] | None, bytes]] = {}
        for kind in {q.kind for q in queries}:
            at = [i for i, q in enumerate(queries) if q.kind is kind]
            raw = b"".join(queries[i].digest for i in at)
            groups[kind] = (None if len(at) == len(queries) else at, raw)
        return cls(names, [q.digest.hex() for q in queries], groups)

    def queries(self) -> list[FileQuery]:
        return [FileQuery(KINDS[n], bytes.fromhex(h)) for n, h in zip(self.names, self.hexes)]


def read_common(body: bytes, max_batch: int) -> FileBatch | None:
    """The batch in ``body`` when it is exactly ``{"items": [...]}`` of 1 to ``max_batch``
    well-formed items that orjson reads; None for anything else (the plain reading's case)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or len(doc) != 1:  # another member may be nested past json's depth
        return None
    items = doc.get("items")
    if type(items) is not list or not 0 < len(items) <= max_batch:
        return None
    return columns(items)


def columns(items: list[Any]) -> FileBatch | None:
    """The batch of ``items`` when every one is ``{"<kind>": "<hex digest of that kind>"}``;
    None otherwise (the item-by-item parser then names the bad item).

    Each step is one builtin mapped over all items (TypeError, KeyError or ValueError
    on the first odd one); one ``fromhex`` over the joined digests checks them all.
    """
    try:
        names = list(chain.from_iterable(items))  # every item's keys (a str's chars if no dict)
        if len(names) != len(items):
            return None
        # As many keys as items: either each item has one, or one has none (a KeyError here).
        values = list(map(dict.__getitem__, items, names))  # TypeError unless every item is a dict
        want = list(map(_HEX_LENGTH.__getitem__, names))  # KeyError for an unknown hash type
        if list(map(len, values)) != want:  # TypeError for a value without a length
            return None
        everything = "".join(values)  # TypeError unless every value is a str
        raw = bytes.fromhex(everything)  # ValueError for a non-hex character
    except (TypeError, KeyError, ValueError):
        return None
    if len(raw) * 2 != len(everything):  # fromhex skips whitespace
        return None
    upper = any(map(everything.__contains__, "ABCDEF"))
    hexes = list(map(str.lower, values)) if upper else values
    return FileBatch(names, hexes, _groups(names, want, raw))


def _groups(names: list[str], want: list[int], raw: bytes) -> dict[HashKind, tuple[list[int] | None, bytes]]:
    """Per hash kind, its items' positions and digests, gathered with numpy from ``raw``
    (every digest in request order; ``want`` holds each one's hex length). Digests are
    16, 20 or 32 bytes, so they are gathered as 4-byte words: a quarter of the indexes."""
    first = KINDS[names[0]]
    if want.count(want[0]) == len(want):  # one length is one kind: the whole batch is one group
        return {first: (None, raw)}
    words = np.array(want, dtype=np.int64) >> 3  # 8 hex digits a word
    starts = np.cumsum(words) - words
    digests = np.frombuffer(raw, dtype="<u4")
    groups: dict[HashKind, tuple[list[int] | None, bytes]] = {}
    for kind in HashKind:
        at = np.flatnonzero(words == kind.size // 4)
        if at.size:
            taken = digests[starts[at, None] + np.arange(kind.size // 4)]
            groups[kind] = (at.tolist(), taken.tobytes())
    return groups
