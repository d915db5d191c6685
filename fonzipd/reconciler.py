"""The reconciler: list each business day at Fonzip, diff it with ``records``, queue the rest.

Fonzip tries a webhook three times and then never again, so fonzipd is complete only
because of this module. For each business day, kind and list status it pages
through Fonzip's list, compares the rows with the stored records, and queues every
id that is missing or whose status differs (and every stored record Fonzip no longer
lists, to find out why) as a low-priority inbox event; the normal fetcher fetches and
delivers them. Each (business date, kind, list status) gets one row in
``reconcile_runs``; a day is *closed* when every list's local count equals Fonzip's
count and everything queued was fetched.

How lists are compared with local records (see also DESIGN.md, "Time"):

- paid, failed, the form-answer statuses and campaigns: local records whose business
  date (completion or creation time in the configured zone) is the day and whose
  status belongs in that list;
- refund lists: Fonzip documents filtering by refund date for e-cards only. The
  simulator does so for every kind. This module checks the rows it gets: if their
  refund dates fall inside the window it counts local refunded records by *refund*
  date (basis ``refund_date``), if their completion dates do, by business date (basis
  ``complete_date``); with no rows to tell, it assumes the refund date. The basis is
  recorded in each run row.
- Fonzip's ``end_date`` is inclusive (the client sends the next midnight), so rows at
  exactly the next day's 00:00:00 come back too: rows whose list date lies outside
  [start, end) are dropped, and ``window_total`` is ``total`` less those rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import ReconcilerSettings
from fonzipd.days import business_date, day_window, days_between
from fonzipd.fonzip.client import FonzipClient
from fonzipd.fonzip.endpoints import ENDPOINTS
from fonzipd.fonzip.errors import FonzipError
from fonzipd.fonzip.fields import parse_fonzip_datetime
from fonzipd.fonzip.limiter import Priority
from fonzipd.fonzip.list_rows import RowView, is_list_shape, record_from_row, row_view
from fonzipd.fonzip.normalizer import NormalizeError, list_row_id
from fonzipd.fonzip.statuses import list_holds, list_state
from fonzipd.kinds import Kind
from fonzipd.privacy import SinkPolicy
from fonzipd.records import Record, Source
from fonzipd.state import InboxEvent, Store

log = structlog.get_logger(__name__)

# Refund dates as the list rows of each kind carry them (ticket rows nest them).
_REFUND_ROW_FIELDS = ("transaction__refund_date", "transaction.refund_date", "refund_date")

LISTING_FAILED = "listing failed"
INSTALLED_KEY = "installed_at"
"""Meta key: when the daemon first started on this state database (UTC, ISO 8601)."""


async def installed_at(store: Store) -> dt.datetime | None:
    """When the daemon first ran on this state database (None: it never has)."""
    raw = await store.meta.get(INSTALLED_KEY)
    return None if raw is None else dt.datetime.fromisoformat(raw)


def coverage_judged(day: dt.date, installed: dt.datetime | None, tz: ZoneInfo) -> bool:
    """Whether a day's webhook coverage says anything about the webhook set-up.

    Only days after the installation's local date: before it (and on it, before the
    webhook was registered) every record came by backfill or reconcile, which is not
    "webhooks not reaching fonzipd".
    """
    return installed is not None and day > installed.astimezone(tz).date()


NOT_REACHED = "not reconciled: the time limit passed before this day was listed"


def _as_listed(record: Record) -> Record:
    """``record`` with its list state for status (form answers' lists mix payment and
    approval: :func:`~fonzipd.fonzip.statuses.list_state`), to compare with a list row."""
    return dataclasses.replace(
        record, status=list_state(record.kind, record.status, record.approval)
    )


local_statuses = list_holds
"""The normalized statuses of the stored records that belong in one of ``kind``'s lists."""


