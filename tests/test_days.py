"""Tests of fonzipd.days: business-day windows and the nightly schedule, on an injected clock."""

from __future__ import annotations

import datetime as dt
import itertools
import subprocess
import sys
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fonzipd.days import (
    NightlySchedule,
    business_date,
    day_window,
    days_between,
    local_instant,
    reconcile_days,
)

ISTANBUL = ZoneInfo("Europe/Istanbul")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC = dt.UTC

BERLIN_SPRING = dt.date(2026, 3, 29)  # 02:00 CET -> 03:00 CEST, 23-hour day
BERLIN_AUTUMN = dt.date(2026, 10, 25)  # 03:00 CEST -> 02:00 CET, 25-hour day
NY_SPRING = dt.date(2026, 3, 8)
NY_AUTUMN = dt.date(2026, 11, 1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- windows and business dates -------------------------------------------------------


def test_istanbul_window_is_local_midnight_to_midnight_with_offset_in_the_value() -> None:
    start, end = day_window(dt.date(2024, 5, 6), ISTANBUL)
    assert start.isoformat() == "2024-05-06T00:00:00+03:00"
    assert end.isoformat() == "2024-05-07T00:00:00+03:00"
    assert start == utc(2024, 5, 5, 21)
    assert end - start == dt.timedelta(hours=24)


@pytest.mark.parametrize("day", [dt.date(2026, 3, 29), dt.date(2026, 10, 25), dt.date(2026, 1, 1)])
def test_istanbul_has_no_dst_so_every_day_is_24_hours(day: dt.date) -> None:
    start, end = day_window(day, ISTANBUL)
    assert end - start == dt.timedelta(hours=24)
    assert start.utcoffset() == end.utcoffset() == dt.timedelta(hours=3)


@pytest.mark.parametrize(
    ("tz", "day", "hours", "start_iso", "end_iso"),
    [
        (BERLIN, BERLIN_SPRING, 23, "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"),
        (BERLIN, BERLIN_AUTUMN, 25, "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00"),
        (NEW_YORK, NY_SPRING, 23, "2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00"),
        (NEW_YORK, NY_AUTUMN, 25, "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00"),
    ],
)
def test_dst_change_days_are_23_or_25_hours(
    tz: ZoneInfo, day: dt.date, hours: int, start_iso: str, end_iso: str
) -> None:
    start, end = day_window(day, tz)
    assert (start.isoformat(), end.isoformat()) == (start_iso, end_iso)
    assert end - start == dt.timedelta(hours=hours)


def test_consecutive_windows_tile_time_without_gap_or_overlap() -> None:
    days = days_between(dt.date(2026, 3, 27), dt.date(2026, 3, 31))
    windows = [day_window(day, BERLIN) for day in days]
    for (_, end), (next_start, _) in itertools.pairwise(windows):
        assert end == next_start


def test_zone_that_skips_midnight_starts_the_day_at_the_end_of_the_gap() -> None:
    # Chile springs forward at 00:00 -> 01:00; the day starts at 01:00 local.
    start, end = day_window(dt.date(2024, 9, 8), ZoneInfo("America/Santiago"))
    assert start.isoformat() == "2024-09-08T01:00:00-03:00"
    assert end - start == dt.timedelta(hours=23)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (dt.datetime(2024, 5, 6, 23, 59, 59, tzinfo=ISTANBUL), dt.date(2024, 5, 6)),
        (dt.datetime(2024, 5, 7, 0, 0, 0, tzinfo=ISTANBUL), dt.date(2024, 5, 7)),
        (utc(2024, 5, 6, 20, 59, 59), dt.date(2024, 5, 6)),  # 23:59:59 +03:00
        (utc(2024, 5, 6, 21, 0, 0), dt.date(2024, 5, 7)),  # 00:00:00 +03:00
    ],
)
def test_business_date_at_the_edges_of_the_day(moment: dt.datetime, expected: dt.date) -> None:
    assert business_date(moment, ISTANBUL) == expected
    start, end = day_window(expected, ISTANBUL)
    assert start <= moment < end


