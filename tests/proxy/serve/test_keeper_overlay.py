"""The keeper serves a version held as base + overlay, and reopens it once it is compacted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.config import Config
from proxy.patterns.table_overlay import OverlaidTable
from proxy.serve.app import App
from proxy.updates.compaction import compact_version
from proxy.updates.store import PatternStore
from proxy.updates.updater import Updater
from proxy.wire.http import Request, Response
from tests.proxy.updates.test_updater import V1, V2, FakeFetcher, build_version, digests_of, publish

F = "file-sha256.tbl"
OLD, NEW = digests_of(20, "kept"), digests_of(5, "new")


def verdicts(app: App) -> list[str]:
    out = []
    for h in OLD + NEW:
        r = app.routes(Request("GET", f"/v1/file/{h}".encode(), [], b"", "127.0.0.1"))
        assert isinstance(r, Response) and r.status == 200
        out.append(json.loads(r.body)["results"][0]["verdict"])
    return out


def test_an_overlaid_version_is_served_then_reopened_compacted(tmp_path: Path) -> None:
    builds = [build_version(tmp_path / "b", V1, OLD, ["bad.example.test/"]),
              build_version(tmp_path / "b", V2, OLD[3:] + NEW, ["bad.example.test/"])]
    key = Ed25519PrivateKey.generate()
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    store = PatternStore.open(data / "patterns")
    for upto in (1, 2):
        publish(tmp_path / "repo", builds[:upto], key)
        updater = Updater("http://127.0.0.1:9/", key.public_key(), store,
                          FakeFetcher(tmp_path / "repo"), compact=False)
        assert asyncio.run(updater.update_once()).changed
    current = store.current_path()
    assert current is not None and not (current / F).is_file()
    app = App(Config(data_dir=data, query_port=0, query_tls_port=0))
    app.open()
    try:
        assert isinstance(app.engine.patterns.table(F), OverlaidTable)
        want = ["unknown"] * 3 + ["malicious"] * 22
        assert verdicts(app) == want
        assert not app.engine.patterns.compacted()
        assert compact_version(current) == (["file-md5.tbl", "file-sha1.tbl", F], set())
        assert app.engine.patterns.compacted() and verdicts(app) == want

        async def reload() -> bool:
            return await app.keeper.reload()

        old, swaps = app.engine.patterns, app.keeper.swaps
        assert asyncio.run(reload())  # the same version, reopened on its full file
        assert not isinstance(app.engine.patterns.table(F), OverlaidTable)
        assert app.keeper.swaps == swaps  # not a new version: rampart_pattern_swaps stays
        assert app.keeper.served == current.name and verdicts(app) == want
        old.close()
    finally:
        app.lists_store.close()
        app.engine.patterns.close()
