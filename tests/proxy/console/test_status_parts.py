"""The dashboard's numbers in /api/status: cache hit ratio and per-endpoint relay health."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from proxy.console.routes import cache_status, relay_status
from proxy.errors import RelayError
from proxy.model import Service
from proxy.serve.metrics import Stats


def test_cache_hit_ratio_counts_items_the_cloud_would_have_had() -> None:
    stats = Stats()
    stats.count_items(Service.FILE, Counter({"cache": 3, "cloud": 1, "pattern": 50}))
    app = SimpleNamespace(stats=stats, cache={"a": 1})
    assert cache_status(app) == {"entries": 1, "hits": 3, "lookups": 4, "hit_ratio": 0.75}
    empty = SimpleNamespace(stats=Stats(), cache={})
    assert cache_status(empty)["hit_ratio"] is None


def test_relay_status_by_endpoint_outcome_and_latency() -> None:
    stats = Stats()
    a, b = "https://a.test:9443", "https://b.test:9443"
    stats.on_upstream(a, Service.FILE, 1, 0.004, None)
    stats.on_upstream(a, Service.FILE, 1, 0.004, None)
    stats.on_upstream(b, Service.WEB, 1, 2.0, RelayError("read timed out", kind="timeout"))
    got = relay_status(stats)
    assert got[a]["ok"] == 2 and got[a]["errors"] == {}
    assert 2.5 <= got[a]["latency_ms"]["p50"] <= 5 and got[a]["latency_ms"]["mean"] == 4.0
    assert got[b]["ok"] == 0 and got[b]["errors"] == {"timeout": 1}
