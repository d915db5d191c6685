"""Time faults: the wall clock stepped while a reconcile runs, and DST change days end to end.

The host's wall clock is stepped (an NTP correction, an administrator) while the
nightly run is in progress; monotonic time is not, and Fonzip's clock (the
simulator's) is not either. The day must still close, nothing may be listed or
delivered twice, and the schedule must run the next night exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import warnings
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fonzipd.app import Daemon
from fonzipd.clock import SYSTEM_CLOCK
from fonzipd.config import ConfigWarning, ReconcilerSettings, Settings, settings_from_dict
from fonzipd.kinds import Kind
from fonzipd.reconciler import DayReport, Progress, Reconciler
from fonzipd.records import Source
from fonzipd.scheduler import LAST_NIGHT_KEY, ReconcileScheduler
from fonzipd.simulator import Simulator
from fonzipd.state import Store
from tests.support import sim_statuses, until

RATE = 6000.0
ISTANBUL = ZoneInfo("Europe/Istanbul")
BERLIN = ZoneInfo("Europe/Berlin")
HOUR = 3600.0
KINDS = (Kind.DONATION, Kind.TICKET_SALE, Kind.FORM_ANSWER)
"""Kinds the stepped-clock runs reconcile: money lists, nested rows, form lists."""
LIST_PATHS = {
    "/donations",
    "/subscriptions",
    "/ticket-sales",
    "/form-answers",
    "/ecard-transactions",
    "/fundraising-campaigns",
}


class SteppedClock:
    """The host's clock, with a wall time the test sets and steps.

    ``now`` is the real time plus an offset; ``monotonic`` and ``sleep`` are real,
    as they are when NTP or an administrator steps the wall clock.
    """

    def __init__(self, start: dt.datetime) -> None:
        self._offset = start - SYSTEM_CLOCK.now()

    def now(self) -> dt.datetime:
        return SYSTEM_CLOCK.now() + self._offset

    def monotonic(self) -> float:
        return SYSTEM_CLOCK.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def step(self, seconds: float) -> None:
        self._offset += dt.timedelta(seconds=seconds)

    def set(self, moment: dt.datetime) -> None:
        self._offset = moment - SYSTEM_CLOCK.now()


class SteppingRuns:
    """The daemon's Reconciler, stepping the clock when the run has listed its first list."""

    def __init__(self, reconciler: Reconciler, clock: SteppedClock, step: float) -> None:
        self.settings: ReconcilerSettings = reconciler.settings
        self._reconciler = reconciler
        self._clock = clock
        self._step = step
        self.runs: list[str] = []
        self.stepped_at: dt.datetime | None = None
        """The wall time just before the step."""
        self.first_list: tuple[str, str, str] | None = None
        """(business date, kind, list status) of the list listed before the step."""

    async def run(self, days: Sequence[dt.date], *, run_key: str, **kwargs: Any) -> list[DayReport]:
        self.runs.append(run_key)
        return await self._reconciler.run(days, run_key=run_key, progress=self._progress, **kwargs)

    def _progress(self, event: Progress) -> None:
        if event.stage == "listed" and self.stepped_at is None:
            # The first list is saved (its start time too) and its events are queued:
            # everything after this reads the stepped clock.
            assert event.run is not None
            self.first_list = (event.day.isoformat(), str(event.run.kind), event.run.list_status)
            self.stepped_at = self._clock.now()
            self._clock.step(self._step)


def make_settings(tmp_path: Path, base_url: str, *, timezone: str) -> Settings:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # the rate is above Fonzip's 240
        return settings_from_dict(
            {
                "fonzip": {
                    "base_url": base_url,
                    "client_id": "sim-client",
                    "client_secret": "sim-secret",
                    "requests_per_minute": RATE,
                    "timezone": timezone,
                    "max_retries": 1,
                },
                "listener": {"host": "127.0.0.1", "port": 0, "auth_token": "t" * 32},
                "state": {"path": "state.db"},
                "fetcher": {"concurrency": 2, "retry_initial": 0.02, "retry_max": 0.05},
                "reconciler": {
                    "at": "03:30",
                    "lookback_days": 1,
                    "kinds": [str(k) for k in KINDS],
                    "poll_interval": 0.05,
                    # Generous: a run blocked by the clock must fail on its assertions,
                    # not hang; a healthy one needs well under a second here.
                    "fetch_wait": 8,
                },
                "sinks": {"archive": {"type": "sqlite", "path": "fonzip.db", "flush_interval": 0}},
                "logging": {"level": "warning"},
            },
            base_dir=tmp_path,
            origin="(test)",
        )


