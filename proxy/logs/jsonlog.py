"""Standard-error log lines as JSON (``log_format = "json"``), for the journal and collectors.

One object a line: ``time`` (ISO-8601 UTC, milliseconds), ``level``, ``logger``,
``message``, then the record's extra fields (``logger.info(..., extra={...})``: the
updater's ``update``, the lists' counts), ``exception`` with the traceback when there is
one. Values JSON cannot hold are written as their ``str``; a newline in a message is
escaped, so a line is always one record. ``json_formatter()`` is what
``setup_logging`` puts on its handler.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def json_formatter() -> logging.Formatter:
    """The formatter for ``log_format = "json"``."""
    return JsonFormatter()
