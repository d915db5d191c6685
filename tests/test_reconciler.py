"""The reconciler: windows, list-and-diff against the simulator, run bookkeeping, schedule."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import io
import json
import sqlite3
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
import structlog
from structlog.testing import capture_logs

from fonzipd import cli
from fonzipd.app import Daemon
from fonzipd.clock import SYSTEM_CLOCK
from fonzipd.config import (
    ConfigWarning,
    FetcherSettings,
    ReconcilerSettings,
    Settings,
    SinkSettings,
    settings_from_dict,
)
from fonzipd.days import business_date, day_window
from fonzipd.fetcher import Fetcher
from fonzipd.fonzip.client import FonzipClient
from fonzipd.fonzip.limiter import RateLimiter
from fonzipd.kinds import Kind
from fonzipd.privacy import SinkPolicy
from fonzipd.reconcile_command import ProgressView, reconcile_now, render_table
from fonzipd.reconciler import (
    INSTALLED_KEY,
    DayReport,
    ListRun,
    Progress,
    Reconciler,
    _refund_basis,
    local_statuses,
)
from fonzipd.records import Source
from fonzipd.simulator import Simulator
from fonzipd.state import Store
from tests.support import FakeClock, fonzip_settings, hook, make_record, sim_statuses, until

RATE = 6000.0
TOKEN = "reconcile-test-token-0123456789"
ISTANBUL = ZoneInfo("Europe/Istanbul")
BERLIN = ZoneInfo("Europe/Berlin")


def make_settings(
    tmp_path: Path,
    base_url: str,
    *,
    timezone: str = "Europe/Istanbul",
    from_lists: bool = True,
) -> Settings:
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
                "listener": {"host": "127.0.0.1", "port": 0, "auth_token": TOKEN},
                "state": {"path": "state.db"},
                "fetcher": {
                    "concurrency": 4,
                    "retry_initial": 0.02,
                    "retry_max": 0.05,
                    "max_attempts": 3,
                },
                "reconciler": {
                    "poll_interval": 0.05,
                    "fetch_wait": 15,
                    "records_from_lists": from_lists,
                },
                "sinks": {"archive": {"type": "sqlite", "path": "fonzip.db", "flush_interval": 0}},
                "logging": {"level": "warning"},
            },
            base_dir=tmp_path,
            origin="(test)",
        )


@contextlib.asynccontextmanager
async def simulator(**kwargs: Any) -> AsyncIterator[Simulator]:
    sim = Simulator(rate_per_minute=RATE, retry_delays=(0.01, 0.01), delivery_timeout=2, **kwargs)
    async with sim:
        yield sim


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[Daemon]:
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def sink_statuses(path: Path, kind: Kind) -> dict[int, str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT fonzip_id, status FROM records WHERE kind = ?", (str(kind),)
        ).fetchall()
    return {int(i): str(s) for i, s in rows}


def sim_days(sim: Simulator, days: int) -> list[dt.date]:
    return [sim.end_date - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]


# -- windows and local statuses -----------------------------------------------------------


def test_every_list_maps_to_the_statuses_normalize_gives() -> None:
    assert local_statuses(Kind.DONATION, "paid") == ("succeeded",)
    assert local_statuses(Kind.ECARD_SALE, "refund") == ("refunded",)
    assert local_statuses(Kind.FORM_ANSWER, "answer") == ("answered",)
    assert "waiting_approval" in local_statuses(Kind.CAMPAIGN, "created")
    with pytest.raises(ValueError, match="no list"):
        local_statuses(Kind.CAMPAIGN, "paid")


async def test_one_day_closes_and_boundary_records_land_on_their_own_day(tmp_path: Path) -> None:
    # The simulator puts records at 00:00:00 and 23:59:59(.6) local on every day, and
    # Fonzip's end bound is inclusive: the next day's 00:00:00 comes back in the list.
    async with simulator(seed=11, days=3, per_day=6) as sim:
        settings = make_settings(tmp_path, await sim.start())
        day = sim.end_date - dt.timedelta(days=1)
        async with running(Daemon(settings, listen=False, schedule=False)) as daemon:
            assert daemon.reconciler is not None
            (report,) = await daemon.reconciler.run([day], run_key="t1")
            assert daemon.store is not None
            first_sources = await daemon.store.records.first_sources(day)
    assert report.closed, report.reason
    start, end = day_window(day, ISTANBUL)
    paid = [
        r
        for r in sim.rows(Kind.DONATION)
        if r["transaction__payment_status"] == 3
        and start <= dt.datetime.fromisoformat(r["transaction__complete_date"]) < end
    ]
    run = next(r for r in report.runs if (r.kind, r.list_status) == (Kind.DONATION, "paid"))
    assert run.window_total == len(paid)
    assert run.fonzip_total == len(paid) + 1  # next midnight's record, outside the window
    assert run.local_after == len(paid)
    assert run.missing == len(paid)
    boundary = {
        r["id"]: r["transaction__complete_date"]
        for r in sim.rows(Kind.DONATION)
        if r["transaction__complete_date"][:10] == day.isoformat()
        and r["transaction__complete_date"][11:19] in ("00:00:00", "23:59:59")
    }
    assert len(boundary) == 3  # 00:00:00, 23:59:59 and 23:59:59.6
    with contextlib.closing(sqlite3.connect(tmp_path / "fonzip.db")) as db:
        dates = dict(
            db.execute(
                "SELECT fonzip_id, business_date FROM records WHERE kind = 'donation'"
            ).fetchall()
        )
    # All three are stored, on this day; the next day's 00:00:00 record is not.
    assert {fid: dates.get(fid) for fid in boundary} == dict.fromkeys(boundary, day.isoformat())
    next_midnight = (day + dt.timedelta(days=1)).isoformat() + "T00:00:00"
    assert not [
        r
        for r in sim.rows(Kind.DONATION)
        if r["transaction__complete_date"].startswith(next_midnight) and r["id"] in dates
    ]
    assert first_sources == {"reconcile": report.records}


# -- end to end ---------------------------------------------------------------------------


async def test_dropped_webhooks_and_an_outage_are_made_whole_by_one_reconcile(
    tmp_path: Path,
) -> None:
    async with simulator(seed=5, days=2, per_day=12) as sim:
        settings = make_settings(tmp_path, await sim.start())
        days = sim_days(sim, 2)
        yesterday = days[0]
        sim.faults.drop_webhooks = 0.3
        async with running(Daemon(settings)) as daemon:
            assert daemon.store is not None
            store = daemon.store
            # Installed the day before: yesterday's coverage is judged.
            installed = dt.datetime.combine(yesterday - dt.timedelta(days=1), dt.time(9), ISTANBUL)
            await store.meta.set(INSTALLED_KEY, installed.isoformat())
            sim.configure_webhook_target(
                f"http://127.0.0.1:{daemon.port}{settings.listener.path}", TOKEN
            )
            at = dt.datetime.combine(yesterday, dt.time(15), ISTANBUL)
            for n in range(24):
                kind = list(Kind)[n % 6]
                await sim.create_event(kind, when=at + dt.timedelta(minutes=n))
            # A two-hour outage: webhooks still arrive, every fetch gets a 503 and is
            # retried (Fonzip being down never parks an event).
            sim.faults.outage_until = SYSTEM_CLOCK.now() + dt.timedelta(hours=2)
            for n in range(12):
                kind = list(Kind)[n % 6]
                await sim.create_event(kind, when=at + dt.timedelta(hours=1, minutes=n))
            await sim.wait_deliveries_idle()
            await until(lambda: _retrying(settings.state.path))
            sim.faults.outage_until = None  # two hours later
            await until(lambda: _inbox_settled(store))
            # Refunds of donations paid on earlier days, their webhooks lost.
            old_paid = [
                r["id"]
                for r in sim.rows(Kind.DONATION)
                if r["transaction__payment_status"] == 3
                and r["transaction__complete_date"].startswith(yesterday.isoformat())
            ][:3]
            for fid in old_paid:
                await sim.refund(Kind.DONATION, fid, deliver=False)
            assert (await store.inbox.counts()).get("failed", 0) == 0

            out = io.StringIO()
            with structlog.testing.capture_logs() as logs:
                code = await reconcile_now(settings, days, kinds=[], out=out)
            await until(lambda: _delivered(store))
            day_rows = await store.books.days(days=days)
            delivered = (await store.outbox.sink_status(["archive"]))["archive"]["delivered"]
    table = out.getvalue()
    assert code == 0, table
    assert {r["state"] for r in day_rows} == {"closed"}
    sink = tmp_path / "fonzip.db"
    for kind in Kind:
        assert sink_statuses(sink, kind) == sim_statuses(sim, kind, ISTANBUL), kind
    for fid in old_paid:
        assert sink_statuses(sink, Kind.DONATION)[fid] == "refunded"
    with contextlib.closing(sqlite3.connect(sink)) as db:
        history = db.execute("SELECT count(*) FROM record_history").fetchone()[0]
        distinct = db.execute(
            "SELECT count(*) FROM (SELECT DISTINCT kind, fonzip_id, version FROM record_history)"
        ).fetchone()[0]
    assert history == distinct == delivered  # each version delivered exactly once
    assert "donation" in table
    assert "closed" in table
    # Most records were first seen by the reconcile: the set-up looks broken, say so.
    assert any(e["event"] == "webhook_coverage_low" for e in logs)


async def _retrying(state_db: Path) -> bool:
    """Whether some inbox row failed to fetch and waits for its retry."""
    with contextlib.closing(sqlite3.connect(state_db)) as db:
        (n,) = db.execute(
            "SELECT count(*) FROM inbox WHERE state = 'pending' AND last_error IS NOT NULL"
        ).fetchone()
    return bool(n)


async def _inbox_settled(store: Store) -> bool:
    depth, _ = await store.inbox.depth()
    return depth == 0


async def _delivered(store: Store) -> bool:
    status = await store.outbox.sink_status(["archive"])
    return bool(status["archive"]["pending"] == 0)


# -- DST zones ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "hours"),
    [(dt.date(2026, 3, 29), 23), (dt.date(2026, 10, 25), 25)],
    ids=["spring-forward", "fall-back"],
)
async def test_berlin_change_days_close(tmp_path: Path, day: dt.date, hours: int) -> None:
    start, end = day_window(day, BERLIN)
    assert end - start == dt.timedelta(hours=hours)
    async with simulator(seed=2, days=2, per_day=5, timezone="Europe/Berlin", end_date=day) as sim:
        settings = make_settings(tmp_path, await sim.start(), timezone="Europe/Berlin")
        async with running(Daemon(settings, listen=False, schedule=False)) as daemon:
            assert daemon.reconciler is not None
            reports = await daemon.reconciler.run([day - dt.timedelta(days=1), day], run_key="dst")
    assert all(r.closed for r in reports), [r.reason for r in reports]
    stored = sink_statuses(tmp_path / "fonzip.db", Kind.TICKET_SALE)
    assert stored == sim_statuses(sim, Kind.TICKET_SALE, BERLIN)


# -- forms and campaigns ---------------------------------------------------------------------


async def test_form_ids_come_from_the_list_rows_and_campaigns_by_creation_date(
    tmp_path: Path,
) -> None:
    async with simulator(seed=4, days=1, per_day=10) as sim:
        settings = make_settings(tmp_path, await sim.start())
        day = sim.end_date
        async with running(Daemon(settings, listen=False, schedule=False)) as daemon:
            assert daemon.reconciler is not None
            assert daemon.store is not None
            (report,) = await daemon.reconciler.run(
                [day], run_key="fc", kinds=[Kind.FORM_ANSWER, Kind.CAMPAIGN]
            )
            answers = [o["id"] for o in sim.objects(Kind.FORM_ANSWER)]
            learned = {a: await daemon.store.form_ids.get(a) for a in answers}
        form_requests = [r for r in sim.requests if r.path.startswith("/api/v2/form/")]
    assert report.closed, report.reason
    assert {(r.kind, r.list_status) for r in report.runs} == {
        (Kind.FORM_ANSWER, s) for s in Kind.FORM_ANSWER.list_statuses
    } | {(Kind.CAMPAIGN, "created")}
    assert learned == {a: sim.form_id_of(a) for a in answers}
    # One detail request per answer: no form search, the list row gave the form id.
    assert len(form_requests) == len(answers)
    sink = tmp_path / "fonzip.db"
    assert sink_statuses(sink, Kind.CAMPAIGN) == sim_statuses(sim, Kind.CAMPAIGN, ISTANBUL)
    assert sink_statuses(sink, Kind.FORM_ANSWER) == sim_statuses(sim, Kind.FORM_ANSWER, ISTANBUL)


# -- restart in the middle of a run ----------------------------------------------------------


class Crash(Exception):
    """Stands for the process dying."""


async def test_a_restarted_run_resumes_without_listing_finished_lists_again(
    tmp_path: Path,
) -> None:
    async with simulator(seed=8, days=2, per_day=6) as sim:
        settings = make_settings(tmp_path, await sim.start())
        days = sim_days(sim, 2)

        def crash_on_second_day(event: Progress) -> None:
            if event.stage == "listed" and event.day == days[1]:
                raise Crash

        async with running(Daemon(settings, listen=False, schedule=False)) as daemon:
            assert daemon.reconciler is not None
            with pytest.raises(Crash):
                await daemon.reconciler.run(days, run_key="nightly:x", progress=crash_on_second_day)
        listed_before = _list_requests(sim)
        async with running(Daemon(settings, listen=False, schedule=False)) as daemon:
            assert daemon.reconciler is not None
            reports = await daemon.reconciler.run(days, run_key="nightly:x")
        listed_after = _list_requests(sim)
    assert all(r.closed for r in reports), [r.reason for r in reports]
    lists_per_day = sum(len(k.list_statuses) for k in Kind)
    # Day one was finished before the crash: only day two is listed again (its first
    # list, listed before the crash, once more).
    assert listed_after - listed_before <= lists_per_day + 2
    assert listed_before >= lists_per_day + 1
    for kind in Kind:
        assert sink_statuses(tmp_path / "fonzip.db", kind) == sim_statuses(sim, kind, ISTANBUL)


def _list_requests(sim: Simulator) -> int:
    paths = {
        "/donations",
        "/subscriptions",
        "/ticket-sales",
        "/form-answers",
        "/ecard-transactions",
        "/fundraising-campaigns",
    }
    return sum(1 for r in sim.requests if r.path.removeprefix("/api/v2") in paths)


# -- the commands -----------------------------------------------------------------------------


async def test_dry_run_queues_nothing_and_the_command_reports_open_days(tmp_path: Path) -> None:
    async with simulator(seed=9, days=1, per_day=10) as sim:
        settings = make_settings(tmp_path, await sim.start())
        day = sim.end_date
        out = io.StringIO()
        code = await reconcile_now(settings, [day], kinds=[Kind.DONATION], dry_run=True, out=out)
        assert code == 1  # everything is missing locally
        assert "dry run" in out.getvalue()
        paid = sum(1 for r in sim.rows(Kind.DONATION) if r["transaction__payment_status"] == 3)
        assert f"dry_run_open (local 0 != Fonzip {paid}, {paid} to fetch)" in out.getvalue()
        assert "dry_run_closed" not in out.getvalue()
        store = await Store.open(settings.state.path)
        try:
            assert await store.inbox.counts() == {}
            assert await store.books.runs() == []
        finally:
            await store.close()
        # Now for real, in this process (no daemon runs): the day closes.
        out = io.StringIO()
        code = await reconcile_now(settings, [day], kinds=[Kind.DONATION], out=out)
        assert code == 0, out.getvalue()
        # The dry run's one write: the token it got, which the next process reuses (Fonzip
        # answers 409 to a new one while it lives).
        assert [r.path for r in sim.requests if r.path.endswith("/token")] == ["/api/v2/token"]
        assert f"{day.isoformat()}: closed" in out.getvalue()
        # A dry run of the day now finds nothing to do: every list would close.
        out = io.StringIO()
        code = await reconcile_now(settings, [day], kinds=[Kind.DONATION], dry_run=True, out=out)
        assert code == 0, out.getvalue()
        assert out.getvalue().count("dry_run_closed") == 3
        assert "dry_run_open" not in out.getvalue()
    status = await cli._status(settings)
    assert {r["list_status"] for r in status["reconcile_runs"]} == {"paid", "refund", "failed"}
    assert status["open_days"] == []
    paid = sum(1 for r in sim.rows(Kind.DONATION) if r["transaction__payment_status"] == 3)
    assert paid > 0


def test_the_table_shows_totals_local_missing_and_fetched() -> None:
    from fonzipd.reconciler import ListRun

    run = ListRun(dt.date(2026, 11, 26), Kind.DONATION, "paid", "k", Source.RECONCILE, 0.0)
    run.window_total, run.local_before, run.local_after = 20, 18, 20
    run.missing, run.fetched, run.outcome = 2, 2, "closed"
    text = render_table([DayReport(run.day, True, None, [run], records=20, first_by_reconcile=2)])
    line = next(x for x in text.splitlines() if x.startswith("2026-11-26  donation"))
    assert line.split()[3:9] == ["20", "20", "2", "0", "2", "0"]
    assert "2026-11-26: closed  (20 records, 2 first seen by the reconcile = 10%)" in text


def test_the_eta_counts_every_request_left_at_the_rate_budget() -> None:
    from fonzipd.reconcile_command import RunFigures, eta_seconds

    view = ProgressView([dt.date(2026, 11, d) for d in range(1, 11)], 240, out=io.StringIO())
    # Before a day is done there is no average: the queued fetches are shown instead.
    first = RunFigures(10, 0, 0, 0, in_progress=True, pending=80)
    assert first.requests_left() is None
    assert "ETA after the first day (80 fetches queued)" in view.render(first)
    # One day done with 120 requests (pages and fetches); the second listed, its 100
    # fetches queued: 100 + 8 days x 120 = 1060 requests, at 4 a second 265 s.
    now = RunFigures(10, 1, 120, 1, in_progress=True, pending=100)
    assert now.requests_left() == 1060
    assert eta_seconds(1060, 240) == pytest.approx(265)
    assert "1,060 requests left, ETA ≥ 4m25s at 240 req/min" in view.render(now)
    assert RunFigures(10, 10, 1200, 10, in_progress=False, pending=0).requests_left() == 0
    # A resumed backfill: 5 days skipped (no requests), 1 measured at 120.
    assert RunFigures(10, 6, 120, 1, in_progress=False, pending=0).requests_left() == 480


async def test_backfill_resumes_and_marks_records_as_backfilled(tmp_path: Path) -> None:
    async with simulator(seed=6, days=3, per_day=10) as sim:
        settings = make_settings(tmp_path, await sim.start())
        days = sim_days(sim, 3)
        with structlog.testing.capture_logs() as logs:
            code = await reconcile_now(
                settings, days, kinds=[Kind.CAMPAIGN], source=Source.BACKFILL, out=io.StringIO()
            )
        listed = _list_requests(sim)
        # The same backfill again: every list is finished, nothing is listed again.
        code_again = await reconcile_now(
            settings, days, kinds=[Kind.CAMPAIGN], source=Source.BACKFILL, out=io.StringIO()
        )
        assert _list_requests(sim) == listed
    assert code == code_again == 0
    with contextlib.closing(sqlite3.connect(settings.state.path)) as db:
        sources = db.execute("SELECT DISTINCT first_source FROM records").fetchall()
    assert sources == [("backfill",)]
    assert not any(e["event"] == "webhook_coverage_low" for e in logs)  # expected, not a fault


async def test_refunds_of_earlier_days_are_found_for_every_kind(tmp_path: Path) -> None:
    """Regression: form-answer rows carry no refund date; answers refunded on a later day
    than they were made were dropped as outside the window, and the day closed."""
    async with simulator(seed=1, days=3, per_day=5) as sim:
        made = dt.datetime.combine(
            sim.end_date - dt.timedelta(days=2), dt.time(10), tzinfo=ISTANBUL
        )
        refunded: dict[Kind, int] = {}
        for kind in Kind:
            while kind is not Kind.CAMPAIGN and kind not in refunded:
                fid, _ = await sim.create_event(kind, status=3, deliver=False, when=made)
                with contextlib.suppress(ValueError):  # a free form answer has no payment
                    await sim.refund(kind, fid, deliver=False)  # refunded today
                    refunded[kind] = fid
        daemon = Daemon(make_settings(tmp_path, await sim.start()), schedule=False)
        async with running(daemon):
            assert daemon.reconciler is not None
            reports = await daemon.reconciler.run(sim_days(sim, 3), run_key="t", fetch_wait=30)
            assert all(r.closed for r in reports)

            async def landed() -> bool:
                return all(
                    sink_statuses(tmp_path / "fonzip.db", kind).get(fid) == "refunded"
                    for kind, fid in refunded.items()
                )

            await until(landed, within=15)
            for kind in Kind:
                want = sim_statuses(sim, kind, ISTANBUL)
                assert sink_statuses(tmp_path / "fonzip.db", kind) == want, kind


async def test_a_record_deleted_at_fonzip_closes_its_day_and_reaches_the_sink(
    tmp_path: Path,
) -> None:
    async with simulator(seed=2, days=1, per_day=5) as sim:
        day = sim.end_date
        daemon = Daemon(make_settings(tmp_path, await sim.start()), schedule=False)
        async with running(daemon):
            assert daemon.reconciler is not None
            [first] = await daemon.reconciler.run([day], run_key="one", fetch_wait=30)
            assert first.closed
            gone = int(sim.objects(Kind.DONATION)[0]["id"])
            sim.delete(Kind.DONATION, gone)  # Fonzip sends no webhook for this
            [second] = await daemon.reconciler.run([day], run_key="two", fetch_wait=30)
            assert second.closed, second.reason

            async def landed() -> bool:
                return sink_statuses(tmp_path / "fonzip.db", Kind.DONATION).get(gone) == ("deleted")

            await until(landed)


# -- days that cannot be verified stay open ---------------------------------------------------
#
# Each fault leaves the day open, with the reason per kind and list, and the command
# answers by its time limit with exit 1. A `_settle` that closed every list whatever
# the counts, or a diff that queued missing ids but not changed ones, fails these.


async def _reconcile_open(
    settings: Settings, day: dt.date, *, wait: float = 3.0
) -> tuple[int, str, float]:
    out = io.StringIO()
    started = SYSTEM_CLOCK.monotonic()
    code = await reconcile_now(settings, [day], kinds=[Kind.DONATION], out=out, wait=wait)
    return code, out.getvalue(), SYSTEM_CLOCK.monotonic() - started


def _list_line(table: str, day: dt.date, list_status: str) -> str:
    return next(
        x for x in table.splitlines() if x.split()[:3] == [day.isoformat(), "donation", list_status]
    )


def _paid_ids(sim: Simulator, day: dt.date) -> list[int]:
    start, end = day_window(day, ISTANBUL)
    return [
        r["id"]
        for r in sim.rows(Kind.DONATION)
        if r["transaction__payment_status"] == 3
        and start <= dt.datetime.fromisoformat(r["transaction__complete_date"]) < end
    ]


async def test_a_detail_that_fails_for_the_whole_run_leaves_the_day_open_until_it_answers(
    tmp_path: Path,
) -> None:
    async with simulator(seed=21, days=2, per_day=6) as sim:
        # The detail path (as for form answers): donations' rows would make the records.
        settings = make_settings(tmp_path, await sim.start(), from_lists=False)
        day = sim.end_date - dt.timedelta(days=1)
        stuck = _paid_ids(sim, day)[0]
        sim.faults.failing_details = [f"donation:{stuck}"]
        code, table, took = await _reconcile_open(settings, day, wait=3)
        assert code == 1, table
        assert took < 3 + 10  # answered by its time limit, not reconciler.fetch_wait (15 s)
        paid = _list_line(table, day, "paid")
        assert paid.split()[7:9] == [str(len(_paid_ids(sim, day)) - 1), "1"]  # fetched, failed
        assert "open" in paid
        assert f"donation {stuck} still retrying" in paid
        assert "HTTP 503" in paid
        assert f"{day.isoformat()}: OPEN: donation/paid:" in table
        status = await cli._status(settings)
        assert [d["business_date"] for d in status["open_days"]] == [day.isoformat()]
        assert str(stuck) in status["open_days"][0]["reason"]
        store = await Store.open(settings.state.path)
        try:
            from fonzipd.metrics import store_reconcile_figures

            assert (await store_reconcile_figures(store)()).open_days == 1
        finally:
            await store.close()
        # Every other record of the day reached the sink; the stuck one did not.
        stored = sink_statuses(tmp_path / "fonzip.db", Kind.DONATION)
        assert stuck not in stored
        assert set(_paid_ids(sim, day)) - {stuck} <= set(stored)

        # Fonzip answers again: the next run verifies the day and closes it.
        sim.faults.failing_details = []
        code, table, _ = await _reconcile_open(settings, day, wait=10)
    assert code == 0, table
    assert sink_statuses(tmp_path / "fonzip.db", Kind.DONATION)[stuck] == "succeeded"
    assert (await cli._status(settings))["open_days"] == []


async def test_fonzip_down_mid_run_leaves_the_day_open(tmp_path: Path) -> None:
    async with simulator(seed=22, days=2, per_day=6) as sim:
        # The detail path (as for form answers): donations' rows would make the records.
        settings = make_settings(tmp_path, await sim.start(), from_lists=False)
        day = sim.end_date - dt.timedelta(days=1)
        # The token and the paid list are answered; then Fonzip is down.
        sim.faults.down_after = 2
        code, table, took = await _reconcile_open(settings, day, wait=3)
    assert code == 1, table
    assert took < 3 + 10
    paid = _list_line(table, day, "paid")
    assert "open" in paid
    assert "not fetched" in paid
    assert "HTTP 503" in paid
    for later in ("refund", "failed"):
        line = _list_line(table, day, later)
        assert "listing failed" in line, line
        assert "HTTP 503" in line
    assert f"{day.isoformat()}: OPEN:" in table
    assert not sink_statuses(tmp_path / "fonzip.db", Kind.DONATION)


async def test_a_count_that_does_not_match_leaves_the_day_open(tmp_path: Path) -> None:
    async with simulator(seed=23, days=2, per_day=6) as sim:
        settings = make_settings(tmp_path, await sim.start())
        day = sim.end_date - dt.timedelta(days=1)
        # Fonzip counts a record its pages never show: everything listed is fetched,
        # and still the day cannot be called complete.
        sim.faults.list_total_offset = 1
        code, table, _ = await _reconcile_open(settings, day, wait=10)
    assert code == 1, table
    paid = _list_line(table, day, "paid")
    n = len(_paid_ids(sim, day))
    assert f"local {n} != Fonzip {n + 1}" in paid
    assert "not fetched" not in paid
    assert set(_paid_ids(sim, day)) <= set(sink_statuses(tmp_path / "fonzip.db", Kind.DONATION))


async def test_a_list_that_errors_leaves_the_day_open(tmp_path: Path) -> None:
    async with simulator(seed=24, days=2, per_day=6) as sim:
        settings = make_settings(tmp_path, await sim.start())
        day = sim.end_date - dt.timedelta(days=1)
        sim.faults.failing_lists = ["donation:refund"]
        code, table, _ = await _reconcile_open(settings, day, wait=10)
    assert code == 1, table
    assert "closed" in _list_line(table, day, "paid")
    refund = _list_line(table, day, "refund")
    assert "listing failed" in refund
    assert "HTTP 500" in refund
    assert f"{day.isoformat()}: OPEN: donation/refund: listing failed" in table


async def test_list_rows_without_a_valid_id_leave_their_list_open_and_break_nothing(
    tmp_path: Path,
) -> None:
    async with simulator(seed=26, days=2, per_day=6) as sim:
        settings = make_settings(tmp_path, await sim.start())
        day = sim.end_date - dt.timedelta(days=1)
        # Integers, so the client's page check lets them through (a missing or string
        # id fails the listing itself): ids list_row_id refuses.
        too_big, negative, *rest = _paid_ids(sim, day)
        sim.tamper_row(Kind.DONATION, too_big, lambda row: row.update(id=2**63))
        sim.tamper_row(Kind.DONATION, negative, lambda row: row.update(id=-negative))
        code, table, _ = await _reconcile_open(settings, day, wait=10)
    assert code == 1, table
    paid = _list_line(table, day, "paid")
    assert "open" in paid
    assert "2 unreadable row(s) in donation/paid" in paid, paid
    assert "field 'id'" in paid
    assert str(2**63) not in table  # the problem, never the value
    for other in ("refund", "failed"):
        assert "closed" in _list_line(table, day, other)
    # The run went on: every other row of the list reached the sink.
    assert set(rest) <= set(sink_statuses(tmp_path / "fonzip.db", Kind.DONATION))


async def test_a_changed_record_is_fetched_when_only_its_new_list_is_reconciled(
    tmp_path: Path,
) -> None:
    # Paid yesterday (stored), refunded today with the webhook lost. Today's refund list
    # shows it with another status than the stored one: only the diff's "changed" finds
    # it, because yesterday's paid list, where it is now missing, is not reconciled.
    async with simulator(seed=25, days=2, per_day=6) as sim:
        settings = make_settings(tmp_path, await sim.start())
        yesterday, today = sim.end_date - dt.timedelta(days=1), sim.end_date
        code, table, _ = await _reconcile_open(settings, yesterday, wait=10)
        assert code == 0, table
        refunded = _paid_ids(sim, yesterday)[0]
        await sim.refund(Kind.DONATION, refunded, deliver=False)
        code, table, _ = await _reconcile_open(settings, today, wait=10)
    assert code == 0, table
    refund = _list_line(table, today, "refund")
    assert refund.split()[6] == "1", refund  # changed: the stored one, now refunded
    assert sink_statuses(tmp_path / "fonzip.db", Kind.DONATION)[refunded] == "refunded"


# -- records from list rows ---------------------------------------------------------------


def _sink_records(path: Path, kind: Kind) -> dict[int, dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM records WHERE kind = ?", (str(kind),)).fetchall()
    return {int(r["fonzip_id"]): dict(r) for r in rows}


async def test_a_day_is_built_from_list_rows_and_edits_that_keep_the_status_are_found(
    tmp_path: Path,
) -> None:
    async with simulator(seed=31, days=2, per_day=12) as sim:
        settings = make_settings(tmp_path, await sim.start())
        day = sim.end_date - dt.timedelta(days=1)
        kinds = [Kind.DONATION, Kind.FORM_ANSWER]
        async with running(Daemon(settings, listen=False, schedule=False)) as daemon:
            assert daemon.reconciler is not None
            (report,) = await daemon.reconciler.run([day], run_key="r1", kinds=kinds)
            assert report.closed, report.reason
            details = [r.path for r in sim.requests if "/donation/" in r.path]
            forms = [r for r in sim.requests if "/answer/" in r.path]
            # Donations come whole from their rows; form answers need their details.
            assert details == []
            assert forms
            paid = _paid_ids(sim, day)
            renamed, repriced = paid[0], paid[1]
            answer = next(
                fid
                for fid, rec in _sink_records(tmp_path / "fonzip.db", Kind.FORM_ANSWER).items()
                if rec["business_date"] == day.isoformat()
            )
            sim.amend(Kind.DONATION, renamed, first_name="Zeynep")
            sim.amend(Kind.DONATION, repriced, amount=Decimal("1234.5"))
            sim.amend(Kind.FORM_ANSWER, answer, first_name="Zeynep")
            before = len(sim.requests)
            (again,) = await daemon.reconciler.run([day], run_key="r2", kinds=kinds)

            async def delivered() -> bool:
                answers = _sink_records(tmp_path / "fonzip.db", Kind.FORM_ANSWER)
                donations = _sink_records(tmp_path / "fonzip.db", Kind.DONATION)
                return bool(
                    answers[answer]["person_name"].startswith("Zeynep")
                    and donations[repriced]["amount"] == "1234.5"
                )

            await until(delivered)
            second = sim.requests[before:]
    assert again.closed, again.reason
    paid_run = next(r for r in again.runs if (r.kind, r.list_status) == (Kind.DONATION, "paid"))
    assert (paid_run.missing, paid_run.changed) == (0, 2)
    answer_run = next(r for r in again.runs if r.kind is Kind.FORM_ANSWER and r.changed)
    assert answer_run.changed == 1
    # The second run: list pages, and one detail, for the form answer whose row changed.
    assert [r.path for r in second if "/answer/" in r.path] == [
        next(r.path for r in second if f"/answer/{answer}" in r.path)
    ]
    assert not [r for r in second if "/donation/" in r.path]
    stored = _sink_records(tmp_path / "fonzip.db", Kind.DONATION)
    assert stored[renamed]["person_name"].startswith("Zeynep")
    assert stored[repriced]["status"] == "succeeded"


def _csv_rows(directory: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(directory.glob("donation/*.csv")):
        with path.open(encoding="utf-8", newline="") as f:
            rows.extend(csv.DictReader(f))
    return rows


async def test_enrichment_fetches_the_details_last_and_spares_a_csv_sink_without_data(
    tmp_path: Path,
) -> None:
    async with simulator(seed=32, days=2, per_day=8) as sim:
        settings = make_settings(tmp_path, await sim.start())
        settings = settings.model_copy(
            update={
                "reconciler": settings.reconciler.model_copy(update={"enrich": True}),
                "sinks": {
                    **settings.sinks,
                    "sheets": SinkSettings(
                        type="csv", directory=str(tmp_path / "csv"), flush_interval=0
                    ),
                },
            }
        )
        day = sim.end_date - dt.timedelta(days=1)
        async with running(Daemon(settings, listen=False, schedule=False)) as daemon:
            assert daemon.reconciler is not None
            assert daemon.store is not None
            store = daemon.store
            (report,) = await daemon.reconciler.run([day], run_key="e1", kinds=[Kind.DONATION])
            assert report.closed, report.reason
            ids = set(_paid_ids(sim, day))

            async def enriched() -> bool:
                stored = await store.records.get_many(Kind.DONATION, ids)
                return all("_fonzipd" not in r.data for r in stored.values()) and set(
                    await store.inbox.counts()
                ) <= {"done"}

            await until(enriched)
            details = [r for r in sim.requests if "/donation/" in r.path]
            # Every record of the day came from its row, then its detail came later.
            assert {int(r.path.rsplit("/", 1)[1]) for r in details} >= ids
            before = len(sim.requests)
            (again,) = await daemon.reconciler.run([day], run_key="e2", kinds=[Kind.DONATION])
            assert again.closed
            # Enriched records match their rows: nothing is fetched or queued again.
            assert not [r for r in sim.requests[before:] if "/donation/" in r.path]

            async def delivered() -> bool:
                for sid in ("archive", "sheets"):
                    if await store.outbox.oldest_pending_age(sid) is not None:
                        return False
                return True

            await until(delivered)
        with contextlib.closing(sqlite3.connect(tmp_path / "fonzip.db")) as db:
            versions = dict(
                db.execute(
                    "SELECT fonzip_id, count(*) FROM record_history WHERE kind = 'donation'"
                    " GROUP BY fonzip_id"
                ).fetchall()
            )
            data = dict(db.execute("SELECT fonzip_id, data FROM records").fetchall())
    # The SQLite sink took the enrichment (a second version, the detail's data)...
    assert {versions[i] for i in ids} == {2}
    assert all('"_fonzipd"' not in data[i] for i in ids)
    # ...the CSV sink without a data column wrote each entry once (a payment, and a
    # refund for a refunded record), no repeat for the enrichment.
    rows = _csv_rows(tmp_path / "csv")
    entry_ids = [r["entry_id"] for r in rows]
    assert sorted(entry_ids) == sorted(set(entry_ids))
    assert ids <= {int(r["fonzip_id"]) for r in rows}


# -- settling one list: the verdict, its reason and the counts per inbox state ----------

DAY = dt.date(2026, 11, 26)


def _settler(store: Store, clock: FakeClock) -> Reconciler:
    """A reconciler whose settle step runs on a real state database. Settling reads only
    the store (the listing and the fetcher have done their part), so no client."""
    return Reconciler(
        store,
        cast(FonzipClient, None),
        tz=ZoneInfo("UTC"),
        settings=ReconcilerSettings(),
        clock=clock,
    )


def _list_run(expected: dict[int, str], window_total: int, **kw: Any) -> ListRun:
    return ListRun(
        day=DAY,
        kind=Kind.DONATION,
        list_status="paid",
        run_key="settle-test",
        source=Source.RECONCILE,
        started_at=0.0,
        fonzip_total=window_total,
        window_total=window_total,
        local_before=0,
        expected=dict(expected),
        **kw,
    )


async def _queued(store: Store, fid: int) -> int:
    """Queue one detail fetch of donation ``fid`` and claim it (the fetcher's first step)."""
    await store.inbox.add_events([hook(fid)])
    row = await store.inbox.claim()
    assert row is not None
    assert row.fonzip_id == fid
    return row.id


async def _saved(store: Store) -> dict[str, Any]:
    (row,) = await store.books.runs(days=[DAY])
    return row


async def test_a_list_whose_queued_ids_were_all_fetched_closes_with_the_counts_saved(
    store: Store, clock: FakeClock
) -> None:
    for fid in (1, 2):  # listed as paid, fetched as paid
        await store.records.apply_record(await _queued(store, fid), make_record(fid), ["a"])
    # A stored record Fonzip no longer lists in paid: fetched again, now refunded.
    await store.records.apply_record(
        await _queued(store, 3), make_record(3, status="refunded"), ["a"]
    )
    run = _list_run({1: "succeeded", 2: "succeeded", 3: ""}, window_total=2)
    await _settler(store, clock)._settle(run, dry_run=False)
    saved = await _saved(store)
    assert (saved["outcome"], saved["reason"]) == ("closed", None)
    assert (saved["fetched"], saved["failed"], saved["local_after"]) == (3, 0, 2)
    assert saved["finished_at"] == clock.now().timestamp()


async def _two_fetched(store: Store) -> None:
    """Donations 1 and 2: listed as paid, fetched, and paid."""
    for fid in (1, 2):
        await store.records.apply_record(await _queued(store, fid), make_record(fid), ["a"])


async def _settled_open(store: Store, clock: FakeClock, expected: dict[int, str]) -> ListRun:
    run = _list_run({1: "succeeded", 2: "succeeded", **expected}, window_total=3)
    await _settler(store, clock)._settle(run, dry_run=False)
    saved = await _saved(store)
    assert saved["outcome"] == "open"
    assert saved["reason"] == run.reason
    assert (saved["fetched"], saved["failed"]) == (2, len(expected))
    return run


async def test_a_fetch_still_retrying_keeps_the_day_open_with_its_last_error(
    store: Store, clock: FakeClock
) -> None:
    await _two_fetched(store)
    await store.inbox.retry_later(await _queued(store, 7), "HTTP 503", 60)
    run = await _settled_open(store, clock, {7: "succeeded"})
    assert run.reason == "local 2 != Fonzip 3, 1 not fetched (donation 7 still retrying: HTTP 503)"


async def test_a_fetch_never_tried_in_time_keeps_the_day_open(
    store: Store, clock: FakeClock
) -> None:
    await _two_fetched(store)
    await _queued(store, 8)  # claimed, no error yet
    await store.inbox.add_events([hook(7)])  # pending
    run = await _settled_open(store, clock, {7: "succeeded", 8: "succeeded"})
    assert run.reason == (
        "local 2 != Fonzip 3, 2 not fetched (donation 7 not fetched by the time limit;"
        " donation 8 not fetched by the time limit)"
    )


async def test_a_failed_fetch_keeps_the_day_open_with_its_error(
    store: Store, clock: FakeClock
) -> None:
    await _two_fetched(store)
    await store.inbox.fail(await _queued(store, 7), "HTTP 404")
    run = await _settled_open(store, clock, {7: "succeeded"})
    assert run.reason == "local 2 != Fonzip 3, 1 not fetched (donation 7 failed: HTTP 404)"


async def test_a_detail_that_disagrees_with_the_list_keeps_the_day_open(
    store: Store, clock: FakeClock
) -> None:
    await _two_fetched(store)
    row = await _queued(store, 7)
    await store.records.apply_record(row, make_record(7, status="refunded"), ["a"])
    run = await _settled_open(store, clock, {7: "succeeded"})
    assert run.reason == (
        "local 2 != Fonzip 3, 1 not fetched"
        " (donation 7 Fonzip's detail says refunded, its list succeeded)"
    )


async def test_an_id_never_queued_keeps_the_day_open(store: Store, clock: FakeClock) -> None:
    await _two_fetched(store)
    run = await _settled_open(store, clock, {7: "succeeded"})
    assert run.reason == "local 2 != Fonzip 3, 1 not fetched (donation 7 not queued)"


async def test_an_extra_record_not_fetched_again_keeps_the_day_open(
    store: Store, clock: FakeClock
) -> None:
    # Stored as paid but Fonzip's paid list no longer has them: 6 was fetched again (now
    # refunded), 7's re-fetch is not done.
    await store.records.apply_record(await _queued(store, 7), make_record(7), ["a"])
    await _queued(store, 7)
    await store.records.apply_record(
        await _queued(store, 6), make_record(6, status="refunded"), ["a"]
    )
    run = _list_run({6: "", 7: ""}, window_total=1)
    await _settler(store, clock)._settle(run, dry_run=False)
    assert (run.outcome, run.fetched, run.failed) == ("open", 1, 1)
    assert run.reason == "1 not fetched (donation 7 not fetched by the time limit)"


async def test_more_than_three_problems_name_the_first_three(
    store: Store, clock: FakeClock
) -> None:
    await _two_fetched(store)
    run = await _settled_open(store, clock, {7: "succeeded", 8: "succeeded", 9: "succeeded"})
    run4 = _list_run({7: "succeeded", 8: "succeeded", 9: "succeeded", 10: "x"}, window_total=2)
    await _settler(store, clock)._settle(run4, dry_run=False)
    assert run.reason == (
        "local 2 != Fonzip 3, 3 not fetched"
        " (donation 7 not queued; donation 8 not queued; donation 9 not queued)"
    )
    assert run4.reason == (
        "4 not fetched (donation 7 not queued; donation 8 not queued; donation 9 not queued …)"
    )


async def test_equal_counts_with_unreadable_rows_keep_the_day_open(
    store: Store, clock: FakeClock
) -> None:
    await store.records.apply_record(await _queued(store, 1), make_record(1), ["a"])
    run = _list_run({1: "succeeded"}, window_total=1, unreadable=["id: not a number"])
    await _settler(store, clock)._settle(run, dry_run=False)
    saved = await _saved(store)
    assert (saved["outcome"], saved["fetched"], saved["failed"]) == ("open", 1, 0)
    assert saved["reason"] == "1 unreadable row(s) in donation/paid (id: not a number)"


async def test_a_list_that_failed_to_list_keeps_its_reason(store: Store, clock: FakeClock) -> None:
    run = _list_run({}, window_total=0, outcome="open", reason="listing failed: HTTP 500")
    await _settler(store, clock)._settle(run, dry_run=False)
    assert (run.outcome, run.reason, run.local_after) == ("open", "listing failed: HTTP 500", None)
    assert await store.books.runs(days=[DAY]) == []


async def test_a_dry_run_settles_on_what_it_listed_and_saves_nothing(
    store: Store, clock: FakeClock
) -> None:
    settler = _settler(store, clock)
    agreed = _list_run({}, window_total=2)
    agreed.local_before = 2
    await settler._settle(agreed, dry_run=True)
    assert (agreed.outcome, agreed.reason, agreed.local_after) == ("dry_run_closed", None, 2)
    for run, reason in [
        (_list_run({7: "succeeded"}, window_total=2), "local 0 != Fonzip 2, 1 to fetch"),
        (_list_run({7: "succeeded", 8: ""}, window_total=0), "2 to fetch"),
        (
            _list_run({}, window_total=0, unreadable=["id: missing", "id: not a number"]),
            "2 unreadable row(s) in donation/paid (id: missing)",
        ),
    ]:
        await settler._settle(run, dry_run=True)
        assert (run.outcome, run.reason, run.local_after) == ("dry_run_open", reason, 0)
        assert (run.fetched, run.failed) == (0, 0)
    assert await store.books.runs(days=[DAY]) == []


# -- the diff: one list against the stored records, on a state database, no fetcher -----


class Lister:
    """A reconciler on a real state database, listing the simulator over HTTP; nothing
    fetches, so what it queued stays in the inbox to be read."""

    def __init__(self, sim: Simulator, store: Store, reconciler: Reconciler) -> None:
        self.sim = sim
        self.store = store
        self.reconciler = reconciler
        self.woken = 0
        self.recorded = 0

    async def run(self, day: dt.date, key: str, kind: Kind = Kind.DONATION, **kw: Any) -> ListRun:
        """Reconcile the day's lists of ``kind``; the first list's run (donations: paid)."""
        kw.setdefault("fetch_wait", 0.01)
        (report,) = await self.reconciler.run([day], run_key=key, kinds=[kind], **kw)
        return report.runs[0]

    def queued(self) -> list[tuple[int, Any, str, int, bool]]:
        """(id, event status, source, priority, has its list row) of every inbox row."""
        with contextlib.closing(sqlite3.connect(self.store.path)) as db:
            rows = db.execute(
                "SELECT fonzip_id, event_status, source, priority, list_row IS NOT NULL"
                " FROM inbox ORDER BY fonzip_id"
            ).fetchall()
        return [(int(i), st, str(src), int(p), bool(lr)) for i, st, src, p, lr in rows]

    def saved(
        self, day: dt.date, list_status: str = "paid", kind: Kind = Kind.DONATION
    ) -> dict[str, Any]:
        with contextlib.closing(sqlite3.connect(self.store.path)) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT * FROM reconcile_runs WHERE business_date = ? AND kind = ?"
                " AND list_status = ? ORDER BY rowid",
                (day.isoformat(), str(kind), list_status),
            ).fetchall()
        return dict(rows[-1])


