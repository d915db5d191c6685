"""Tests of fonzipd.state.outbox: acknowledge, failures, dead letters and replay."""

from __future__ import annotations

import datetime as dt

from fonzipd.kinds import Kind
from fonzipd.state import Store
from tests.support import make_record


async def test_acknowledge_dead_letter_and_replay(store: Store) -> None:
    for fid in (1, 2, 3):
        await store.records.apply_record(None, make_record(fid), ["a"])
    rows = await store.outbox.batch("a", 10)
    await store.outbox.acknowledge("a", [rows[0].id])
    await store.outbox.dead_letter("a", [rows[1].id], "HTTP 400: bad record")
    status = (await store.outbox.sink_status(["a"]))["a"]
    assert (status["pending"], status["dead"], status["delivered"]) == (1, 1, 1)
    assert status["last_error"] == "HTTP 400: bad record"
    assert await store.outbox.requeue("a", dead=True, dry_run=True) == 1
    assert await store.outbox.requeue("a", dead=True) == 1
    assert [r.record.fonzip_id for r in await store.outbox.batch("a", 10)] == [2, 3]
    # Replaying delivered records requeues record 1; 2 and 3 are already queued.
    assert await store.outbox.requeue("a", dead=False) == 1
    assert await store.outbox.requeue("a", dead=False, kind=Kind.CAMPAIGN) == 0
    assert (
        await store.outbox.requeue("a", dead=False, since=dt.date(2026, 11, 27), dry_run=True) == 0
    )


async def test_transient_failures_never_dead_letter_but_bugs_do(store: Store) -> None:
    await store.records.apply_record(None, make_record(1), ["a"])
    ids = [r.id for r in await store.outbox.batch("a", 10)]
    for _ in range(50):
        assert await store.outbox.record_failure("a", ids, "down", dead_after=0) == 0
    assert await store.outbox.record_failure("a", ids, "bug", dead_after=3) == 1
    status = (await store.outbox.sink_status(["a"]))["a"]
    assert status["dead"] == 1
    assert status["failing_since"] is not None
