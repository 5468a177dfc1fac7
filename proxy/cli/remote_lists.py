"""The lists of a running appliance, through its admin API, as ``rampart lists`` uses them.

``RemoteLists`` has the methods of ``proxy.decide.lists.ListStore`` the commands call,
with the same arguments and results (``Entry``, ``AuditEntry``, ``ImportResult``), so
``proxy.cli.lists`` prints what the data directory and what the API answered with the
same code. Values are checked by the command before they are sent (the same refusals and
words as the local mode); the server checks them again. A change is made by the API
key's name from the caller's address (the server's audit says so), whatever ``actor``
the command passes.

The audit comes from the server's admin audit (``GET /api/logs?log=audit``): one row per
API request that changed the lists (``refused`` when the server refused it), not one per
rule as the data directory's own trail; ``--value`` finds the requests naming the value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from proxy.cli.remote import MAX_ANSWER, Remote, RemoteFailed, entries_of, entry_of, field_of
from proxy.decide.list_audit import AuditEntry
from proxy.decide.list_rules import Entry, EntryKind, ListName, iso_time
from proxy.decide.lists import KEEP, ImportResult

MAX_VALUES = 1000  # values in one API request (proxy.console.routes.MAX_VALUES)
MAX_IMPORT_BYTES = 1 << 20  # a request's JSON body (proxy.console.api.MAX_JSON_BYTES)


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), MAX_VALUES):
        yield items[i:i + MAX_VALUES]


def _values_doc(values: Iterable[tuple[EntryKind | None, str]]) -> list[dict[str, Any]]:
    """Values grouped into requests of one kind each (the API takes one kind a request)."""
    by_kind: dict[EntryKind | None, list[str]] = {}
    for kind, value in values:
        by_kind.setdefault(kind, []).append(value)
    return [{"values": list(chunk), **({"kind": kind.value} if kind else {})}
            for kind, all_values in by_kind.items() for chunk in _chunks(all_values)]


class RemoteLists:
    """The appliance's list store over the admin API (see the module docstring)."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def close(self) -> None:
        """Nothing to close: every call is its own exchange."""

    def add(self, name: ListName, values: Iterable[tuple[EntryKind | None, str]], note: str = "", *,
            clients: Iterable[str] | None = None, expires: float | None = None,
            actor: Any = None) -> list[str]:
        messages: list[str] = []
        for doc in _values_doc(values):
            doc.update(list=name.value, note=note)
            if clients:
                doc["clients"] = list(clients)
            if expires is not None:
                doc["expires"] = iso_time(expires)
            answer = self.remote.post("/api/lists", doc)
            messages += [str(m) for m in field_of(self.remote, "/api/lists", answer, "messages", list)]
        return messages

    def remove(self, values: Iterable[tuple[EntryKind | None, str]], *, name: ListName | None = None,
               actor: Any = None) -> int:
        removed = 0
        for doc in _values_doc(values):
            if name is not None:
                doc["list"] = name.value
            answer = self.remote.post("/api/lists/remove", doc)
            removed += int(field_of(self.remote, "/api/lists/remove", answer, "removed", int))
        return removed

    def edit(self, kind: EntryKind | None, value: str, *, to: ListName | None = None,
             note: str | None = None, clients: Iterable[str] | None = None,
             expires: Any = KEEP, actor: Any = None) -> Entry:
        doc: dict[str, Any] = {"value": value}
        if kind is not None:
            doc["kind"] = kind.value
        if to is not None:
            doc["list"] = to.value
        if note is not None:
            doc["note"] = note
        if clients is not None:
            doc["clients"] = list(clients)
        if expires is not KEEP:
            doc["expires"] = "never" if expires is None else iso_time(expires)
        path = "/api/lists/edit"
        answer = self.remote.post(path, doc)
        return entry_of(self.remote, path, answer.get("entry") if isinstance(answer, dict) else None)

    def entries(self, name: ListName | None = None) -> list[Entry]:
        return [e for e in entries_of(self.remote) if name is None or e.list is name]

    def import_text(self, text: str, fmt: str, *, name: ListName | None,
                    kind: EntryKind | None) -> ImportResult:
        """Import a rule file's text (already checked by the command): all of it or nothing."""
        doc: dict[str, Any] = {"format": fmt, "data": text}
        if name is not None:
            doc["list"] = name.value
        if kind is not None:
            doc["kind"] = kind.value
        if len(json.dumps(doc)) > MAX_IMPORT_BYTES:
            from proxy.errors import ConfigError

            raise ConfigError(f"the file is over the admin API's {MAX_IMPORT_BYTES >> 20} MiB request "
                              "limit: split it, or import it on the appliance (without --server)")
        path = "/api/lists/import"
        answer = self.remote.post(path, doc)
        counts = [int(field_of(self.remote, path, answer, k, int))
                  for k in ("added", "moved", "updated", "unchanged")]
        return ImportResult(*counts)

    def audit(self, *, limit: int = 100, value: str | None = None) -> list[AuditEntry]:
        """The newest ``limit`` entries of the lists' own trail (``GET /api/lists/audit``)."""
        path = "/api/lists/audit"
        params: dict[str, Any] = {"limit": limit}
        if value is not None:
            params["value"] = value
        answer = self.remote.get(path, params, limit=MAX_ANSWER)
        out = []
        for row in field_of(self.remote, path, answer, "entries", list):
            if not isinstance(row, dict) or not isinstance(row.get("detail"), dict):
                raise RemoteFailed(f"{self.remote.url}{path} answered a row that is not an audit entry")
            try:
                out.append(AuditEntry(float(row["at"]), str(row["who"]), str(row["origin"]),
                                      str(row["action"]), str(row["list"]), str(row["kind"]),
                                      str(row["value"]), row["detail"]))
            except (KeyError, TypeError, ValueError):
                raise RemoteFailed(f"{self.remote.url}{path} answered a row that is not an audit"
                                   " entry") from None
        return out


def test_urls(remote: Remote, urls: Sequence[str], client: str | None) -> tuple[list[list[str]], str]:
    """Each URL's explanation lines, as the appliance decides it now, and its pattern version."""
    out = []
    for url in urls:
        doc: dict[str, Any] = {"url": url}
        if client is not None:
            doc["client"] = client
        answer = remote.post("/api/lists/test", doc)
        out.append([str(line) for line in field_of(remote, "/api/lists/test", answer, "lines", list)])
    status = remote.get("/api/status")
    pattern = field_of(remote, "/api/status", status, "pattern", dict)
    return out, str(pattern.get("version"))

