"""`rampart serve` as a real process: what an unknown item becomes (issue 9, items 7 and 8).

With no cloud configured it is answered ``local`` with the local TTL (a final answer);
with a configured cloud that does not answer it is ``degraded`` with ``retry_after``,
and ``degraded_action = "block"`` in the config file blocks it under every policy.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, start_appliance

pytestmark = pytest.mark.integration

UNKNOWN = "ef" * 32
URL = "http://nobody-knows.example.test/"


def test_no_cloud_answers_unknown_items_locally_with_the_local_ttl(tmp_path: Path) -> None:
    p = start_appliance(tmp_path, None)
    try:
        base = f"http://127.0.0.1:{p.ports['http']}"
        (got,) = httpx.get(f"{base}/v1/file/{UNKNOWN}", timeout=15).json()["results"]
        (web,) = httpx.post(f"{base}/v1/web", json={"urls": [URL], "policy": "medium"},
                            timeout=15).json()["results"]
    finally:
        p.stop()
    assert got == {"sha256": UNKNOWN, "verdict": "unknown", "source": "local",
                   "note": "no cloud configured", "ttl": 3600}
    assert web == {"url": URL, "rating": "untested", "score": 50, "source": "local",
                   "note": "no cloud configured", "ttl": 3600, "action": "allow"}


def test_a_cloud_that_does_not_answer_gives_degraded_and_degraded_action_applies(
        tmp_path: Path) -> None:
    config = tmp_path / "rampart.toml"
    config.write_text('degraded_action = "block"\nconnect_timeout = 0.5\ntotal_timeout = 2\n')
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    p = start_appliance(tmp_path, None, "--config", str(config), "--cloud", down)
    try:
        base = f"http://127.0.0.1:{p.ports['http']}"
        (web,) = httpx.post(f"{base}/v1/web", json={"urls": [URL], "policy": "low"},
                            timeout=15).json()["results"]
    finally:
        p.stop()
    assert web == {"url": URL, "rating": "untested", "score": 50, "source": "degraded",
                   "retry_after": 60, "action": "block"}


def test_the_degraded_action_flag_overrides_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "rampart.toml"
    config.write_text('degraded_action = "block"\nconnect_timeout = 0.5\ntotal_timeout = 2\n')
    down = f"http://127.0.0.1:{free_port()}"
    p = start_appliance(tmp_path, None, "--config", str(config), "--cloud", down,
                        "--degraded-action", "allow")
    try:
        (web,) = httpx.post(f"http://127.0.0.1:{p.ports['http']}/v1/web",
                            json={"urls": [URL], "policy": "medium"}, timeout=15).json()["results"]
    finally:
        p.stop()
    assert (web["source"], web["action"], web["retry_after"]) == ("degraded", "allow", 60)