@contextlib.asynccontextmanager
async def simulator(**kwargs: Any) -> AsyncIterator[Simulator]:
    # Fonzip's clock is the real one: only the host running fonzipd is stepped, by
    # up to days, so fonzipd's token expires by its clock and not by Fonzip's; Fonzip
    # then answers 409 to a new token request and fonzipd keeps the one it holds.
    sim = Simulator(rate_per_minute=RATE, **kwargs)
    async with sim:
        yield sim


@contextlib.asynccontextmanager
async def daemon_on(
    settings: Settings, clock: SteppedClock | None = None
) -> AsyncIterator[tuple[Store, Reconciler]]:
    """The pipeline (fetcher, dispatcher, sink) and its Reconciler; no schedule, no listener."""
    daemon = Daemon(settings, listen=False, schedule=False, clock=clock or SYSTEM_CLOCK)
    await daemon.start()
    try:
        assert daemon.store is not None
        assert daemon.reconciler is not None
        yield daemon.store, daemon.reconciler
    finally:
        await daemon.stop()


def local(day: dt.date, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute, second), ISTANBUL)


def sink_rows(path: Path, kind: Kind) -> dict[int, tuple[str, str]]:
    """The sink's records of ``kind``: id -> (status, business date)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT fonzip_id, status, business_date FROM records WHERE kind = ?", (str(kind),)
        ).fetchall()
    return {int(i): (str(s), str(d)) for i, s, d in rows}


def history_counts(path: Path) -> tuple[int, int]:
    """Versions delivered to the sink, and how many of them are distinct."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        total = db.execute("SELECT count(*) FROM record_history").fetchone()[0]
        distinct = db.execute(
            "SELECT count(*) FROM (SELECT DISTINCT kind, fonzip_id, version FROM record_history)"
        ).fetchone()[0]
    return int(total), int(distinct)


def list_requests(sim: Simulator) -> list[tuple[str, str]]:
    return [(r.path, r.query) for r in sim.requests if r.path.removeprefix("/api/v2") in LIST_PATHS]


async def delivered(store: Store) -> bool:
    status = await store.outbox.sink_status(["archive"])
    return bool(status["archive"]["pending"] == 0)


# -- the wall clock stepped while the nightly run is in progress ----------------------------


async def _night_with_a_step(tmp_path: Path, step: float) -> None:
    """Run night N from 03:30:01, step the clock by ``step`` mid-run, then night N+1."""
    night = dt.date(2026, 11, 20)
    days = [night - dt.timedelta(days=2), night - dt.timedelta(days=1)]
    clock = SteppedClock(local(night, 3, 30, 1))
    async with simulator(seed=31, days=2, per_day=6, end_date=days[-1]) as sim:
        settings = make_settings(tmp_path, await sim.start(), timezone="Europe/Istanbul")
        async with daemon_on(settings, clock) as (store, reconciler):
            # The daemon ran last night: tonight's run is due.
            await store.meta.set(LAST_NIGHT_KEY, days[-1].isoformat())
            runs = SteppingRuns(reconciler, clock, step)
            sched = ReconcileScheduler(runs, store, tz=ISTANBUL, clock=clock)
            started = clock.now()
            await sched.tick()
            ended = clock.now()
            assert runs.runs == [f"nightly:{night}"]
            assert runs.stepped_at is not None
            listed = list_requests(sim)
            day_rows = await store.books.days(days=days)
            run_rows = await store.books.runs(days=days)
            await until(lambda: delivered(store))
            delivered_n = (await store.outbox.sink_status(["archive"]))["archive"]["delivered"]
            assert await store.meta.get(LAST_NIGHT_KEY) == night.isoformat()

            # Afterwards the clock crosses 03:30 of this date again (stepped back) or has
            # left it behind (stepped forward): no second run of this night either way.
            for moment in (local(night, 3, 29, 59), local(night, 3, 30, 1), local(night, 23)):
                clock.set(moment)
                delay = await sched.tick()
                assert 0 < delay <= settings.reconciler.poll_interval
            assert runs.runs == [f"nightly:{night}"]
            # The next date runs exactly once, at its own 03:30.
            clock.set(local(night + dt.timedelta(days=1), 3, 30, 1))
            await sched.tick()
            await sched.tick()
            assert runs.runs == [f"nightly:{night}", f"nightly:{night + dt.timedelta(days=1)}"]
            assert (
                await store.meta.get(LAST_NIGHT_KEY) == (night + dt.timedelta(days=1)).isoformat()
            )

    # The days close, every list was listed once (one page each here), nothing twice.
    assert {r["business_date"]: r["state"] for r in day_rows} == {
        d.isoformat(): "closed" for d in days
    }, [r["reason"] for r in day_rows]
    lists_per_day = sum(len(k.list_statuses) for k in KINDS)
    assert len(listed) == len(set(listed)) == 2 * lists_per_day
    assert len(run_rows) == 2 * lists_per_day
    assert {r["outcome"] for r in run_rows} == {"closed"}
    assert {r["run_key"] for r in run_rows} == {f"nightly:{night}"}
    sink = tmp_path / "fonzip.db"
    for kind in KINDS:
        assert {i: s for i, (s, _) in sink_rows(sink, kind).items()} == sim_statuses(
            sim, kind, ISTANBUL
        ), kind
    total, distinct = history_counts(sink)
    assert total == distinct == delivered_n  # each version delivered exactly once

    # Run rows hold the wall clock as it read: no instant the clock never showed.
    lowest = min(started, started + dt.timedelta(seconds=step)).timestamp()
    highest = max(ended, ended - dt.timedelta(seconds=step)).timestamp()
    before_step = runs.stepped_at.timestamp()
    for row in run_rows:
        assert lowest <= row["started_at"] <= highest
        assert lowest <= row["finished_at"] <= highest
        if (row["business_date"], row["kind"], row["list_status"]) == runs.first_list:
            assert row["started_at"] <= before_step
            # Listed before the step, settled after it: the span shows the step. After a
            # step back the end precedes the start; fonzipd keeps the readings as they
            # were (nothing derives a duration from them) rather than invent an instant.
            span = row["finished_at"] - row["started_at"]
            assert abs(span - step) < 30, span
        else:
            assert row["started_at"] <= row["finished_at"]


