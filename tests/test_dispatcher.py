"""Tests of the dispatcher: batches, retries, dead letters, and sinks isolated from each other."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import errno
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web
from pydantic import SecretStr
from structlog.testing import capture_logs

from fonzipd import crashpoints
from fonzipd.config import SinkSettings
from fonzipd.dispatcher import Dispatcher, SinkRunner, operator_fixable
from fonzipd.records import Record
from fonzipd.sink import (
    PermanentSinkError,
    Sink,
    SinkConfigError,
    SinkContext,
    SinkOptions,
    TransientSinkError,
)
from fonzipd.sinks.http import HTTPOptions, HTTPSink
from fonzipd.state import Store
from fonzipd.testing import ISTANBUL, context_for_tests
from tests.support import FakeClock, make_record
from tests.support import until as until_async


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

    async def up_acknowledged() -> bool:
        # The sink holds the batch before its acknowledgement commits: wait for both.
        return bool((await store.outbox.sink_status(["up"]))["up"]["pending"] == 0)

    await until_async(up_acknowledged)
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


# -- a sink that is down stays in backoff under a steady flow of records --------------------

DOWN_FOR = 20.0
RETRY_AFTER = 5.0
FLOW = 300  # records, one every 0.1 s: 30 s of traffic, during the outage and after


class FastClock:
    """Real time, running ``speed`` times faster: a 20-s outage takes one real second."""

    def __init__(self, speed: float = 20.0) -> None:
        self.speed = speed
        self._mono0 = time.monotonic()
        self._start = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)

    def monotonic(self) -> float:
        return (time.monotonic() - self._mono0) * self.speed

    def now(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=self.monotonic())

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


async def steady_flow(store: Store, runner: SinkRunner, clock: FastClock) -> None:
    for fid in range(1, FLOW + 1):
        await store.records.apply_record(None, make_record(fid), [runner.sink_id])
        runner.wake()
        await clock.sleep(0.1)


async def run_through_an_outage(store: Store, r: SinkRunner, clock: FastClock) -> None:
    """Start ``r``, feed it the flow, wait until everything is delivered, stop it."""
    r.start()
    await steady_flow(store, r, clock)
    async with asyncio.timeout(30):
        while r.delivered < FLOW:
            await clock.sleep(1.0)
    await r.stop(timeout=1)


def check_schedule(attempts: list[float], settings: SinkSettings) -> None:
    """Attempts while down respect the backoff floor and Retry-After; back soon after."""
    failed = [t for t in attempts if t < DOWN_FOR]
    gaps = [b - a for a, b in itertools.pairwise(attempts[: len(failed) + 1])]
    for n, gap in enumerate(gaps, start=1):
        # The n-th failure in a row waits at least half its nominal backoff, and at
        # least what Retry-After asked (to within the clock's float rounding).
        nominal = min(settings.retry_max, settings.retry_initial * 2 ** (n - 1))
        assert gap >= max(nominal / 2, RETRY_AFTER) - 1e-6, (n, gaps)
    assert len(failed) <= DOWN_FOR / RETRY_AFTER + 1, failed
    # The first attempt after the outage delivers: the 20-s blip costs seconds, not minutes.
    back = attempts[len(failed)]
    assert DOWN_FOR <= back <= DOWN_FOR + 16, attempts


async def test_a_down_sink_gets_its_schedule_not_an_attempt_per_record(tmp_path: Path) -> None:
    clock = FastClock()
    store = await Store.open(tmp_path / "state.db", clock=clock)
    try:
        settings = SinkSettings(type="memory", retry_initial=1, retry_max=300)
        sink = MemorySink(SinkOptions(), context_for_tests(tmp_path, sink_id="a"))
        attempts: list[float] = []

        def down_then_up(batch: Sequence[Record]) -> Exception | None:
            attempts.append(clock.monotonic())
            if clock.monotonic() < DOWN_FOR:
                return TransientSinkError("receiver down", retry_after=RETRY_AFTER)
            return None

        sink.fail_with = down_then_up
        r = SinkRunner("a", sink, settings, store, batch_size=50, clock=clock)
        await run_through_an_outage(store, r, clock)
    finally:
        await store.close()
    print(f"test sink: {sum(t < DOWN_FOR for t in attempts)} attempts in {DOWN_FOR:g} s down")
    check_schedule(attempts, settings)
    assert sorted(sink.keys) == sorted({*sink.keys})  # nothing twice
    assert len(sink.keys) == FLOW


SECRET = "whsec_" + base64.b64encode(b"a test secret of thirty-two byte").decode()


class DownReceiver:
    """An HTTP receiver on loopback that answers 503 with Retry-After until it is back."""

    def __init__(self, clock: FastClock) -> None:
        self.clock = clock
        self.requests: list[float] = []
        self.received: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests.append(self.clock.monotonic())
        if self.clock.monotonic() < DOWN_FOR:
            return web.Response(status=503, headers={"Retry-After": f"{RETRY_AFTER:g}"})
        self.received.add(request.headers["webhook-id"])
        return web.Response(status=204)


async def test_a_down_http_receiver_gets_its_schedule_and_retry_after(tmp_path: Path) -> None:
    clock = FastClock()
    receiver = DownReceiver(clock)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = web.AppRunner(app, access_log=None)
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    port = server.addresses[0][1]
    store = await Store.open(tmp_path / "state.db", clock=clock)
    try:
        options = HTTPOptions(url=f"http://127.0.0.1:{port}/hook", secret=SecretStr(SECRET))
        context = SinkContext(sink_id="forward", state_dir=tmp_path, timezone=ISTANBUL, clock=clock)
        sink = HTTPSink(options, context)
        attempts: list[float] = []
        write = sink.write

        async def counted(batch: Sequence[Record]) -> None:
            attempts.append(clock.monotonic())
            await write(batch)

        sink.write = counted  # type: ignore[method-assign]
        settings = SinkSettings(type="http", retry_initial=1, retry_max=300)
        r = SinkRunner("forward", sink, settings, store, batch_size=50, clock=clock)
        await run_through_an_outage(store, r, clock)
    finally:
        await store.close()
        await server.cleanup()
    down_requests = sum(t < DOWN_FOR for t in receiver.requests)
    print(
        f"http sink: {sum(t < DOWN_FOR for t in attempts)} attempts, {down_requests} requests"
        f" in {DOWN_FOR:g} s down"
    )
    check_schedule(attempts, settings)
    # One request per attempt: a receiver that answered 503 is not sent the rest.
    assert down_requests == sum(t < DOWN_FOR for t in attempts)
    assert len(receiver.received) == FLOW


async def test_a_locked_state_database_is_waited_out_by_the_runner(
    store: Store, tmp_path: Path
) -> None:
    # "database is locked" (a CLI replay holding the write lock past the 30-s busy
    # timeout) on reading the outbox and on acknowledging: the runner waits it out.
    r = runner(store, "a", tmp_path)
    left = {"batch": 3, "acknowledge": 2}

    def lockable(name: str) -> Callable[..., Any]:
        real = getattr(store.outbox, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if left[name]:
                left[name] -= 1
                raise sqlite3.OperationalError("database is locked")
            return await real(*args, **kwargs)

        return call

    for name in left:
        setattr(store.outbox, name, lockable(name))
    for fid in (1, 2, 3):
        await store.records.apply_record(None, make_record(fid), ["a"])
    r.start()
    await until(lambda: r.delivered == 3)
    await r.stop(timeout=1)
    assert left == {"batch": 0, "acknowledge": 0}
    # A batch whose acknowledgement failed is sent again: same keys, which every sink
    # drops as duplicates (the contract's idempotency).
    assert set(mem(r).keys) == {make_record(fid).key for fid in (1, 2, 3)}


async def test_each_attempt_is_counted_logged_and_waits_longer(
    store: Store, tmp_path: Path
) -> None:
    r = runner(store, "a", tmp_path, retry_initial=1.0, retry_max=100.0)
    outcomes: list[Exception | None] = [TransientSinkError("receiver down")] * 3 + [None]
    mem(r).fail_with = lambda batch: outcomes.pop(0)
    await store.records.apply_record(None, make_record(1), ["a"])
    rows = await store.outbox.batch("a", 10)
    with capture_logs() as lines:
        delays = [await r._deliver(rows) for _ in range(4)]
    # Doubling waits (each drawn between half and all of 1, 2, 4 s), then none.
    assert delays[0] <= 1.0 < 2.0 <= delays[2]
    assert delays[3] == 0.0
    failed = [ln for ln in lines if ln["event"] == "batch_failed"]
    assert [(ln["records"], ln["error"], ln["retry_in"]) for ln in failed] == [
        (1, "receiver down", round(d, 2)) for d in delays[:3]
    ]
    assert (r.retried, r.delivered, r.dead) == (3, 1, 0)
    status = (await store.outbox.sink_status(["a"]))["a"]
    assert (status["last_error"], status["pending"], status["delivered"]) == ("receiver down", 0, 1)


async def test_refused_and_written_records_add_up_over_batches(
    store: Store, tmp_path: Path
) -> None:
    r = runner(store, "a", tmp_path)
    records = [make_record(fid) for fid in (1, 2, 3, 4)]
    refused = {records[0].key, records[2].key}
    mem(r).fail_with = lambda batch: PermanentSinkError(
        "HTTP 400", failed_keys=[x.key for x in batch if x.key in refused]
    )
    for record in records:
        await store.records.apply_record(None, record, ["a"])
    rows = await store.outbox.batch("a", 10)
    with capture_logs() as lines:
        for pair in (rows[:2], rows[2:]):
            assert await r._deliver(pair) == 0.0
    assert (r.dead, r.delivered) == (2, 2)
    status = (await store.outbox.sink_status(["a"]))["a"]
    assert (status["dead"], status["delivered"], status["pending"]) == (2, 2, 0)
    dead = [ln for ln in lines if ln["event"] == "batch_dead_lettered"]
    assert [(ln["dead"], ln["written"], ln["error"]) for ln in dead] == [(1, 1, "HTTP 400")] * 2


async def test_a_dead_letter_ends_a_run_of_failures(store: Store, tmp_path: Path) -> None:
    r = runner(store, "a", tmp_path, retry_initial=1.0, retry_max=100.0)
    outcomes: list[Exception] = [
        TransientSinkError("down"),
        TransientSinkError("down"),
        PermanentSinkError("HTTP 400"),
        TransientSinkError("down again"),
    ]
    mem(r).fail_with = lambda batch: outcomes.pop(0)
    await store.records.apply_record(None, make_record(1), ["a"])
    rows = await store.outbox.batch("a", 10)
    delays = [await r._deliver(rows) for _ in range(4)]
    assert delays[2] == 0.0
    assert delays[3] <= 1.0  # the first wait again, not the third


async def test_a_buggy_sink_is_counted_logged_and_a_success_resets_the_waits(
    store: Store, tmp_path: Path
) -> None:
    r = runner(store, "a", tmp_path, retry_initial=1.0, retry_max=100.0, max_attempts=2)
    outcomes: list[Exception | None] = [RuntimeError("bug"), None, RuntimeError("bug")]
    mem(r).fail_with = lambda batch: outcomes.pop(0)
    await store.records.apply_record(None, make_record(1), ["a"])
    await store.records.apply_record(None, make_record(2), ["a"])
    rows = await store.outbox.batch("a", 10)
    with capture_logs() as lines:
        first = await r._deliver(rows[:1])
        assert await r._deliver(rows[:1]) == 0.0
        again = await r._deliver(rows[1:])
    assert first <= 1.0
    assert again <= 1.0  # the success in between reset the run of failures
    assert (r.retried, r.dead, r.delivered) == (2, 0, 1)
    crashed = [ln for ln in lines if ln["event"] == "batch_crashed"]
    assert [(ln["records"], ln["dead"], ln["error"]) for ln in crashed] == [
        (1, 0, "unexpected RuntimeError: bug")
    ] * 2
    assert [ln["retry_in"] for ln in crashed] == [round(first, 2), round(again, 2)]
    written = [ln for ln in lines if ln["event"] == "batch_written"]
    assert [ln["records"] for ln in written] == [1]


async def test_batch_written_says_how_long_the_sink_took(store: Store, tmp_path: Path) -> None:
    # Operators read the write time from `batch_written` to see a slow destination.
    clock = FakeClock()
    sink = MemorySink(SinkOptions(), context_for_tests(tmp_path, sink_id="a"))

    def slow(batch: Sequence[Record]) -> None:
        clock.advance(0.25042)  # the destination takes a quarter of a second

    sink.fail_with = slow
    r = SinkRunner("a", sink, SETTINGS, store, batch_size=50, clock=clock)
    for fid in (1, 2):
        await store.records.apply_record(None, make_record(fid), ["a"])
    rows = await store.outbox.batch("a", 10)
    with capture_logs() as lines:
        assert await r._deliver(rows) == 0.0
    written = [ln for ln in lines if ln["event"] == "batch_written"]
    assert [(ln["records"], ln["ms"]) for ln in written] == [(2, 250.4)]  # to a tenth of a ms


async def test_the_before_ack_crash_window_is_between_the_write_and_the_ack(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The crash suite kills the daemon at "before_ack" to prove a batch written but not
    # acknowledged is sent again (and dropped as a duplicate): the point must be marked,
    # by that name, after the sink holds the batch and before the outbox forgets it.
    r = runner(store, "a", tmp_path)
    await store.records.apply_record(None, make_record(1), ["a"])
    seen: list[tuple[str, int, int]] = []

    def reached(point: str, before: Callable[[], object] | None = None) -> None:
        seen.append((point, len(mem(r).keys), r.delivered))

    monkeypatch.setattr(crashpoints, "reached", reached)
    rows = await store.outbox.batch("a", 10)
    assert await r._deliver(rows) == 0.0
    assert seen == [("before_ack", 1, 0)]  # written, not yet acknowledged
    assert "before_ack" in crashpoints.POINTS
    assert (await store.outbox.sink_status(["a"]))["a"]["pending"] == 0


async def test_a_buggy_sink_waits_longer_each_time_and_its_dead_letters_add_up(
    store: Store, tmp_path: Path
) -> None:
    # A sink with a bug is not hammered: each crash in a row waits longer. Each record is
    # tried max_attempts times, then parked; status counts every parked record, and the
    # crash line carries the traceback the sink's author needs.
    r = runner(store, "a", tmp_path, retry_initial=1.0, retry_max=100.0, max_attempts=2)

    def buggy(batch: Sequence[Record]) -> Exception:
        return RuntimeError("bug")

    mem(r).fail_with = buggy
    for fid in (1, 2):
        await store.records.apply_record(None, make_record(fid), ["a"])
    rows = await store.outbox.batch("a", 10)
    with capture_logs() as lines:
        delays = [await r._deliver(rows[:1]) for _ in range(2)]
        delays += [await r._deliver(rows[1:]) for _ in range(2)]
    # Doubling waits: the n-th crash in a row waits between half and all of 2**(n-1) s.
    assert delays[0] <= 1.0 < 2.0 <= delays[2] <= 4.0 <= delays[3]
    assert (r.retried, r.dead, r.delivered) == (2, 2, 0)
    status = (await store.outbox.sink_status(["a"]))["a"]
    assert (status["dead"], status["pending"]) == (2, 0)
    crashed = [ln for ln in lines if ln["event"] == "batch_crashed"]
    assert [(ln["records"], ln["dead"]) for ln in crashed] == [(1, 0), (1, 1)] * 2
    for line in crashed:
        assert "in write" in line["traceback"]
        assert line["traceback"].rstrip().endswith("RuntimeError: bug")


def _wrapped(inner: BaseException, *, cause: bool) -> TransientSinkError:
    """A sink's error wrapping ``inner``: as its cause (``raise ... from``) or context only."""
    outer = TransientSinkError("cannot write")
    if cause:
        outer.__cause__ = inner
    outer.__context__ = inner
    return outer


