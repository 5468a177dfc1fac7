"""What a running ``App`` keeps of the logs: the store, its writer, and the hooks feeding it.

``Logs.open(cfg)`` opens ``DATA_DIR/logs.sqlite`` and starts the writer thread; then

- ``observe`` (the writer's) is an ``App`` observer: every answered query-door request
  becomes query-log rows, off the request path;
- ``on_upstream`` is a relay observer: each failed upstream attempt is a relay-log row;
- ``follow_updates(updater_of)`` records every update result the process's updater
  reaches (read by the writer thread, which looks at ``updater.last`` between batches);
- ``audit`` records an administrator's action at once (never queued);
- ``close`` writes what is queued and stops the thread.

The store is ``logs.store`` for the admin API's searches and exports (``proxy.logs.search``
and ``proxy.logs.export``, run in a thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from proxy.config import Config
from proxy.errors import RelayError
from proxy.logs.clients import ClientMask
from proxy.logs.store import LogStore, relay_row, update_row
from proxy.logs.writer import LogWriter
from proxy.model import Service
from proxy.wire.http import Request, Response

logger = logging.getLogger(__name__)


def client_mask(cfg: Config) -> ClientMask:
    """How the query log stores client addresses under ``cfg`` (log_clients and
    log_client_networks)."""
    return ClientMask(cfg.log_clients, cfg.log_client_networks)


class Logs:
    def __init__(self, store: LogStore, writer: LogWriter) -> None:
        self.store = store
        self.writer = writer
        self._updater_of: Callable[[], Any] | None = None
        self._seen_update: object = None

    @classmethod
    def open(cls, cfg: Config, **writer_options: Any) -> Logs:
        """The store in ``cfg.data_dir`` and a started writer with ``cfg``'s log keys."""
        store = LogStore.open(cfg.data_dir)
        logs = cls(store, LogWriter(
            store, capacity=cfg.log_queue, clients=client_mask(cfg), days=cfg.log_retention_days,
            max_rows=cfg.log_max_rows, **writer_options))
        logs.writer.tick = logs._follow
        logs.writer.start()
        logger.debug("query log on", extra={"file": str(store.path), "clients": cfg.log_clients})
        return logs

    def close(self) -> None:
        self.writer.stop()
        self.store.close()

    @property
    def observe(self) -> Callable[[Request, Response, float], None]:
        """The App observer (the writer's own ``observe``: one call less per request)."""
        return self.writer.observe

    # RelayObserver
    def on_upstream(self, endpoint: str, service: Service, items: int, seconds: float,
                    error: RelayError | None) -> None:
        if error is not None:
            self.writer.submit("relay", relay_row(time.time(), endpoint, service.value, items,
                                                  seconds, error.kind, error.message))

    def audit(self, actor: str, action: str, detail: str = "", client: str = "", *,
              ok: bool = True) -> None:
        """``LogStore.audit``: who did what, from where, written now."""
        self.store.audit(actor, action, detail, client, ok=ok)

    def record_update(self, result: Mapping[str, Any]) -> None:
        """Queue an update result (``UpdateResult.to_json()``) for the update log."""
        self.writer.submit("updates", update_row(result))

    def follow_updates(self, updater_of: Callable[[], Any]) -> None:
        """Record each new ``updater_of().last`` (an ``UpdateResult``; None: no updater)."""
        self._updater_of = updater_of
        updater = updater_of()
        self._seen_update = getattr(updater, "last", None)  # one from before is not news

    def _follow(self) -> None:
        if self._updater_of is None:
            return
        last = getattr(self._updater_of(), "last", None)
        if last is not None and last is not self._seen_update:
            self._seen_update = last
            self.record_update(last.to_json())
