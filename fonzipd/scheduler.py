"""The reconcile scheduler: nightly runs, catch-up at start, CLI requests, heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import structlog

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import ReconcilerSettings
from fonzipd.days import NightlySchedule, business_date, days_between, reconcile_days
from fonzipd.kinds import Kind
from fonzipd.reconciler import DayReport, Progress, reports_to_json
from fonzipd.records import Source
from fonzipd.state import Store, StoreError

log = structlog.get_logger(__name__)

LAST_NIGHT_KEY = "reconcile_last_night"
HEARTBEAT_KEY = "heartbeat"
HEARTBEAT_EVERY = 60.0
"""Seconds between heartbeats (``fonzipd reconcile`` reads them to tell a dead daemon)."""

T = TypeVar("T")


class _Runs(Protocol):
    settings: ReconcilerSettings

    async def run(
        self,
        days: Sequence[dt.date],
        *,
        run_key: str,
        kinds: Sequence[Kind] | None = ...,
        source: Source = ...,
        dry_run: bool = ...,
        fetch_wait: float | None = ...,
        progress: Callable[[Progress], None] | None = ...,
        deadline: float | None = ...,
    ) -> list[DayReport]: ...


class ReconcileScheduler:
    """The daemon's reconcile task: nightly runs, catch-up at start, CLI requests, heartbeat.

    It never sleeps longer than ``settings.poll_interval`` at once, so a suspended VM
    or a stepped clock delays a run by at most that; the local date, stored as
    ``reconcile_last_night`` only once a night's run has finished, keeps runs to one
    a date, and a restart during a run resumes it (same ``run_key``). The heartbeat
    is refreshed every ``heartbeat_every`` seconds during runs too (a backfill can
    take hours): a stale one would make the next start catch up a downtime that
    never happened.
    """

    def __init__(
        self,
        reconciler: _Runs,
        store: Store,
        *,
        tz: ZoneInfo,
        clock: Clock = SYSTEM_CLOCK,
        heartbeat_every: float = HEARTBEAT_EVERY,
    ) -> None:
        self._reconciler = reconciler
        self._store = store
        self._settings = reconciler.settings
        self._tz = tz
        self._clock = clock
        self._heartbeat_every = heartbeat_every
        self._last_heartbeat: float | None = None
        self.schedule = NightlySchedule(self._settings.at, tz)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name="reconciler")
        return self._task

    async def stop(self) -> None:
        """Cancel the task; a run in progress resumes at the next start."""
        if self._task is not None:
            self._task.cancel()
            # A task that died has been reported by the daemon's supervisor already.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def run(self) -> None:
        """The task body: catch up once, then tick until cancelled."""
        try:
            # Requests a dead daemon had claimed are this daemon's to run.
            if released := await self._store.books.release_requests():
                log.warning("reconcile_requests_reclaimed", count=released)
            await self.catch_up()
        except Exception:
            log.exception("reconcile_catchup_crashed")
        while True:
            try:
                delay = await self.tick()
            except Exception:
                # A bug or a database problem: keep the daemon up, try again later.
                log.exception("reconcile_tick_crashed")
                delay = self._settings.poll_interval
            await self._clock.sleep(delay)

    async def heartbeat(self, *, force: bool = False) -> None:
        """Record that the daemon is alive (read at the next start to measure downtime)."""
        mono = self._clock.monotonic()
        recent = (
            self._last_heartbeat is not None and mono - self._last_heartbeat < self._heartbeat_every
        )
        if recent and not force:
            return
        await self._store.meta.set(HEARTBEAT_KEY, self._clock.now().isoformat())
        self._last_heartbeat = mono

    async def _beating(self, run: Callable[[], Awaitable[T]]) -> T:
        """Await ``run()`` while a side task keeps the heartbeat fresh."""
        beat = asyncio.create_task(self._beat(), name="reconcile-heartbeat")
        try:
            return await run()
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _beat(self) -> None:
        while True:
            await self._clock.sleep(self._heartbeat_every)
            try:
                await self.heartbeat(force=True)
            except (sqlite3.Error, StoreError) as exc:
                # The run goes on; the next beat tries again.
                log.warning("heartbeat_failed", error=str(exc))

    async def catch_up(self) -> list[DayReport]:
        """At start: reconcile the downtime window if fonzipd was down too long."""
        raw = await self._store.meta.get(HEARTBEAT_KEY)
        now = self._clock.now()
        await self.heartbeat(force=True)
        if raw is None or not self._settings.enabled:
            return []
        last = dt.datetime.fromisoformat(raw)
        down = (now - last).total_seconds()
        if down <= self._settings.catchup_after:
            return []
        days = days_between(business_date(last, self._tz), business_date(now, self._tz))
        log.warning(
            "reconcile_catchup_started",
            down_s=round(down),
            since=last.isoformat(),
            days=[d.isoformat() for d in days],
        )
        return await self._beating(
            lambda: self._reconciler.run(days, run_key=f"catchup:{last.isoformat()}")
        )

    async def tick(self) -> float:
        """One wake-up: heartbeat, requests, a due night. Returns seconds to sleep."""
        await self.heartbeat()
        request = await self._store.books.claim_request()
        if request is not None:
            await self._serve(request)
            return 0.0
        if not self._settings.enabled:
            return self._settings.poll_interval
        raw = await self._store.meta.get(LAST_NIGHT_KEY)
        last = None if raw is None else dt.date.fromisoformat(raw)
        now = self._clock.now()
        due = self.schedule.due_date(now, last)
        if last is None and due is not None:
            # A new state database: the first night is the next one (history is what
            # `fonzipd backfill` is for), not an unasked-for run at the first start.
            await self._store.meta.set(LAST_NIGHT_KEY, due.isoformat())
            log.info(
                "reconcile_schedule_started", first_night=(due + dt.timedelta(days=1)).isoformat()
            )
            return 0.0
        if due is not None:
            await self.run_night(due)
            return 0.0
        return self.schedule.sleep_for(now, last, max_sleep=self._settings.poll_interval)

    async def run_night(self, night: dt.date) -> list[DayReport]:
        """The nightly run of local date ``night``: yesterday, the lookback and open days."""
        days = set(reconcile_days(night, self._settings.lookback_days))
        horizon = night - dt.timedelta(days=31)
        for row in await self._store.books.days(open_only=True):
            open_day = dt.date.fromisoformat(row["business_date"])
            if horizon <= open_day < night:
                days.add(open_day)
        log.info("reconcile_night_started", night=night.isoformat(), days=len(days))
        reports = await self._beating(
            lambda: self._reconciler.run(sorted(days), run_key=f"nightly:{night.isoformat()}")
        )
        await self._store.meta.set(LAST_NIGHT_KEY, night.isoformat())
        log.info(
            "reconcile_night_finished",
            night=night.isoformat(),
            closed=sum(r.closed for r in reports),
            open=[r.day.isoformat() for r in reports if not r.closed],
        )
        return reports

    async def _serve(self, request: dict[str, Any]) -> None:
        source: Source = request["source"]
        days: list[dt.date] = request["days"]
        dry_run: bool = request["dry_run"]
        key = (
            f"backfill:{days[0].isoformat()}:{days[-1].isoformat()}"
            if source is Source.BACKFILL and days
            else f"request:{request['id']}"
        )
        # The asker's time limit, on this process's monotonic clock. Past it (a request
        # claimed again after a crash), nobody waits: a dry run is dropped, a real run
        # runs like a nightly one.
        deadline: float | None = None
        asked: dt.datetime | None = request.get("deadline_at")
        if asked is not None:
            left = (asked - self._clock.now()).total_seconds()
            if left <= 0 and dry_run:
                await self._store.books.finish_request(request["id"], "expired")
                return
            deadline = self._clock.monotonic() + left if left > 0 else None
        outcome, result = "error", None
        try:
            reports = await self._beating(
                lambda: self._reconciler.run(
                    days,
                    run_key=key,
                    kinds=request["kinds"] or None,
                    source=source,
                    dry_run=dry_run,
                    deadline=deadline,
                )
            )
            outcome = "closed" if all(r.closed for r in reports) else "open"
            result = reports_to_json(reports)
        finally:
            await self._store.books.finish_request(request["id"], outcome, result)
            log.info(
                "reconcile_request_served", request=request["id"], dry_run=dry_run, outcome=outcome
            )
