"""The shared retry policy: doubling from 0.5 s with jitter, capped, so a long outage is
followed by an attempt within seconds of the service being back."""

from __future__ import annotations

import itertools

from app.retry import RECONNECT, RetryPolicy


def test_delays_double_from_half_a_second_within_their_jitter_and_stop_growing_at_5s() -> None:
    delays = list(itertools.islice(RECONNECT.delays(), 12))
    for attempt, delay in enumerate(delays):
        nominal = min(0.5 * 2**attempt, 5.0)
        assert nominal * 0.75 <= delay <= nominal * 1.25, (attempt, delay)
    assert max(delays) <= 6.25, "never more than 6.25 s between two attempts"


def test_a_deadline_ends_the_delays() -> None:
    assert list(RetryPolicy(initial=1.0, deadline=0.5).delays()) == []
