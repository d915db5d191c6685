"""Tests of the state database: inbox, records, outbox, token and the guarantees they carry."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fonzipd.fonzip.token import StoredToken
from fonzipd.kinds import Kind
from fonzipd.records import Source
from fonzipd.store import SCHEMA_VERSION, InboxEvent, Store, StoreError
from tests.support import FakeClock, make_record


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "state.db", clock=clock)
    yield s
    await s.close()


def hook(fid: int, status: int = 3, kind: Kind = Kind.DONATION) -> InboxEvent:
    return InboxEvent(kind=kind, fonzip_id=fid, event_status=status, source=Source.WEBHOOK)


async def test_new_database_is_private_wal_and_at_the_current_schema(
    tmp_path: Path, store: Store
) -> None:
    mode = stat.S_IMODE(os.stat(tmp_path / "state.db").st_mode)
    assert mode == 0o600
    assert await store.schema_version() == SCHEMA_VERSION
    async with store.db.execute("PRAGMA journal_mode") as cur:
        assert (await cur.fetchone()) == ("wal",)
    async with store.db.execute("PRAGMA synchronous") as cur:
        assert (await cur.fetchone()) == (2,)  # FULL


async def test_a_database_from_a_newer_fonzipd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = await Store.open(path)
    await s.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    await s.close()
    with pytest.raises(StoreError, match="newer than this fonzipd"):
        await Store.open(path)


async def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable state database"):
        await Store.open(path)


async def test_duplicate_of_a_pending_event_is_stored_once(store: Store) -> None:
    assert await store.add_events([hook(1), hook(1), hook(1, status=4)]) == [True, False, True]
    assert (await store.inbox_depth())[0] == 2


async def test_event_is_deduplicated_only_while_pending(store: Store) -> None:
    await store.add_events([hook(1)])
    row = await store.claim()
    assert row is not None
    assert await store.add_events([hook(1)]) == [False]  # claimed counts as pending
    await store.apply_record(row.id, make_record(1), ["a"])
    assert await store.add_events([hook(1)]) == [True]


async def test_events_survive_a_reopen(tmp_path: Path, clock: FakeClock) -> None:
    s = await Store.open(tmp_path / "state.db", clock=clock)
    await s.add_events([hook(7)])
    await s.close()
    s = await Store.open(tmp_path / "state.db", clock=clock)
    row = await s.claim()
    assert row is not None
    assert row.fonzip_id == 7
    await s.close()


async def test_live_work_is_claimed_before_bulk_work(store: Store) -> None:
    bulk = InboxEvent(kind=Kind.DONATION, fonzip_id=1, event_status=None, source=Source.RECONCILE)
    await store.add_events([bulk, hook(2)])
    first, second = await store.claim(), await store.claim()
    assert first is not None
    assert second is not None
    assert (first.fonzip_id, first.source) == (2, Source.WEBHOOK)
    assert (second.fonzip_id, second.source) == (1, Source.RECONCILE)
    assert await store.claim() is None


async def test_retry_later_hides_the_row_until_due(store: Store, clock: FakeClock) -> None:
    await store.add_events([hook(1)])
    row = await store.claim()
    assert row is not None
    await store.retry_later(row.id, "Fonzip unavailable", 30)
    assert await store.claim() is None
    due = await store.next_inbox_due()
    assert due == clock.now() + dt.timedelta(seconds=30)
    clock.advance(30)
    again = await store.claim()
    assert again is not None
    assert again.attempts == 2


async def test_release_claims_returns_rows_after_a_crash(store: Store) -> None:
    await store.add_events([hook(1), hook(2)])
    assert await store.claim() is not None
    assert await store.release_claims() == 1
    assert (await store.inbox_depth())[0] == 2


async def test_apply_record_queues_each_new_version_once_per_sink(store: Store) -> None:
    rec = make_record(1)
    applied = await store.apply_record(None, rec, ["sql", "csv"])
    assert (applied.outcome, applied.enqueued) == ("new", 2)
    again = await store.apply_record(None, rec, ["sql", "csv"])
    assert (again.outcome, again.enqueued) == ("unchanged", 0)
    refund = make_record(1, status="refunded")
    changed = await store.apply_record(None, refund, ["sql", "csv"])
    assert (changed.outcome, changed.enqueued) == ("changed", 2)
    batch = await store.outbox_batch("sql", 10)
    assert [r.record.status for r in batch] == ["succeeded", "refunded"]
    stored = await store.get_record(Kind.DONATION, 1)
    assert stored == refund


async def test_a_stale_fetch_never_overwrites_a_newer_state(store: Store) -> None:
    await store.apply_record(None, make_record(1, status="refunded"), ["a"])
    late = await store.apply_record(None, make_record(1, status="succeeded"), ["a"])
    assert late.outcome == "stale"
    assert late.enqueued == 0
    stored = await store.get_record(Kind.DONATION, 1)
    assert stored is not None
    assert stored.status == "refunded"


async def test_apply_record_finishes_the_inbox_row_in_the_same_transaction(store: Store) -> None:
    await store.add_events([hook(1)])
    row = await store.claim()
    assert row is not None
    await store.apply_record(row.id, make_record(1), ["a"])
    assert await store.inbox_counts() == {"done": 1}


async def test_acknowledge_dead_letter_and_replay(store: Store) -> None:
    for fid in (1, 2, 3):
        await store.apply_record(None, make_record(fid), ["a"])
    rows = await store.outbox_batch("a", 10)
    await store.acknowledge("a", [rows[0].id])
    await store.dead_letter("a", [rows[1].id], "HTTP 400: bad record")
    status = (await store.sink_status(["a"]))["a"]
    assert (status["pending"], status["dead"], status["delivered"]) == (1, 1, 1)
    assert status["last_error"] == "HTTP 400: bad record"
    assert await store.requeue("a", dead=True, dry_run=True) == 1
    assert await store.requeue("a", dead=True) == 1
    assert [r.record.fonzip_id for r in await store.outbox_batch("a", 10)] == [2, 3]
    # Replaying delivered records requeues record 1; 2 and 3 are already queued.
    assert await store.requeue("a", dead=False) == 1
    assert await store.requeue("a", dead=False, kind=Kind.CAMPAIGN) == 0
    assert await store.requeue("a", dead=False, since=dt.date(2026, 11, 27), dry_run=True) == 0


async def test_transient_failures_never_dead_letter_but_bugs_do(store: Store) -> None:
    await store.apply_record(None, make_record(1), ["a"])
    ids = [r.id for r in await store.outbox_batch("a", 10)]
    for _ in range(50):
        assert await store.record_sink_failure("a", ids, "down", dead_after=0) == 0
    assert await store.record_sink_failure("a", ids, "bug", dead_after=3) == 1
    status = (await store.sink_status(["a"]))["a"]
    assert status["dead"] == 1
    assert status["failing_since"] is not None


async def test_token_store_protocol(store: Store) -> None:
    token = StoredToken(
        access_token="tok-1", expires_at=dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
    )
    assert await store.load("k") is None
    await store.save("k", token)
    assert await store.load("k") == token
    await store.discard("k", "another-token")
    assert await store.load("k") == token
    await store.discard("k", "tok-1")
    assert await store.load("k") is None


async def test_form_id_cache(store: Store) -> None:
    await store.put_many([(10, 3), (11, 4)])
    assert await store.get(10) == 3
    assert await store.get(12) is None


async def test_only_one_worker_per_database(tmp_path: Path, store: Store) -> None:
    other = await Store.open(tmp_path / "state.db")
    try:
        assert store.acquire_worker_lock()
        assert not other.acquire_worker_lock()
    finally:
        await other.close()


async def test_a_failed_commit_raises_and_keeps_nothing(store: Store) -> None:
    await store.db.execute("PRAGMA max_page_count = 1")
    with pytest.raises(sqlite3.Error):
        await store.add_events([hook(n) for n in range(2000)])
    await store.db.execute("PRAGMA max_page_count = 1073741823")
    assert (await store.inbox_depth())[0] == 0


async def test_prune_forgets_old_finished_rows_but_keeps_failed_and_pending(
    store: Store, clock: FakeClock
) -> None:
    await store.add_events([hook(1), hook(2), hook(3)])
    done, failed = await store.claim(), await store.claim()
    assert done is not None
    assert failed is not None
    await store.apply_record(done.id, make_record(done.fonzip_id), ["a"])
    await store.fail(failed.id, "not found")
    clock.advance(8 * 86400)
    assert await store.prune_inbox(dt.timedelta(days=7)) == 1
    assert await store.inbox_counts() == {"failed": 1, "pending": 1}


async def test_added_events_are_committed_when_add_events_returns(
    tmp_path: Path, store: Store
) -> None:
    assert await store.add_events([hook(1), hook(2)]) == [True, True]
    assert not store.db.in_transaction
    # Another connection (another process, after a crash) sees them at once.
    with sqlite3.connect(tmp_path / "state.db") as other:
        assert other.execute("SELECT count(*) FROM inbox").fetchone() == (2,)
