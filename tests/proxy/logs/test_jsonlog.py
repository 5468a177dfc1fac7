"""log_format = "json": every standard-error line is one JSON object a collector can read."""

from __future__ import annotations

import io
import json
import logging

from proxy.logs.jsonlog import json_formatter


def lines_of(emit: object) -> list[dict[str, object]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    log = logging.getLogger("rampart.test.jsonlog")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        emit(log)  # type: ignore[operator]
    finally:
        log.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_holds_time_level_logger_message_and_extras() -> None:
    (line,) = lines_of(lambda log: log.warning(
        "pattern update: %s", "failed\nsecond line", extra={"update": {"ok": False, "reason": "timeout"},
                                                            "time": "not the time"}))
    assert line["level"] == "warning"
    assert line["logger"] == "rampart.test.jsonlog"
    assert line["message"] == "pattern update: failed\nsecond line"
    assert line["update"] == {"ok": False, "reason": "timeout"}
    assert str(line["time"]).endswith("Z") and line["time"] != "not the time"


def test_an_exception_and_odd_values_still_make_one_line() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed", extra={"path": object(), "count": 3})

    (line,) = lines_of(emit)
    assert "ValueError: boom" in str(line["exception"])
    assert line["count"] == 3
    assert str(line["path"]).startswith("<object object")