@contextlib.asynccontextmanager
async def lister(
    tmp_path: Path,
    *,
    from_lists: bool = True,
    enrich: bool = False,
    clock: FakeClock | None = None,
    seed: int = 41,
    per_day: int = 6,
    fetching: bool = False,
    sinks: Mapping[str, SinkPolicy] | None = None,
) -> AsyncIterator[Lister]:
    async with simulator(seed=seed, days=2, per_day=per_day) as sim:
        store = await Store.open(tmp_path / "state.db")
        client = FonzipClient(
            fonzip_settings(await sim.start(), rate=RATE, max_retries=1),
            token_store=store.tokens,
            limiter=RateLimiter(RATE),
            form_ids=store.form_ids,
            retry_base=0.01,
            retry_cap=0.05,
        )
        settings = ReconcilerSettings(records_from_lists=from_lists, enrich=enrich)
        holder: list[Lister] = []

        def woken() -> None:
            holder[0].woken += 1

        def recorded() -> None:
            holder[0].recorded += 1

        reconciler = Reconciler(
            store,
            client,
            tz=ISTANBUL,
            settings=settings,
            wake=woken,
            clock=clock or SYSTEM_CLOCK,
            poll=0.01,
            sink_ids=lambda: sinks or ["archive"],
            on_record=recorded,
        )
        holder.append(Lister(sim, store, reconciler))
        fetcher = Fetcher(
            store,
            client,
            FetcherSettings(concurrency=2, retry_initial=0.02, retry_max=0.05, max_attempts=2),
            sink_ids=lambda: ["archive"],
            tz=ISTANBUL,
            on_record=recorded,
        )
        if fetching:
            fetcher.start()
        try:
            yield holder[0]
        finally:
            if fetching:
                await fetcher.stop(timeout=2)
            await client.close()
            await store.close()


