"""Histogram.quantile: the latency the console's dashboard shows per cloud endpoint."""

from __future__ import annotations

from proxy.serve.metrics import LATENCY_BUCKETS, Histogram


def test_no_samples_is_no_estimate() -> None:
    assert Histogram().quantile(0.5) is None


def test_the_estimate_lies_within_the_bucket_holding_the_rank() -> None:
    h = Histogram()
    for _ in range(90):
        h.observe(0.0007)  # bucket (0.0005, 0.001]
    for _ in range(10):
        h.observe(0.3)  # bucket (0.25, 0.5]
    assert 0.0005 <= h.quantile(0.5) <= 0.001
    assert 0.25 <= h.quantile(0.95) <= 0.5


def test_above_the_last_bound_says_the_last_bound() -> None:
    h = Histogram()
    h.observe(60.0)
    assert h.quantile(0.99) == LATENCY_BUCKETS[-1]
