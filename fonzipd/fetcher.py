"""The fetcher: workers that turn inbox rows into records, through the Fonzip client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import sqlite3
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from fonzipd import crashpoints
from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import FetcherSettings
from fonzipd.fonzip.client import FonzipClient
from fonzipd.fonzip.errors import (
    FonzipBadResponse,
    FonzipError,
    FonzipNotFound,
    FonzipRequestError,
)
from fonzipd.fonzip.limiter import Priority
from fonzipd.fonzip.normalizer import NormalizeError, normalize
from fonzipd.privacy import SinkPolicy
from fonzipd.records import DELETED, Record, with_status
from fonzipd.retry import RetrySchedule
from fonzipd.state import Applied, InboxRow, Store, StoreError

log = structlog.get_logger(__name__)


def _reason(exc: Exception) -> str:
    if isinstance(exc, FonzipNotFound):
        return f"not found at Fonzip (deleted?): {exc}"
    if isinstance(exc, FonzipBadResponse | NormalizeError):
        return f"malformed object: {exc}"
    if not isinstance(exc, FonzipError):
        # Raised on a value the normalizer let through: its text may quote personal data.
        frame = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" at {frame[0].filename.rsplit('/', 1)[-1]}:{frame[0].lineno}" if frame else ""
        return f"unusable object: {type(exc).__name__}{where}"
    return str(exc)


_Waiter = tuple[int, Record, Any, int, "asyncio.Future[tuple[Applied, list[InboxRow]]]"]


_Fetched = tuple[Record, float, "structlog.typing.FilteringBoundLogger"]


@dataclasses.dataclass
class _Lane:
    """One worker's rows: those claimed ahead of its fetch, and its store in flight."""

    ahead: deque[InboxRow] = dataclasses.field(default_factory=deque)
    storing: asyncio.Task[list[InboxRow]] | None = None


