"""Tests of fonzipd.state.inbox: dedup, claim order, retries, release, prune, durability."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from fonzipd.kinds import Kind
from fonzipd.records import Source
from fonzipd.state import InboxEvent, Store
from tests.support import FakeClock, hook, make_record


async def test_duplicate_of_a_pending_event_is_stored_once(store: Store) -> None:
    assert await store.inbox.add_events([hook(1), hook(1), hook(1, status=4)]) == [
        True,
        False,
        True,
    ]
    assert (await store.inbox.depth())[0] == 2


async def test_event_is_deduplicated_only_while_pending(store: Store) -> None:
    await store.inbox.add_events([hook(1)])
    row = await store.inbox.claim()
    assert row is not None
    # The claimed row's fetch may have read the older state: the new notification
    # gets a fetch of its own; a third one is a duplicate of that pending row.
    assert await store.inbox.add_events([hook(1)]) == [True]
    assert await store.inbox.add_events([hook(1)]) == [False]
    await store.records.apply_record(row.id, make_record(1), ["a"])
    again = await store.inbox.claim()
    assert again is not None
    assert (again.fonzip_id, again.id != row.id) == (1, True)


async def test_a_claimed_row_given_back_beside_a_pending_twin_is_superseded(
    store: Store,
) -> None:
    for give_back in ("retry_later", "unclaim", "release_claims"):
        await store.inbox.add_events([hook(1)])
        row = await store.inbox.claim()
        assert row is not None
        assert await store.inbox.add_events([hook(1)]) == [True]
        if give_back == "retry_later":
            await store.inbox.retry_later(row.id, "Fonzip unavailable", 30)
        elif give_back == "unclaim":
            await store.inbox.unclaim(row.id)
        else:
            await store.inbox.release_claims()
        assert (await store.inbox.depth())[0] == 1, give_back
        twin = await store.inbox.claim()
        assert twin is not None
        assert twin.id != row.id
        await store.records.apply_record(twin.id, make_record(1), ["a"])


async def test_events_survive_a_reopen(tmp_path: Path, clock: FakeClock) -> None:
    s = await Store.open(tmp_path / "state.db", clock=clock)
    await s.inbox.add_events([hook(7)])
    await s.close()
    s = await Store.open(tmp_path / "state.db", clock=clock)
    row = await s.inbox.claim()
    assert row is not None
    assert row.fonzip_id == 7
    await s.close()


async def test_live_work_is_claimed_before_bulk_work(store: Store) -> None:
    bulk = InboxEvent(kind=Kind.DONATION, fonzip_id=1, event_status=None, source=Source.RECONCILE)
    await store.inbox.add_events([bulk, hook(2)])
    first, second = await store.inbox.claim(), await store.inbox.claim()
    assert first is not None
    assert second is not None
    assert (first.fonzip_id, first.source) == (2, Source.WEBHOOK)
    assert (second.fonzip_id, second.source) == (1, Source.RECONCILE)
    assert await store.inbox.claim() is None


async def test_retry_later_hides_the_row_until_due(store: Store, clock: FakeClock) -> None:
    await store.inbox.add_events([hook(1)])
    row = await store.inbox.claim()
    assert row is not None
    await store.inbox.retry_later(row.id, "Fonzip unavailable", 30)
    assert await store.inbox.claim() is None
    due = await store.inbox.next_due()
    assert due == clock.now() + dt.timedelta(seconds=30)
    clock.advance(30)
    again = await store.inbox.claim()
    assert again is not None
    assert again.attempts == 2


async def test_release_claims_returns_rows_after_a_crash(store: Store) -> None:
    await store.inbox.add_events([hook(1), hook(2)])
    assert await store.inbox.claim() is not None
    assert await store.inbox.release_claims() == 1
    assert (await store.inbox.depth())[0] == 2


async def test_prune_forgets_old_finished_rows_but_keeps_failed_and_pending(
    store: Store, clock: FakeClock
) -> None:
    await store.inbox.add_events([hook(1), hook(2), hook(3)])
    done, failed = await store.inbox.claim(), await store.inbox.claim()
    assert done is not None
    assert failed is not None
    await store.records.apply_record(done.id, make_record(done.fonzip_id), ["a"])
    await store.inbox.fail(failed.id, "not found")
    clock.advance(8 * 86400)
    assert await store.inbox.prune(dt.timedelta(days=7)) == 1
    assert await store.inbox.counts() == {"failed": 1, "pending": 1}


async def test_added_events_are_committed_when_add_events_returns(
    tmp_path: Path, store: Store
) -> None:
    assert await store.inbox.add_events([hook(1), hook(2)]) == [True, True]
    assert not store.db.in_transaction
    # Another connection (another process, after a crash) sees them at once.
    with sqlite3.connect(tmp_path / "state.db") as other:
        assert other.execute("SELECT count(*) FROM inbox").fetchone() == (2,)


async def test_enrichments_are_claimed_after_reconcile_work_and_live_work_first(
    store: Store,
) -> None:
    enrich = InboxEvent(Kind.DONATION, 1, None, Source.BACKFILL, enrich=True)
    backfill = InboxEvent(Kind.DONATION, 2, None, Source.BACKFILL)
    await store.inbox.add_events([enrich, backfill, hook(3)])
    claimed = [await store.inbox.claim() for _ in range(3)]
    assert [(r.fonzip_id, r.priority) for r in claimed if r] == [(3, 0), (2, 1), (1, 2)]


async def test_claim_many_claims_up_to_the_limit_live_work_first(store: Store) -> None:
    bulk = [InboxEvent(Kind.DONATION, fid, None, Source.RECONCILE) for fid in (1, 2, 3)]
    await store.inbox.add_events([*bulk, hook(4)])
    first = await store.inbox.claim_many(2)
    assert [(r.fonzip_id, r.priority, r.attempts) for r in first] == [(4, 0, 1), (1, 1, 1)]
    assert [r.fonzip_id for r in await store.inbox.claim_many(5)] == [2, 3]
    assert await store.inbox.claim_many(5) == []
    assert await store.inbox.counts() == {"claimed": 4}
