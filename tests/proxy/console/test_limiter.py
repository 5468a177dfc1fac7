"""Failed logins per client: N failures in a minute, then 429 with retry_after, then allowed
again once the first failure is a minute old; bounded in memory."""

from __future__ import annotations

import pytest

from proxy.console.errors import TooManyAttempts
from proxy.console.limiter import LoginLimiter, client_key

from .conftest import Clock


def test_after_n_failures_the_client_waits_until_the_minute_is_over(clock: Clock) -> None:
    limiter = LoginLimiter(3, clock=clock)
    for _ in range(3):
        limiter.check("192.0.2.7")
        limiter.failed("192.0.2.7")
        clock.advance(10)
    with pytest.raises(TooManyAttempts) as e:
        limiter.check("192.0.2.7")
    assert e.value.status == 429 and e.value.code == "too_many_attempts"
    assert e.value.retry_after == 30  # the first failure was 30 s ago
    assert ("Retry-After", "30") in e.value.headers
    limiter.check("192.0.2.8")  # another client is not held up
    clock.advance(30)
    limiter.check("192.0.2.7")  # the first failure is a minute old: allowed again


def test_failures_spread_over_more_than_a_minute_never_block(clock: Clock) -> None:
    limiter = LoginLimiter(2, clock=clock)
    for _ in range(10):
        limiter.check("192.0.2.7")
        limiter.failed("192.0.2.7")
        clock.advance(61)


def test_a_success_forgets_the_failures(clock: Clock) -> None:
    limiter = LoginLimiter(2, clock=clock)
    limiter.failed("192.0.2.7")
    limiter.succeeded("192.0.2.7")
    limiter.failed("192.0.2.7")
    limiter.check("192.0.2.7")


def test_ipv6_clients_count_per_64_and_mapped_v4_as_v4() -> None:
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("not an address" * 20) == ("not an address" * 20)[:80]


def test_it_tracks_at_most_max_clients(clock: Clock) -> None:
    limiter = LoginLimiter(2, max_clients=100, clock=clock)
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    limiter.failed("10.9.9.9")
    limiter.failed("10.9.9.9")
    with pytest.raises(TooManyAttempts):
        limiter.check("10.9.9.9")  # the newest are kept