async def test_a_clock_step_forward_during_the_nightly_run(tmp_path: Path) -> None:
    await _night_with_a_step(tmp_path, +HOUR)


async def test_a_clock_step_back_during_the_nightly_run(tmp_path: Path) -> None:
    await _night_with_a_step(tmp_path, -HOUR)


async def test_a_step_forward_over_the_run_time_during_a_requested_run_skips_no_night(
    tmp_path: Path,
) -> None:
    # A `fonzipd reconcile` request runs at 03:00; the clock jumps to 04:00 during it,
    # over the nightly 03:30. The night still runs, once, when the request is done.
    night = dt.date(2026, 11, 20)
    yesterday = night - dt.timedelta(days=1)
    clock = SteppedClock(local(night, 3))
    async with simulator(seed=32, days=2, per_day=4, end_date=yesterday) as sim:
        settings = make_settings(tmp_path, await sim.start(), timezone="Europe/Istanbul")
        async with daemon_on(settings, clock) as (store, reconciler):
            await store.meta.set(LAST_NIGHT_KEY, yesterday.isoformat())
            runs = SteppingRuns(reconciler, clock, +HOUR)
            sched = ReconcileScheduler(runs, store, tz=ISTANBUL, clock=clock)
            request = await store.books.add_request(
                [yesterday], [Kind.DONATION], Source.RECONCILE, dry_run=False
            )
            assert await sched.tick() == 0.0
            assert runs.runs == [f"request:{request}"]
            assert clock.now() >= local(night, 4)  # the step happened during the request
            assert await sched.tick() == 0.0
            for _ in range(3):
                assert 0 < await sched.tick() <= settings.reconciler.poll_interval
            finished = await store.books.request(request)
            last_night = await store.meta.get(LAST_NIGHT_KEY)
            day_rows = await store.books.days(days=[yesterday])
    assert runs.runs == [f"request:{request}", f"nightly:{night}"]
    assert finished is not None
    assert finished["outcome"] == "closed"
    assert last_night == night.isoformat()
    assert [r["state"] for r in day_rows] == ["closed"]


# -- DST change days, end to end --------------------------------------------------------------


