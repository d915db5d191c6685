"""Business days in the configured timezone, and the nightly reconcile schedule.

A business day D is the half-open window [D 00:00, D+1 00:00) of local wall-clock
time in the configured IANA zone; it lasts 23 or 25 hours on DST change days. The
nightly run is keyed by local date and happens exactly once per date: its instant is
the first moment at or after the configured wall time on that date, which is well
defined even when the clocks skip or repeat that time.

Nothing here reads the clock or sleeps: callers pass ``now`` (from a ``Clock``).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

__all__ = [
    "NightlySchedule",
    "business_date",
    "day_window",
    "days_between",
    "local_instant",
    "reconcile_days",
]

_ONE_DAY = dt.timedelta(days=1)


def _require_aware(moment: dt.datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got naive {moment.isoformat()}")


def _is_wall_time(utc: dt.datetime, wall: dt.datetime, tz: ZoneInfo) -> bool:
    """Whether the instant ``utc`` shows at least the naive ``wall`` time in ``tz``."""
    return utc.astimezone(tz).replace(tzinfo=None, fold=0) >= wall


def local_instant(day: dt.date, at: dt.time, tz: ZoneInfo) -> dt.datetime:
    """The first instant at or after wall time ``at`` on ``day`` in ``tz``, aware UTC.

    A wall time that occurs twice (clocks set back) resolves to its first occurrence.
    A wall time that does not occur (clocks set forward over it) resolves to the first
    instant after the gap, the moment the clocks jump: 02:30 on Berlin's spring day is
    03:00 CEST. (zoneinfo alone would give 03:30, the pre-transition offset applied.)
    """
    if at.tzinfo is not None:
        raise ValueError(f"the wall time must be naive, got {at.isoformat()}")
    wall = dt.datetime.combine(day, at)
    first = wall.replace(tzinfo=tz, fold=0).astimezone(dt.UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # In a gap. fold=1 applies the post-transition offset, which lands before the
    # transition; fold=0 applies the earlier offset, which lands after it. The
    # transition (the first instant whose wall time is >= `wall`) lies between:
    # bisect on whole seconds, the resolution of tz transitions.
    low = wall.replace(tzinfo=tz, fold=1).astimezone(dt.UTC)
    high = first
    if low > high:  # a zone whose offset went down over a gap does not exist; be safe
        low, high = high, low
    while high - low > dt.timedelta(seconds=1):
        middle = low + dt.timedelta(seconds=(high - low) // dt.timedelta(seconds=2))
        if _is_wall_time(middle, wall, tz):
            high = middle
        else:
            low = middle
    return low if _is_wall_time(low, wall, tz) else high


def day_window(day: dt.date, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """The business day ``day`` as the half-open window ``[start, end)``.

    Both bounds are the local midnights (or, where a zone skips midnight, the first
    instant of the day), as aware datetimes with a fixed offset, so ``isoformat()``
    gives ``2024-05-06T00:00:00+03:00``, the form Fonzip's date filters take. The
    offsets are fixed rather than ``tz`` itself because datetimes sharing one ZoneInfo
    compare by wall time and ignore ``fold``, which is wrong around a repeated hour.
    """
    start = local_instant(day, dt.time(0), tz)
    end = local_instant(day + _ONE_DAY, dt.time(0), tz)
    return _with_local_offset(start, tz), _with_local_offset(end, tz)


def _with_local_offset(utc: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    local = utc.astimezone(tz)
    offset = local.utcoffset()
    assert offset is not None  # astimezone into a ZoneInfo always has one
    return utc.astimezone(dt.timezone(offset))


def business_date(moment: dt.datetime, tz: ZoneInfo) -> dt.date:
    """The business day an aware instant belongs to: its local date in ``tz``."""
    _require_aware(moment, "moment")
    return moment.astimezone(tz).date()


def days_between(first: dt.date, last: dt.date) -> list[dt.date]:
    """Every date from ``first`` to ``last``, both included, oldest first.

    Empty when ``last`` is before ``first``.
    """
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


def reconcile_days(today: dt.date, lookback_days: int) -> list[dt.date]:
    """The business days a nightly run on ``today`` reconciles, oldest first.

    Yesterday, and ``lookback_days`` days before it (records appear late or change:
    back-dated entries, refunds), so ``lookback_days + 1`` dates in all.
    """
    if lookback_days < 0:
        raise ValueError(f"lookback_days must be >= 0, got {lookback_days}")
    yesterday = today - _ONE_DAY
    return days_between(yesterday - dt.timedelta(days=lookback_days), yesterday)


class NightlySchedule:
    """When the nightly reconcile for a local date is due; exactly once per date.

    The caller keeps ``last_run_date`` durably (the latest local date it has run
    for) and asks :meth:`due_date` on every wake-up. Only the most recent due date
    is returned: a daemon down for several nights runs once at start, for the
    latest date, and relies on the lookback to cover the nights before.
    """

    def __init__(self, at: dt.time, tz: ZoneInfo) -> None:
        if at.tzinfo is not None:
            raise ValueError(f"the nightly time must be a naive wall time, got {at.isoformat()}")
        self.at = at
        self.tz = tz

    def __repr__(self) -> str:
        return f"NightlySchedule(at={self.at.isoformat()!r}, tz={self.tz.key!r})"

    def run_instant(self, day: dt.date) -> dt.datetime:
        """The instant the run for local date ``day`` becomes due, aware UTC."""
        return local_instant(day, self.at, self.tz)

    def _latest_started(self, now: dt.datetime) -> dt.date:
        """The latest local date whose run instant is at or before ``now``."""
        # A run instant lies on its own local date, or just after it when a gap
        # pushes it past midnight, so the answer is within a day of today.
        today = now.astimezone(self.tz).date()
        for day in (today + _ONE_DAY, today, today - _ONE_DAY):
            if self.run_instant(day) <= now:
                return day
        return today - 2 * _ONE_DAY

    def due_date(self, now: dt.datetime, last_run_date: dt.date | None) -> dt.date | None:
        """The local date whose run is due at ``now``, or None.

        Due when ``now`` is at or past that date's run instant and ``last_run_date``
        is before it. A clock stepped back after a run finds only dates already
        run; a clock stepped forward over the run time finds the date once.
        """
        _require_aware(now, "now")
        latest = self._latest_started(now)
        if last_run_date is not None and last_run_date >= latest:
            return None
        return latest

    def next_due(self, now: dt.datetime, last_run_date: dt.date | None) -> dt.datetime:
        """The instant of the next due run, aware UTC: ``now`` itself if one is due."""
        _require_aware(now, "now")
        if self.due_date(now, last_run_date) is not None:
            return now.astimezone(dt.UTC)
        day = self._latest_started(now) + _ONE_DAY
        if last_run_date is not None and last_run_date >= day:
            # The clock went back past a date already run: wait for the one after it.
            day = last_run_date + _ONE_DAY
        return self.run_instant(day)

    def sleep_for(
        self,
        now: dt.datetime,
        last_run_date: dt.date | None,
        *,
        max_sleep: float = 300.0,
    ) -> float:
        """Seconds to sleep before asking :meth:`due_date` again, at most ``max_sleep``.

        Capping the sleep bounds how late a run starts after a suspended VM resumes or
        the wall clock steps; the date keying, not the sleep, keeps runs to one a date.
        """
        if not max_sleep > 0:
            raise ValueError(f"max_sleep must be > 0, got {max_sleep}")
        remaining = (self.next_due(now, last_run_date) - now).total_seconds()
        return max(0.0, min(max_sleep, remaining))
