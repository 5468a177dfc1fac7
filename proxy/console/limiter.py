"""Failed logins counted per client address, in memory: after ``attempts`` failures within a
minute the client must wait until the first of them is a minute old (HTTP 429).

Bounded: at most ``max_clients`` addresses are tracked (stale ones are dropped first,
then the longest tracked), so a flood of addresses costs memory in proportion to the
bound, not to the flood. IPv6 clients are counted per /64, the block one host usually
holds, so rotating addresses within it does not reset the count. The clock is injected
for tests.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from proxy.console.errors import TooManyAttempts

WINDOW = 60.0
MAX_CLIENTS = 10_000


def client_key(client: str) -> str:
    """The address failures are counted under: an IPv4 address, an IPv6 /64, else the text (bounded)."""
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return client[:80]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginLimiter:
    """Failed logins per client; ``check`` before verifying a password, ``failed`` after a miss."""

    def __init__(self, attempts: int, *, window: float = WINDOW, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._failures)

    def check(self, client: str) -> None:
        """Raise TooManyAttempts (with ``retry_after`` seconds) if ``client`` must wait."""
        now = self._clock()
        with self._lock:
            times = self._recent(client_key(client), now)
            if times is not None and len(times) >= self.attempts:
                raise TooManyAttempts(max(1, math.ceil(times[0] + self.window - now)))

    def failed(self, client: str) -> None:
        """Count one failed login of ``client``."""
        now = self._clock()
        key = client_key(client)
        with self._lock:
            times = self._recent(key, now)
            if times is None:
                self._make_room(now)
                times = self._failures[key] = deque(maxlen=self.attempts)
            times.append(now)
            self._failures.move_to_end(key)

    def succeeded(self, client: str) -> None:
        """Forget ``client``'s failures: whoever knows the password need not wait for a typo."""
        with self._lock:
            self._failures.pop(client_key(client), None)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        """``key``'s failures within the window (older ones dropped), None when there are none."""
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def _make_room(self, now: float) -> None:
        if len(self._failures) < self.max_clients:
            return
        for key in [k for k, t in self._failures.items() if t[-1] <= now - self.window]:
            del self._failures[key]
        while len(self._failures) >= self.max_clients:
            self._failures.popitem(last=False)
