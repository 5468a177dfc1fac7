"""A cloud endpoint's health: its circuit breaker (docs/architecture.md, “The relay”).

``breaker_failures`` consecutive failures open the circuit; it is skipped while
open; after ``breaker_cooldown`` seconds one trial request is let through
(half-open), and a success closes it again. The relay owns one ``Endpoint`` per
configured cloud endpoint and asks it before every attempt.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(slots=True, eq=False)
class Endpoint:
    url: str
    host: str  # host:port, what logs and errors name
    priority: int
    failures_to_open: int
    cooldown: float
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = False
    last_error: str | None = None
    requests: int = 0
    failures: int = 0

    def allow(self, now: float) -> bool:
        """May a request go to this endpoint now? Claims the half-open trial if so."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.cooldown:
                return False
            self.state = BreakerState.HALF_OPEN
            logger.info("relay endpoint %s half-open: sending one trial request", self.host)
        if self.trial_in_flight:
            return False
        self.trial_in_flight = True
        return True

    def succeed(self) -> None:
        if self.state is not BreakerState.CLOSED:
            logger.info("relay endpoint %s closed again after a success", self.host)
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.trial_in_flight = False

    def fail(self, now: float, error: str) -> None:
        self.consecutive_failures += 1
        self.failures += 1
        self.last_error = error
        self.trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.consecutive_failures >= self.failures_to_open
        ):
            logger.warning(
                "relay endpoint %s circuit open for %gs after %d consecutive failures: %s",
                self.host,
                self.cooldown,
                self.consecutive_failures,
                error,
            )
            self.state = BreakerState.OPEN
            self.opened_at = now

    def abandon(self) -> None:
        """The attempt was cancelled: give the half-open trial to the next request."""
        self.trial_in_flight = False

    def wait_time(self, now: float) -> float:
        """Seconds until this endpoint will take a request again."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self.opened_at + self.cooldown - now)
        return 0.0

    def reported_state(self, now: float) -> BreakerState:
        if self.state is BreakerState.OPEN and self.wait_time(now) == 0.0:
            return BreakerState.HALF_OPEN  # the next request will be the trial
        return self.state
