"""How a shared rule is kept in Redis: the hash field ``KIND<TAB>VALUE`` and the rule as a
JSON row of the list store's columns; read back, every rule is checked as an import would
check it, and one that is not Rampart's is skipped with a warning, never applied."""

from __future__ import annotations

import json
import logging

from proxy.decide.list_rules import MAX_NOTE_LENGTH, Entry, EntryKind, classify, clients_text
from proxy.decide.list_schema import entry_of
from proxy.errors import ListError

logger = logging.getLogger(__name__)

MAX_RULE = 16 * 1024  # bytes of one stored rule
_KINDS = {k.value: k for k in EntryKind}


def field_of(kind: EntryKind, value: str) -> str:
    return f"{kind.value}\t{value}"


def key_of(field: bytes | str) -> tuple[EntryKind, str] | None:
    """A field's kind and value, or None for a field no Rampart writes."""
    text = field.decode("utf-8", "replace") if isinstance(field, bytes) else field
    kind, tab, value = text.partition("\t")
    if not tab or kind not in _KINDS or not value or len(value) > 4096:
        return None
    return _KINDS[kind], value


def encode(e: Entry) -> str:
    return json.dumps([e.list.value, e.kind.value, e.value, e.note, e.created, clients_text(e.clients),
                       e.expires, e.added_by, e.origin], ensure_ascii=False, separators=(",", ":"))


def decode(field: bytes, raw: bytes) -> Entry | None:
    """A stored rule, checked as an import would be; None (skipped, with a warning) otherwise."""
    try:
        row = json.loads(raw) if len(raw) <= MAX_RULE else None
        entry = entry_of(tuple(row)) if isinstance(row, list) and len(row) == 9 else None
        if entry is None or classify(entry.value, entry.kind) != (entry.kind, entry.value):
            raise ValueError("not a rule")
        if len(entry.note) > MAX_NOTE_LENGTH or key_of(field) != (entry.kind, entry.value):
            raise ValueError("not a rule")
    except (ValueError, TypeError, ListError, UnicodeDecodeError):
        logger.warning("skipping a malformed shared list rule", extra={"field": field[:80].decode("latin-1")})
        return None
    return entry
