"""``python3 -m proxy.cli.worker RUN INDEX COUNT PARENT``: one query-door worker of
``rampart serve --workers N``, started by the main process (``proxy.serve.workers``), not by
hand. Here, not in ``proxy.serve``, because a worker also serves the Safe Browsing v4 routes
(``proxy.sb``), which ``proxy.serve`` may not import; the worker itself is
``proxy.serve.worker``."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from proxy.cli.common import setup_logging
from proxy.errors import RampartError
from proxy.serve import worker
from proxy.serve.app import App

logger = logging.getLogger(__name__)

USAGE = "usage: python3 -m proxy.cli.worker RUN_DIR INDEX COUNT PARENT_PID"


def safe_browsing(app: App) -> None:
    """Give the worker's App the /v4/ routes, its first prefix set built off the loop (as
    ``addons.query_door`` does for the single process)."""
    from proxy.sb.api import SafeBrowsing

    sb = SafeBrowsing(lambda: app.engine, app.cfg)
    app.safe_browsing = sb.handle

    def prepare() -> None:
        try:
            sb.prepare()
        except Exception:  # the first request builds it then
            logger.exception("Safe Browsing prefix set not prepared")

    threading.Thread(target=prepare, name="sb-prepare", daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) != 4 or not all(a.isdigit() for a in argv[1:]):
        print(USAGE, file=sys.stderr)
        return 2
    run_dir, index, count, parent = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    try:
        cfg = worker.read_config(run_dir / worker.CONFIG_FILE)
    except RampartError as e:
        print(f"rampart worker {index}: error: {e.message}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.log_format, syslog=cfg)
    return worker.run(cfg, run_dir, index, count, parent, prepare=safe_browsing)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