def test_business_date_refuses_naive_moments() -> None:
    with pytest.raises(ValueError, match="aware"):
        business_date(dt.datetime(2024, 5, 6, 12), ISTANBUL)


def test_the_repeated_hour_belongs_to_the_autumn_day_both_times() -> None:
    first = utc(2026, 10, 25, 0, 30)  # 02:30 CEST
    second = utc(2026, 10, 25, 1, 30)  # 02:30 CET
    start, end = day_window(BERLIN_AUTUMN, BERLIN)
    for moment in (first, second):
        assert business_date(moment, BERLIN) == BERLIN_AUTUMN
        assert start <= moment < end


def test_days_between_includes_both_ends_and_is_empty_when_reversed() -> None:
    assert days_between(dt.date(2024, 2, 28), dt.date(2024, 3, 1)) == [
        dt.date(2024, 2, 28),
        dt.date(2024, 2, 29),
        dt.date(2024, 3, 1),
    ]
    assert days_between(dt.date(2024, 3, 1), dt.date(2024, 3, 1)) == [dt.date(2024, 3, 1)]
    assert days_between(dt.date(2024, 3, 2), dt.date(2024, 3, 1)) == []


def test_reconcile_days_are_yesterday_and_the_lookback_oldest_first() -> None:
    today = dt.date(2024, 3, 1)
    assert reconcile_days(today, 0) == [dt.date(2024, 2, 29)]
    assert reconcile_days(today, 3) == [
        dt.date(2024, 2, 26),
        dt.date(2024, 2, 27),
        dt.date(2024, 2, 28),
        dt.date(2024, 2, 29),
    ]
    with pytest.raises(ValueError, match="lookback_days"):
        reconcile_days(today, -1)


# --- wall times that are skipped or repeated --------------------------------------------


def test_skipped_wall_time_resolves_to_the_end_of_the_gap() -> None:
    instant = local_instant(BERLIN_SPRING, dt.time(2, 30), BERLIN)
    assert instant == utc(2026, 3, 29, 1, 0)
    assert instant.astimezone(BERLIN).isoformat() == "2026-03-29T03:00:00+02:00"
    ny = local_instant(NY_SPRING, dt.time(2, 30), NEW_YORK)
    assert ny.astimezone(NEW_YORK).isoformat() == "2026-03-08T03:00:00-04:00"


def test_repeated_wall_time_resolves_to_its_first_occurrence() -> None:
    instant = local_instant(BERLIN_AUTUMN, dt.time(2, 30), BERLIN)
    assert instant == utc(2026, 10, 25, 0, 30)  # 02:30 CEST, not 02:30 CET
    ny = local_instant(NY_AUTUMN, dt.time(1, 30), NEW_YORK)
    assert ny.astimezone(NEW_YORK).isoformat() == "2026-11-01T01:30:00-04:00"


# --- the nightly schedule ---------------------------------------------------------------


def simulate(
    schedule: NightlySchedule,
    start: dt.datetime,
    end: dt.datetime,
    last_run: dt.date | None,
    *,
    max_sleep: float = 300.0,
) -> list[tuple[dt.date, dt.datetime]]:
    """Run the daemon's loop on a fake clock that advances by the returned sleeps."""
    runs: list[tuple[dt.date, dt.datetime]] = []
    now = start
    for _ in range(100_000):
        if now >= end:
            return runs
        due = schedule.due_date(now, last_run)
        if due is not None:
            runs.append((due, now))
            last_run = due
        now += dt.timedelta(seconds=schedule.sleep_for(now, last_run, max_sleep=max_sleep))
    raise AssertionError("the loop did not advance the clock")