class GroupApply:
    """Stores the records the workers fetched in groups: one transaction (one fsync) for
    whatever records are ready together, each with its outbox rows and inbox row, and
    the next inbox row for each of those workers that asks for one.

    No task of its own: the first worker to arrive commits, for itself and for every
    worker that arrives while it does, until none is waiting. A group the database
    refuses fails for all of it (each worker puts its row back, as before); a group
    failing for any other reason (a record the store cannot take) is applied record by
    record, so only that record's worker sees its error.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiting: list[_Waiter] = []
        self._leading = False
        self.commits = 0

    async def apply_and_claim(
        self, row_id: int, record: Record, sinks: Any, *, claim_next: int = 1
    ) -> tuple[Applied, list[InboxRow]]:
        """Store one worker's record and, in the same commit, claim up to
        ``claim_next`` rows for it (fewer when fewer are ready)."""
        fut: asyncio.Future[tuple[Applied, list[InboxRow]]]
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((row_id, record, sinks, claim_next, fut))
        if not self._leading:
            self._leading = True
            try:
                while self._waiting:
                    group, self._waiting = self._waiting, []
                    await self._commit(group)
            finally:
                self._leading = False
                # Left by a leader that was cancelled (shutdown) or failed: never
                # leave a worker waiting on a commit nobody will make.
                for *_, left in self._waiting:
                    if not left.done():
                        left.set_exception(StoreError("the group commit was interrupted"))
                self._waiting = []
        return await fut

    async def _commit(self, group: list[_Waiter]) -> None:
        try:
            try:
                results, rows = await self._store.records.apply_and_claim(
                    [(row_id, record, sinks) for row_id, record, sinks, _, _ in group],
                    sum(wants for *_, wants, _ in group),
                )
            except (StoreError, sqlite3.OperationalError):
                raise  # the database (locked, full, closed), not a record
            except Exception:
                if len(group) == 1:
                    raise
                for one in group:
                    await self._commit([one])
                return
        except BaseException as exc:
            for *_, fut in group:
                if not fut.done():
                    if isinstance(exc, Exception):
                        fut.set_exception(exc)
                    else:
                        fut.set_exception(StoreError("the group commit was interrupted"))
            if not isinstance(exc, Exception):
                raise
            return
        self.commits += 1
        claimed = iter(rows)
        orphans = []
        for (*_, wants, fut), applied in zip(group, results, strict=True):
            mine = list(itertools.islice(claimed, wants))
            if not fut.done():
                fut.set_result((applied, mine))
            else:
                orphans.extend(mine)  # its worker was stopped meanwhile
        for row in orphans:
            try:
                await self._store.inbox.unclaim(row.id)
            except (StoreError, sqlite3.Error) as exc:
                # Still claimed: the daemon puts claimed rows back as it stops and starts.
                log.warning("fetch_store_failed", inbox_id=row.id, error=str(exc))


class GroupClaim:
    """Claims inbox rows for the workers that are idle together, in one transaction.

    The first worker to ask claims, in one commit, a row for itself and one for every
    worker that asked meanwhile (never more rows than workers waiting: nothing is held
    back from a live webhook that arrives next). A worker that gets no row is idle.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiting: list[asyncio.Future[InboxRow | None]] = []
        self._leading = False

    async def claim(self) -> InboxRow | None:
        fut: asyncio.Future[InboxRow | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        if not self._leading:
            self._leading = True
            try:
                while self._waiting:
                    group, self._waiting = self._waiting, []
                    try:
                        rows = await self._store.inbox.claim_many(len(group))
                    except Exception as exc:
                        for waiter in group:
                            if not waiter.done():
                                waiter.set_exception(exc)
                        continue
                    except BaseException:
                        self._waiting = group + self._waiting
                        raise
                    orphans = []
                    for n, waiter in enumerate(group):
                        row = rows[n] if n < len(rows) else None
                        if not waiter.done():
                            waiter.set_result(row)
                        elif row is not None:
                            orphans.append(row)  # its worker was stopped meanwhile
                    for row in orphans:
                        await self._store.inbox.unclaim(row.id)
            finally:
                self._leading = False
                for left in self._waiting:
                    if not left.done():
                        left.set_exception(StoreError("the claim was interrupted"))
                self._waiting = []
        return await fut


class Fetcher:
    """``concurrency`` workers claiming inbox rows, live work first."""

    def __init__(
        self,
        store: Store,
        client: FonzipClient,
        settings: FetcherSettings,
        *,
        sink_ids: Callable[[], Mapping[str, SinkPolicy] | Sequence[str]],
        tz: ZoneInfo,
        on_record: Callable[[], None],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._client = client
        self._settings = settings
        self._sink_ids = sink_ids
        self._on_record = on_record
        self._clock = clock
        self._tz = tz
        self._schedule = RetrySchedule(settings.retry_initial, settings.retry_max)
        self._wakeup = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._group = GroupApply(store)
        self._claims = GroupClaim(store)
        self._idle_workers = 0  # in _idle: no row to work; then none is claimed ahead

    def wake(self) -> None:
        """New work was committed: stop waiting."""
        self._wakeup.set()

    def start(self) -> list[asyncio.Task[None]]:
        self._tasks = [
            asyncio.create_task(self._worker(n), name=f"fetcher-{n}")
            for n in range(self._settings.concurrency)
        ]
        return list(self._tasks)

    async def stop(self, timeout: float) -> None:
        """Stop claiming; let in-flight rows finish for ``timeout`` s, then put them back."""
        self._stopping = True
        self._wakeup.set()
        self._stopped.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks = []

    async def _worker(self, n: int) -> None:
        # A failing state database ("database is locked" while a CLI command holds the
        # write lock, a full disk) is waited out here; anything else that escapes is
        # a bug, kills the worker, and the daemon's supervisor reports it.
        failures = 0
        lane = _Lane()
        try:
            while not self._stopping:
                try:
                    await self._work_once(lane)
                    failures = 0
                except (sqlite3.Error, StoreError) as exc:
                    failures += 1
                    delay = self._schedule.wait(failures)
                    log.warning(
                        "fetch_store_failed", worker=n, error=str(exc), retry_in=round(delay, 2)
                    )
                    await self._pause(delay)
        finally:
            # Stopped: the last record's store ends (stored, or its row put back), and
            # the rows claimed ahead go back untouched.
            await asyncio.shield(self._wind_down(lane))

    async def _wind_down(self, lane: _Lane) -> None:
        await self._stored(lane)
        while lane.ahead:
            await self._store.inbox.unclaim(lane.ahead.popleft().id)

    async def _stored(self, lane: _Lane) -> None:
        """Wait for the worker's store in flight; the rows it claimed are the worker's.

        Shielded: a worker stopped meanwhile leaves the store to end, and winds down
        after it (``_wind_down``)."""
        if lane.storing is not None:
            claimed = await asyncio.shield(lane.storing)
            lane.storing = None
            lane.ahead.extend(claimed)

    async def _work_once(self, lane: _Lane) -> None:
        """Fetch one row while the worker's last record commits, then store it.

        A worker has at most one store in flight. While no worker is idle (a backlog),
        it keeps one row claimed ahead (the commit that stores a record claims the row
        after next), so its next fetch starts as soon as this one ends, not when the
        commit does; while a worker is idle, nothing is claimed ahead, so a burst is
        fetched in parallel. Rows stay claimed until their record is stored, so a crash
        meanwhile loses nothing (claims are put back at start)."""
        if not lane.ahead:
            await self._stored(lane)
        if not lane.ahead:
            row = await self._claims.claim()
            if row is None:
                await self._idle()
                return
            lane.ahead.append(row)
        row = lane.ahead.popleft()
        try:
            fetched = await self._process(row)
        except asyncio.CancelledError:
            # Shutdown mid-fetch: the row goes back untouched, nothing is lost.
            await asyncio.shield(self._store.inbox.unclaim(row.id))
            raise
        except (sqlite3.Error, StoreError) as exc:
            log.warning("fetch_store_failed", inbox_id=row.id, error=str(exc))
            await self._put_back(row, f"state database: {exc}")
            fetched = None
        except Exception as exc:
            # A bug, not a Fonzip problem: keep the row, retry later, keep working.
            log.exception("fetch_crashed", inbox_id=row.id, kind=str(row.kind))
            await self._put_back(row, f"internal error: {exc!r}")
            fetched = None
        try:
            await self._stored(lane)  # one store in flight per worker
        except asyncio.CancelledError:
            if fetched is not None:  # fetched, not stored: fetched again later
                await asyncio.shield(self._store.inbox.unclaim(row.id))
            raise
        if fetched is not None:
            # Under a backlog, claim enough that a row is waiting when this commit ends.
            held = 0 if self._stopping else (1 if self._idle_workers else 2)
            wants = max(0, held - len(lane.ahead))
            lane.storing = asyncio.create_task(self._store_record(row, fetched, wants))

    async def _store_record(self, row: InboxRow, fetched: _Fetched, wants: int) -> list[InboxRow]:
        """Store a fetched record, with the rows its worker claims next; every failure is
        settled here, as if the worker had waited for it."""
        record, started, bound = fetched
        try:
            try:
                applied, claimed = await self._group.apply_and_claim(
                    row.id, record, self._sink_ids(), claim_next=wants
                )
            except (StoreError, sqlite3.OperationalError):
                raise  # the database (locked, full, closed), not the event
            except Exception as exc:
                # Whatever this object made the store raise is the object's fault:
                # parked after max_attempts like a malformed one, never retried forever.
                await self._attempt_failed(row, exc, bound)
                return []
        except (sqlite3.Error, StoreError) as exc:
            log.warning("fetch_store_failed", inbox_id=row.id, error=str(exc))
            await self._put_back(row, f"state database: {exc}")
            return []
        except Exception as exc:
            log.exception("fetch_crashed", inbox_id=row.id, kind=str(row.kind))
            await self._put_back(row, f"internal error: {exc!r}")
            return []
        self._applied(record, applied, started, bound)
        return claimed

    async def _put_back(self, row: InboxRow, reason: str) -> None:
        """Schedule a claimed row's retry, trying until the state database takes it."""
        failures = 0
        while True:
            try:
                await self._store.inbox.retry_later(
                    row.id, reason, self._schedule.wait(row.attempts)
                )
                return
            except (sqlite3.Error, StoreError) as exc:
                failures += 1
                if self._stopping:
                    return  # still claimed: the daemon puts claimed rows back as it stops
                delay = self._schedule.wait(failures)
                log.warning(
                    "fetch_store_failed", inbox_id=row.id, error=str(exc), retry_in=round(delay, 2)
                )
                await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        """Sleep on the clock; only a stop (never new work) ends it early."""
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait([sleeper, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopped.cancel()

    async def _idle(self) -> None:
        self._wakeup.clear()
        if self._stopping:
            # stop() may have set the event just before the clear above.
            return
        self._idle_workers += 1
        try:
            due = await self._store.inbox.next_due()
            timeout = 5.0
            if due is not None:
                timeout = min(timeout, max(0.0, (due - self._clock.now()).total_seconds()))
            if timeout <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
        finally:
            self._idle_workers -= 1

    async def _process(self, row: InboxRow) -> _Fetched | None:
        """Fetch and normalize a row's object; None when the attempt failed (handled)."""
        bound = log.bind(
            inbox_id=row.id,
            kind=str(row.kind),
            fonzip_id=row.fonzip_id,
            source=str(row.source),
            attempt=row.attempts,
        )
        started = self._clock.monotonic()
        priority = Priority.LIVE if row.priority == 0 else Priority.BULK
        try:
            detail = await self._client.fetch_detail(
                row.kind, row.fonzip_id, priority=priority, list_row=row.list_row
            )
        except (FonzipNotFound, FonzipRequestError, FonzipBadResponse) as exc:
            await self._attempt_failed(row, exc, bound)
            return None
        except FonzipError as exc:
            # Fonzip down, rate limiting, a token lock, rejected credentials: none of it
            # is the event's fault. Retry until Fonzip is back (the wait is capped).
            bound.warning("fetch_failed", error=str(exc), final=False)
            await self._store.inbox.retry_later(row.id, str(exc), self._schedule.wait(row.attempts))
            return None
        crashpoints.reached("mid_fetch")
        try:
            # fetched_at is when the request went out: the moment Fonzip held this state,
            # which is what orders two reads of one object (apply_record).
            fetched_at = detail.read_at or self._clock.now()
            record = normalize(detail, tz=self._tz, source=row.source, fetched_at=fetched_at)
        except Exception as exc:
            # Whatever this object made the normalizer raise is the object's fault:
            # parked after max_attempts like a malformed one, never retried forever.
            await self._attempt_failed(row, exc, bound)
            return None
        return record, started, bound

    async def _attempt_failed(
        self, row: InboxRow, exc: Exception, bound: structlog.typing.FilteringBoundLogger
    ) -> None:
        """An attempt that failed because of the object: retried, then parked with a reason."""
        # Retrying rarely helps here, but a few tries cover a detail that is not
        # readable yet right after its webhook, or a body cut in transit.
        final = row.attempts >= self._settings.max_attempts
        reason = _reason(exc)
        bound.warning("fetch_failed", error=reason, final=final)
        if final and isinstance(exc, FonzipNotFound):
            await self._gone(row, exc, bound)
        elif final:
            await self._store.inbox.fail(row.id, reason)
        else:
            await self._store.inbox.retry_later(row.id, reason, self._schedule.wait(row.attempts))

    async def _gone(
        self, row: InboxRow, exc: FonzipNotFound, bound: structlog.typing.FilteringBoundLogger
    ) -> None:
        """An object fonzipd holds that Fonzip no longer has was deleted there (Fonzip
        sends no webhook for that): every sink gets its last state as ``deleted``."""
        stored = await self._store.records.get(row.kind, row.fonzip_id)
        if stored is None or stored.status == DELETED:
            await self._store.inbox.fail(row.id, _reason(exc))
            return
        gone = with_status(stored, DELETED, source=row.source, fetched_at=self._clock.now())
        await self._apply(row, gone, self._clock.monotonic(), bound)

    async def _apply(
        self,
        row: InboxRow,
        record: Record,
        started: float,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> None:
        applied = await self._store.records.apply_record(row.id, record, self._sink_ids())
        self._applied(record, applied, started, bound)

    def _applied(
        self,
        record: Record,
        applied: Applied,
        started: float,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> None:
        bound.info(
            "record_deleted" if record.status == DELETED else "record_fetched",
            status=record.status,
            outcome=applied.outcome,
            enqueued=applied.enqueued,
            ms=round((self._clock.monotonic() - started) * 1000, 1),
        )
        if applied.enqueued:
            self._on_record()