def built_lists(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == "records_from_list_rows"]


def stored_total(logs: Sequence[Mapping[str, Any]]) -> int:
    return sum(int(e["enqueued"]) for e in built_lists(logs))


def _paid_in(sim: Simulator, day: dt.date) -> list[int]:
    return sorted(_paid_ids(sim, day))


async def test_the_diff_queues_what_is_missing_changed_or_no_longer_listed_and_nothing_else(
    tmp_path: Path,
) -> None:
    async with lister(tmp_path) as lst:
        sim = lst.sim
        day = sim.end_date - dt.timedelta(days=1)
        paid = _paid_in(sim, day)
        n = len(paid)
        # A row dated without an offset (Istanbul's wall time) shows the same moment.
        dated = sim.rows(Kind.DONATION)
        own = next(r for r in dated if r["id"] == paid[3])["transaction__complete_date"]
        sim.tamper_row(
            Kind.DONATION,
            paid[3],
            lambda r: r.update(transaction__complete_date=own.removesuffix("+03:00")),
        )
        first = await lst.run(day, "r1")
        # Every record was built from its row: nothing to fetch, the list closes.
        saved = lst.saved(day)
        assert (first.outcome, first.reason) == ("closed", None)
        assert (saved["missing"], saved["changed"], saved["extra"]) == (n, 0, 0)
        assert (saved["local_before"], saved["local_after"], saved["fetched"]) == (0, n, n)
        # Fonzip's end bound is inclusive: the next midnight's record is counted in its
        # total but is outside the window.
        assert (saved["fonzip_total"], saved["window_total"]) == (n + 1, n)
        assert saved["calls"] == 1  # one page, no detail
        assert lst.queued() == []
        assert (lst.woken, lst.recorded) == (0, 1)
        assert set(await lst.store.records.get_many(Kind.DONATION, paid)) == set(paid)

        repriced, gone, also_gone = paid[1], paid[2], paid[4]
        sim.amend(Kind.DONATION, repriced, amount=Decimal("1234.5"))
        sim.delete(Kind.DONATION, gone)
        sim.delete(Kind.DONATION, also_gone)
        when = dt.datetime.combine(day, dt.time(12), tzinfo=ISTANBUL)
        new, _ = await sim.create_event(Kind.DONATION, deliver=False, when=when)
        # The detail path: every difference is queued for the fetcher.
        lst.reconciler.settings = ReconcilerSettings(records_from_lists=False)
        second = await lst.run(day, "r2")
    saved = lst.saved(day)
    assert (saved["missing"], saved["changed"], saved["extra"]) == (1, 1, 2)
    assert (saved["local_before"], saved["window_total"], saved["fonzip_total"]) == (
        n,
        n - 1,
        n,
    )
    assert saved["calls"] == 1 + 4  # the page and one detail per queued id
    # Queued at the reconcile's priority, with the row that showed it (none for the
    # record Fonzip no longer lists); the unchanged records are not queued.
    assert lst.queued() == [
        (repriced, None, "reconcile", 1, True),
        (gone, None, "reconcile", 1, False),
        (also_gone, None, "reconcile", 1, False),
        (new, None, "reconcile", 1, True),
    ]
    assert lst.woken == 1
    assert lst.recorded == 1  # nothing was built from a row this time
    assert second.outcome == "open"
    # Nothing fetched them (no fetcher here): all four keep the list open, the amended
    # one too, though its stored status is the one the list shows.
    assert (saved["fetched"], saved["failed"]) == (0, 4)
    assert "4 not fetched" in str(second.reason)


