"""The query door's gate: client networks and a token bucket per client, on an injected clock."""

from __future__ import annotations

import pytest

from proxy.serve.gate import Gate


@pytest.mark.parametrize(
    ("networks", "client", "admitted"),
    [
        ((), "203.0.113.9", True),
        (("10.0.0.0/8",), "10.1.2.3", True),
        (("10.0.0.0/8",), "11.1.2.3", False),
        (("10.0.0.0/8", "::1"), "::1", True),
        (("127.0.0.0/8",), "::ffff:127.0.0.1", True),  # IPv4-mapped, as dual-stack sockets report
        (("127.0.0.0/8",), "?", False),
    ],
)
def test_client_networks(networks, client, admitted):
    assert Gate(networks).admits(client) is admitted


def test_no_rate_means_no_limit():
    gate = Gate()
    assert not gate.limits_rate
    assert all(gate.take("10.0.0.1") == 0 for _ in range(10_000))


def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    gate = Gate(rate=10, burst=5, clock=lambda: now[0])
    assert [gate.take("a") for _ in range(5)] == [0] * 5
    wait = gate.take("a")
    assert wait == pytest.approx(0.1)  # one token every 1/rate seconds
    assert gate.take("b") == 0  # per client
    now[0] = 0.1
    assert gate.take("a") == 0
    assert gate.take("a") > 0
    now[0] = 100.0  # refills to the burst, not beyond
    assert [gate.take("a") for _ in range(6)].count(0) == 5


def test_many_clients_stay_bounded():
    now = [0.0]
    gate = Gate(rate=1, burst=1, clock=lambda: now[0], max_clients=100)
    for i in range(1000):
        now[0] += 0.001
        gate.take(f"10.0.{i // 256}.{i % 256}")
    assert len(gate._buckets) <= 100
