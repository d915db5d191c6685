"""The retry schedule: how long something that keeps failing waits before its next attempt."""

from __future__ import annotations

import itertools

import backoff

# After this many doublings any sane maximum is reached (2**64 times the first wait).
_MAX_DOUBLINGS = 64


class RetrySchedule:
    """Waits that double from ``initial`` up to ``maximum`` (the ``backoff`` package's
    ``expo``), each drawn at random between half and all of its value.

    The jitter keeps a floor of half the wait, where full jitter would draw from zero:
    a destination that is down then gets a bounded number of attempts in any stretch
    of time, whatever the draws. A ``Retry-After`` the other side sent is a floor too
    (capped at ``maximum``, so a hostile or broken header cannot park work for days).
    """

    def __init__(self, initial: float, maximum: float) -> None:
        if initial <= 0 or maximum <= 0:
            raise ValueError(f"waits must be positive, got {initial} and {maximum}")
        self.initial = initial
        self.maximum = maximum

    def nominal(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row (1: the first), before jitter."""
        waits = backoff.expo(base=2, factor=self.initial, max_value=self.maximum)
        next(waits)  # backoff's generators start primed with a None
        step = min(max(1, failures), _MAX_DOUBLINGS) - 1
        return float(next(itertools.islice(waits, step, None)))

    def wait(self, failures: int, retry_after: float | None = None) -> float:
        """The jittered wait after ``failures`` failures, at least ``retry_after``."""
        nominal = self.nominal(failures)
        wait = nominal / 2 + backoff.full_jitter(nominal / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.maximum))
        return float(wait)
