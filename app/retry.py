"""One retry policy (delay, backoff, jitter, cap, deadline), shared by all that reconnects."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter around the nominal delay.

    ``maximum`` caps the nominal delay at 5 s: a service that comes back after a long outage is
    tried again within seconds (changes flow again within 10 s of it being back), at the cost
    of one attempt, and one log line, every 5 s or so while it is down.

    ``deadline`` is in seconds from the first attempt; ``None`` retries forever, which is
    what a relay wants: giving up on a source would stall it silently.
    """

    initial: float = 0.5
    multiplier: float = 2.0
    maximum: float = 5.0
    jitter: float = 0.25
    deadline: float | None = None

    def delays(self) -> Iterator[float]:
        """Yield the wait before each retry; stops when the deadline would be passed."""
        started = time.monotonic()
        nominal = self.initial
        while True:
            delay = nominal * (1 + random.uniform(-self.jitter, self.jitter))
            if self.deadline is not None and time.monotonic() + delay - started > self.deadline:
                return
            yield delay
            nominal = min(nominal * self.multiplier, self.maximum)


RECONNECT = RetryPolicy()