def test_only_failures_the_operator_must_fix_are_flagged_for_the_operator() -> None:
    # Status tells the operator "needs the operator" for these (a retry cannot fix them)
    # and for nothing else: a false alarm would teach them to ignore it.
    denied = PermissionError(errno.EACCES, "Permission denied")
    read_only = OSError(errno.EROFS, "Read-only file system")
    assert operator_fixable(SinkConfigError("password file unreadable"))
    assert operator_fixable(denied)
    assert operator_fixable(_wrapped(read_only, cause=True))
    assert operator_fixable(_wrapped(_wrapped(denied, cause=True), cause=False))
    assert not operator_fixable(FileNotFoundError(errno.ENOENT, "No such file"))
    assert not operator_fixable(_wrapped(ConnectionRefusedError(), cause=True))
    assert not operator_fixable(TransientSinkError("receiver down"))


async def test_a_backoff_waits_its_time_and_a_drain_never_outlasts_its_deadline(
    store: Store, tmp_path: Path
) -> None:
    # A failed sink waits its whole backoff, however short, before the next attempt; when
    # stopping, a backoff that would end after the drain's deadline is not waited (its
    # rows stay in the outbox for the next start), one that ends by then is.
    clock = FakeClock()
    sink = MemorySink(SinkOptions(), context_for_tests(tmp_path, sink_id="a"))
    r = SinkRunner("a", sink, SETTINGS, store, batch_size=50, clock=clock)
    assert await r._back_off(0.5)
    assert clock.slept == [0.5]
    r._stopping, r._deadline = True, clock.monotonic() + 1.0
    assert not await r._back_off(1.5)
    assert clock.slept == [0.5]  # gave up at once, no wait
    assert await r._back_off(1.0)  # ends exactly at the deadline: waited
    assert clock.slept == [0.5, 1.0]


