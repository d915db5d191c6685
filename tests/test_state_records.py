"""Tests of fonzipd.state.records: new, changed, unchanged and stale fetches."""

from __future__ import annotations

from fonzipd.kinds import Kind
from fonzipd.state import Store
from tests.support import hook, make_record


async def test_apply_record_queues_each_new_version_once_per_sink(store: Store) -> None:
    rec = make_record(1)
    applied = await store.records.apply_record(None, rec, ["sql", "csv"])
    assert (applied.outcome, applied.enqueued) == ("new", 2)
    again = await store.records.apply_record(None, rec, ["sql", "csv"])
    assert (again.outcome, again.enqueued) == ("unchanged", 0)
    refund = make_record(1, status="refunded")
    changed = await store.records.apply_record(None, refund, ["sql", "csv"])
    assert (changed.outcome, changed.enqueued) == ("changed", 2)
    batch = await store.outbox.batch("sql", 10)
    assert [r.record.status for r in batch] == ["succeeded", "refunded"]
    stored = await store.records.get(Kind.DONATION, 1)
    assert stored == refund


async def test_a_stale_fetch_never_overwrites_a_newer_state(store: Store) -> None:
    await store.records.apply_record(None, make_record(1, status="refunded"), ["a"])
    late = await store.records.apply_record(None, make_record(1, status="succeeded"), ["a"])
    assert late.outcome == "stale"
    assert late.enqueued == 0
    stored = await store.records.get(Kind.DONATION, 1)
    assert stored is not None
    assert stored.status == "refunded"


async def test_apply_record_finishes_the_inbox_row_in_the_same_transaction(store: Store) -> None:
    await store.inbox.add_events([hook(1)])
    row = await store.inbox.claim()
    assert row is not None
    await store.records.apply_record(row.id, make_record(1), ["a"])
    assert await store.inbox.counts() == {"done": 1}
