"""The reconcile and backfill commands: run now, show progress, print the table per day.

Only one process talks to Fonzip at a time, so the two never break the rate limit
together and never fetch the same record twice:

- when no daemon runs, the command takes the worker lock and runs the pipeline itself
  (``Daemon(listen=False, schedule=False)``: fetcher and dispatcher, no listener), and
  a component of it that dies ends the run at once: every day open, the death the
  reason, exit 1;
- when a daemon runs, the command writes a request into the state database and the
  daemon's scheduler (which checks every ``reconciler.poll_interval`` seconds) runs it
  under the daemon's own rate limiter; the command follows the run rows and prints the
  table when the daemon is done;
- ``--dry-run`` queues and records nothing; it is handed to a running daemon like any
  run (one rate limiter: a dry run never adds to the daemon's requests), and otherwise
  lists with its own client.

``fonzipd reconcile`` answers within ``--wait`` seconds (``DEFAULT_WAIT``) plus a few: a
list not read or a queued fetch not done by then leaves its day open, reported with
the reason per kind and list, exit 1. ``backfill`` has no such limit (it is resumable
and shows its progress); only ``reconciler.fetch_wait`` bounds each of its days.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import ConfigError, Settings
from fonzipd.fonzip.client import FonzipClient
from fonzipd.fonzip.limiter import RateLimiter
from fonzipd.kinds import Kind
from fonzipd.reconciler import (
    DayReport,
    ListRun,
    Reconciler,
    reports_from_json,
    run_key_now,
)
from fonzipd.records import Source
from fonzipd.scheduler import HEARTBEAT_EVERY, HEARTBEAT_KEY
from fonzipd.state import Store

DEFAULT_WAIT = 600.0
"""Seconds ``fonzipd reconcile`` waits for its run by default (``--wait``)."""
HANDOFF_GRACE = 10.0
"""Seconds past its wait the command follows a run handed to the daemon."""
OPEN_HINT = (
    "A day stays open until a run verifies it: what was queued stays in the inbox and is "
    "fetched when Fonzip answers; the nightly run checks open days again. "
    "`--wait SECONDS` waits longer now."
)


@dataclasses.dataclass(frozen=True, slots=True)
class RunFigures:
    """Where a reconcile or backfill stands, read from the state database."""

    days_total: int
    days_done: int
    requests_done: int
    """Requests the days finished in this run took (list pages and detail fetches)."""
    days_measured: int
    """Days finished in this run that made requests (a resumed backfill skips some)."""
    in_progress: bool
    """A day is listed but not finished: its fetches are among ``pending``."""
    pending: int
    """Inbox rows waiting for their fetch, whoever queued them: all share the limit."""

    def requests_left(self) -> int | None:
        """The requests still to make, or None before a day is done (no average yet)."""
        days_left = self.days_total - self.days_done - (1 if self.in_progress else 0)
        if days_left <= 0:
            return self.pending
        if self.days_measured == 0:
            return None
        return self.pending + round(days_left * self.requests_done / self.days_measured)


def eta_seconds(requests_left: int, rate_per_minute: float) -> float:
    """Seconds the requests left take at the rate budget: a lower bound (no retries)."""
    return requests_left / (rate_per_minute / 60.0)


async def read_figures(store: Store, days: Sequence[dt.date], since: float) -> RunFigures:
    """The figures of the run over ``days`` that started at ``since`` (Unix time)."""
    wanted = sorted(set(days))
    done = {
        r["business_date"]
        for r in await store.books.days(days=wanted)
        if float(r["updated_at"]) >= since
    }
    runs = [
        r
        for r in await store.books.runs(days=wanted, limit=1_000_000)
        if float(r["started_at"]) >= since
    ]
    pending, _ = await store.inbox.depth()
    measured = [r for r in runs if r["business_date"] in done]
    return RunFigures(
        days_total=len(wanted),
        days_done=len(done),
        requests_done=sum(int(r["calls"]) for r in measured),
        days_measured=len({r["business_date"] for r in measured}),
        in_progress=any(r["business_date"] not in done for r in runs),
        pending=pending,
    )


class ProgressView:
    """Progress on a terminal (stderr, one rewritten line); silent when not a terminal.

    The same bar whether this process runs the reconcile or the daemon does: both read
    the state database every ``interval`` seconds. The ETA is the requests left (every
    fetch waiting in the inbox, plus the days not started at the finished days'
    average of list pages and fetches) at the rate budget: a lower bound, since
    retries and a slow Fonzip add to it, and live webhooks go first.
    """

    def __init__(
        self,
        days: Sequence[dt.date],
        rate_per_minute: float,
        *,
        out: TextIO | None = None,
        interval: float = 1.0,
    ) -> None:
        self.out = out if out is not None else sys.stderr
        self.enabled = self.out.isatty()
        self.days = list(days)
        self.rate = rate_per_minute
        self.interval = interval
        self.text = ""

    def render(self, f: RunFigures, note: str = "") -> str:
        """One line: the bar, the days, the requests left and the ETA."""
        width = 20
        filled = int(width * f.days_done / f.days_total) if f.days_total else width
        left = f.requests_left()
        if left is None:
            eta = f"ETA after the first day ({f.pending:,} fetches queued)"
        else:
            eta = f"{left:,} requests left, ETA ≥ {_duration(eta_seconds(left, self.rate))}"
        self.text = (
            f"[{'#' * filled}{'.' * (width - filled)}] {f.days_done}/{f.days_total} days, "
            f"{eta} at {self.rate:.0f} req/min" + (f"  {note}" if note else "")
        )
        return self.text

    async def follow(
        self, store: Store, since: float, note: Callable[[], str] | None = None
    ) -> None:
        """Redraw the line every ``interval`` seconds until cancelled."""
        if not self.enabled:
            return
        while True:
            figures = await read_figures(store, self.days, since)
            self.out.write("\r\x1b[2K" + self.render(figures, note() if note else "")[:160])
            self.out.flush()
            await asyncio.sleep(self.interval)

    def finish(self) -> None:
        if self.enabled:
            self.out.write("\r\x1b[2K")
            self.out.flush()


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def render_table(reports: Sequence[DayReport]) -> str:
    """The table per day, kind and list status, then one line per day."""
    head = (
        f"{'date':<10}  {'kind':<14} {'list':<16} {'fonzip':>6} {'local':>6} "
        f"{'missing':>7} {'changed':>7} {'fetched':>7} {'failed':>6}  outcome"
    )
    lines = [head, "-" * len(head)]
    for rep in reports:
        for r in rep.runs:
            local = r.local_after if r.local_after is not None else r.local_before
            lines.append(
                f"{rep.day.isoformat():<10}  {r.kind!s:<14} {r.list_status:<16} "
                f"{_num(r.window_total):>6} {_num(local):>6} {r.missing:>7} {r.changed:>7} "
                f"{r.fetched:>7} {r.failed:>6}  {r.outcome}"
                + (f" ({r.reason})" if r.reason and not r.closed else "")
            )
    lines.append("")
    for rep in reports:
        share = f"{rep.first_by_reconcile / rep.records:.0%}" if rep.records else "-"
        state = "closed" if rep.closed else f"OPEN: {rep.reason}"
        lines.append(
            f"{rep.day.isoformat()}: {state}  ({rep.records} records, "
            f"{rep.first_by_reconcile} first seen by the reconcile = {share})"
        )
    return "\n".join(lines)


def render_summary(reports: Sequence[DayReport]) -> str:
    """One line per day, then the totals: a year's backfill without 6,000 table rows."""
    lines = []
    for rep in reports:
        found = sum(r.missing + r.changed for r in rep.runs)
        failed = sum(r.failed for r in rep.runs)
        calls = sum(r.calls for r in rep.runs)
        state = "closed" if rep.closed else f"OPEN: {rep.reason}"
        lines.append(
            f"{rep.day.isoformat()}  {rep.records:>6} records, {found:>6} new or changed, "
            f"{failed:>4} not fetched, {calls:>6} requests  {state}"
        )
    open_days = sum(1 for r in reports if not r.closed)
    lines.append(
        f"{len(reports)} day(s): {len(reports) - open_days} closed, {open_days} open; "
        f"{sum(r.records for r in reports):,} records (--verbose: the table per kind and list)"
    )
    return "\n".join(lines)


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


