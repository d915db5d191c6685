"""Tests of fonzipd.state.inbox: dedup, claim order, retries, release, prune, durability."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fonzipd.kinds import Kind
from fonzipd.records import Source
from fonzipd.state import InboxEvent, Store, StoreError
from tests.support import FakeClock, hook, make_record


async def test_duplicate_of_a_pending_event_is_stored_once(store: Store) -> None:
    assert await store.inbox.add_events([hook(1), hook(1), hook(1, status=4)]) == [
        True,
        False,
        True,
    ]
    assert (await store.inbox.depth())[0] == 2


async def test_duplicates_among_new_events_are_told_apart_by_position(store: Store) -> None:
    # A group whose duplicates sit between new events, of pending rows and of each
    # other: each event is told whether it was added, and every new row is there once.
    await store.inbox.add_events([hook(2), hook(4)])
    group = [hook(1), hook(2), hook(3), hook(3), hook(4), hook(5), hook(2, status=4)]
    assert await store.inbox.add_events(group) == [True, False, True, False, False, True, True]
    assert (await store.inbox.depth())[0] == 6
    assert await store.inbox.add_events([hook(2), hook(4)]) == [False, False]


async def test_a_group_whose_new_rows_are_not_found_is_an_error_not_a_wrong_answer(
    store: Store,
) -> None:
    # Some events of the group are duplicates, so its new rows are read back by id.
    # Should that read not find them all, the group fails (the listener answers 503
    # and Fonzip retries) rather than tell an event it was a duplicate when it was not;
    # what the statement inserted stays committed.
    await store.inbox.add_events([hook(2)])

    async def hide_new_rows(sql: str, submit: Callable[[], Awaitable[Any]]) -> Any:
        result = await submit()
        return [] if sql.startswith("SELECT kind, fonzip_id") else result

    store.connection.faults = hide_new_rows
    try:
        with pytest.raises(StoreError, match="added 2 rows, 0 found by id"):
            await store.inbox.add_events([hook(1), hook(2), hook(3)])
    finally:
        store.connection.faults = None
    assert (await store.inbox.depth())[0] == 3
    assert await store.inbox.add_events([hook(1), hook(3)]) == [False, False]


async def test_one_new_event_among_duplicates_is_the_one_told_new(store: Store) -> None:
    """The statement adds one row of several: the group is neither all new nor all
    duplicates, so which one is new is read back."""
    await store.inbox.add_events([hook(5), hook(6)])
    assert await store.inbox.add_events([hook(5), hook(7), hook(6)]) == [False, True, False]


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


async def inbox_row(store: Store, row_id: int) -> dict[str, Any]:
    """One inbox row as stored, read through the read connection (committed data)."""
    rows = await store.connection.fetchdicts("SELECT * FROM inbox WHERE id = ?", (row_id,))
    return rows[0]


async def test_a_claimed_row_carries_its_event_and_list_row(store: Store, clock: FakeClock) -> None:
    listed = InboxEvent(
        Kind.TICKET_SALE, 9, None, Source.RECONCILE, list_row={"id": 9, "ad": "Ayşe"}
    )
    assert await store.inbox.add_events([listed, hook(3, status=4)]) == [True, True]
    live, bulk = await store.inbox.claim_many(2)
    assert (live.kind, live.fonzip_id, live.event_status, live.source, live.list_row) == (
        Kind.DONATION,
        3,
        4,
        Source.WEBHOOK,
        None,
    )
    assert (bulk.kind, bulk.fonzip_id, bulk.event_status, bulk.source, bulk.priority) == (
        Kind.TICKET_SALE,
        9,
        None,
        Source.RECONCILE,
        1,
    )
    assert (bulk.attempts, bulk.list_row) == (1, {"id": 9, "ad": "Ayşe"})
    # An event without a list row stores none (not a JSON null).
    assert (await inbox_row(store, live.id))["list_row"] is None
    stored = await inbox_row(store, bulk.id)
    now = clock.now().timestamp()
    assert (stored["received_at"], stored["next_attempt_at"], stored["state"]) == (
        now,
        now,
        "claimed",
    )


async def test_an_event_without_status_is_added_and_deduplicated(store: Store) -> None:
    bare = InboxEvent(Kind.CAMPAIGN, 5, None, Source.WEBHOOK)
    assert await store.inbox.add_events([bare, bare, hook(5, kind=Kind.CAMPAIGN)]) == [
        True,
        False,
        True,
    ]
    assert await store.inbox.add_events([bare]) == [False]
    assert await store.inbox.counts() == {"pending": 2}


async def test_at_start_of_claimed_twins_the_newest_returns_and_the_older_is_superseded(
    store: Store, clock: FakeClock
) -> None:
    await store.inbox.add_events([hook(1), hook(2)])
    older = await store.inbox.claim()
    assert older is not None
    assert await store.inbox.add_events([hook(older.fonzip_id)]) == [True]
    claimed = await store.inbox.claim_many(2)
    newer = next(r for r in claimed if r.fonzip_id == older.fonzip_id)
    assert newer.id > older.id
    clock.advance(10)
    # The crash left three rows claimed: two twins, and the other event.
    assert await store.inbox.release_claims() == 2
    gone = await inbox_row(store, older.id)
    assert (gone["state"], gone["outcome"], gone["finished_at"]) == (
        "done",
        "superseded",
        clock.now().timestamp(),
    )
    assert (await inbox_row(store, newer.id))["state"] == "pending"
    assert await store.inbox.counts() == {"done": 1, "pending": 2}


async def test_a_row_given_back_with_no_twin_is_not_superseded(store: Store) -> None:
    await store.inbox.add_events([hook(1), hook(1, status=4), hook(1, kind=Kind.CAMPAIGN)])
    rows = await store.inbox.claim_many(1)
    # Twins only of another status or kind are pending: not the same event.
    await store.inbox.retry_later(rows[0].id, "busy", 0)
    await store.inbox.add_events([hook(2)])
    other = await store.inbox.claim_many(3)
    await store.inbox.add_events([hook(2, status=4)])
    for row in other:
        await store.inbox.unclaim(row.id)
    assert await store.inbox.counts() == {"pending": 5}


async def test_retry_later_records_the_error_and_when_to_try_again(
    store: Store, clock: FakeClock
) -> None:
    await store.inbox.add_events([hook(1)])
    row = await store.inbox.claim()
    assert row is not None
    await store.inbox.retry_later(row.id, "Fonzip unavailable", 45.5)
    stored = await inbox_row(store, row.id)
    assert (stored["state"], stored["last_error"], stored["next_attempt_at"]) == (
        "pending",
        "Fonzip unavailable",
        clock.now().timestamp() + 45.5,
    )
    # A row not claimed (any more) is not given back twice.
    await store.inbox.retry_later(row.id, "late", 1)
    assert (await inbox_row(store, row.id))["last_error"] == "Fonzip unavailable"


async def test_an_unclaimed_row_is_ready_at_once_and_its_attempt_does_not_count(
    store: Store,
) -> None:
    await store.inbox.add_events([hook(1)])
    row = await store.inbox.claim()
    assert row is not None
    await store.inbox.retry_later(row.id, "busy", 0)
    row = await store.inbox.claim()
    assert row is not None
    assert row.attempts == 2
    await store.inbox.unclaim(row.id)
    again = await store.inbox.claim()
    assert again is not None
    assert (again.id, again.attempts) == (row.id, 2)
    # Never below zero, even for a row whose count was reset by hand.
    async with store.connection.transaction() as tx:
        await tx.execute("UPDATE inbox SET attempts = 0 WHERE id = ?", (row.id,))
    await store.inbox.unclaim(row.id)
    assert (await inbox_row(store, row.id))["attempts"] == 0
    await store.inbox.unclaim(row.id)  # not claimed: nothing changes
    assert (await inbox_row(store, row.id))["attempts"] == 0


async def test_a_failed_row_keeps_its_reason_and_is_listed_newest_first(
    store: Store, clock: FakeClock
) -> None:
    await store.inbox.add_events([hook(n) for n in range(1, 23)])
    rows = await store.inbox.claim_many(22)
    for row in rows:
        clock.advance(1)
        await store.inbox.fail(row.id, f"not found: {row.fonzip_id}")
    failed = await store.inbox.failed_events()
    assert len(failed) == 20
    assert failed[0] == {
        "kind": "donation",
        "fonzip_id": 22,
        "event_status": 3,
        "source": "webhook",
        "attempts": 1,
        "last_error": "not found: 22",
        "finished_at": clock.now().timestamp(),
    }
    assert [f["fonzip_id"] for f in failed] == list(range(22, 2, -1))
    assert [f["fonzip_id"] for f in await store.inbox.failed_events(limit=2)] == [22, 21]
    stored = await inbox_row(store, rows[0].id)
    assert (stored["state"], stored["outcome"]) == ("failed", "failed")
    # Only a claimed row can fail.
    await store.inbox.fail(rows[0].id, "again")
    assert (await inbox_row(store, rows[0].id))["last_error"] == "not found: 1"


async def test_prune_keeps_rows_finished_exactly_the_retention_ago(
    store: Store, clock: FakeClock
) -> None:
    await store.inbox.add_events([hook(1)])
    row = await store.inbox.claim()
    assert row is not None
    await store.records.apply_record(row.id, make_record(1), ["a"])
    clock.advance(7 * 86400)
    assert await store.inbox.prune(dt.timedelta(days=7)) == 0
    clock.advance(0.5)
    assert await store.inbox.prune(dt.timedelta(days=7)) == 1
    assert await store.inbox.counts() == {}


async def test_depth_counts_queued_rows_and_the_age_of_the_oldest(
    store: Store, clock: FakeClock
) -> None:
    assert await store.inbox.depth() == (0, None)
    await store.inbox.add_events([hook(1)])
    clock.advance(30)
    await store.inbox.add_events([hook(2), hook(3)])
    assert await store.inbox.claim() is not None
    clock.advance(12.5)
    assert await store.inbox.depth() == (3, 42.5)
    # The wall clock stepped back before the oldest arrival: the age is 0, not negative.
    clock.advance(-3600)
    assert await store.inbox.depth() == (3, 0.0)


async def test_unfinished_counts_pending_and_claimed_rows_of_the_kind_and_ids(
    store: Store,
) -> None:
    ids = list(range(1, 1202))
    await store.inbox.add_events(
        [InboxEvent(Kind.DONATION, n, None, Source.RECONCILE) for n in ids]
        + [hook(5, kind=Kind.CAMPAIGN)]
    )
    assert await store.inbox.unfinished(Kind.DONATION, iter(ids)) == 1201
    claimed = await store.inbox.claim_many(3)
    assert [r.fonzip_id for r in claimed] == [5, 1, 2]
    assert await store.inbox.unfinished(Kind.DONATION, ids) == 1201
    for row in claimed:
        await store.inbox.fail(row.id, "gone")
    assert await store.inbox.unfinished(Kind.CAMPAIGN, [5, 6]) == 0
    assert await store.inbox.unfinished(Kind.DONATION, [1, 2, 3, 9999]) == 1
    assert await store.inbox.unfinished(Kind.DONATION, ids) == 1199
    assert await store.inbox.unfinished(Kind.DONATION, []) == 0


async def test_after_the_clock_steps_back_new_events_are_ready_at_once(
    store: Store, clock: FakeClock
) -> None:
    await store.inbox.add_events([hook(1)])
    clock.advance(-3600)
    assert await store.inbox.next_due() == clock.now()
    row = await store.inbox.claim()
    assert row is not None
    # A retry waits for its backoff even so.
    await store.inbox.retry_later(row.id, "busy", 60)
    assert await store.inbox.next_due() == clock.now() + dt.timedelta(seconds=60)
    clock.advance(59)
    assert await store.inbox.claim() is None
    clock.advance(1)
    assert await store.inbox.claim() is not None
    assert await store.inbox.next_due() is None


async def test_ready_rows_are_claimed_by_priority_then_due_time_then_arrival(
    store: Store, clock: FakeClock
) -> None:
    bulk = [InboxEvent(Kind.DONATION, n, None, Source.RECONCILE) for n in (1, 2, 3)]
    await store.inbox.add_events(bulk)
    first = await store.inbox.claim_many(2)
    await store.inbox.retry_later(first[0].id, "busy", 5)
    await store.inbox.retry_later(first[1].id, "busy", 1)
    clock.advance(10)
    await store.inbox.add_events([hook(4)])
    # Due times: 3 and 4 at arrival (0 and 10), 2 at 1, 1 at 5.
    order = [(r.fonzip_id, r.priority) for r in await store.inbox.claim_many(4)]
    assert order == [(4, 0), (3, 1), (2, 1), (1, 1)]


async def test_a_row_superseded_on_give_back_is_finished_now_and_pruned_in_time(
    store: Store, clock: FakeClock
) -> None:
    superseded = []
    for give_back in ("retry_later", "unclaim"):
        await store.inbox.add_events([hook(1)])
        row = await store.inbox.claim()
        assert row is not None
        await store.inbox.add_events([hook(1)])
        clock.advance(60)
        if give_back == "retry_later":
            await store.inbox.retry_later(row.id, "busy", 30)
        else:
            await store.inbox.unclaim(row.id)
        stored = await inbox_row(store, row.id)
        assert (stored["state"], stored["outcome"], stored["finished_at"]) == (
            "done",
            "superseded",
            clock.now().timestamp(),
        ), give_back
        superseded.append(row.id)
        twin = await store.inbox.claim()
        assert twin is not None
        await store.records.apply_record(twin.id, make_record(1), ["a"])
    clock.advance(86400)
    assert await store.inbox.prune(dt.timedelta(hours=23)) == 4
    assert await store.inbox.counts() == {}


async def test_rows_ready_together_are_claimed_in_arrival_order_whatever_their_kind(
    store: Store,
) -> None:
    await store.inbox.add_events(
        [hook(1, kind=Kind.TICKET_SALE), hook(2, kind=Kind.DONATION), hook(3, kind=Kind.CAMPAIGN)]
    )
    claimed = await store.inbox.claim_many(3)
    assert [(r.kind, r.fonzip_id) for r in claimed] == [
        (Kind.TICKET_SALE, 1),
        (Kind.DONATION, 2),
        (Kind.CAMPAIGN, 3),
    ]


async def test_an_insert_left_inside_an_open_transaction_is_refused_and_rolled_back(
    store: Store,
) -> None:
    # The listener answers 200 only for events committed: an insert that did not
    # commit by itself (a transaction someone left open) must raise, and leave nothing.
    await store.db.execute("BEGIN")
    with pytest.raises(StoreError, match=r"^the inbox insert did not complete its transaction$"):
        await store.inbox.add_events([hook(1)])
    assert not store.db.in_transaction
    assert await store.inbox.depth() == (0, None)
