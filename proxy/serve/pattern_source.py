"""Re-serving: the served pattern version as an update source, so appliances chain.

``/v1/patterns/...`` serves the repository layout of ``proxy.updates.repo``. The
manifest and signature are the publisher's bytes, re-served unchanged, so a chained
appliance verifies them with the publisher's public key; files are found among the
versions the store keeps (full files, and the diffs this appliance downloaded; a diff
it does not have is a 404, on which a follower takes the full file). A version that
still holds a table as base + overlay (``proxy.patterns.overlays``: compaction has not
run yet) has its full file compacted on demand, checked against the signed manifest,
before it is served.
``/v1/agent-pattern`` serves the agent pattern with an ``ETag`` (its SHA-256),
``If-None-Match`` (304) and ``?from=ETAG`` diffs made from a kept version.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.errors import PatternError, ProtocolError
from proxy.patterns.layout import (
    AGENT,
    AGENT_FILE,
    DIFFS_DIR,
    MANIFEST,
    PATTERN_FILES,
    SIGNATURE,
    SOURCE_DIR,
    STRINGS_FILE,
)
from proxy.serve.routes import parse_query
from proxy.updates.compaction import compact_version
from proxy.updates.manifest import LocalManifest
from proxy.wire import paths
from proxy.wire.http import Request, Response

if TYPE_CHECKING:
    from proxy.serve.keeper import PatternKeeper

logger = logging.getLogger(__name__)

AGENT_DIFF_CACHE = 8
_REPO_PATH = re.compile(
    r"(?:full/(?P<fp>[a-z0-9-]{1,32})/(?P<fv>\d{10,14})/(?P<ff>[a-z0-9._-]{1,64})"
    r"|diffs/(?P<dp>[a-z0-9-]{1,32})/(?P<da>\d{10,14})-(?P<db>\d{10,14})/(?P<df>[a-z0-9._-]{1,64})\.diff)"
)
_ETAG = re.compile(r'W?/?"?([0-9a-f]{64})"?')


class PatternSource:
    """The routes of ``/v1/patterns/`` and ``/v1/agent-pattern`` for a ``PatternKeeper``."""

    def __init__(self, keeper: PatternKeeper) -> None:
        self.keeper = keeper
        self._agent_diffs: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._compacting = threading.Lock()

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        """``/v1/patterns/<repo path>`` and ``/v1/agent-pattern`` (their methods checked by the
        routes, from ``proxy.wire.paths``)."""
        path, _, query = request.target.partition(b"?")
        p = path.decode("latin-1")
        if p == paths.AGENT_PATTERN.path:
            return self._agent(request, query)
        return self._repo_file(p.removeprefix(paths.PATTERNS.path))

    def _served_dir(self) -> Path:
        if self.keeper.store is not None and self.keeper.served is not None:
            return self.keeper.store.path_of(self.keeper.served)
        if self.keeper.cfg.pattern_dir is not None:
            return self.keeper.cfg.pattern_dir
        raise ProtocolError("not_found", "no pattern is served", status=404)

    def _repo_file(self, rel: str) -> Awaitable[Response]:
        if rel in (MANIFEST, SIGNATURE):
            found = self._served_dir() / SOURCE_DIR / rel
            if not found.is_file():
                raise ProtocolError("not_found", "this appliance has no signed source manifest "
                                    "(it serves a pattern that did not come from an update source)",
                                    status=404)
            return self._send(found, "application/json" if rel == MANIFEST else
                              "application/octet-stream")
        m = _REPO_PATH.fullmatch(rel)
        if m is None:
            raise ProtocolError("not_found", f"no such pattern file {rel[:100]!r}", status=404)
        held = self._find(m)
        if held is None:
            raise ProtocolError("not_found", f"this appliance does not hold {rel[:100]!r}", status=404)
        return self._send(held, "application/octet-stream")

    def _kept_dirs(self) -> list[Path]:
        if self.keeper.store is None:
            return [self._served_dir()]
        names = self.keeper.store.versions()
        if self.keeper.served in names:  # the served one first
            names.remove(self.keeper.served)
            names.append(self.keeper.served)
        return [self.keeper.store.path_of(n) for n in reversed(names)]

    def _find(self, m: re.Match[str]) -> Path | None:
        for d in self._kept_dirs():
            local = LocalManifest.load(d)
            if m["fp"]:
                pattern, version, file = m["fp"], m["fv"], m["ff"]
                if pattern == "strings":
                    if file == STRINGS_FILE and local.strings_version == version:
                        return d / STRINGS_FILE
                    continue
                entry = local.patterns.get(pattern)
                if (entry is not None and entry.version == version
                        and file in PATTERN_FILES.get(pattern, ())):
                    return d / file
            else:
                candidate = d / DIFFS_DIR / m["dp"] / f"{m['da']}-{m['db']}" / f"{m['df']}.diff"
                if candidate.is_file():
                    return candidate
        return None

    async def _send(self, path: Path, content_type: str) -> Response:
        limit = self.keeper.cfg.update_max_bytes

        def read() -> bytes:
            if not path.is_file() and path.name in LocalManifest.load(path.parent).overlays:
                with self._compacting:  # one at a time; a second finds the file made
                    try:
                        compact_version(path.parent)
                    except (OSError, PatternError) as e:  # not made: a 404 below
                        logger.warning("cannot compact %s to serve it: %s", path.name, e)
            with open(path, "rb") as f:
                data = f.read(limit + 1)
            if len(data) > limit:
                raise ProtocolError("too_large", "file is over update_max_bytes", status=413)
            return data

        try:
            body = await asyncio.to_thread(read)
        except FileNotFoundError:
            raise ProtocolError("not_found", "pattern file went away (version pruned)",
                                status=404) from None
        return Response(200, body, content_type=content_type)

    def _agent(self, request: Request, query: bytes) -> Response | Awaitable[Response]:
        path = self._served_dir() / AGENT_FILE
        entry = self.keeper.local.patterns.get(AGENT)
        spec = self.keeper.local.spec(AGENT, AGENT_FILE)
        if entry is None or spec is None or not path.is_file():
            raise ProtocolError("not_found", "this appliance has no agent pattern yet "
                                "(it comes with the first update from an update source)", status=404)
        sha = spec.sha256
        etag = f'"{sha}"'
        headers = (("ETag", etag), ("Cache-Control", "no-cache"), ("X-Pattern-Version", entry.version))
        inm = request.header(b"if-none-match")
        if inm is not None and etag in [t.strip() for t in inm.decode("latin-1").split(",")]:
            return Response(304, b"", content_type="application/octet-stream", headers=headers)
        base = parse_query(query, "GET /v1/agent-pattern").get("from")
        if base is not None and base.strip().strip('"') == sha:
            return Response(304, b"", content_type="application/octet-stream", headers=headers)
        return self._agent_body(path, sha, base, headers)

    async def _agent_body(self, path: Path, sha: str, base: str | None,
                          headers: tuple[tuple[str, str], ...]) -> Response:
        from proxy.patterns import agent

        if base is not None:
            m = _ETAG.fullmatch(base.strip())
            old = self._agent_file_with(m.group(1)) if m else None
            if old is not None:
                key = (m.group(1), sha)  # type: ignore[union-attr]
                diff = self._agent_diffs.get(key)
                if diff is None:
                    diff = await asyncio.to_thread(
                        lambda: agent.make_diff(old.read_bytes(), path.read_bytes()))
                    self._agent_diffs[key] = diff
                    while len(self._agent_diffs) > AGENT_DIFF_CACHE:
                        self._agent_diffs.popitem(last=False)
                return Response(200, diff, content_type="application/x-rampart-agent-diff",
                                headers=headers)
        body = await asyncio.to_thread(path.read_bytes)
        return Response(200, body, content_type="application/x-rampart-agent", headers=headers)

    def _agent_file_with(self, sha: str) -> Path | None:
        for d in self._kept_dirs():
            spec = LocalManifest.load(d).spec(AGENT, AGENT_FILE)
            if spec is not None and spec.sha256 == sha and (d / AGENT_FILE).is_file():
                return d / AGENT_FILE
        return None
