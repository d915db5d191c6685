"""The reconcile scheduler: one nightly run per local date, catch-up at start, heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fonzipd.config import ReconcilerSettings
from fonzipd.reconciler import DayReport
from fonzipd.scheduler import HEARTBEAT_KEY, LAST_NIGHT_KEY, ReconcileScheduler
from fonzipd.state import Store
from tests.support import FakeClock, until

ISTANBUL = ZoneInfo("Europe/Istanbul")
BERLIN = ZoneInfo("Europe/Berlin")


class StubReconciler:
    """Records the runs the scheduler asks for."""

    def __init__(self, settings: ReconcilerSettings, clock: FakeClock) -> None:
        self.settings = settings
        self.clock = clock
        self.runs: list[tuple[dt.datetime, str, list[dt.date]]] = []

    async def run(self, days: Sequence[dt.date], *, run_key: str, **_: Any) -> list[DayReport]:
        self.runs.append((self.clock.now(), run_key, list(days)))
        return [DayReport(d, True, None, []) for d in days]


@contextlib.asynccontextmanager
async def scheduler(
    tmp_path: Path, start: dt.datetime, tz: ZoneInfo, **settings: Any
) -> AsyncIterator[tuple[ReconcileScheduler, StubReconciler, FakeClock, Store]]:
    clock = FakeClock(start)
    store = await Store.open(tmp_path / "state.db", clock=clock)
    stub = StubReconciler(ReconcilerSettings(poll_interval=300, **settings), clock)
    try:
        yield ReconcileScheduler(stub, store, tz=tz, clock=clock), stub, clock, store
    finally:
        await store.close()


async def drive(sched: ReconcileScheduler, clock: FakeClock, until_: dt.datetime) -> None:
    """Tick the way the task does, sleeping on the fake clock, until ``until_``."""
    while clock.now() < until_:
        delay = await sched.tick()
        assert delay <= 300  # never sleeps longer than the poll interval
        clock.advance(max(delay, 1.0))


@pytest.mark.parametrize(
    ("start", "night", "instant"),
    [
        # 02:30 does not exist on 29 March in Berlin: the run starts at 03:00 CEST.
        (dt.datetime(2026, 3, 28, 12, tzinfo=dt.UTC), dt.date(2026, 3, 29), (1, 0)),
        # 02:30 happens twice on 25 October: the run starts at the first one (CEST).
        (dt.datetime(2026, 10, 24, 12, tzinfo=dt.UTC), dt.date(2026, 10, 25), (0, 30)),
    ],
    ids=["spring-forward", "fall-back"],
)
async def test_the_nightly_run_happens_once_per_local_date_across_dst(
    tmp_path: Path, start: dt.datetime, night: dt.date, instant: tuple[int, int]
) -> None:
    async with scheduler(tmp_path, start, BERLIN, at="02:30", lookback_days=1) as (
        sched,
        stub,
        clock,
        store,
    ):
        await drive(sched, clock, start + dt.timedelta(days=2))
        assert await store.meta.get(HEARTBEAT_KEY) is not None
    keys = [key for _, key, _ in stub.runs]
    assert keys == [f"nightly:{night}", f"nightly:{night + dt.timedelta(days=1)}"]
    when, _, days = stub.runs[0]
    expected = dt.datetime.combine(night, dt.time(*instant), dt.UTC)
    assert expected <= when <= expected + dt.timedelta(seconds=300)
    assert days == [night - dt.timedelta(days=2), night - dt.timedelta(days=1)]


async def test_a_clock_step_or_a_suspended_vm_neither_skips_nor_doubles_a_run(
    tmp_path: Path,
) -> None:
    start = dt.datetime(2026, 11, 26, 20, tzinfo=dt.UTC)  # 23:00 in Istanbul
    async with scheduler(tmp_path, start, ISTANBUL) as (sched, stub, clock, _store):
        await drive(sched, clock, start + dt.timedelta(hours=6))  # past 03:30 local
        assert [k for _, k, _ in stub.runs] == ["nightly:2026-11-27"]
        clock.advance(-3 * 3600)  # the wall clock steps back over 03:30
        await drive(sched, clock, clock.now() + dt.timedelta(hours=4))
        assert len(stub.runs) == 1
        clock.advance(3 * 86400)  # suspended for three days: one run, the latest night
        await sched.tick()
        await sched.tick()
    assert [k for _, k, _ in stub.runs] == ["nightly:2026-11-27", "nightly:2026-11-30"]


async def test_a_daemon_down_at_night_runs_the_missed_night_at_start(tmp_path: Path) -> None:
    start = dt.datetime(2026, 11, 27, 7, tzinfo=dt.UTC)  # 10:00 local, after 03:30
    async with scheduler(tmp_path, start, ISTANBUL) as (sched, stub, _clock, store):
        await store.meta.set(LAST_NIGHT_KEY, "2026-11-25")
        await store.books.save_day(
            dt.date(2026, 11, 10),
            closed=False,
            reason="local 3 != Fonzip 4",
            records=3,
            first_by_webhook=3,
            first_by_reconcile=0,
        )
        await sched.tick()
        await sched.tick()
        assert await store.meta.get(LAST_NIGHT_KEY) == "2026-11-27"
    ((_, key, days),) = stub.runs
    assert key == "nightly:2026-11-27"
    # Yesterday, the lookback of 3 days, and the day still open.
    assert days == [dt.date(2026, 11, 10)] + [dt.date(2026, 11, d) for d in (23, 24, 25, 26)]


async def test_catch_up_after_downtime_longer_than_the_retry_window(tmp_path: Path) -> None:
    start = dt.datetime(2026, 11, 27, 7, tzinfo=dt.UTC)
    async with scheduler(tmp_path, start, ISTANBUL, catchup_after=3600) as (
        sched,
        stub,
        clock,
        store,
    ):
        await store.meta.set(HEARTBEAT_KEY, (start - dt.timedelta(hours=30)).isoformat())
        await sched.catch_up()
        assert await store.meta.get(HEARTBEAT_KEY) == start.isoformat()
        clock.advance(600)
        await sched.catch_up()  # down for ten minutes only: nothing to catch up
    ((_, key, days),) = stub.runs
    assert key.startswith("catchup:")
    assert days == [dt.date(2026, 11, 26), dt.date(2026, 11, 27)]


class HandClock:
    """Time the test moves by hand; ``sleep`` waits until the test has moved it far enough."""

    def __init__(self, start: dt.datetime) -> None:
        self._start = start
        self.t = 0.0
        self._moved = asyncio.Condition()
        self.sleeping = 0
        """Tasks waiting in ``sleep`` now."""

    def now(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        deadline = self.t + seconds
        async with self._moved:
            self.sleeping += 1
            try:
                await self._moved.wait_for(lambda: self.t >= deadline)
            finally:
                self.sleeping -= 1

    async def advance(self, seconds: float) -> None:
        async with self._moved:
            self.t += seconds
            self._moved.notify_all()


class LongRun:
    """A reconcile run that lasts until the test ends it (a backfill of months, say)."""

    def __init__(self, settings: ReconcilerSettings) -> None:
        self.settings = settings
        self.started = asyncio.Event()
        self.runs: list[str] = []

    async def run(self, days: Sequence[dt.date], *, run_key: str, **_: Any) -> list[DayReport]:
        self.runs.append(run_key)
        self.started.set()
        await asyncio.Event().wait()  # only a cancellation (the daemon killed) ends it
        raise AssertionError("unreachable")


async def test_a_long_run_keeps_the_heartbeat_fresh_so_a_restart_catches_up_nothing(
    tmp_path: Path,
) -> None:
    start = dt.datetime(2026, 11, 27, 0, 31, tzinfo=dt.UTC)  # 03:31 in Istanbul
    clock = HandClock(start)
    settings = ReconcilerSettings(poll_interval=300, catchup_after=3600)
    store = await Store.open(tmp_path / "state.db", clock=clock)
    try:
        await store.meta.set(LAST_NIGHT_KEY, "2026-11-26")
        await store.meta.set(HEARTBEAT_KEY, start.isoformat())
        first = LongRun(settings)
        sched = ReconcileScheduler(first, store, tz=ISTANBUL, clock=clock, heartbeat_every=60)
        night = asyncio.create_task(sched.tick())
        await first.started.wait()
        assert first.runs == ["nightly:2026-11-27"]

        async def fresh() -> bool:
            # Written, and the heartbeat task asleep again: the next advance wakes it
            # (moved before it sleeps, it would sleep from the new time and skip a beat).
            raw = await store.meta.get(HEARTBEAT_KEY)
            return raw == clock.now().isoformat() and clock.sleeping > 0

        for _ in range(30):  # three hours into the run, in six-minute steps
            await clock.advance(360)
            await until(fresh)
        # The daemon is killed in the middle of the run and starts ten minutes later:
        # down for ten minutes, not for the three hours and ten minutes the run took.
        night.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await night
        await clock.advance(600)
        second = LongRun(settings)
        restarted = ReconcileScheduler(second, store, tz=ISTANBUL, clock=clock)
        assert await restarted.catch_up() == []
        assert second.runs == []
    finally:
        await store.close()
