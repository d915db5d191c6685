"""The retry schedule: doubling waits, capped, jittered with a floor, Retry-After honoured."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fonzipd.retry import RetrySchedule


def test_waits_double_up_to_the_maximum() -> None:
    schedule = RetrySchedule(1, 300)
    assert [schedule.nominal(n) for n in range(1, 12)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        300,
        300,
    ]
    # A row retried for weeks: no overflow, still the maximum.
    assert schedule.nominal(10**9) == 300


@given(
    failures=st.integers(min_value=1, max_value=10_000),
    retry_after=st.none() | st.floats(min_value=0, max_value=1e9),
)
def test_a_wait_lies_between_half_and_all_of_its_value_or_retry_after(
    failures: int, retry_after: float | None
) -> None:
    schedule = RetrySchedule(0.5, 60)
    nominal = schedule.nominal(failures)
    wait = schedule.wait(failures, retry_after)
    floor = nominal / 2 if retry_after is None else max(nominal / 2, min(retry_after, 60))
    assert floor <= wait <= max(nominal, floor)
    # A Retry-After of days is capped at the maximum: a broken header parks nothing.
    assert wait <= 60


def test_waits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RetrySchedule(0, 10)