async def test_a_day_of_more_than_a_page_of_rows_is_stored_from_them_once(
    tmp_path: Path,
) -> None:
    # The reconciler's clock is not the client's: a record built from a row must carry
    # when its page was read, not when it was built.
    async with lister(tmp_path, per_day=140, clock=FakeClock()) as lst:
        day = lst.sim.end_date - dt.timedelta(days=1)
        paid = _paid_in(lst.sim, day)
        n = len(paid)
        assert n > 100  # more than one transaction's worth
        before = SYSTEM_CLOCK.now()
        with capture_logs() as logs:
            first = await lst.run(day, "r1")
        after = SYSTEM_CLOCK.now()
        stored = await lst.store.records.get_many(Kind.DONATION, paid)
        assert sorted(stored) == paid
        # Each record says when Fonzip was read (its page's request), for newer-wins.
        assert all(before <= r.fetched_at <= after for r in stored.values())
        assert all(r.source is Source.RECONCILE for r in stored.values())
        # Marked as built from a paid row (an enrichment or a detail may replace it).
        assert {json.dumps(r.data["_fonzipd"]) for r in stored.values()} == {
            json.dumps({"shape": "list_row", "list": "paid"})
        }
        assert first.closed, first.reason
        saved = lst.saved(day)
        assert (saved["missing"], saved["fetched"], saved["local_after"]) == (n, n, n)
        assert saved["calls"] == 2  # two pages of rows, no detail
        built = [
            (e["kind"], e["records"], e["enqueued"])
            for e in logs
            if e["event"] == "records_from_list_rows" and e["list_status"] == "paid"
        ]
        assert built == [("donation", n, n)]
        # The sinks are told once per list, after every chunk of it is stored.
        assert lst.recorded == len(built_lists(logs))
        with contextlib.closing(sqlite3.connect(lst.store.path)) as db:
            queued = db.execute(
                "SELECT count(*), count(DISTINCT record_key) FROM outbox"
            ).fetchone()
        assert queued == (stored_total(logs), stored_total(logs))  # each record once

        recorded = lst.recorded
        # Nothing changed at Fonzip: nothing is stored, queued or announced again.
        with capture_logs() as logs:
            again = await lst.run(day, "r2")
    assert again.closed, again.reason
    saved = lst.saved(day)
    assert (saved["missing"], saved["changed"], saved["fetched"]) == (0, 0, 0)
    assert (saved["local_before"], saved["local_after"]) == (n, n)
    assert not built_lists(logs)
    assert lst.woken == 0
    assert lst.recorded == recorded  # nothing new for the sinks
    assert lst.queued() == []


