"""A circuit breaker for the Gemini API, so that a dead API does not slow every job.

Pure logic: the caller passes ``now`` (monotonic seconds), as python-zeroconf's
``..._at_time(now)`` functions do, so tests drive it with made-up times and no sockets.

States: *closed* (calls go through; consecutive failures are counted), *open* (calls are
refused until ``cooldown_s`` has passed since it opened), *half-open* (one probe call is
let through; its success closes the breaker, its failure opens it again for another
cooldown). Only outages count as failures (timeouts, 429/5xx after retries, connection
errors); an answer that is merely unusable proves the API is up.
"""

from __future__ import annotations

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """Not thread-safe: the node calls it from its event loop only.

    Args:
        failures: Consecutive failures that open the breaker (at least 1).
        cooldown_s: Seconds an open breaker refuses calls before letting one probe through.
    """

    def __init__(self, failures: int = 3, cooldown_s: float = 120.0) -> None:
        self.threshold = max(1, int(failures))
        self.cooldown_s = float(cooldown_s)
        self.state = CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self._probing = False

    def allow(self, now: float) -> bool:
        """Whether a call may start at ``now``. In half-open state only one probe at a time."""
        if self.state == OPEN and now - self.opened_at >= self.cooldown_s:
            self.state = HALF_OPEN
        if self.state == CLOSED:
            return True
        if self.state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def retry_in(self, now: float) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        return max(0.0, self.opened_at + self.cooldown_s - now) if self.state == OPEN else 0.0

    def record_success(self, now: float) -> None:
        """A call reached the API and got an answer."""
        self.state, self.consecutive, self._probing = CLOSED, 0, False

    def record_failure(self, now: float) -> None:
        """A call failed because the API was unreachable, overloaded or too slow."""
        self._probing = False
        self.consecutive += 1
        if self.state == HALF_OPEN or self.consecutive >= self.threshold:
            self.state, self.opened_at = OPEN, now

    def record_abandoned(self) -> None:
        """A call ended without telling anything about the API (cancelled): free the probe."""
        self._probing = False