def _when(value: object, tz: ZoneInfo) -> dt.datetime | None:
    """A list row's or stored record's date; None when it has none or an unreadable one
    (the row then counts as inside the window and is fetched, never dropped)."""
    try:
        return parse_fonzip_datetime(value, tz)
    except ValueError:
        return None


def _field(row: Mapping[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _row_date(
    kind: Kind, list_status: str, row: Mapping[str, Any], tz: ZoneInfo, basis: str
) -> dt.datetime | None:
    """The date a list filters ``row`` on (None when the row does not say)."""
    if list_status == "refund" and basis == "refund_date":
        spec = ENDPOINTS[kind]
        fields = ((spec.refund_date_field,) if spec.refund_date_field else ()) + _REFUND_ROW_FIELDS
        for name in fields:
            when = _when(_field(row, name), tz)
            if when is not None:
                return when
        return None
    return _when(_field(row, ENDPOINTS[kind].date_field), tz)


def _refund_basis(
    kind: Kind,
    rows: Sequence[Mapping[str, Any]],
    start: dt.datetime,
    end: dt.datetime,
    tz: ZoneInfo,
) -> str:
    """Which date Fonzip's refund list filtered on, judged from the rows it returned."""
    if not any(_row_date(kind, "refund", r, tz, "refund_date") for r in rows):
        # Rows that carry no refund date (form answers' rows have none) cannot tell:
        # assume the refund date, as documented for e-cards. Judging by their
        # completion dates instead would drop, as outside the window, every answer
        # refunded on a later day than it was made: never fetched, day wrongly closed.
        return "refund_date"
    by_refund = sum(
        1
        for r in rows
        if (w := _row_date(kind, "refund", r, tz, "refund_date")) and start <= w < end
    )
    by_completion = sum(
        1
        for r in rows
        if (w := _row_date(kind, "refund", r, tz, "complete_date")) and start <= w < end
    )
    return "complete_date" if by_completion > by_refund else "refund_date"


@dataclasses.dataclass(slots=True)
class ListRun:
    """One (business date, kind, list status) of a run: what Fonzip has, what we had."""

    day: dt.date
    kind: Kind
    list_status: str
    run_key: str
    source: Source
    started_at: float
    fonzip_total: int | None = None
    """Fonzip's ``total`` (campaigns: the rows created in the window)."""
    window_total: int | None = None
    """``fonzip_total`` less the rows outside [start, end) (the inclusive end bound)."""
    local_before: int | None = None
    local_after: int | None = None
    missing: int = 0
    changed: int = 0
    extra: int = 0
    """Stored records in this list's selection that Fonzip did not list (queued to check)."""
    fetched: int = 0
    failed: int = 0
    calls: int = 0
    """List pages plus one detail request per queued record (retries not counted)."""
    basis: str | None = None
    finished_at: float | None = None
    outcome: str = "running"
    reason: str | None = None
    expected: dict[int, str] = dataclasses.field(default_factory=dict)
    """In memory: queued ids and the status the list showed (None-like "" for extras)."""
    unreadable: list[str] = dataclasses.field(default_factory=list)
    """In memory: why list rows without a valid id were skipped (they keep it open)."""

    @property
    def closed(self) -> bool:
        return self.outcome == "closed"

    def to_row(self) -> dict[str, Any]:
        return {
            "business_date": self.day.isoformat(),
            "kind": str(self.kind),
            "list_status": self.list_status,
            "run_key": self.run_key,
            "source": str(self.source),
            "fonzip_total": self.fonzip_total,
            "window_total": self.window_total,
            "local_before": self.local_before,
            "local_after": self.local_after,
            "missing": self.missing,
            "changed": self.changed,
            "extra": self.extra,
            "fetched": self.fetched,
            "failed": self.failed,
            "calls": self.calls,
            "basis": self.basis,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "outcome": self.outcome,
            "reason": self.reason,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ListRun:
        return cls(
            day=dt.date.fromisoformat(row["business_date"]),
            kind=Kind(row["kind"]),
            list_status=row["list_status"],
            run_key=row["run_key"],
            source=Source(row["source"]),
            started_at=row["started_at"],
            fonzip_total=row["fonzip_total"],
            window_total=row["window_total"],
            local_before=row["local_before"],
            local_after=row["local_after"],
            missing=row["missing"],
            changed=row["changed"],
            extra=row["extra"],
            fetched=row["fetched"],
            failed=row["failed"],
            calls=row["calls"],
            basis=row["basis"],
            finished_at=row["finished_at"],
            outcome=row["outcome"],
            reason=row["reason"],
        )


@dataclasses.dataclass(frozen=True, slots=True)
class DayReport:
    """The result of reconciling one business day."""

    day: dt.date
    closed: bool
    reason: str | None
    runs: list[ListRun]
    records: int = 0
    first_by_reconcile: int = 0
    """Records of the day first seen through a reconcile or backfill, not a webhook."""


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """What a run is doing, for a progress display."""

    stage: str  # "listed", "waiting", "day_done"
    day: dt.date
    run: ListRun | None = None
    pending: int = 0
    days_done: int = 0
    days_total: int = 0


class Reconciler:
    """Lists, diffs and queues; waits for the fetcher; keeps the books.

    ``wake`` tells the fetcher that events were queued. One Reconciler serves the
    nightly schedule, the catch-up after downtime, ``fonzipd reconcile`` and
    ``fonzipd backfill``: they differ only in the days, the ``source`` and the
    ``run_key`` (runs with the same key resume: lists already finished are skipped).
    """

    def __init__(
        self,
        store: Store,
        client: FonzipClient,
        *,
        tz: ZoneInfo,
        settings: ReconcilerSettings,
        wake: Callable[[], None] = lambda: None,
        clock: Clock = SYSTEM_CLOCK,
        poll: float = 0.1,
        sink_ids: Callable[[], Mapping[str, SinkPolicy] | Sequence[str]] | None = None,
        on_record: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        # Records from list rows need the sinks to queue them for; without them (a dry
        # run's reconciler) every record goes through the fetcher.
        self._sink_ids = sink_ids
        self._on_record = on_record
        self._client = client
        self.tz = tz
        self.settings = settings
        self._wake = wake
        self._clock = clock
        self._poll = poll

    async def run(
        self,
        days: Sequence[dt.date],
        *,
        run_key: str,
        kinds: Sequence[Kind] | None = None,
        source: Source = Source.RECONCILE,
        dry_run: bool = False,
        fetch_wait: float | None = None,
        progress: Callable[[Progress], None] | None = None,
        deadline: float | None = None,
    ) -> list[DayReport]:
        """Reconcile ``days`` (oldest first), one after the other; a report per day.

        ``dry_run`` lists and diffs but queues and records nothing. ``deadline`` (on the
        clock's monotonic time) bounds the whole run: a list not finished by then, or a
        queued fetch not done, leaves its day open, and days not reached by then are
        reported open without being recorded (their last verdict stands).
        """
        chosen = tuple(kinds) if kinds else self.settings.kinds
        ordered = sorted(set(days))
        reports = []
        for n, day in enumerate(ordered):
            report = await self.reconcile_day(
                day,
                run_key=run_key,
                kinds=chosen,
                source=source,
                dry_run=dry_run,
                fetch_wait=self.settings.fetch_wait if fetch_wait is None else fetch_wait,
                progress=progress,
                deadline=deadline,
            )
            reports.append(report)
            if progress:
                progress(Progress("day_done", day, days_done=n + 1, days_total=len(ordered)))
        return reports

    async def reconcile_day(
        self,
        day: dt.date,
        *,
        run_key: str,
        kinds: Sequence[Kind],
        source: Source,
        dry_run: bool,
        fetch_wait: float,
        progress: Callable[[Progress], None] | None = None,
        deadline: float | None = None,
    ) -> DayReport:
        bound = log.bind(business_date=day.isoformat(), run_key=run_key, source=str(source))
        if self._past(deadline):
            bound.warning("reconcile_day_not_reached")
            return DayReport(day, False, NOT_REACHED, [])
        previous = {
            (Kind(r["kind"]), r["list_status"]): r
            for r in await self._store.books.runs(days=[day], limit=1000)
        }
        runs: list[ListRun] = []
        todo: list[ListRun] = []
        for kind in kinds:
            for list_status in kind.list_statuses:
                old = previous.get((kind, list_status))
                if old is not None and old["run_key"] == run_key and old["outcome"] == "closed":
                    # Resumed run: this list was closed before the restart. A list left
                    # open (a listing or a fetch that failed) is listed again.
                    runs.append(ListRun.from_row(old))
                    continue
                run = await self._list_one(
                    day, kind, list_status, run_key, source, dry_run, deadline
                )
                runs.append(run)
                todo.append(run)
                if progress:
                    progress(Progress("listed", day, run=run))
        if not dry_run:
            wait_until = self._clock.monotonic() + fetch_wait
            if deadline is not None:
                wait_until = min(wait_until, deadline)
            await self._wait_fetched(day, todo, wait_until, progress)
        for run in todo:
            await self._settle(run, dry_run)
        closed = all(r.closed or r.outcome == "dry_run_closed" for r in runs)
        reasons = [f"{r.kind}/{r.list_status}: {r.reason}" for r in runs if r.reason]
        reason = None if closed else "; ".join(reasons[:5]) + (" …" if len(reasons) > 5 else "")
        sources = await self._store.records.first_sources(day)
        records = sum(sources.values())
        by_reconcile = sources.get(str(Source.RECONCILE), 0)
        report = DayReport(day, closed, reason, runs, records, by_reconcile)
        if dry_run:
            return report
        await self._store.books.save_day(
            day,
            closed=closed,
            reason=reason,
            records=records,
            first_by_webhook=sources.get(str(Source.WEBHOOK), 0),
            first_by_reconcile=by_reconcile,
        )
        share = by_reconcile / records if records else 0.0
        if (
            source is not Source.BACKFILL
            and coverage_judged(day, await installed_at(self._store), self.tz)
            and records >= self.settings.coverage_min_records
            and share > self.settings.coverage_warning
        ):
            bound.warning(
                "webhook_coverage_low",
                records=records,
                first_seen_by_reconcile=by_reconcile,
                share=round(share, 3),
                hint="webhooks are not reaching fonzipd: check the firewall, TLS, the URL "
                "and the auth token of the webhook in Fonzip",
            )
        bound.info(
            "day_reconciled",
            closed=closed,
            reason=reason,
            missing=sum(r.missing for r in todo),
            changed=sum(r.changed for r in todo),
            fetched=sum(r.fetched for r in todo),
            calls=sum(r.calls for r in todo),
        )
        return report

    async def _list_one(
        self,
        day: dt.date,
        kind: Kind,
        list_status: str,
        run_key: str,
        source: Source,
        dry_run: bool,
        deadline: float | None = None,
    ) -> ListRun:
        start, end = day_window(day, self.tz)
        run = ListRun(day, kind, list_status, run_key, source, self._clock.now().timestamp())
        rows: list[dict[str, Any]] = []
        rows_read_at: list[dt.datetime | None] = []
        total: int | None = None
        try:
            if self._past(deadline):
                raise TimeoutError
            # The deadline also bounds a list whose pages Fonzip is slow to give.
            remaining = None if deadline is None else deadline - self._clock.monotonic()
            async with asyncio.timeout(remaining):
                async for page in self._client.iter_list(
                    kind, list_status, start, end, priority=Priority.BULK
                ):
                    rows.extend(page.rows)
                    rows_read_at.extend([page.read_at] * len(page.rows))
                    total = page.total
                    run.calls += 1
        except (FonzipError, TimeoutError) as exc:
            run.outcome = "open"
            run.reason = (
                f"{LISTING_FAILED}: {exc}"
                if isinstance(exc, FonzipError)
                else f"{LISTING_FAILED}: the time limit passed before the list was read"
            )
            run.finished_at = self._clock.now().timestamp()
            log.warning(
                "reconcile_list_failed", kind=str(kind), list_status=list_status, error=run.reason
            )
            if not dry_run:
                await self._store.books.save_run(run.to_row())
            return run
        basis = "complete_date"
        if list_status == "refund":
            basis = _refund_basis(kind, rows, start, end, self.tz)
            run.basis = basis
        inside: dict[int, dict[str, Any]] = {}
        read_at: dict[int, dt.datetime] = {}
        outside = 0
        for row, row_read_at in zip(rows, rows_read_at, strict=True):
            when = _row_date(kind, list_status, row, self.tz, basis)
            if when is not None and not start <= when < end:
                outside += 1
                continue
            try:
                fid = list_row_id(kind, row)
            except NormalizeError as exc:
                # Hostile or broken: the other rows are still reconciled, but a list
                # with a row we cannot identify is never called complete.
                log.warning("reconcile_row_unreadable", kind=str(kind), error=str(exc))
                run.unreadable.append(str(exc))
                continue
            inside[fid] = row
            if row_read_at is not None:
                read_at[fid] = row_read_at
        run.fonzip_total = len(rows) if total is None else total
        run.window_total = len(inside) if total is None else max(0, total - outside)
        local = await self._local(kind, list_status, day, basis)
        run.local_before = len(local)
        stored = await self._store.records.get_many(kind, inside)
        events: list[InboxEvent] = []
        built: list[Record] = []
        enrich: list[InboxEvent] = []
        from_rows = self._sink_ids is not None and self.settings.records_from_lists
        enriching = from_rows and self.settings.enrich and not dry_run
        for fid, row in inside.items():
            view: RowView | None = None
            try:
                view = row_view(kind, list_status, row, self.tz)
                want = view.status
            except NormalizeError as exc:
                log.warning("reconcile_row_unreadable", kind=str(kind), error=str(exc))
                want = ""
            have = stored.get(fid)
            if have is None:
                run.missing += 1
            elif view is None or view.differs(_as_listed(have)):
                # Not the status alone: a corrected name or amount keeps the status.
                run.changed += 1
            else:
                if enriching and is_list_shape(have):
                    # Queued again until done: an enrichment lost in a crash, or still
                    # waiting when the daemon stopped, is not lost for good.
                    enrich.append(InboxEvent(kind, fid, None, source, list_row=row, enrich=True))
                continue
            # A stored detail is replaced only by a detail: where Fonzip's row and
            # detail disagree on a field (a donation's phone against its donor's),
            # the two would otherwise replace each other at every run.
            if (
                from_rows
                and not dry_run
                and view is not None
                and view.complete
                and (have is None or is_list_shape(have))
            ):
                record = self._from_row(kind, list_status, row, source, read_at.get(fid))
                if record is not None:
                    built.append(record)
                    if enriching and is_list_shape(record):
                        enrich.append(
                            InboxEvent(kind, fid, None, source, list_row=row, enrich=True)
                        )
                    continue
            run.expected[fid] = want
            events.append(InboxEvent(kind, fid, None, source, list_row=row))
        if built:
            await self._apply_built(run, built)
        if enrich:
            # After the records they enrich are stored; fetched last (priority 2).
            await self._store.inbox.add_events(enrich)
            self._wake()
            log.info(
                "enrichments_queued", kind=str(kind), list_status=list_status, events=len(enrich)
            )
        for fid in sorted(set(local) - set(inside)):
            # Stored, in this list's selection, but not listed: refunded, removed or
            # deleted since (a detail answering 404 means deleted). Fetch to find out.
            run.extra += 1
            run.expected[fid] = ""
            events.append(InboxEvent(kind, fid, None, source))
        run.calls += len(events)
        if dry_run:
            return run
        if events:
            await self._store.inbox.add_events(events)
            self._wake()
        await self._store.books.save_run(run.to_row())
        return run

    def _from_row(
        self,
        kind: Kind,
        list_status: str,
        row: Mapping[str, Any],
        source: Source,
        read_at: dt.datetime | None,
    ) -> Record | None:
        try:
            return record_from_row(
                kind,
                list_status,
                row,
                tz=self.tz,
                source=source,
                fetched_at=read_at or self._clock.now(),
            )
        except NormalizeError as exc:
            log.warning("reconcile_row_unreadable", kind=str(kind), error=str(exc))
            return None

    async def _apply_built(self, run: ListRun, built: Sequence[Record]) -> None:
        """Store the records built from list rows and queue them for the sinks, a page
        (100) per transaction: short enough that live work is never held up long."""
        assert self._sink_ids is not None
        enqueued = 0
        for start in range(0, len(built), 100):
            chunk = built[start : start + 100]
            applied = await self._store.records.apply_records(chunk, self._sink_ids())
            enqueued += sum(a.enqueued for a in applied)
            run.fetched += len(chunk)
        if enqueued:
            self._on_record()
        log.info(
            "records_from_list_rows",
            kind=str(run.kind),
            list_status=run.list_status,
            records=len(built),
            enqueued=enqueued,
        )

    async def _local(self, kind: Kind, list_status: str, day: dt.date, basis: str) -> set[int]:
        statuses = local_statuses(kind, list_status)
        if list_status != "refund" or basis != "refund_date":
            return set(await self._store.records.local_ids(kind, day, statuses))
        found = set()
        for fid, raw in await self._store.records.refund_dates(kind, statuses[0]):
            when = _when(raw, self.tz)
            if when is not None and business_date(when, self.tz) == day:
                found.add(fid)
        return found

    async def _wait_fetched(
        self,
        day: dt.date,
        runs: Sequence[ListRun],
        deadline: float,
        progress: Callable[[Progress], None] | None,
    ) -> None:
        by_kind: dict[Kind, set[int]] = {}
        for run in runs:
            by_kind.setdefault(run.kind, set()).update(run.expected)
        if not any(by_kind.values()):
            return
        while True:
            pending = 0
            for kind, ids in by_kind.items():
                if ids:
                    pending += await self._store.inbox.unfinished(kind, ids)
            if progress:
                progress(Progress("waiting", day, pending=pending))
            if pending == 0 or self._clock.monotonic() >= deadline:
                return
            # Polling the inbox is cheap; the fetcher has no completion callback per row.
            await asyncio.sleep(self._poll)

    async def _settle(self, run: ListRun, dry_run: bool) -> None:
        """Count what was fetched, recount locally, and decide the list's outcome.

        A list closes only when Fonzip's count equals the local count *and* every id it
        queued was verified: fetched with the status the list shows, or (for a stored
        record Fonzip no longer lists) fetched again. Anything else leaves it open with
        the reason, so a day is never called closed on counts that happen to agree.
        """
        if run.outcome == "open" and run.reason and run.reason.startswith(LISTING_FAILED):
            return
        if dry_run:
            run.local_after = run.local_before
            ok = run.local_before == run.window_total and not run.expected and not run.unreadable
            run.outcome = "dry_run_closed" if ok else "dry_run_open"
            if not ok:
                parts = [f"{len(run.expected)} to fetch"] if run.expected else []
                parts += self._unreadable(run)
                run.reason = ", ".join([*self._count_gap(run), *parts]) or "unsettled"
            return
        stored = await self._store.records.statuses(run.kind, run.expected)
        inbox = await self._store.books.fetch_states(run.kind, run.expected)
        problems: list[str] = []
        for fid, want in run.expected.items():
            have = stored.get(fid)
            state, error = inbox.get(fid, ("missing", None))
            # "done": the fetch this run queued has happened. A stored record already
            # in the status the list shows (a row that changed in another field) is not
            # verified by that status alone: its fetch may have failed or not run yet.
            if want and have == want and state == "done":
                run.fetched += 1
                continue
            if not want and have is not None and state == "done":
                run.fetched += 1  # an extra or unreadable row: fetched again
                continue
            run.failed += 1
            if state in ("pending", "claimed"):
                why = f"still retrying: {error}" if error else "not fetched by the time limit"
            elif state == "failed":
                why = f"failed: {error}"
            elif state == "done":
                why = f"Fonzip's detail says {have}, its list {want}"
            else:
                why = "not queued"
            problems.append(f"{run.kind} {fid} {why}")
        basis = run.basis or "complete_date"
        run.local_after = len(await self._local(run.kind, run.list_status, run.day, basis))
        run.finished_at = self._clock.now().timestamp()
        if run.local_after == run.window_total and run.failed == 0 and not run.unreadable:
            run.outcome, run.reason = "closed", None
        else:
            run.outcome = "open"
            run.reason = self._reason(run, problems)
        await self._store.books.save_run(run.to_row())

    def _past(self, deadline: float | None) -> bool:
        return deadline is not None and self._clock.monotonic() >= deadline

    @staticmethod
    def _count_gap(run: ListRun) -> list[str]:
        local = run.local_after if run.local_after is not None else run.local_before
        return [] if local == run.window_total else [f"local {local} != Fonzip {run.window_total}"]

    @classmethod
    def _reason(cls, run: ListRun, problems: Sequence[str]) -> str:
        parts = cls._count_gap(run)
        if problems:
            more = " …" if len(problems) > 3 else ""
            parts.append(f"{len(problems)} not fetched ({'; '.join(problems[:3])}{more})")
        parts += cls._unreadable(run)
        return ", ".join(parts) or "unsettled"

    @staticmethod
    def _unreadable(run: ListRun) -> list[str]:
        """The rows skipped for want of a valid id: their count and the first problem
        (the field and what was wrong, never the value)."""
        if not run.unreadable:
            return []
        return [
            f"{len(run.unreadable)} unreadable row(s) in {run.kind}/{run.list_status}"
            f" ({run.unreadable[0]})"
        ]


def reports_to_json(reports: Sequence[DayReport]) -> str:
    """Day reports as JSON: what the daemon hands back to ``fonzipd reconcile``."""
    return json.dumps(
        [
            {
                "day": r.day.isoformat(),
                "closed": r.closed,
                "reason": r.reason,
                "records": r.records,
                "first_by_reconcile": r.first_by_reconcile,
                "runs": [run.to_row() for run in r.runs],
            }
            for r in reports
        ]
    )


def reports_from_json(text: str) -> list[DayReport]:
    """The inverse of :func:`reports_to_json`."""
    return [
        DayReport(
            day=dt.date.fromisoformat(r["day"]),
            closed=bool(r["closed"]),
            reason=r["reason"],
            runs=[ListRun.from_row(row) for row in r["runs"]],
            records=int(r["records"]),
            first_by_reconcile=int(r["first_by_reconcile"]),
        )
        for r in json.loads(text)
    ]


def run_key_now(prefix: str, clock: Clock = SYSTEM_CLOCK) -> str:
    """A run key unique to this moment (a fresh, not a resumed, run)."""
    return f"{prefix}:{clock.now().isoformat()}"


def all_days(first: dt.date, last: dt.date) -> list[dt.date]:
    """Every business date from ``first`` to ``last``; ValueError if reversed."""
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    return days_between(first, last)