async def test_a_dry_run_diffs_the_list_but_stores_and_queues_nothing(tmp_path: Path) -> None:
    async with lister(tmp_path) as lst:
        day = lst.sim.end_date - dt.timedelta(days=1)
        n = len(_paid_in(lst.sim, day))
        (report,) = await lst.reconciler.run(
            [day], run_key="dry", kinds=[Kind.DONATION], dry_run=True
        )
        paid = next(r for r in report.runs if r.list_status == "paid")
        assert (paid.missing, paid.window_total, paid.local_before) == (n, n, 0)
        assert paid.calls == 1 + n  # what a real run would cost on the detail path
        assert paid.outcome == "dry_run_open"
        assert lst.queued() == []
        assert await lst.store.books.runs() == []
        assert await lst.store.records.get_many(Kind.DONATION, _paid_in(lst.sim, day)) == {}
    assert (lst.woken, lst.recorded) == (0, 0)


async def test_a_list_not_read_by_the_deadline_is_saved_open_saying_so(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with lister(tmp_path, clock=clock) as lst:
        day = lst.sim.end_date - dt.timedelta(days=1)
        # Not yet past when the day starts; no list page can arrive before it passes.
        deadline = clock.monotonic() + 1e-9
        with capture_logs() as logs:
            (report,) = await lst.reconciler.run(
                [day], run_key="late", kinds=[Kind.DONATION], deadline=deadline
            )
        assert not report.closed
        reason = "listing failed: the time limit passed before the list was read"
        for run in report.runs:
            saved = lst.saved(day, run.list_status)
            assert (saved["outcome"], saved["reason"]) == ("open", reason)
            assert saved["finished_at"] == clock.now().timestamp()
            assert saved["calls"] == 0
        failed = [e for e in logs if e["event"] == "reconcile_list_failed"]
        assert [(e["kind"], e["list_status"], e["error"]) for e in failed] == [
            ("donation", s, reason) for s in Kind.DONATION.list_statuses
        ]
        assert lst.queued() == []


def test_a_refund_list_is_counted_by_the_date_its_rows_fall_in_the_window_on() -> None:
    """Fonzip documents refund lists filtered by refund date for e-cards only: the rows
    tell which date it filtered on, and that decides which local records are counted."""
    start, end = day_window(DAY, ISTANBUL)
    inside, later, before = (
        "2026-11-26T10:00:00+03:00",
        "2026-11-28T10:00:00+03:00",
        ("2026-11-20T10:00:00+03:00"),
    )
    at_start, at_end = start.isoformat(), end.isoformat()

    def ecard(complete: str, refund: str | None) -> dict[str, Any]:
        return {"transaction__complete_date": complete, "transaction__refund_date": refund}

    def ticket(complete: str, refund: str | None) -> dict[str, Any]:
        return {"transaction": {"complete_date": complete, "refund_date": refund}}

    def answer(complete: str, refund: str | None) -> dict[str, Any]:
        return {"complete_date": complete, "refund_date": refund}

    cases: list[tuple[Kind, list[dict[str, Any]], str]] = [
        # Refunded on the day, paid earlier: the list filtered on the refund date.
        (Kind.ECARD_SALE, [ecard(before, inside), ecard(before, inside)], "refund_date"),
        # Paid on the day, refunded later: it filtered on the completion date.
        (Kind.ECARD_SALE, [ecard(inside, later), ecard(inside, later)], "complete_date"),
        # The majority decides; a tie is the documented refund date.
        (
            Kind.ECARD_SALE,
            [ecard(inside, later), ecard(inside, later), ecard(before, inside)],
            "complete_date",
        ),
        (Kind.ECARD_SALE, [ecard(inside, later), ecard(before, inside)], "refund_date"),
        # The window is [start, end): a date at its start is inside, at its end outside.
        (Kind.ECARD_SALE, [ecard(at_start, later)], "complete_date"),
        (Kind.ECARD_SALE, [ecard(before, at_end), ecard(at_end, later)], "refund_date"),
        (Kind.ECARD_SALE, [ecard(at_end, before), ecard(inside, at_end)], "complete_date"),
        # A date without an offset is the association's local time: 22:30 in Istanbul
        # is on the day (in UTC it would be the next day's 01:30 there).
        (Kind.ECARD_SALE, [ecard("2026-11-26T22:30:00", later)], "complete_date"),
        (
            Kind.ECARD_SALE,
            [ecard(inside, later), *[ecard(before, "2026-11-26T22:30:00")] * 2],
            "refund_date",
        ),
        # Refunded at the very start of the day, paid then too: a tie.
        (Kind.ECARD_SALE, [ecard(at_start, at_start)], "refund_date"),
        # Ticket rows nest the transaction; form-answer rows may carry a plain refund_date.
        (Kind.TICKET_SALE, [ticket(inside, later)], "complete_date"),
        (Kind.TICKET_SALE, [ticket(before, inside)], "refund_date"),
        (Kind.FORM_ANSWER, [answer(inside, later)], "complete_date"),
        (Kind.FORM_ANSWER, [answer(before, inside)], "refund_date"),
        # Rows without a refund date cannot tell: the refund date is assumed, or answers
        # refunded later than they were made would be dropped as outside the window.
        (Kind.FORM_ANSWER, [answer(inside, None), answer(inside, None)], "refund_date"),
        (Kind.ECARD_SALE, [ecard(inside, None)], "refund_date"),
        (Kind.ECARD_SALE, [], "refund_date"),
    ]
    for kind, rows, basis in cases:
        assert _refund_basis(kind, rows, start, end, ISTANBUL) == basis, (kind, rows)


async def test_rows_outside_the_day_are_not_counted_and_an_unreadable_one_keeps_it_open(
    tmp_path: Path,
) -> None:
    async with lister(tmp_path, from_lists=False) as lst:
        sim = lst.sim
        day = sim.end_date - dt.timedelta(days=1)
        paid = _paid_in(sim, day)
        n = len(paid)
        local, moved, broken = paid[:3]
        # A date without an offset is Istanbul's wall time: 22:30 is on the day.
        naive = f"{day.isoformat()}T22:30:00"
        sim.tamper_row(Kind.DONATION, local, lambda r: r.update(transaction__complete_date=naive))
        # A row dated the next midnight (Fonzip's inclusive end) is outside the day.
        midnight = f"{(day + dt.timedelta(days=1)).isoformat()}T00:00:00+03:00"
        sim.tamper_row(
            Kind.DONATION, moved, lambda r: r.update(transaction__complete_date=midnight)
        )
        sim.tamper_row(Kind.DONATION, broken, lambda r: r.update(id=2**63))
        with capture_logs() as logs:
            run = await lst.run(day, "w1")
    saved = lst.saved(day)
    # Fonzip's total counts the simulator's own next-midnight record and the moved one.
    assert (saved["fonzip_total"], saved["window_total"]) == (n + 1, n - 1)
    assert saved["missing"] == n - 2  # the unreadable row is not an id to fetch
    assert [q[0] for q in lst.queued()] == sorted(set(paid) - {moved, broken})
    unreadable = [(e["kind"], e["error"]) for e in logs if e["event"] == "reconcile_row_unreadable"]
    problem = "donation (id unknown): field 'id': an integer outside 0 to 9223372036854775807"
    assert unreadable == [("donation", problem)]
    assert run.outcome == "open"
    assert "1 unreadable row(s) in donation/paid (donation (id unknown)" in str(run.reason)


async def test_fonzips_total_is_what_it_says_and_for_campaigns_the_rows_it_listed(
    tmp_path: Path,
) -> None:
    async with lister(tmp_path) as lst:
        sim = lst.sim
        day = sim.end_date - dt.timedelta(days=1)
        n = len(_paid_in(sim, day))
        sim.faults.list_total_offset = 2  # Fonzip counting rows its pages never show
        await lst.run(day, "t1")
        sim.faults.list_total_offset = 0
        created = await lst.run(day, "t2", kind=Kind.CAMPAIGN)
    saved = lst.saved(day)
    assert (saved["fonzip_total"], saved["window_total"]) == (n + 3, n + 2)
    # Campaign lists have no total: what was listed in the window is the count.
    campaigns = [
        fid
        for fid, when in sim.list_dates(Kind.CAMPAIGN, "created").items()
        if business_date(when, ISTANBUL) == day
    ]
    assert campaigns
    saved = lst.saved(day, "created", Kind.CAMPAIGN)
    assert (saved["fonzip_total"], saved["window_total"]) == (len(campaigns), len(campaigns))
    assert created.closed, created.reason


async def test_a_refund_is_counted_on_the_day_it_was_refunded_not_the_day_it_was_paid(
    tmp_path: Path,
) -> None:
    async with lister(tmp_path) as lst:
        sim = lst.sim
        today, yesterday = sim.end_date, sim.end_date - dt.timedelta(days=1)
        paid_at = dt.datetime.combine(yesterday, dt.time(10), tzinfo=ISTANBUL)
        fid, _ = await sim.create_event(Kind.DONATION, deliver=False, when=paid_at)
        await sim.refund(Kind.DONATION, fid, deliver=False)  # today
        await lst.run(today, "today")
        stored = await lst.store.records.get(Kind.DONATION, fid)
        assert stored is not None
        assert (stored.status, stored.business_date) == ("refunded", yesterday)
        await lst.run(yesterday, "yesterday")
    refunds_today = lst.saved(today, "refund")
    assert refunds_today["basis"] == "refund_date"
    assert refunds_today["local_after"] == refunds_today["window_total"]
    # Yesterday's refund list does not show it, and nothing says it should.
    refunds_yesterday = lst.saved(yesterday, "refund")
    assert (refunds_yesterday["extra"], refunds_yesterday["outcome"]) == (0, "closed")
    assert lst.queued() == []


async def test_a_detail_that_contradicts_its_row_keeps_the_day_open_and_a_bad_row_is_fetched(
    tmp_path: Path,
) -> None:
    async with lister(tmp_path, from_lists=False, fetching=True) as lst:
        sim = lst.sim
        day = sim.end_date - dt.timedelta(days=1)
        paid = _paid_in(sim, day)
        contradicted, unreadable = paid[:2]
        # The list shows it paid; its detail says it failed.
        sim.tamper(Kind.DONATION, contradicted, lambda d: d["transaction"].update(payment_status=5))
        # A row whose amount cannot be read: the id is fine, so its detail is fetched.
        sim.tamper_row(Kind.DONATION, unreadable, lambda r: r.update(transaction__amount="a lot"))
        with capture_logs() as logs:
            run = await lst.run(day, "c1", fetch_wait=15)
    assert run.outcome == "open"
    assert run.reason == (
        f"local {len(paid) - 1} != Fonzip {len(paid)}, 1 not fetched"
        f" (donation {contradicted} Fonzip's detail says failed, its list succeeded)"
    )
    saved = lst.saved(day)
    assert (saved["missing"], saved["fetched"], saved["failed"]) == (len(paid), len(paid) - 1, 1)
    bad = [(e["kind"], e["error"]) for e in logs if e["event"] == "reconcile_row_unreadable"]
    problem = "expected a number, got a string that is not one"
    assert bad == [("donation", f"donation {unreadable}: field 'transaction__amount': {problem}")]


def _pending_enrichments(store: Store) -> list[tuple[str, int, Any, str, bool]]:
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        rows = db.execute(
            "SELECT kind, fonzip_id, event_status, source, list_row IS NOT NULL FROM inbox"
            " WHERE state = 'pending' AND priority = 2 ORDER BY fonzip_id"
        ).fetchall()
    return [(str(k), int(i), st, str(src), bool(lr)) for k, i, st, src, lr in rows]


async def test_an_enrichment_that_never_finished_is_queued_again_by_the_next_run(
    tmp_path: Path,
) -> None:
    async with lister(tmp_path, enrich=True) as lst:
        day = lst.sim.end_date - dt.timedelta(days=1)
        paid = _paid_in(lst.sim, day)
        with capture_logs() as logs:
            await lst.run(day, "e1")
        queued = _pending_enrichments(lst.store)
        # The records built from the paid rows, each with its detail to fetch last.
        assert {fid for _, fid, *_ in queued} >= set(paid)
        assert {(k, st, src, lr) for k, _, st, src, lr in queued} == {
            ("donation", None, "reconcile", True)
        }
        said = [e for e in logs if e["event"] == "enrichments_queued"]
        assert ("donation", "paid", len(paid)) in [
            (e["kind"], e["list_status"], e["events"]) for e in said
        ]
        # Lost (the daemon stopped, the fetch failed for good): nothing pending is left.
        for row in await lst.store.inbox.claim_many(1000):
            await lst.store.inbox.fail(row.id, "lost")
        assert _pending_enrichments(lst.store) == []
        woken = lst.woken
        with capture_logs() as logs:
            again = await lst.run(day, "e2")
        # The records are unchanged and still only as their rows show them: queued again.
        assert _pending_enrichments(lst.store) == queued
        assert lst.woken > woken
        assert (again.missing, again.changed) == (0, 0)
        assert ("donation", "paid", len(paid)) in [
            (e["kind"], e["list_status"], e["events"])
            for e in logs
            if e["event"] == "enrichments_queued"
        ]


async def test_a_row_that_cannot_be_stored_as_it_is_is_fetched_instead(tmp_path: Path) -> None:
    async with lister(tmp_path) as lst:
        day = lst.sim.end_date - dt.timedelta(days=1)
        paid = _paid_in(lst.sim, day)
        hostile = paid[0]
        # Every field a record needs reads fine, but a number JSON cannot carry (which
        # no sink could store) rides along: not stored from the row, its detail is
        # fetched (and checked) instead.
        lst.sim.tamper_row(Kind.DONATION, hostile, lambda r: r.update(message=float("inf")))
        # A row whose amount cannot be read is not made a record either.
        unreadable = paid[1]
        lst.sim.tamper_row(
            Kind.DONATION, unreadable, lambda r: r.update(transaction__amount="a lot")
        )
        with capture_logs() as logs:
            run = await lst.run(day, "h1")
        stored = await lst.store.records.get_many(Kind.DONATION, paid)
    assert sorted(stored) == sorted(set(paid) - {hostile, unreadable}), run.reason
    assert lst.queued() == [
        (fid, None, "reconcile", 1, True) for fid in sorted((hostile, unreadable))
    ]
    assert run.missing == len(paid)
    bad = {(e["kind"], e["error"]) for e in logs if e["event"] == "reconcile_row_unreadable"}
    assert bad == {
        ("donation", f"donation {hostile}: field 'message': not a finite number"),
        (
            "donation",
            f"donation {unreadable}: field 'transaction__amount': expected a number, got a"
            " string that is not one",
        ),
    }


async def test_records_no_sink_takes_are_stored_without_waking_the_sinks(tmp_path: Path) -> None:
    campaigns_only = {"archive": SinkPolicy(kinds=frozenset({Kind.CAMPAIGN}))}
    async with lister(tmp_path, sinks=campaigns_only) as lst:
        day = lst.sim.end_date - dt.timedelta(days=1)
        paid = _paid_in(lst.sim, day)
        with capture_logs() as logs:
            run = await lst.run(day, "s1")
        stored = await lst.store.records.get_many(Kind.DONATION, paid)
    assert sorted(stored) == paid
    assert run.closed, run.reason
    assert [
        (e["records"], e["enqueued"]) for e in built_lists(logs) if e["list_status"] == "paid"
    ] == [(len(paid), 0)]
    assert lst.recorded == 0


async def test_a_refund_list_counts_local_records_by_the_basis_it_was_judged_on(
    store: Store, clock: FakeClock
) -> None:
    """Refund dates are read in the association's zone (a date without an offset is its
    wall time); completion-date lists count by business date."""

    def refunded(fid: int, day: dt.date, refund_date: str) -> Any:
        record = make_record(fid, status="refunded", day=day)
        data = {**record.data, "transaction": {"payment_status": 4, "refund_date": refund_date}}
        return dataclasses.replace(record, data=data)

    before = DAY - dt.timedelta(days=3)
    for record in [
        refunded(1, DAY, "2026-11-26T01:30:00+03:00"),  # on DAY in Istanbul, not in UTC
        refunded(2, DAY, "2026-11-28T10:00:00+03:00"),
        refunded(3, before, "2026-11-26T23:30:00"),  # Istanbul wall time, on DAY
        refunded(4, DAY, "2026-11-29T10:00:00+03:00"),
    ]:
        await store.records.apply_record(None, record, ["a"])
    reconciler = Reconciler(
        store,
        cast(FonzipClient, None),
        tz=ISTANBUL,
        settings=ReconcilerSettings(),
        clock=clock,
    )
    for basis, local in (("refund_date", 2), ("complete_date", 3)):
        run = ListRun(
            day=DAY,
            kind=Kind.DONATION,
            list_status="refund",
            run_key=f"refunds-{basis}",
            source=Source.RECONCILE,
            started_at=0.0,
            fonzip_total=local,
            window_total=local,
            basis=basis,
        )
        await reconciler._settle(run, dry_run=False)
        assert (run.outcome, run.local_after) == ("closed", local), basis


async def test_a_stored_record_whose_queued_fetch_failed_keeps_the_day_open(
    store: Store, clock: FakeClock
) -> None:
    # Stored as paid; the list still shows it paid but its row changed (an amount
    # corrected), so it was queued. The fetch failed: the stored status agrees with the
    # list, but the correction was never read, and the day must not close on it.
    await store.records.apply_record(await _queued(store, 1), make_record(1), ["a"])
    await store.inbox.fail(await _queued(store, 1), "HTTP 503")
    run = _list_run({1: "succeeded"}, window_total=1)
    await _settler(store, clock)._settle(run, dry_run=False)
    assert (run.outcome, run.fetched, run.failed) == ("open", 0, 1)
    assert run.reason == "1 not fetched (donation 1 failed: HTTP 503)"
