"""Tests of the dispatcher: batches, retries, dead letters, and sinks isolated from each other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from fonzipd.config import SinkSettings
from fonzipd.dispatcher import Dispatcher, SinkRunner
from fonzipd.records import Record
from fonzipd.sink import (
    PermanentSinkError,
    Sink,
    SinkContext,
    SinkOptions,
    TransientSinkError,
)
from fonzipd.state import Store
from fonzipd.testing import context_for_tests
from tests.support import make_record


class MemorySink(Sink):
    """A real sink that keeps keys in memory and fails on demand."""

    name: ClassVar[str] = "memory"
    Options: ClassVar[type[SinkOptions]] = SinkOptions

    def __init__(self, options: SinkOptions, context: SinkContext) -> None:
        super().__init__(options, context)
        self.keys: list[str] = []
        self.batches: list[int] = []
        self.fail_with: Callable[[Sequence[Record]], Exception | None] = lambda _: None
        self.written = asyncio.Event()
        self.closed = False

    async def write(self, batch: Sequence[Record]) -> None:
        exc = self.fail_with(batch)
        if exc is not None:
            raise exc
        self.keys.extend(r.key for r in batch)
        self.batches.append(len(batch))
        self.written.set()

    async def close(self) -> None:
        self.closed = True


SETTINGS = SinkSettings(type="memory", flush_interval=0, retry_initial=0.01, retry_max=0.05)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "state.db")
    yield s
    await s.close()


def runner(store: Store, sink_id: str, tmp_path: Path, **kw: object) -> SinkRunner:
    sink = MemorySink(SinkOptions(), context_for_tests(tmp_path, sink_id=sink_id))
    settings = SETTINGS.model_copy(update=kw)
    return SinkRunner(sink_id, sink, settings, store, batch_size=50)


async def until(cond: Callable[[], object], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not cond():
            await asyncio.sleep(0.01)


def mem(r: SinkRunner) -> MemorySink:
    assert isinstance(r.sink, MemorySink)
    return r.sink


async def test_records_are_delivered_in_order_and_acknowledged(
    store: Store, tmp_path: Path
) -> None:
    r = runner(store, "a", tmp_path)
    records = [make_record(i) for i in range(1, 121)] + [make_record(5, status="refunded")]
    for rec in records:
        await store.records.apply_record(None, rec, ["a"])
    r.start()
    await until(lambda: len(mem(r).keys) == len(records))
    await r.stop(timeout=2)
    assert mem(r).keys == [rec.key for rec in records]
    assert max(mem(r).batches) == 50
    assert (await store.outbox.sink_status(["a"]))["a"]["pending"] == 0
    assert mem(r).closed


async def test_transient_errors_retry_until_the_sink_is_back(store: Store, tmp_path: Path) -> None:
    r = runner(store, "a", tmp_path)
    attempts: list[int] = []

    def flaky(batch: Sequence[Record]) -> Exception | None:
        attempts.append(len(batch))
        return TransientSinkError("receiver down") if len(attempts) < 5 else None

    mem(r).fail_with = flaky
    await store.records.apply_record(None, make_record(1), ["a"])
    r.start()
    await until(lambda: mem(r).keys)
    await r.stop(timeout=2)
    assert len(attempts) == 5
    status = (await store.outbox.sink_status(["a"]))["a"]
    assert (status["pending"], status["dead"], status["delivered"]) == (0, 0, 1)
    assert status["failing_since"] is None


async def test_permanent_errors_dead_letter_only_the_refused_records(
    store: Store, tmp_path: Path
) -> None:
    r = runner(store, "a", tmp_path)
    bad = make_record(2)
    mem(r).fail_with = lambda batch: (
        PermanentSinkError("HTTP 400: invalid", failed_keys=[bad.key])
        if any(x.key == bad.key for x in batch)
        else None
    )
    for fid in (1, 2, 3):
        await store.records.apply_record(None, make_record(fid), ["a"])
    r.start()
    await until(lambda: r.dead == 1 and r.delivered == 2)
    await r.stop(timeout=2)
    status = (await store.outbox.sink_status(["a"]))["a"]
    assert (status["pending"], status["dead"], status["delivered"]) == (0, 1, 2)
    assert "HTTP 400" in status["last_error"]


async def test_a_buggy_sink_is_retried_then_dead_lettered(store: Store, tmp_path: Path) -> None:
    r = runner(store, "a", tmp_path, max_attempts=3)
    mem(r).fail_with = lambda batch: ZeroDivisionError("bug in sink")
    await store.records.apply_record(None, make_record(1), ["a"])
    r.start()
    await until(lambda: r.dead == 1)
    await r.stop(timeout=1)
    status = (await store.outbox.sink_status(["a"]))["a"]
    assert status["dead"] == 1
    assert "ZeroDivisionError" in status["last_error"]
    # Replaying the dead letter once the bug is fixed delivers it.
    mem(r).fail_with = lambda batch: None
    assert await store.outbox.requeue("a", dead=True) == 1
    r2 = SinkRunner("a", r.sink, r.settings, store, batch_size=50)
    r2.start()
    await until(lambda: mem(r).keys)
    await r2.stop(timeout=1)


async def test_one_failing_sink_never_delays_another(store: Store, tmp_path: Path) -> None:
    down = runner(store, "down", tmp_path)
    up = runner(store, "up", tmp_path)
    mem(down).fail_with = lambda batch: TransientSinkError("down for hours")
    dispatcher = Dispatcher({"down": down, "up": up})
    dispatcher.start()
    for fid in range(1, 31):
        await store.records.apply_record(None, make_record(fid), ["down", "up"])
        dispatcher.wake()
    await until(lambda: len(mem(up).keys) == 30)
    status = await store.outbox.sink_status(["down", "up"])
    assert status["down"]["pending"] == 30
    assert status["down"]["dead"] == 0
    assert status["up"]["pending"] == 0
    await dispatcher.stop(timeout=0.5)
    assert mem(down).keys == []


async def test_open_failures_are_retried(store: Store, tmp_path: Path) -> None:
    r = runner(store, "a", tmp_path)
    opens: list[int] = []
    original_open = mem(r).open

    async def open_flaky() -> None:
        opens.append(1)
        if len(opens) < 3:
            raise TransientSinkError("not reachable yet")
        await original_open()

    mem(r).open = open_flaky  # type: ignore[method-assign]
    await store.records.apply_record(None, make_record(1), ["a"])
    r.start()
    await until(lambda: mem(r).keys)
    await r.stop(timeout=1)
    assert len(opens) == 3


async def test_stop_drains_what_is_pending(store: Store, tmp_path: Path) -> None:
    r = runner(store, "a", tmp_path, flush_interval=30)
    r.start()
    await store.records.apply_record(None, make_record(1), ["a"])
    r.wake()
    # The batch would wait 30 s to fill; stopping flushes it at once.
    await r.stop(timeout=5)
    assert len(mem(r).keys) == 1