def _utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("day", "window", "inside", "outside"),
    [
        (
            # 29 March: 02:00-03:00 does not exist; the day is 23 hours.
            dt.date(2026, 3, 29),
            (_utc(2026, 3, 28, 23), _utc(2026, 3, 29, 22)),
            [
                _utc(2026, 3, 28, 23),  # 00:00:00 CET
                _utc(2026, 3, 29, 0, 59, 59),  # 01:59:59 CET, the last second before the gap
                _utc(2026, 3, 29, 1),  # 03:00:00 CEST, the first after it
                _utc(2026, 3, 29, 21, 59, 59),  # 23:59:59 CEST
            ],
            [_utc(2026, 3, 28, 22, 59, 59), _utc(2026, 3, 29, 22)],  # the days around it
        ),
        (
            # 25 October: 02:00-03:00 happens twice; the day is 25 hours.
            dt.date(2026, 10, 25),
            (_utc(2026, 10, 24, 22), _utc(2026, 10, 25, 23)),
            [
                _utc(2026, 10, 24, 22),  # 00:00:00 CEST
                _utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first time
                _utc(2026, 10, 25, 0, 59, 59),  # 02:59:59 CEST
                _utc(2026, 10, 25, 1),  # 02:00:00 CET, the hour again
                _utc(2026, 10, 25, 1, 30),  # 02:30 CET, the second time
                _utc(2026, 10, 25, 22, 59, 59),  # 23:59:59 CET
            ],
            [_utc(2026, 10, 24, 21, 59, 59), _utc(2026, 10, 25, 23)],
        ),
    ],
    ids=["spring-forward-23h", "fall-back-25h"],
)
async def test_a_berlin_dst_change_day_reconciles_end_to_end(
    tmp_path: Path,
    day: dt.date,
    window: tuple[dt.datetime, dt.datetime],
    inside: list[dt.datetime],
    outside: list[dt.datetime],
) -> None:
    hours = (window[1] - window[0]) / dt.timedelta(hours=1)
    async with simulator(seed=33, days=1, per_day=3, timezone="Europe/Berlin", end_date=day) as sim:
        # Donations nobody told fonzipd about, on and around the change day.
        ours = [(await sim.create_event(Kind.DONATION, when=w, deliver=False))[0] for w in inside]
        theirs = [
            (await sim.create_event(Kind.DONATION, when=w, deliver=False))[0] for w in outside
        ]
        settings = make_settings(tmp_path, await sim.start(), timezone="Europe/Berlin")
        async with daemon_on(settings) as (store, reconciler):
            (report,) = await reconciler.run([day], run_key="dst", kinds=[Kind.DONATION])
            await until(lambda: delivered(store))
    assert report.closed, report.reason
    stored = sink_rows(tmp_path / "fonzip.db", Kind.DONATION)
    assert {fid: stored.get(fid) for fid in ours} == dict.fromkeys(
        ours, ("succeeded", day.isoformat())
    )
    assert not set(theirs) & set(stored)  # the neighbours' records belong to their days
    # Fonzip's paid count for the day, worked out from UTC instants: the whole 23 or 25
    # hours, no more.
    paid = [
        r
        for r in sim.rows(Kind.DONATION)
        if r["transaction__payment_status"] == 3
        and window[0] <= dt.datetime.fromisoformat(r["transaction__complete_date"]) < window[1]
    ]
    run = next(r for r in report.runs if r.list_status == "paid")
    assert hours in (23, 25)
    assert run.window_total == run.local_after == len(paid)
    assert set(ours) <= {r["id"] for r in paid}


# -- a night that cannot verify a day ---------------------------------------------------------


async def test_a_day_left_open_by_a_night_is_tried_again_the_next_night(tmp_path: Path) -> None:
    night = dt.date(2026, 11, 20)
    day = night - dt.timedelta(days=2)  # in tonight's lookback, not in tomorrow's
    clock = SteppedClock(local(night, 3, 30, 1))
    async with simulator(seed=34, days=3, per_day=4, end_date=night - dt.timedelta(days=1)) as sim:
        settings = make_settings(tmp_path, await sim.start(), timezone="Europe/Istanbul")
        # The detail path (as for form answers): a donation's row would make its record.
        night_settings = settings.reconciler.model_copy(
            update={"fetch_wait": 2, "records_from_lists": False}
        )
        settings = settings.model_copy(update={"reconciler": night_settings})
        start, end = local(day, 0), local(day + dt.timedelta(days=1), 0)
        stuck = next(
            r["id"]
            for r in sim.rows(Kind.DONATION)
            if r["transaction__payment_status"] == 3
            and start <= dt.datetime.fromisoformat(r["transaction__complete_date"]) < end
        )
        sim.faults.failing_details = [f"donation:{stuck}"]
        async with daemon_on(settings, clock) as (store, reconciler):
            await store.meta.set(LAST_NIGHT_KEY, (night - dt.timedelta(days=1)).isoformat())
            sched = ReconcileScheduler(reconciler, store, tz=ISTANBUL, clock=clock)
            await sched.tick()
            (first,) = await store.books.days(days=[day])
            assert first["state"] == "open"
            assert f"donation {stuck} still retrying" in first["reason"]
            # Not sooner than the next night: later ticks of this night run nothing.
            clock.set(local(night, 9))
            assert await sched.tick() > 0
            assert {r["run_key"] for r in await store.books.runs(days=[day])} == {
                f"nightly:{night}"
            }
            sim.faults.failing_details = []
            clock.set(local(night + dt.timedelta(days=1), 3, 30, 1))
            await sched.tick()
            (second,) = await store.books.days(days=[day])
            runs = await store.books.runs(days=[day])
    assert second["state"] == "closed", second["reason"]
    assert {r["run_key"] for r in runs} == {f"nightly:{night + dt.timedelta(days=1)}"}
    assert sink_rows(tmp_path / "fonzip.db", Kind.DONATION)[stuck][0] == "succeeded"
