"""One definition of a pattern's age (issue 9, item 9): seconds since its version was built.

An appliance that took its patterns from an update source reports, in /readyz (top
level and per pattern) and in /metrics, the same ages and the same staleness. The
update here is real: published 35 minutes after the build it carries, installed by
the updater, then served by an App on that data directory (the setup in which
/readyz said 154 s at the top and 2,343 s per pattern).
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.config import Config
from proxy.patterns.layout import version_time
from proxy.serve import keeper as keeper_module
from proxy.serve.app import App
from proxy.updates.store import PatternStore
from proxy.updates.updater import Updater
from proxy.wire.http import Request, Response
from tests.proxy.updates.test_updater import FakeFetcher, build_version, digests_of, publish

V1, V2 = "2026010100", "2026010101"
PUBLISHED = datetime(2026, 1, 1, 1, 35, tzinfo=UTC)  # V2 was built at 01:00, published at 01:35
NOW = PUBLISHED + timedelta(minutes=2, seconds=34)


class FrozenTime:
    """``time`` for the keeper: every age is computed at NOW, so /readyz and /metrics agree
    to the second without depending on how long the test takes."""

    @staticmethod
    def time() -> float:
        return NOW.timestamp()


def installed_app(tmp_path: Path, **cfg: Any) -> App:
    """An App on a data directory whose patterns came from an update source: V1 then V2,
    where V2 changed the file patterns only (the web patterns keep version V1)."""
    hashes = digests_of(20, "age")
    builds = [build_version(tmp_path / "b", V1, hashes, ["bad.example.test/"]),
              build_version(tmp_path / "b", V2, hashes[3:] + digests_of(5, "new"),
                            ["bad.example.test/"])]
    key = Ed25519PrivateKey.generate()
    publish(tmp_path / "repo", builds, key, PUBLISHED)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    store = PatternStore.open(data / "patterns")
    updater = Updater("http://127.0.0.1:9/", key.public_key(), store,
                      FakeFetcher(tmp_path / "repo"), clock=FrozenTime.time)
    assert asyncio.run(updater.update_once()).changed
    app = App(Config(data_dir=data, query_port=0, query_tls_port=0, **cfg))
    app.open()
    return app


def get(app: App, target: str) -> bytes:
    response = app.routes(Request("GET", target.encode(), [], b"", "127.0.0.1"))
    assert isinstance(response, Response) and response.status == 200
    return response.body


def gauge(metrics: str, name: str) -> dict[str, float]:
    """A per-pattern gauge of the /metrics text, by pattern name."""
    return {found.group(1): float(found.group(2))
            for found in re.finditer(rf'^{name}{{pattern="([a-z-]+)"}} (\S+)$', metrics, re.M)}


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keeper_module, "time", FrozenTime)


def since_built(version: str) -> int:
    built = version_time(version)
    assert built is not None
    return int((NOW - built).total_seconds())


def test_readyz_and_metrics_give_every_pattern_the_same_age(tmp_path: Path, frozen: None) -> None:
    app = installed_app(tmp_path)
    try:
        pattern = json.loads(get(app, "/readyz"))["pattern"]
        metrics = get(app, "/metrics").decode()
    finally:
        app.lists_store.close()
        app.engine.patterns.close()
    per = {name: p["age_seconds"] for name, p in pattern["patterns"].items()}
    versions = {name: p["version"] for name, p in pattern["patterns"].items()}
    assert versions["smart-scan"] == V2 and versions["web-blocking"] == V1  # two ages to tell apart
    # Per pattern: since its version was built, not since the update was published or installed.
    assert per == {name: since_built(v) for name, v in versions.items()}
    # Top level: the served set is as old as its oldest pattern, so it is stale when one is.
    assert pattern["version"] == V2
    assert pattern["age_seconds"] == max(per.values()) == since_built(V1)
    # /metrics says the same, pattern by pattern.
    assert {p: int(a) for p, a in gauge(metrics, "rampart_pattern_age_seconds").items()} == per


@pytest.mark.parametrize("stale_after", [3000, 6000, 9000])
def test_readyz_and_metrics_agree_on_what_is_stale(tmp_path: Path, frozen: None,
                                                   stale_after: int) -> None:
    app = installed_app(tmp_path, stale_after=stale_after)  # the ages are 2,674 s and 6,274 s
    try:
        pattern = json.loads(get(app, "/readyz"))["pattern"]
        metrics = get(app, "/metrics").decode()
    finally:
        app.lists_store.close()
        app.engine.patterns.close()
    expected = {name: p["age_seconds"] > stale_after for name, p in pattern["patterns"].items()}
    assert {name: p["stale"] for name, p in pattern["patterns"].items()} == expected
    assert {p: bool(v) for p, v in gauge(metrics, "rampart_pattern_stale").items()} == expected
    assert pattern["stale"] == (pattern["age_seconds"] > stale_after) == any(expected.values())