async def reconcile_now(
    settings: Settings,
    days: Sequence[dt.date],
    *,
    kinds: Sequence[Kind],
    source: Source = Source.RECONCILE,
    dry_run: bool = False,
    out: TextIO | None = None,
    progress_out: TextIO | None = None,
    clock: Clock = SYSTEM_CLOCK,
    wait: float | None = None,
    verbose: bool = True,
) -> int:
    """Run a reconcile (or backfill) of ``days`` now; print the table; the exit code.

    0 when every day asked for is closed, 1 otherwise. ConfigError without credentials.
    ``wait`` bounds the run in seconds (None: only ``reconciler.fetch_wait`` per day).
    ``verbose`` False prints one line per day instead of the table.
    """
    out = out if out is not None else sys.stdout
    f = settings.fonzip
    if f.access_token is None and (f.client_id is None or f.client_secret is None):
        raise ConfigError(
            "the reconcile needs Fonzip credentials: set FONZIPD_FONZIP__CLIENT_ID and "
            "FONZIPD_FONZIP__CLIENT_SECRET (or FONZIPD_FONZIP__ACCESS_TOKEN)"
        )
    chosen = list(kinds) or list(settings.reconciler.kinds)
    store = await Store.open(settings.state.path, clock=clock)
    daemon_running = not store.acquire_worker_lock()
    rate = settings.fonzip.effective_rate
    if daemon_running:
        # Dry runs too: the daemon lists under its own rate limiter, so the two never
        # exceed Fonzip's limit together.
        try:
            # The daemon refreshes its heartbeat at least this often while it lives.
            beat = max(HEARTBEAT_EVERY, settings.reconciler.poll_interval)
            reports = await _through_daemon(
                store,
                days,
                chosen,
                source,
                rate,
                progress_out,
                clock,
                wait,
                dry_run=dry_run,
                silent_after=2 * beat + HANDOFF_GRACE,
            )
        finally:
            await store.close()
    elif dry_run:
        try:
            reports = await _dry_run(settings, store, days, chosen, rate, clock, wait)
        finally:
            await store.close()
    else:
        await store.close()
        reports = await _in_process(settings, days, chosen, source, rate, progress_out, clock, wait)
    print(render_table(reports) if verbose else render_summary(reports), file=out)
    closed = bool(reports) and all(r.closed for r in reports)
    if dry_run:
        print("(dry run: nothing was queued or recorded)", file=out)
    elif not closed:
        print(OPEN_HINT, file=out)
    return 0 if closed else 1