@pytest.mark.parametrize(
    ("tz", "day", "at", "expected_local"),
    [
        (BERLIN, BERLIN_SPRING, dt.time(2, 30), "2026-03-29T03:00:00+02:00"),
        (BERLIN, BERLIN_AUTUMN, dt.time(2, 30), "2026-10-25T02:30:00+02:00"),
        (NEW_YORK, NY_SPRING, dt.time(2, 30), "2026-03-08T03:00:00-04:00"),
        (NEW_YORK, NY_AUTUMN, dt.time(1, 30), "2026-11-01T01:30:00-04:00"),
        (ISTANBUL, dt.date(2026, 3, 29), dt.time(3, 30), "2026-03-29T03:30:00+03:00"),
    ],
)
def test_runs_exactly_once_per_local_date_across_dst_changes(
    tz: ZoneInfo, day: dt.date, at: dt.time, expected_local: str
) -> None:
    schedule = NightlySchedule(at, tz)
    previous = day - dt.timedelta(days=1)
    start = local_instant(previous, dt.time(12), tz)
    end = local_instant(day + dt.timedelta(days=1), dt.time(12), tz)
    runs = simulate(schedule, start, end, last_run=previous)
    assert [run_date for run_date, _ in runs] == [day, day + dt.timedelta(days=1)]
    _run_date, ran_at = runs[0]
    assert ran_at.astimezone(tz).isoformat() == expected_local


def test_a_night_missed_while_down_is_due_at_start() -> None:
    schedule = NightlySchedule(dt.time(3, 30), ISTANBUL)
    # Down over 2024-05-07 03:30; started again at 09:00 with the last run for 05-06.
    start = dt.datetime(2024, 5, 7, 9, 0, tzinfo=ISTANBUL)
    assert schedule.due_date(start, dt.date(2024, 5, 6)) == dt.date(2024, 5, 7)
    assert schedule.sleep_for(start, dt.date(2024, 5, 6)) == 0.0
    assert schedule.next_due(start, dt.date(2024, 5, 6)) == start
    # Several nights missed: one run, for the latest date (the lookback covers the rest).
    assert schedule.due_date(start, dt.date(2024, 5, 1)) == dt.date(2024, 5, 7)
    # A first start ever, before today's run time: yesterday's night is due at once.
    early = dt.datetime(2024, 5, 7, 1, 0, tzinfo=ISTANBUL)
    assert schedule.due_date(early, None) == dt.date(2024, 5, 6)


def test_not_due_before_the_run_time_and_due_at_it() -> None:
    schedule = NightlySchedule(dt.time(3, 30), ISTANBUL)
    last = dt.date(2024, 5, 6)
    before = dt.datetime(2024, 5, 7, 3, 29, 59, tzinfo=ISTANBUL)
    at = dt.datetime(2024, 5, 7, 3, 30, tzinfo=ISTANBUL)
    assert schedule.due_date(before, last) is None
    assert schedule.next_due(before, last) == at
    assert schedule.sleep_for(before, last) == 1.0
    assert schedule.due_date(at, last) == dt.date(2024, 5, 7)


def test_a_clock_step_back_after_the_run_does_not_run_it_again() -> None:
    schedule = NightlySchedule(dt.time(3, 30), ISTANBUL)
    ran = dt.datetime(2024, 5, 7, 3, 30, tzinfo=ISTANBUL)
    assert schedule.due_date(ran, dt.date(2024, 5, 6)) == dt.date(2024, 5, 7)
    stepped_back = ran + dt.timedelta(minutes=5) - dt.timedelta(hours=1)  # 02:35
    runs = simulate(
        schedule,
        stepped_back,
        dt.datetime(2024, 5, 8, 12, tzinfo=ISTANBUL),
        last_run=dt.date(2024, 5, 7),
    )
    assert [run_date for run_date, _ in runs] == [dt.date(2024, 5, 8)]
    # Even a step back by more than a day waits for the date after the last one run.
    far_back = dt.datetime(2024, 5, 5, 12, tzinfo=ISTANBUL)
    assert schedule.due_date(far_back, dt.date(2024, 5, 7)) is None
    assert schedule.next_due(far_back, dt.date(2024, 5, 7)) == dt.datetime(
        2024, 5, 8, 3, 30, tzinfo=ISTANBUL
    )


