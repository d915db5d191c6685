"""The dispatcher: one task per sink delivering its outbox in batches, retrying, dead-lettering."""

from __future__ import annotations

import asyncio
import contextlib
import random
import traceback
from collections.abc import Mapping

import structlog

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import SinkSettings
from fonzipd.sink import PermanentSinkError, Sink, TransientSinkError
from fonzipd.state import OutboxRow, Store

log = structlog.get_logger(__name__)


class SinkRunner:
    """Delivers one sink's outbox; a failing sink waits alone, the others keep flowing."""

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
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._deadline: float | None = None
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self._log = log.bind(sink=sink_id, type=type(sink).name)
        self._opened = False
        self.delivered = 0
        self.retried = 0
        self.dead = 0

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.sink_id}")

    async def stop(self, timeout: float) -> None:
        """Deliver what is pending for up to ``timeout`` s, then close the sink."""
        self._stopping = True
        self._deadline = self._clock.monotonic() + timeout
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout + 1)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if not self._opened:
            return
        try:
            await self.sink.close()
        except Exception:
            self._log.exception("sink_close_failed")

    async def _wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, or until woken."""
        self._wakeup.clear()
        if self._stopping and self._deadline is not None:
            seconds = min(seconds, self._deadline - self._clock.monotonic())
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)

    def _out_of_time(self) -> bool:
        return self._deadline is not None and self._clock.monotonic() >= self._deadline

    async def _open(self) -> bool:
        try:
            await self.sink.open()
        except Exception as exc:
            self._failures += 1
            delay = self._backoff(None)
            self._log.error("sink_open_failed", error=str(exc), retry_in=round(delay, 2))
            await self._store.outbox.record_failure(self.sink_id, [], f"open: {exc}", dead_after=0)
            await self._wait(delay)
            return False
        self._opened = True
        self._failures = 0
        return True

    async def _run(self) -> None:
        while True:
            if self._out_of_time():
                return
            if not self._opened and not await self._open():
                if self._stopping:
                    return
                continue
            rows = await self._store.outbox.batch(self.sink_id, self.batch_size)
            if not rows:
                if self._stopping:
                    return
                await self._wait(5.0)
                continue
            if len(rows) < self.batch_size and not self._stopping:
                # A lone record waits up to flush_interval for company; records that
                # arrive meanwhile wake us and ride along at once (low delay under load,
                # since rows pile up while a write is in flight anyway).
                age = await self._store.outbox.oldest_pending_age(self.sink_id) or 0.0
                if age < self.settings.flush_interval:
                    await self._wait(self.settings.flush_interval - age)
                    rows = await self._store.outbox.batch(self.sink_id, self.batch_size)
            delay = await self._deliver(rows)
            if delay > 0:
                await self._wait(delay)

    def _backoff(self, retry_after: float | None) -> float:
        s = self.settings
        delay = min(s.retry_max, s.retry_initial * 2 ** min(max(0, self._failures - 1), 32))
        delay *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.retry_max))
        return float(delay)

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
            delay = self._backoff(exc.retry_after)
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
            delay = self._backoff(None)
            self._log.error(
                "batch_crashed",
                records=len(rows),
                dead=went_dead,
                error=reason,
                traceback=traceback.format_exc(),
                retry_in=round(delay, 2),
            )
            return delay
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

    def start(self) -> None:
        for runner in self.runners.values():
            runner.start()

    def wake(self) -> None:
        for runner in self.runners.values():
            runner.wake()

    async def stop(self, timeout: float) -> None:
        await asyncio.gather(*(r.stop(timeout) for r in self.runners.values()))