def _deadline(clock: Clock, wait: float | None) -> float | None:
    return None if wait is None else clock.monotonic() + wait


async def _dry_run(
    settings: Settings,
    store: Store,
    days: Sequence[dt.date],
    kinds: Sequence[Kind],
    rate: float,
    clock: Clock,
    wait: float | None,
) -> list[DayReport]:
    deadline = _deadline(clock, wait)
    limiter = RateLimiter(rate, clock=clock)
    async with FonzipClient(
        settings.fonzip,
        token_store=store.tokens,
        limiter=limiter,
        clock=clock,
        form_ids=store.form_ids,
    ) as client:
        reconciler = Reconciler(
            store, client, tz=settings.fonzip.tz, settings=settings.reconciler, clock=clock
        )
        return await reconciler.run(
            days,
            run_key=run_key_now("dry-run", clock),
            kinds=kinds,
            dry_run=True,
            deadline=deadline,
        )


async def _in_process(
    settings: Settings,
    days: Sequence[dt.date],
    kinds: Sequence[Kind],
    source: Source,
    rate: float,
    progress_out: TextIO | None,
    clock: Clock,
    wait: float | None,
) -> list[DayReport]:
    from fonzipd.app import Daemon  # the app imports the reconciler: import late

    deadline = _deadline(clock, wait)
    daemon = Daemon(settings, clock=clock, listen=False, schedule=False)
    view = ProgressView(days, rate, out=progress_out)
    since = clock.now().timestamp()
    await daemon.start()
    assert daemon.store is not None
    watching = asyncio.create_task(view.follow(daemon.store, since))
    assert daemon.reconciler is not None
    running = asyncio.create_task(
        daemon.reconciler.run(
            days,
            run_key=_run_key(source, days, clock),
            kinds=kinds,
            source=source,
            deadline=deadline,
        )
    )
    # A component that dies (a fetch worker, a sink runner) stops the pipeline: the run
    # could only wait out its deadline, so it ends now, with the death as the reason.
    stopping = asyncio.create_task(daemon.stop_requested())
    try:
        await asyncio.wait((running, stopping), return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            return running.result()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        died = "; ".join(f"{name} died: {error}" for name, error in sorted(daemon.failed.items()))
        reason = f"fonzipd stopped the run: {died or 'stop requested'}"
        reports = await reports_from_store(daemon.store, days, kinds)
        return [dataclasses.replace(r, closed=False, reason=reason) for r in reports]
    finally:
        for task in (running, stopping, watching):
            task.cancel()
        # Their outcomes are had above (or are being raised): only wait for them to end.
        await asyncio.gather(running, stopping, watching, return_exceptions=True)
        view.finish()
        await daemon.stop()


def _run_key(source: Source, days: Sequence[dt.date], clock: Clock) -> str:
    # A backfill of the same range resumes where it stopped; a reconcile starts afresh.
    if source is Source.BACKFILL:
        return f"backfill:{min(days).isoformat()}:{max(days).isoformat()}"
    return run_key_now("cli", clock)


async def _through_daemon(
    store: Store,
    days: Sequence[dt.date],
    kinds: Sequence[Kind],
    source: Source,
    rate: float,
    progress_out: TextIO | None,
    clock: Clock,
    wait: float | None,
    *,
    dry_run: bool = False,
    silent_after: float = 150.0,
    poll: float = 0.2,
) -> list[DayReport]:
    """Hand the run to the daemon and follow it; the reports it writes back.

    The command stops following, and reports every day open with why, when its
    ``wait`` (plus a grace) has passed, or when the daemon's heartbeat is older than
    ``silent_after`` seconds (the daemon died: a backfill has no ``wait``).
    """
    deadline_at = None if wait is None else clock.now() + dt.timedelta(seconds=wait)
    adding = asyncio.ensure_future(
        store.books.add_request(days, kinds, source, dry_run=dry_run, deadline_at=deadline_at)
    )
    try:
        request_id = await asyncio.shield(adding)
    except asyncio.CancelledError:
        # Ctrl-C while the request was being recorded (it may be committed already):
        # once it is, withdraw it, or the daemon would run what the user called off.
        await store.books.withdraw_request(await adding)
        raise
    view = ProgressView(days, rate, out=progress_out)
    if view.enabled:
        view.out.write(
            f"the daemon is running: it runs this (request {request_id}); Ctrl-C withdraws it\n"
        )
    since = clock.now().timestamp()
    row: Mapping[str, Any] | None = None

    def state() -> str:
        if row is not None and row["started_at"]:
            return ""
        return "(waiting for the daemon to pick it up)"

    watching = asyncio.create_task(view.follow(store, since, state))
    # The daemon stops waiting for Fonzip at the deadline; the grace covers its last
    # poll and bookkeeping. Past it, the daemon died or is stuck: stop following.
    give_up = None if wait is None else clock.monotonic() + wait + HANDOFF_GRACE
    try:
        while True:
            row = await store.books.request(request_id)
            if row is not None and row["finished_at"] is not None:
                break
            late = give_up is not None and clock.monotonic() >= give_up
            if late or await _silent(store, clock, silent_after):
                reports = [] if dry_run else await reports_from_store(store, days, kinds)
                reason = _unfinished(request_id, row, silent=not late)
                if not reports:
                    return [DayReport(d, False, reason, []) for d in sorted(set(days))]
                return [dataclasses.replace(r, closed=False, reason=reason) for r in reports]
            await asyncio.sleep(poll)
    except asyncio.CancelledError:
        # Ctrl-C: nobody waits for this run any more. A daemon that has not claimed it
        # never will; one running it finishes (what it queued is not wasted).
        await asyncio.shield(store.books.withdraw_request(request_id))
        raise
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        view.finish()
    assert row is not None
    if row["result"]:
        return reports_from_json(row["result"])
    return await reports_from_store(store, days, kinds)


def _unfinished(request_id: int, row: Mapping[str, Any] | None, *, silent: bool) -> str:
    state = "claimed" if row and row["started_at"] else "not claimed"
    if silent:
        return (
            f"the daemon stopped (no heartbeat) before finishing request {request_id} "
            f"({state}): the next daemon to start runs it"
        )
    return (
        f"the daemon did not finish request {request_id} within --wait ({state}): it goes "
        "on with it, and a daemon that died runs it again at its next start"
    )


async def _silent(store: Store, clock: Clock, silent_after: float) -> bool:
    """Whether the daemon's heartbeat is older than ``silent_after`` seconds."""
    raw = await store.meta.get(HEARTBEAT_KEY)
    if raw is None:
        return False  # a daemon that has not beaten yet is starting
    age = (clock.now() - dt.datetime.fromisoformat(raw)).total_seconds()
    return age > silent_after


async def reports_from_store(
    store: Store, days: Sequence[dt.date], kinds: Sequence[Kind] | None = None
) -> list[DayReport]:
    """Day reports rebuilt from the state database (the latest run of each list)."""
    wanted = {str(k) for k in kinds} if kinds else None
    runs = [
        ListRun.from_row(r)
        for r in await store.books.runs(days=list(days), limit=100_000)
        if wanted is None or r["kind"] in wanted
    ]
    day_rows = {r["business_date"]: r for r in await store.books.days(days=list(days))}
    reports = []
    for day in sorted(set(days)):
        row = day_rows.get(day.isoformat())
        day_runs = sorted(
            (r for r in runs if r.day == day), key=lambda r: (r.kind.value, r.list_status)
        )
        reports.append(
            DayReport(
                day=day,
                closed=bool(row and row["state"] == "closed"),
                reason=(row["reason"] if row else "never reconciled"),
                runs=day_runs,
                records=int(row["records"]) if row else 0,
                first_by_reconcile=int(row["first_by_reconcile"]) if row else 0,
            )
        )
    return reports