def test_a_clock_step_forward_over_the_run_time_runs_it_once() -> None:
    schedule = NightlySchedule(dt.time(3, 30), ISTANBUL)
    last = dt.date(2024, 5, 6)
    before = dt.datetime(2024, 5, 7, 3, 0, tzinfo=ISTANBUL)
    assert schedule.due_date(before, last) is None
    jumped = before + dt.timedelta(hours=2)  # 05:00: the loop wakes after the step
    runs = simulate(schedule, jumped, dt.datetime(2024, 5, 7, 23, tzinfo=ISTANBUL), last)
    assert runs == [(dt.date(2024, 5, 7), jumped)]


def test_a_suspended_vm_runs_the_night_once_on_resume() -> None:
    schedule = NightlySchedule(dt.time(3, 30), ISTANBUL)
    last = dt.date(2024, 5, 6)
    went_to_sleep = dt.datetime(2024, 5, 7, 3, 0, tzinfo=ISTANBUL)
    assert schedule.sleep_for(went_to_sleep, last) == 300.0
    resumed = dt.datetime(2024, 5, 7, 7, 45, tzinfo=ISTANBUL)
    assert schedule.due_date(resumed, last) == dt.date(2024, 5, 7)
    assert schedule.due_date(resumed, dt.date(2024, 5, 7)) is None


def test_the_sleep_is_capped_by_max_sleep() -> None:
    schedule = NightlySchedule(dt.time(3, 30), ISTANBUL)
    noon = dt.datetime(2024, 5, 7, 12, tzinfo=ISTANBUL)
    assert schedule.sleep_for(noon, dt.date(2024, 5, 7)) == 300.0
    assert schedule.sleep_for(noon, dt.date(2024, 5, 7), max_sleep=2.5) == 2.5
    with pytest.raises(ValueError, match="max_sleep"):
        schedule.sleep_for(noon, dt.date(2024, 5, 7), max_sleep=0)


def test_the_schedule_refuses_naive_inputs() -> None:
    with pytest.raises(ValueError, match="naive wall time"):
        NightlySchedule(dt.time(3, 30, tzinfo=UTC), ISTANBUL)
    schedule = NightlySchedule(dt.time(3, 30), ISTANBUL)
    with pytest.raises(ValueError, match="aware"):
        schedule.due_date(dt.datetime(2024, 5, 7, 12), None)


ZONES = st.sampled_from([ISTANBUL, BERLIN, NEW_YORK, ZoneInfo("America/Santiago"), ZoneInfo("UTC")])
TIMES = st.sampled_from(
    [dt.time(0), dt.time(1, 30), dt.time(2, 30), dt.time(3, 30), dt.time(23, 59)]
)
NOWS = st.datetimes(
    min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2026, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None)
@given(
    tz=ZONES,
    at=TIMES,
    now=NOWS,
    last_offset=st.one_of(st.none(), st.integers(min_value=-5, max_value=2)),
    max_sleep=st.floats(min_value=0.001, max_value=86_400.0),
)
def test_schedule_properties(
    tz: ZoneInfo,
    at: dt.time,
    now: dt.datetime,
    last_offset: int | None,
    max_sleep: float,
) -> None:
    schedule = NightlySchedule(at, tz)
    today = now.astimezone(tz).date()
    last = None if last_offset is None else today + dt.timedelta(days=last_offset)
    pause = schedule.sleep_for(now, last, max_sleep=max_sleep)
    assert 0.0 <= pause <= max_sleep
    due = schedule.due_date(now, last)
    next_due = schedule.next_due(now, last)
    assert next_due.utcoffset() == dt.timedelta(0)
    if due is not None:
        assert pause == 0.0
        assert next_due == now
        assert schedule.run_instant(due) <= now
        assert last is None or last < due
    else:
        assert next_due > now
        assert schedule.due_date(next_due, last) is not None
        assert schedule.due_date(next_due - dt.timedelta(microseconds=1), last) is None


def test_the_module_does_no_io_and_needs_no_aiohttp() -> None:
    probe = "import sys, fonzipd.days; print(any(m.startswith('aiohttp') for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
