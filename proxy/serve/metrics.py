"""Counters kept on the request path as plain integers, exported in Prometheus format at scrape time.

The hot path only does ``stats.items[(service, source)] += n``; a
prometheus-client Collector reads the numbers when ``/metrics`` is asked.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from proxy.errors import RelayError
from proxy.model import Service, Source

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Histogram:
    """A fixed-bucket latency histogram; ``observe`` is a bisect and two additions."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """An estimate of the ``q`` quantile in seconds (linear within its bucket; the top
        bucket's lower bound when it falls above the last bound); None before any sample."""
        if not self.count:
            return None
        rank = q * self.count
        acc = 0
        lower = 0.0
        for bound, n in zip(LATENCY_BUCKETS, self.counts):
            if n and acc + n >= rank:
                return lower + (bound - lower) * max(0.0, rank - acc) / n
            acc += n
            lower = bound
        return LATENCY_BUCKETS[-1]

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.counts):
            acc += n
            out.append(("+Inf" if bound == float("inf") else str(bound), acc))
        return out


_ITEM_KEYS = {(service, source): (service.value, source.value)
              for service in Service for source in Source}  # enum values without a lookup each


def item_key(service: Service, source: Any) -> tuple[str, str]:
    """``Stats.items``' key for ``service``'s items from ``source`` (a Source or its value)."""
    return (service.value, getattr(source, "value", source))


class Stats:
    """Everything /metrics reports. Gauges are read through callbacks set by the app."""

    def __init__(self) -> None:
        self.items: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[tuple[str, int]] = Counter()  # (path group, status)
        self.relay_requests: Counter[tuple[str, str]] = Counter()  # (endpoint, outcome)
        self.relay_latency: dict[str, Histogram] = {}
        self.request_latency = Histogram()
        # metric name -> (help text, read): set through ``gauge``
        self.gauges: dict[str, tuple[str, Callable[[], list[tuple[dict[str, str], float]]]]] = {}
        # counters kept elsewhere (e.g. the connection caps), read the same way: set through ``counter``
        self.counters: dict[str, tuple[str, Callable[[], list[tuple[dict[str, str], float]]]]] = {}
        self.started = time.time()

    def count_items(self, service: Service, sources: Mapping[Any, int]) -> None:
        """Add one request's items, counted by source (a Source or its string value)."""
        items = self.items
        for source, n in sources.items():
            items[_ITEM_KEYS.get((service, source)) or item_key(service, source)] += n

    def count_item(self, service: Service, source: Any) -> None:
        """``count_items`` for one item: no mapping made for it."""
        self.items[_ITEM_KEYS.get((service, source)) or item_key(service, source)] += 1

    # RelayObserver
    def on_upstream(
        self, endpoint: str, service: Service, items: int, seconds: float, error: RelayError | None
    ) -> None:
        self.relay_requests[(endpoint, "ok" if error is None else error.kind)] += 1
        self.relay_latency.setdefault(endpoint, Histogram()).observe(seconds)


class _Collector:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self.stats
        c = CounterMetricFamily(
            "rampart_items", "Items answered, by service and source", labels=["service", "source"]
        )
        for (service, source), n in sorted(st.items.items()):
            c.add_metric([service, source], n)
        yield c
        c = CounterMetricFamily(
            "rampart_http_requests", "Query-door requests by path and status", labels=["path", "status"]
        )
        for (path, status), n in sorted(st.requests.items()):
            c.add_metric([path, str(status)], n)
        yield c
        c = CounterMetricFamily(
            "rampart_relay_requests",
            "Upstream requests to the cloud by endpoint and outcome",
            labels=["endpoint", "outcome"],
        )
        for (endpoint, outcome), n in sorted(st.relay_requests.items()):
            c.add_metric([endpoint, outcome], n)
        yield c
        h = HistogramMetricFamily(
            "rampart_relay_latency_seconds", "Upstream request latency", labels=["endpoint"]
        )
        for endpoint, hist in sorted(st.relay_latency.items()):
            h.add_metric([endpoint], hist.buckets(), hist.total)
        yield h
        h = HistogramMetricFamily(
            "rampart_request_latency_seconds", "Query-door request latency, receipt to answer"
        )
        h.add_metric([], st.request_latency.buckets(), st.request_latency.total)
        yield h
        for family, readings in ((GaugeMetricFamily, st.gauges), (CounterMetricFamily, st.counters)):
            for metric, (help_text, read) in sorted(readings.items()):
                try:
                    samples = read()
                except Exception as e:  # one broken reading must not take down the whole scrape
                    logger.warning("metric %s could not be read: %s", metric, e)
                    continue
                labels = sorted({k for lab, _ in samples for k in lab})
                g = family(metric, help_text, labels=labels)
                for lab, value in samples:
                    g.add_metric([lab.get(k, "") for k in labels], value)
                yield g


def registry_for(stats: Stats) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(stats))
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def _samples(read: Callable[[], Any]) -> Callable[[], list[tuple[dict[str, str], float]]]:
    def samples() -> list[tuple[dict[str, str], float]]:
        value = read()
        if isinstance(value, list):
            return value
        return [({}, float(value))]

    return samples


def gauge(stats: Stats, metric: str, help_text: str, read: Callable[[], Any]) -> None:
    """Register a gauge; ``read`` returns a number or a list of (labels, value)."""
    stats.gauges[metric] = (help_text, _samples(read))


def counter(stats: Stats, metric: str, help_text: str, read: Callable[[], Any]) -> None:
    """Register a counter kept elsewhere (``metric`` without ``_total``); ``read`` as for gauge."""
    stats.counters[metric] = (help_text, _samples(read))


def stats_of(families: Iterable[Metric]) -> tuple[Stats, dict[str, float]]:
    """Counters read back from (merged) scrapes as a ``Stats``: the items, the relay's requests
    and latency; with every unlabelled gauge's value. What the console's status page shows for
    an appliance whose query door is several processes (``proxy.serve.fleet``)."""
    st, gauges = Stats(), {}
    for family in families:
        if family.name == "rampart_items":
            for s in family.samples:
                if s.name.endswith("_total"):
                    st.items[(s.labels["service"], s.labels["source"])] += int(s.value)
        elif family.name == "rampart_relay_requests":
            for s in family.samples:
                if s.name.endswith("_total"):
                    st.relay_requests[(s.labels["endpoint"], s.labels["outcome"])] += int(s.value)
        elif family.name == "rampart_relay_latency_seconds":
            _histograms_into(st.relay_latency, family)
        elif family.type == "gauge":
            for s in family.samples:
                if not s.labels:
                    gauges[family.name] = s.value
    return st, gauges


def _histograms_into(into: dict[str, Histogram], family: Metric) -> None:
    """Cumulative ``_bucket`` samples back into per-bucket counts (bounds as LATENCY_BUCKETS)."""
    rows: dict[str, dict[float, float]] = {}
    for s in family.samples:
        endpoint = s.labels.get("endpoint", "")
        if s.name.endswith("_bucket"):
            rows.setdefault(endpoint, {})[float(s.labels["le"])] = s.value
        elif s.name.endswith("_sum"):
            into.setdefault(endpoint, Histogram()).total = s.value
    for endpoint, cumulative in rows.items():
        hist = into.setdefault(endpoint, Histogram())
        below = 0.0
        for i, bound in enumerate((*LATENCY_BUCKETS, float("inf"))):
            at = cumulative.get(bound, below)
            hist.counts[i] = int(at - below)
            below = at
        hist.count = int(below)