class StoppedClock(FakeClock):
    """A clock whose sleeps never end by themselves: what ends a wait is then visible."""

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.Event().wait()


async def test_records_arriving_during_a_backoff_neither_end_it_nor_spin(
    store: Store, tmp_path: Path
) -> None:
    # A down destination gets its schedule however many records arrive meanwhile, and
    # the runner waits quietly: one sleep for the backoff, not a loop per wake-up.
    clock = StoppedClock()
    sink = MemorySink(SinkOptions(), context_for_tests(tmp_path, sink_id="a"))
    r = SinkRunner("a", sink, SETTINGS, store, batch_size=50, clock=clock)
    backoff = asyncio.create_task(r._back_off(30.0))
    await until(lambda: clock.slept)
    for _ in range(3):
        r.wake()
        for _ in range(20):
            await asyncio.sleep(0)
    assert not backoff.done()
    assert clock.slept == [30.0]
    backoff.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await backoff


def _opening(sink: MemorySink, errors: list[Exception]) -> None:
    """Make ``sink.open`` raise each of ``errors`` in turn, then succeed."""

    async def open_() -> None:
        if errors:
            raise errors.pop(0)

    sink.open = open_  # type: ignore[method-assign]


async def test_a_sink_that_cannot_open_waits_longer_each_time_says_why_and_recovers(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    sink = MemorySink(SinkOptions(), context_for_tests(tmp_path, sink_id="a"))
    settings = SETTINGS.model_copy(update={"retry_initial": 1.0, "retry_max": 100.0})
    r = SinkRunner("a", sink, settings, store, batch_size=50, clock=clock)
    _opening(sink, [TransientSinkError("connection refused")] * 2)
    with capture_logs() as logs:
        waits = [await r._open(), await r._open()]
        status = (await store.outbox.sink_status(["a"]))["a"]
        assert await r._open() == 0.0
        # Counted afresh after a success: the next failure waits the first wait again.
        _opening(sink, [TransientSinkError("connection refused")])
        again = await r._open()
    assert 0.5 <= waits[0] <= 1.0 <= waits[1] <= 2.0
    assert 0.5 <= again <= 1.0
    assert status["last_error"] == "open: connection refused"
    failed = [(e["error"], e["retry_in"]) for e in logs if e["event"] == "sink_open_failed"]
    assert failed == [("open: connection refused", round(w, 2)) for w in [*waits, again]]
    assert not [e for e in logs if e["event"] in ("sink_needs_operator", "sink_recovered")]
    assert r.needs_operator is None
    await r.stop(timeout=1)
    assert sink.closed  # it was opened, so it is closed


async def test_a_sink_only_the_operator_can_fix_says_so_once_per_change_and_recovers(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    sink = MemorySink(SinkOptions(), context_for_tests(tmp_path, sink_id="a"))
    settings = SETTINGS.model_copy(update={"retry_initial": 1.0, "retry_max": 2.3456})
    r = SinkRunner("a", sink, settings, store, batch_size=50, clock=clock)
    unset = SinkConfigError("FONZIPD_SINKS__A__PASSWORD is not set")
    denied = PermissionError(errno.EACCES, "Permission denied")
    _opening(sink, [unset, unset, denied])
    with capture_logs() as logs:
        waits = [await r._open(), await r._open()]
        assert r.needs_operator == "open: FONZIPD_SINKS__A__PASSWORD is not set"
        status = (await store.outbox.sink_status(["a"]))["a"]
        await r._open()
        assert r.needs_operator == "open: [Errno 13] Permission denied"
        assert await r._open() == 0.0
    assert 0.5 <= waits[0] <= 1.0 <= waits[1] <= 2.0  # retried on the schedule meanwhile
    assert status["last_error"] == "needs the operator: open: FONZIPD_SINKS__A__PASSWORD is not set"
    said = [e for e in logs if e["event"] == "sink_needs_operator"]
    assert [(e["error"], e["retry_every"], e["log_level"]) for e in said] == [
        ("open: FONZIPD_SINKS__A__PASSWORD is not set", 2.35, "error"),
        ("open: [Errno 13] Permission denied", 2.35, "error"),
    ]
    assert {e["hint"] for e in said} == {
        "fix the permission or setting named; the sink retries by itself"
    }
    assert not [e for e in logs if e["event"] == "sink_open_failed"]
    recovered = [e for e in logs if e["event"] == "sink_recovered"]
    assert [e["was"] for e in recovered] == ["open: [Errno 13] Permission denied"]
    assert r.needs_operator is None


async def test_a_sink_never_opened_is_not_closed(store: Store, tmp_path: Path) -> None:
    r = runner(store, "a", tmp_path)
    await r.stop(timeout=1)
    assert not mem(r).closed


async def _spin() -> None:
    """Let every ready task run (a wait that should not end gets every chance to)."""
    for _ in range(20):
        await asyncio.sleep(0)


def stopped_runner(store: Store, tmp_path: Path, **kw: object) -> tuple[SinkRunner, StoppedClock]:
    clock = StoppedClock()
    sink = MemorySink(SinkOptions(), context_for_tests(tmp_path, sink_id="a"))
    return SinkRunner(
        "a", sink, SETTINGS.model_copy(update=kw), store, batch_size=3, clock=clock
    ), (clock)


async def test_an_idle_runner_waits_five_seconds_or_until_records_arrive(
    store: Store, tmp_path: Path
) -> None:
    r, clock = stopped_runner(store, tmp_path)
    await r._open()
    r.wake()  # a wake from before the read does not end the wait after it
    step = asyncio.create_task(r._step())
    await until(lambda: clock.slept)
    await _spin()
    assert not step.done()
    assert clock.slept == [5.0]
    r.wake()
    assert await step == 0.0  # nothing delivered: read again at once
    assert mem(r).batches == []


async def test_a_lone_record_waits_for_company_and_leaves_with_what_arrived(
    store: Store, tmp_path: Path
) -> None:
    r, clock = stopped_runner(store, tmp_path, flush_interval=30)
    await r._open()
    await store.records.apply_record(None, make_record(1), ["a"])
    step = asyncio.create_task(r._step())
    await until(lambda: clock.slept)
    await _spin()
    assert not step.done()
    (waited,) = clock.slept
    assert 29.0 < waited <= 30.0  # flush_interval less the record's age
    await store.records.apply_record(None, make_record(2), ["a"])
    r.wake()
    assert await step == 0.0
    assert mem(r).batches == [2]  # the one that came meanwhile rode along


async def test_a_full_batch_or_a_drain_never_waits_for_company(
    store: Store, tmp_path: Path
) -> None:
    r, clock = stopped_runner(store, tmp_path, flush_interval=30)
    await r._open()
    for fid in (1, 2, 3, 4):
        await store.records.apply_record(None, make_record(fid), ["a"])
    assert await r._step() == 0.0
    assert mem(r).batches == [3]  # batch_size
    r._stopping = True
    assert await r._step() == 0.0
    assert mem(r).batches == [3, 1]
    assert await r._step() is None  # drained: the runner ends
    assert clock.slept == []


async def test_a_sink_that_fails_to_open_is_not_read_from(store: Store, tmp_path: Path) -> None:
    r, clock = stopped_runner(store, tmp_path, retry_initial=1.0, retry_max=100.0)
    _opening(mem(r), [TransientSinkError("refused")])
    await store.records.apply_record(None, make_record(1), ["a"])
    delay = await r._step()
    assert delay is not None
    assert 0.5 <= delay <= 1.0
    assert (await store.outbox.sink_status(["a"]))["a"]["pending"] == 1
    assert await r._step() == 0.0  # opens, and delivers at once (the clock never moved)
    assert mem(r).batches == [1]
    assert clock.slept == []


async def test_waits_end_on_time_on_stop_and_if_wakeable_on_new_records(
    store: Store, tmp_path: Path
) -> None:
    r, clock = stopped_runner(store, tmp_path)
    await r._sleep(0, wakeable=True)
    assert clock.slept == []  # nothing to wait: not even a zero sleep
    backoff = asyncio.create_task(r._sleep(7.0, wakeable=False))
    flush = asyncio.create_task(r._sleep(3.0, wakeable=True))
    await until(lambda: len(clock.slept) == 2)
    r.wake()
    await flush
    await _spin()
    assert not backoff.done()  # records arriving never end a backoff
    r._stopped.set()
    await backoff  # a stop does
    assert clock.slept == [7.0, 3.0]


async def test_a_drain_waits_on_the_clock_and_never_past_its_deadline(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    sink = MemorySink(SinkOptions(), context_for_tests(tmp_path, sink_id="a"))
    r = SinkRunner("a", sink, SETTINGS, store, batch_size=3, clock=clock)
    r._stopping = True
    await r._sleep(2.0, wakeable=True)  # no deadline: the whole wait, whatever wakes
    r._deadline = clock.monotonic() + 5.0
    r.wake()
    await r._sleep(10.0, wakeable=True)
    await r._sleep(1.0, wakeable=True)  # the deadline is reached
    assert clock.slept == [2.0, 5.0]


async def test_a_stop_during_a_backoff_ends_the_runner_and_leaves_the_rows_for_next_time(
    store: Store, tmp_path: Path
) -> None:
    r, clock = stopped_runner(store, tmp_path, retry_initial=100.0, retry_max=100.0)
    mem(r).fail_with = lambda batch: TransientSinkError("receiver down")
    await store.records.apply_record(None, make_record(1), ["a"])
    task = r.start()
    assert task.get_name() == "sink-a"  # how the supervisor names it if it dies
    await until(lambda: clock.slept)  # in its 100-s backoff
    await r.stop(timeout=0.2)
    # The backoff would outlast the drain: the runner ends by itself, not cancelled.
    assert task.done()
    assert not task.cancelled()
    assert (await store.outbox.sink_status(["a"]))["a"]["pending"] == 1
    assert mem(r).closed


async def test_a_write_in_flight_at_the_deadline_gets_a_second_more(
    store: Store, tmp_path: Path
) -> None:
    r, _ = stopped_runner(store, tmp_path)
    release = asyncio.Event()
    written = mem(r).write

    async def slow_write(batch: Sequence[Record]) -> None:
        await release.wait()
        await written(batch)

    mem(r).write = slow_write  # type: ignore[method-assign]
    await store.records.apply_record(None, make_record(1), ["a"])
    task = r.start()
    await _spin()
    stopping = asyncio.create_task(r.stop(timeout=0.1))
    await _spin()
    release.set()  # the destination answers after the drain deadline, within the grace
    await stopping
    assert not task.cancelled()
    assert r.delivered == 1
    assert (await store.outbox.sink_status(["a"]))["a"]["pending"] == 0


async def test_a_write_that_never_returns_is_cancelled_and_the_sink_still_closed(
    store: Store, tmp_path: Path
) -> None:
    r, _ = stopped_runner(store, tmp_path)

    async def hang(batch: Sequence[Record]) -> None:
        await asyncio.Event().wait()

    mem(r).write = hang  # type: ignore[method-assign]
    await store.records.apply_record(None, make_record(1), ["a"])
    task = r.start()
    await _spin()
    await r.stop(timeout=0.1)  # returns: the task is cancelled a second past the deadline
    assert task.cancelled()
    assert mem(r).closed
    assert (await store.outbox.sink_status(["a"]))["a"]["pending"] == 1


async def test_a_sink_that_fails_to_close_is_logged_and_the_stop_completes(
    store: Store, tmp_path: Path
) -> None:
    r = runner(store, "a", tmp_path)

    async def close() -> None:
        raise OSError("disk gone")

    mem(r).close = close  # type: ignore[method-assign]
    await store.records.apply_record(None, make_record(1), ["a"])
    r.start()
    await until(lambda: mem(r).keys)
    with capture_logs() as logs:
        await r.stop(timeout=1)
    failed = [e for e in logs if e["event"] == "sink_close_failed"]
    assert [(e["log_level"], e["sink"], e["type"]) for e in failed] == [("error", "a", "memory")]
    assert failed[0]["exc_info"] is True


async def test_a_failing_state_database_is_waited_out_on_a_growing_schedule_and_logged(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    sink = MemorySink(SinkOptions(), context_for_tests(tmp_path, sink_id="a"))
    settings = SETTINGS.model_copy(update={"retry_initial": 1.0, "retry_max": 100.0})
    r = SinkRunner("a", sink, settings, store, batch_size=50, clock=clock)
    real = store.outbox.batch
    calls = itertools.count(1)

    async def batch(*args: Any, **kwargs: Any) -> Any:
        # Locked twice, then a read that delivers, then locked once more.
        if next(calls) in (1, 2, 4):
            raise sqlite3.OperationalError("database is locked")
        return await real(*args, **kwargs)

    store.outbox.batch = batch  # type: ignore[method-assign]
    await store.records.apply_record(None, make_record(1), ["a"])
    with capture_logs() as logs:
        r.start()
        await until(lambda: r.delivered == 1 and len(clock.slept) >= 3)
        await r.stop(timeout=1)
    first, second, after = clock.slept[:3]
    # Doubling waits; a success in between starts the count again.
    assert 0.5 <= first <= 1.0 <= second <= 2.0
    assert 0.5 <= after <= 1.0
    failed = [(e["error"], e["retry_in"]) for e in logs if e["event"] == "sink_store_failed"]
    assert failed == [("database is locked", round(w, 2)) for w in (first, second, after)]


@pytest.mark.parametrize(("age", "wait"), [(0.0, 30.0), (12.0, 18.0), (30.0, None)])
async def test_a_lone_record_waits_the_flush_interval_less_its_age(
    tmp_path: Path, age: float, wait: float | None
) -> None:
    queued_at = FakeClock()
    store = await Store.open(tmp_path / "aged.db", clock=queued_at)
    try:
        r, clock = stopped_runner(store, tmp_path, flush_interval=30)
        await r._open()
        await store.records.apply_record(None, make_record(1), ["a"])
        queued_at.advance(age)
        step = asyncio.create_task(r._step())
        if wait is None:  # old enough: sent at once
            assert await step == 0.0
        else:
            await until(lambda: clock.slept)
            r.wake()
            assert await step == 0.0
        assert clock.slept == ([] if wait is None else [wait])
        assert mem(r).batches == [1]
    finally:
        await store.close()
