"""The light agent pattern a client keeps, and its refresh from the servers.

The file is ``STATE_DIR/agent.pattern`` (0600, written whole); its ETag (the file's
SHA-256), the pattern version and when it was last checked are in the state's meta
table. A refresh asks ``GET /v1/agent-pattern?from=<etag>`` with ``If-None-Match``: the
server answers 304 (current), a diff (applied and checked against the SHA-256 it names),
or the whole file. It runs when ``interval`` seconds have passed since the last check
(hourly by default: an hourly diff is small, so new threats reach products within the
hour) or when asked.

``needs_query(digests)``: False when the filter is certain none of the file's digests is
in the Smart Scan Pattern, so no server need be asked under the ``filtered`` query
policy; True otherwise, and always True while no agent pattern is held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.client.digests import Digests
from proxy.client.errors import ClientError
from proxy.errors import PatternError
from proxy.files import write_atomic
from proxy.patterns.agent import AgentFilter, apply_diff

logger = logging.getLogger(__name__)

FILE = "agent.pattern"
MAX_BYTES = 256 << 20  # an agent pattern of ~60 M entries; a larger answer is refused
INTERVAL = 3600.0
PATH = "/v1/agent-pattern"
FULL, DIFF = "application/x-rampart-agent", "application/x-rampart-agent-diff"

Ask = Callable[[str, str, Mapping[str, str]], Awaitable[tuple[Any, int, Mapping[str, str], bytes]]]
"""``ask(method, path, headers)`` → (server, status, headers with lower-case names, body);
raises ``NoServer`` when no server answered (the transport's failover)."""


@dataclass(frozen=True)
class Refreshed:
    """What a refresh did: ``current``, ``diff``, ``full``, ``none`` (the servers have no
    agent pattern) or ``not due``; the version held after it."""

    how: str
    version: str | None
    bytes: int = 0


class AgentPattern:
    def __init__(self, state_dir: Path, state: Any, *, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(state_dir) / FILE
        self.state = state
        self.interval = interval
        self.clock = clock
        self.filter: AgentFilter | None = self._load()

    @property
    def version(self) -> str | None:
        return self.state.get_meta("agent.version") if self.filter is not None else None

    def _load(self) -> AgentFilter | None:
        if not self.path.is_file():
            return None
        try:
            data = self.path.read_bytes()
            if len(data) > MAX_BYTES:
                raise PatternError(f"over {MAX_BYTES} bytes")
            return AgentFilter.from_bytes(data)
        except (OSError, PatternError) as e:  # a damaged copy: fetched whole at the next refresh
            logger.warning("agent pattern %s is unusable (%s); it is fetched again", self.path,
                           getattr(e, "message", e))
            self.path.unlink(missing_ok=True)
            self.state.set_meta("agent.etag", "")
            return None

    def needs_query(self, digests: Digests) -> bool:
        f = self.filter
        if f is None:
            return True
        return any(f.may_contain(bytes.fromhex(value)) for _, value in digests.items())

    def due(self) -> bool:
        checked = self.state.get_meta("agent.checked")
        return self.filter is None or checked is None or self.clock() - float(checked) >= self.interval

    async def refresh(self, ask: Ask, *, force: bool = False) -> Refreshed:
        """Bring the pattern up to date from the servers (when due, or ``force``)."""
        if not (force or self.due()):
            return Refreshed("not due", self.version)
        etag = self.state.get_meta("agent.etag") if self.filter is not None else None
        path, headers = PATH, {}
        if etag:
            path, headers = f"{PATH}?from={etag}", {"If-None-Match": f'"{etag}"'}
        _, status, answer_headers, body = await ask("GET", path, headers)
        now = self.clock()
        if status == 304 and self.filter is not None:
            self.state.set_meta("agent.checked", str(now))
            return Refreshed("current", self.version)
        if status == 404:
            self.state.set_meta("agent.checked", str(now))
            return Refreshed("none", self.version)
        if status != 200:
            raise ClientError(f"GET {PATH}: the server answered {status}")
        kind = answer_headers.get("content-type", "").split(";")[0].strip()
        data, how = self._new_file(kind, body)
        try:
            new = AgentFilter.from_bytes(data)
        except PatternError as e:
            raise ClientError(f"GET {PATH}: the agent pattern is unusable: {e.message}") from None
        write_atomic(self.path, data)
        self.filter = new
        version = answer_headers.get("x-pattern-version", "")[:64]
        for key, value in (("agent.etag", new.sha256), ("agent.version", version),
                           ("agent.checked", str(now)), ("agent.updated", str(now))):
            self.state.set_meta(key, value)
        logger.info("agent pattern %s (%s, %d bytes)", version, how, len(body))
        return Refreshed(how, version, len(body))

    def _new_file(self, kind: str, body: bytes) -> tuple[bytes, str]:
        if len(body) > MAX_BYTES:
            raise ClientError(f"GET {PATH}: the answer is over {MAX_BYTES} bytes")
        if kind == FULL:
            return body, "full"
        if kind == DIFF and self.filter is not None:
            try:
                return apply_diff(self.filter.to_bytes(), body), "diff"
            except PatternError as e:
                raise ClientError(f"GET {PATH}: the diff does not apply: {e.message}") from None
        raise ClientError(f"GET {PATH}: unexpected content type {kind[:64]!r}")
