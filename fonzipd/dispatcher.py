"""The dispatcher: one task per sink delivering its outbox in batches, retrying, dead-lettering."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
import traceback
from collections.abc import Mapping
from typing import Any

import structlog

from fonzipd import crashpoints
from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import SinkSettings
from fonzipd.retry import RetrySchedule
from fonzipd.sink import PermanentSinkError, Sink, SinkConfigError, TransientSinkError
from fonzipd.state import OutboxRow, Store, StoreError

log = structlog.get_logger(__name__)

NEEDS_OPERATOR = "needs the operator: "
"""Prefix of a sink's stored error when only the operator can fix it (status shows it)."""

_OPERATOR_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def operator_fixable(exc: BaseException) -> bool:
    """A sink failure no retry fixes until someone acts: a permission, a missing setting.

    A SinkConfigError (an environment variable not set, a password file unreadable), or a
    permission refused anywhere in the chain of causes (the sinks wrap their OSErrors).
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SinkConfigError):
            return True
        if isinstance(seen, OSError) and seen.errno in _OPERATOR_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class SinkRunner:
    """Delivers one sink's outbox; a failing sink waits alone, the others keep flowing.

    Two kinds of wait: the flush wait (a lone record waiting for company) and the idle
    wait end when new records arrive (``wake``); a backoff wait after a failure ends
    only when its time is up, however many records arrive meanwhile, so a destination
    that is down gets the attempts of its schedule (and its ``Retry-After``), no more.
    A failing state database ("database is locked" while a CLI replay holds the write
    lock, a full disk) is waited out the same way, inside the runner. Anything else
    that escapes is a bug: the task dies and the daemon's supervisor reports it.
    """

    def __init__(
        self,
        sink_id: str,
        sink: Sink,
        settings: SinkSettings,
        store: Store,
        *,
        batch_size: int,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.sink_id = sink_id
        self.sink = sink
        self.settings = settings
        self.batch_size = batch_size
        self._store = store
        self._clock = clock
        self._schedule = RetrySchedule(settings.retry_initial, settings.retry_max)
        self._wakeup = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._deadline: float | None = None
        self._failures = 0
        self._store_failures = 0
        self._task: asyncio.Task[None] | None = None
        self._log = log.bind(sink=sink_id, type=type(sink).name)
        self._opened = False
        self.needs_operator: str | None = None
        """Why the sink cannot open until the operator acts (None: it can, or may)."""
        self.delivered = 0
        self.retried = 0
        self.dead = 0

    def wake(self) -> None:
        """New records are queued: end a flush or idle wait (never a backoff)."""
        self._wakeup.set()

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.sink_id}")
        return self._task

    async def stop(self, timeout: float) -> None:
        """Deliver what is pending for up to ``timeout`` s, then close the sink."""
        self._stopping = True
        self._deadline = self._clock.monotonic() + timeout
        self._stopped.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout + 1)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except Exception:
                pass  # the task died earlier; the supervisor has reported it
        if not self._opened:
            return
        try:
            await self.sink.close()
        except Exception:
            self._log.exception("sink_close_failed")

    async def _sleep(self, seconds: float, *, wakeable: bool) -> None:
        """Wait ``seconds`` on the clock, or until stopped (or woken, if ``wakeable``)."""
        if self._stopping:
            # Draining: no event ends a wait any more, the deadline bounds it.
            if self._deadline is not None:
                seconds = min(seconds, self._deadline - self._clock.monotonic())
            if seconds > 0:
                await self._clock.sleep(seconds)
            return
        if seconds <= 0:
            return
        events = [self._stopped, self._wakeup] if wakeable else [self._stopped]
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._clock.sleep(seconds))]
        waits += [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _back_off(self, seconds: float) -> bool:
        """Wait out a backoff; False when stopping and it would outlast the drain."""
        resume = self._clock.monotonic() + seconds
        while (left := resume - self._clock.monotonic()) > 0:
            if self._stopping and self._deadline is not None and resume > self._deadline:
                return False  # the rows stay in the outbox for the next start
            await self._sleep(left, wakeable=False)
        return True

    def _out_of_time(self) -> bool:
        return self._deadline is not None and self._clock.monotonic() >= self._deadline

    async def _open(self) -> float:
        """Open the sink; the backoff to wait first when it fails, else 0."""
        try:
            await self.sink.open()
        except Exception as exc:
            self._failures += 1
            delay = self._schedule.wait(self._failures)
            error = f"open: {exc}"
            if operator_fixable(exc):
                # Retried (the fix needs no restart), but said once per change, loudly:
                # a log line per attempt would bury it, none would hide it.
                if self.needs_operator != error:
                    self._log.error(
                        "sink_needs_operator",
                        error=error,
                        hint="fix the permission or setting named; the sink retries by itself",
                        retry_every=round(self.settings.retry_max, 2),
                    )
                self.needs_operator = error
                error = NEEDS_OPERATOR + error
            else:
                self._log.error("sink_open_failed", error=error, retry_in=round(delay, 2))
            await self._store.outbox.record_failure(self.sink_id, [], error, dead_after=0)
            return delay
        if self.needs_operator is not None:
            self._log.info("sink_recovered", was=self.needs_operator)
            self.needs_operator = None
        self._opened = True
        self._failures = 0
        return 0.0

    async def _run(self) -> None:
        while not self._out_of_time():
            try:
                delay = await self._step()
                self._store_failures = 0
            except (sqlite3.Error, StoreError) as exc:
                self._store_failures += 1
                delay = self._schedule.wait(self._store_failures)
                self._log.warning("sink_store_failed", error=str(exc), retry_in=round(delay, 2))
            if delay is None:
                return
            if delay > 0 and not await self._back_off(delay):
                return

    async def _step(self) -> float | None:
        """Open, read a batch, deliver it: the backoff to wait, or None when done."""
        if not self._opened:
            delay = await self._open()
            if delay > 0:
                return delay
        # Cleared before reading: records queued after the read wake the wait below.
        self._wakeup.clear()
        rows = await self._store.outbox.batch(self.sink_id, self.batch_size)
        if not rows:
            if self._stopping:
                return None
            await self._sleep(5.0, wakeable=True)
            return 0.0
        if len(rows) < self.batch_size and not self._stopping:
            # A lone record waits up to flush_interval for company; records that
            # arrive meanwhile wake us and ride along at once (low delay under load,
            # since rows pile up while a write is in flight anyway).
            age = await self._store.outbox.oldest_pending_age(self.sink_id) or 0.0
            if age < self.settings.flush_interval:
                await self._sleep(self.settings.flush_interval - age, wakeable=True)
                rows = await self._store.outbox.batch(self.sink_id, self.batch_size)
        return await self._deliver(rows)

    async def _deliver(self, rows: list[OutboxRow]) -> float:
        """Write one batch; returns how long to wait before the next attempt."""
        started = self._clock.monotonic()
        ids = [r.id for r in rows]
        try:
            await self.sink.write([r.record for r in rows])
        except TransientSinkError as exc:
            self._failures += 1
            self.retried += len(rows)
            await self._store.outbox.record_failure(self.sink_id, ids, str(exc), dead_after=0)
            delay = self._schedule.wait(self._failures, exc.retry_after)
            self._log.warning(
                "batch_failed", records=len(rows), error=str(exc), retry_in=round(delay, 2)
            )
            return delay
        except PermanentSinkError as exc:
            failed = [
                r.id for r in rows if exc.failed_keys is None or r.record_key in exc.failed_keys
            ]
            written = [i for i in ids if i not in set(failed)]
            await self._store.outbox.dead_letter(self.sink_id, failed, str(exc))
            if written:
                await self._store.outbox.acknowledge(self.sink_id, written)
            self.dead += len(failed)
            self.delivered += len(written)
            self._failures = 0
            self._log.error(
                "batch_dead_lettered", dead=len(failed), written=len(written), error=str(exc)
            )
            return 0.0
        except Exception as exc:
            # A bug in the sink: retried, with its traceback, and parked after max_attempts.
            self._failures += 1
            reason = f"unexpected {type(exc).__name__}: {exc}"
            went_dead = await self._store.outbox.record_failure(
                self.sink_id, ids, reason, dead_after=self.settings.max_attempts
            )
            self.dead += went_dead
            self.retried += len(rows) - went_dead
            delay = self._schedule.wait(self._failures)
            self._log.error(
                "batch_crashed",
                records=len(rows),
                dead=went_dead,
                error=reason,
                traceback=traceback.format_exc(),
                retry_in=round(delay, 2),
            )
            return delay
        crashpoints.reached("before_ack")
        await self._store.outbox.acknowledge(self.sink_id, ids)
        self._failures = 0
        self.delivered += len(rows)
        self._log.info(
            "batch_written",
            records=len(rows),
            ms=round((self._clock.monotonic() - started) * 1000, 1),
        )
        return 0.0


class Dispatcher:
    """All sink runners of the process."""

    def __init__(self, runners: Mapping[str, SinkRunner]) -> None:
        self.runners = dict(runners)

    def start(self) -> list[asyncio.Task[None]]:
        return [runner.start() for runner in self.runners.values()]

    def wake(self) -> None:
        for runner in self.runners.values():
            runner.wake()

    async def stop(self, timeout: float) -> None:
        await asyncio.gather(*(r.stop(timeout) for r in self.runners.values()))
