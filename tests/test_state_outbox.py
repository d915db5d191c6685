"""Tests of fonzipd.state.outbox: acknowledge, failures, dead letters and replay."""

from __future__ import annotations

import dataclasses
import datetime as dt

from fonzipd.kinds import Kind
from fonzipd.state import Store
from tests.support import FakeClock, make_record


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


async def test_a_dead_letter_records_when_it_happened(store: Store, clock: FakeClock) -> None:
    await store.records.apply_record(None, make_record(1), ["a"])
    rows = await store.outbox.batch("a", 10)
    clock.advance(60)
    await store.outbox.dead_letter("a", [rows[0].id], "HTTP 422")
    status = (await store.outbox.sink_status(["a"]))["a"]
    assert status["last_error_at"] == clock.now().isoformat()
    async with store.db.execute("SELECT dead_at, attempts FROM outbox") as cur:
        assert [tuple(r) for r in await cur.fetchall()] == [(clock.now().timestamp(), 1)]


async def test_replay_selects_by_date_and_kind_and_a_dry_run_counts_the_same(
    store: Store,
) -> None:
    early, late = dt.date(2026, 11, 20), dt.date(2026, 11, 26)
    records = [
        make_record(1, day=early),
        make_record(2, day=late),
        make_record(3, day=late, kind=Kind.TICKET_SALE),
    ]
    for record in records:
        await store.records.apply_record(None, record, ["a"])
    await store.outbox.acknowledge("a", [r.id for r in await store.outbox.batch("a", 10)])

    async def replay(
        since: dt.date | None = None, kind: Kind | None = None
    ) -> tuple[int, list[str]]:
        counted = await store.outbox.requeue("a", dead=False, dry_run=True, since=since, kind=kind)
        queued = await store.outbox.requeue("a", dead=False, since=since, kind=kind)
        assert counted == queued
        rows = await store.outbox.batch("a", 10)
        await store.outbox.acknowledge("a", [r.id for r in rows])
        return queued, sorted(r.record_key.rsplit(":", 1)[0] for r in rows)

    assert await replay(since=late) == (2, ["donation:2", "ticket_sale:3"])
    assert await replay(kind=Kind.TICKET_SALE) == (1, ["ticket_sale:3"])
    assert await replay(since=late, kind=Kind.DONATION) == (1, ["donation:2"])
    assert await replay(since=dt.date(2026, 11, 27)) == (0, [])
    # Dead letters: a dry run counts what a replay requeues.
    rows = [r for r in records if r.fonzip_id != 2]
    for record in rows:
        await store.records.apply_record(None, dataclasses.replace(record, version="v2"), ["a"])
    pending = await store.outbox.batch("a", 10)
    await store.outbox.dead_letter("a", [r.id for r in pending], "refused")
    assert await store.outbox.requeue("a", dead=True, dry_run=True, kind=Kind.TICKET_SALE) == 1
    assert await store.outbox.requeue("a", dead=True, dry_run=True) == 2
    assert await store.outbox.requeue("a", dead=True, since=late) == 1
