"""Counters, histograms and gauges rendered in the Prometheus text format."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.errors import BadAnswer, ConnectError, ReadTimeout, RelayError, TlsError, UpstreamStatus
from proxy.model import Service
from proxy.serve import metrics
from proxy.serve.metrics import LATENCY_BUCKETS, Histogram, Stats


def scrape(stats: Stats) -> str:
    return metrics.render(metrics.registry_for(stats)).decode()


def lines(stats: Stats) -> set[str]:
    return set(scrape(stats).splitlines())


def samples(stats: Stats) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed back by prometheus-client's own parser."""
    out = {}
    for family in text_string_to_metric_families(scrape(stats)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# ---------------------------------------------------------------- item counters


def test_items_counted_by_service_and_source() -> None:
    st = Stats()
    st.count_items(Service.FILE, Counter({"pattern": 3, "cloud": 1}))
    st.count_items(Service.FILE, Counter({"pattern": 2, "degraded": 4}))
    st.count_items(Service.WEB, Counter({"blocked-list": 5}))
    st.count_items(Service.DOMAIN, Counter({"cache": 7}))
    text = lines(st)
    for line in [
        'rampart_items_total{service="file",source="pattern"} 5.0',
        'rampart_items_total{service="file",source="cloud"} 1.0',
        'rampart_items_total{service="file",source="degraded"} 4.0',
        'rampart_items_total{service="web",source="blocked-list"} 5.0',
        'rampart_items_total{service="domain",source="cache"} 7.0',
    ]:
        assert line in text
    assert not any(line.startswith('rampart_items_total{service="web",source="pattern"') for line in text)


def test_empty_stats_render_families_without_samples() -> None:
    text = scrape(Stats())
    assert "# TYPE rampart_items_total counter" in text
    assert "# TYPE rampart_request_latency_seconds histogram" in text
    assert "rampart_request_latency_seconds_count 0.0" in text
    assert "rampart_items_total{" not in text


def test_requests_and_relay_outcomes_counted() -> None:
    st = Stats()
    st.requests[("/v1/file", 200)] += 3
    st.requests[("/v1/web", 400)] += 1
    st.on_upstream("https://c1.test:443", Service.FILE, 10, 0.004, None)
    st.on_upstream("https://c1.test:443", Service.WEB, 2, 0.2, None)
    st.on_upstream("https://c1.test:443", Service.FILE, 1, 5.0, ReadTimeout("c1.test:443", "read timeout"))
    st.on_upstream("https://c2.test:443", Service.FILE, 1, 0.01, TlsError("c2.test:443", "handshake failed"))
    got = samples(st)
    assert got[("rampart_http_requests_total", (("path", "/v1/file"), ("status", "200")))] == 3
    assert got[("rampart_http_requests_total", (("path", "/v1/web"), ("status", "400")))] == 1
    ok = ("endpoint", "https://c1.test:443"), ("outcome", "ok")
    assert got[("rampart_relay_requests_total", ok)] == 2
    timeout = ("endpoint", "https://c1.test:443"), ("outcome", "timeout")
    assert got[("rampart_relay_requests_total", timeout)] == 1
    tls = ("endpoint", "https://c2.test:443"), ("outcome", "tls")
    assert got[("rampart_relay_requests_total", tls)] == 1
    c1 = (("endpoint", "https://c1.test:443"),)
    assert got[("rampart_relay_latency_seconds_count", c1)] == 3
    assert got[("rampart_relay_latency_seconds_sum", c1)] == pytest.approx(5.204)
    assert got[("rampart_relay_latency_seconds_count", (("endpoint", "https://c2.test:443"),))] == 1


# ---------------------------------------------------------------- histograms


@pytest.mark.parametrize(
    "seconds, first_bucket",
    [
        (0.0, "0.0005"),
        (0.0005, "0.0005"),  # a bound is "less or equal"
        (0.00051, "0.001"),
        (0.003, "0.005"),
        (1.0, "1"),
        (9.99, "10"),
        (10.0, "10"),
        (10.01, "+Inf"),
        (3600.0, "+Inf"),
    ],
)
def test_histogram_bucket_is_le(seconds: float, first_bucket: str) -> None:
    h = Histogram()
    h.observe(seconds)
    buckets = h.buckets()
    counts = dict(buckets)
    bounds = [b for b, _ in buckets]
    i = bounds.index(first_bucket)
    assert all(counts[b] == 0 for b in bounds[:i])
    assert all(counts[b] == 1 for b in bounds[i:])


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram()
    for s in (0.0001, 0.0002, 0.002, 0.02, 0.02, 0.3, 7.0, 50.0):
        h.observe(s)
    buckets = h.buckets()
    assert [b for b, _ in buckets] == [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    values = [n for _, n in buckets]
    assert values == sorted(values)  # never decreasing
    assert dict(buckets)["0.0005"] == 2
    assert dict(buckets)["0.0025"] == 3
    assert dict(buckets)["0.025"] == 5
    assert dict(buckets)["0.5"] == 6
    assert dict(buckets)["10"] == 7
    assert values[-1] == h.count == 8
    assert h.total == pytest.approx(57.3423)


def test_rendered_histogram_is_cumulative() -> None:
    st = Stats()
    for s in (0.0004, 0.004, 0.04, 0.4, 4.0, 40.0):
        st.request_latency.observe(s)
    text = lines(st)
    for line in [
        'rampart_request_latency_seconds_bucket{le="0.0005"} 1.0',
        'rampart_request_latency_seconds_bucket{le="0.005"} 2.0',
        'rampart_request_latency_seconds_bucket{le="0.05"} 3.0',
        'rampart_request_latency_seconds_bucket{le="0.5"} 4.0',
        'rampart_request_latency_seconds_bucket{le="5"} 5.0',
        'rampart_request_latency_seconds_bucket{le="10"} 5.0',
        'rampart_request_latency_seconds_bucket{le="+Inf"} 6.0',
        "rampart_request_latency_seconds_count 6.0",
    ]:
        assert line in text
    got = samples(st)
    assert got[("rampart_request_latency_seconds_sum", ())] == pytest.approx(44.4444)


# ---------------------------------------------------------------- gauges


def test_plain_gauge_rendered_and_read_at_scrape_time() -> None:
    st = Stats()
    size = [3]
    metrics.gauge(st, "rampart_cache_entries", "Cloud answers in the cache", lambda: size[0])
    text = scrape(st)
    assert "# HELP rampart_cache_entries Cloud answers in the cache" in text
    assert "# TYPE rampart_cache_entries gauge" in text
    assert "rampart_cache_entries 3.0" in text.splitlines()
    size[0] = 42
    assert "rampart_cache_entries 42.0" in lines(st)


def test_labelled_gauge_rendered() -> None:
    st = Stats()
    metrics.gauge(
        st,
        "rampart_pattern_info",
        "The served pattern version",
        lambda: [({"version": "2026112213", "kind": "file"}, 1.0), ({"version": "7", "kind": "web"}, 1.0)],
    )
    text = lines(st)
    assert 'rampart_pattern_info{kind="file",version="2026112213"} 1.0' in text
    assert 'rampart_pattern_info{kind="web",version="7"} 1.0' in text


def test_gauge_help_may_contain_any_text() -> None:
    st = Stats()
    metrics.gauge(st, "rampart_uptime_seconds", "Seconds since start | monotonic", lambda: 5)
    text = scrape(st)
    assert "# HELP rampart_uptime_seconds Seconds since start | monotonic" in text
    assert "rampart_uptime_seconds 5.0" in text.splitlines()


def test_registering_a_gauge_again_replaces_it() -> None:
    st = Stats()
    metrics.gauge(st, "rampart_x", "first", lambda: 1)
    metrics.gauge(st, "rampart_x", "second", lambda: 2)
    text = scrape(st)
    assert text.count("# TYPE rampart_x gauge") == 1
    assert "rampart_x 2.0" in text.splitlines()


def test_broken_gauge_does_not_break_the_scrape() -> None:
    st = Stats()
    st.count_items(Service.WEB, Counter({"pattern": 1}))

    def broken() -> float:
        raise RuntimeError("patterns not loaded")

    metrics.gauge(st, "rampart_pattern_age_seconds", "Age of the served pattern", broken)
    metrics.gauge(st, "rampart_cache_entries", "Cloud answers in the cache", lambda: 9)
    text = lines(st)
    assert 'rampart_items_total{service="web",source="pattern"} 1.0' in text
    assert "rampart_cache_entries 9.0" in text
    assert not any(line.startswith("rampart_pattern_age_seconds ") for line in text)


def test_gauge_samples_with_uneven_labels() -> None:
    st = Stats()
    metrics.gauge(st, "rampart_doors", "Door ports", lambda: [({"door": "query"}, 8080), ({}, 1)])
    text = lines(st)
    assert 'rampart_doors{door="query"} 8080.0' in text
    assert 'rampart_doors{door=""} 1.0' in text


@pytest.mark.parametrize(
    ("error", "kind"),
    [(None, "ok"), (ReadTimeout("cloud.test:443", "read timeout after 5s"), "timeout"),
     (RelayError("deadline passed", kind="timeout"), "timeout"),
     (TlsError("cloud.test:443", "TLS handshake failed: certificate verify failed"), "tls"),
     (ConnectError("cloud.test:443", "connection refused"), "connect"),
     (UpstreamStatus("upstream answered HTTP 502"), "status"),
     (BadAnswer("expected 3 results"), "bad_answer"), (RelayError("something odd"), "error")],
)
def test_relay_errors_become_a_few_label_values(error: RelayError | None, kind: str) -> None:
    st = Stats()
    st.on_upstream("https://c.test:443", Service.FILE, 1, 0.1, error)
    assert samples(st)[("rampart_relay_requests_total", (("endpoint", "https://c.test:443"),
                                                         ("outcome", kind)))] == 1
