"""Rate limits counted across two gates through a real redis-server: what one appliance let
a client make is taken from the other's bucket; Redis down leaves each gate limiting alone."""

from __future__ import annotations

from proxy.serve.gate import Gate
from proxy.shared.link import Link
from proxy.shared.rates import SharedRates
from tests.redis_server import RedisServer


def pair(url: str, prefix: str, clock: list[float]):
    out = []
    for _ in range(2):
        gate = Gate(rate=1.0, burst=10, clock=lambda: clock[0])
        out.append((gate, SharedRates(Link(url, prefix=prefix), gate, clock=lambda: clock[0])))
    return out


def allowed(gate: Gate, client: str, n: int) -> int:
    return sum(1 for _ in range(n) if gate.take(client) == 0)


async def test_a_client_gets_one_burst_across_two_appliances(redis_server, prefix):
    clock = [100.0]
    (ga, ra), (gb, rb) = pair(redis_server.url, prefix, clock)
    assert allowed(ga, "10.0.0.1", 8) == 8
    await ra.flush()
    assert allowed(gb, "10.0.0.1", 1) == 1  # b has not heard yet: local
    await rb.flush()  # b hears of a's 8: 1 left of the burst of 10
    assert allowed(gb, "10.0.0.1", 5) == 1
    await rb.flush()
    await ra.flush()  # a hears of b's 2
    assert allowed(ga, "10.0.0.1", 5) == 0
    assert allowed(ga, "10.0.0.2", 3) == 3  # another client is counted apart
    clock[0] += 3  # both refill 3 requests' worth
    await ra.flush()
    await rb.flush()
    got = allowed(ga, "10.0.0.1", 5)
    await ra.flush()
    await rb.flush()
    got += allowed(gb, "10.0.0.1", 5)
    assert got <= 4  # about rate x 3 s across both, not twice that
    await ra.link.close()
    await rb.link.close()


async def test_redis_down_leaves_each_gate_limiting_alone(tmp_path, prefix):
    with RedisServer(tmp_path) as own:
        clock = [0.0]
        (ga, ra), (gb, rb) = pair(own.url, prefix, clock)
        own.stop()
        assert allowed(ga, "10.0.0.1", 12) == 10
        await ra.flush()
        await rb.flush()
        assert allowed(gb, "10.0.0.1", 12) == 10
        assert ra.link.up is False
        await ra.link.close()
        await rb.link.close()


def test_take_counts_and_deduct_on_the_gate():
    clock = [0.0]
    gate = Gate(rate=1.0, burst=5, clock=lambda: clock[0])
    assert gate.take_counts() == {}
    gate.share()
    gate.take("a")
    gate.take("a")
    assert gate.take_counts() == {"a": 2} and gate.take_counts() == {}
    gate.deduct("a", 10)
    assert gate.take("a") > 0 and gate.take_counts() == {}
    gate.deduct("new", 4)
    assert gate.take("new") == 0 and gate.take("new") > 0
