"""The dashboard's numbers in /api/status: cache hit ratio and per-endpoint relay health."""

from __future__ import annotations

from collections import Counter

from proxy.console.routes import cache_status, relay_status
from proxy.errors import RelayError
from proxy.model import Service
from proxy.serve import fleet, metrics
from proxy.serve.metrics import Stats


def test_cache_hit_ratio_counts_items_the_cloud_would_have_had() -> None:
    stats = Stats()
    stats.count_items(Service.FILE, Counter({"cache": 3, "cloud": 1, "pattern": 50}))
    assert cache_status(stats.items, 1) == {"entries": 1, "hits": 3, "lookups": 4, "hit_ratio": 0.75}
    assert cache_status(Stats().items, 0)["hit_ratio"] is None


def test_the_counters_read_back_from_merged_scrapes_are_the_processes_sums() -> None:
    """With query-door workers the status page reads every process's /metrics text: what it
    shows must be the sum of what each process counted, latency quantiles included."""
    a, b, whole = Stats(), Stats(), Stats()
    url = "https://a.test:9443"
    timeout = RelayError("read timed out", kind="timeout")
    for st in (a, whole):
        st.count_items(Service.FILE, Counter({"cache": 3, "pattern": 5}))
        st.on_upstream(url, Service.FILE, 1, 0.004, None)
        st.on_upstream(url, Service.FILE, 1, 0.3, None)
    for st in (b, whole):
        st.count_items(Service.FILE, Counter({"cache": 1, "cloud": 2}))
        st.on_upstream(url, Service.FILE, 1, 0.004, None)
        st.on_upstream(url, Service.FILE, 1, 2.0, timeout)
    texts = {"w0": metrics.render(metrics.registry_for(a)), "w1": metrics.render(metrics.registry_for(b))}
    merged, _ = metrics.stats_of(fleet.merge(texts))
    assert merged.items == whole.items
    assert merged.relay_requests == whole.relay_requests
    assert relay_status(merged)[url]["latency_ms"] == relay_status(whole)[url]["latency_ms"]


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
