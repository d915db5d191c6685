"""Tests of fonzipd.state.outbox: acknowledge, failures, dead letters and replay."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import sqlite3

from fonzipd.kinds import Kind
from fonzipd.privacy import SinkPolicy
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


async def test_a_read_never_sees_a_transaction_another_task_has_open(store: Store) -> None:
    """Probe: an uncommitted csv row was read, rolled back, and its id reused."""
    opened, release = asyncio.Event(), asyncio.Event()
    rec = make_record(1)

    async def queue_then_fail() -> None:
        with contextlib.suppress(sqlite3.OperationalError):
            async with store.connection.transaction() as tx:
                await tx.execute(
                    "INSERT INTO outbox (sink_id, record_key, kind, record, state, created_at)"
                    " VALUES ('csv', ?, 'donation', ?, 'pending', 0)",
                    (rec.key, json.dumps(rec.to_json_dict())),
                )
                opened.set()
                await release.wait()
                raise sqlite3.OperationalError("database or disk is full")  # COMMIT failed

    task = asyncio.create_task(queue_then_fail())
    await opened.wait()
    assert await store.outbox.batch("csv", 10) == []
    assert (await store.outbox.sink_status(["csv"]))["csv"]["pending"] == 0
    release.set()
    await task
    assert await store.outbox.batch("csv", 10) == []


async def test_an_acknowledgement_only_ever_deletes_its_own_sinks_rows(store: Store) -> None:
    await store.records.apply_record(None, make_record(1), ["csv"])
    [csv_row] = await store.outbox.batch("csv", 10)
    await store.outbox.acknowledge("csv", [csv_row.id])  # the highest id, now deleted
    await store.records.apply_record(None, make_record(2), ["http"])
    [http_row] = await store.outbox.batch("http", 10)
    assert http_row.id > csv_row.id  # ids are never reused
    # Even an acknowledgement naming another sink's id deletes nothing of it.
    await store.outbox.acknowledge("csv", [csv_row.id, http_row.id])
    await store.outbox.dead_letter("csv", [http_row.id], "refused")
    assert await store.outbox.record_failure("csv", [http_row.id], "bug", dead_after=1) == 0
    assert await store.outbox.batch("http", 10) == [http_row]


async def test_replaying_a_dead_letter_never_sends_an_older_version_after_a_newer_one(
    store: Store,
) -> None:
    """Probe: ``replay --dead`` queued v1 after the sink had got v2."""
    v1, v2 = make_record(1), make_record(1, name="Ayşe Yılmaz Demir")
    await store.records.apply_record(None, v1, ["csv"])
    [row1] = await store.outbox.batch("csv", 10)
    await store.outbox.dead_letter("csv", [row1.id], "HTTP 400: refused")
    await store.records.apply_record(None, v2, ["csv"])
    [row2] = await store.outbox.batch("csv", 10)
    await store.outbox.acknowledge("csv", [row2.id])  # the sink holds v2
    assert await store.outbox.requeue("csv", dead=True, dry_run=True) == 1
    assert await store.outbox.requeue("csv", dead=True) == 1
    # The latest state is queued in v1's place, behind everything queued before.
    [again] = await store.outbox.batch("csv", 10)
    assert again.record_key == v2.key
    assert again.id > row2.id
    assert (await store.outbox.sink_status(["csv"]))["csv"]["dead"] == 0
    assert await store.outbox.requeue("csv", dead=True) == 0  # once


async def test_replay_of_dead_letters_queues_only_each_records_latest_version(
    store: Store,
) -> None:
    v1, v2, v3 = (make_record(1, name=n) for n in ("A", "B", "C"))
    other = make_record(2)
    for rec in (v1, v2, other):
        await store.records.apply_record(None, rec, ["csv"])
    rows = await store.outbox.batch("csv", 10)
    await store.outbox.dead_letter("csv", [r.id for r in rows], "HTTP 400: refused")
    await store.records.apply_record(None, v3, ["csv"])  # v3 pending, not yet sent
    assert await store.outbox.requeue("csv", dead=True) == 1  # record 2; v3 is queued
    keys = [r.record_key for r in await store.outbox.batch("csv", 10)]
    assert keys == [other.key, v3.key]
    # Dead letters that are their record's latest version return in their place.
    rows = await store.outbox.batch("csv", 10)
    await store.outbox.dead_letter("csv", [r.id for r in rows], "HTTP 400: refused")
    await store.records.apply_record(None, make_record(3), ["csv"])
    assert await store.outbox.requeue("csv", dead=True, dry_run=True) == 2
    assert await store.outbox.requeue("csv", dead=True) == 2
    keys = [r.record_key for r in await store.outbox.batch("csv", 10)]
    assert keys == [other.key, v3.key, make_record(3).key]


async def test_a_replayed_dead_letters_latest_version_is_redacted_for_its_sink(
    store: Store,
) -> None:
    policy = SinkPolicy(person=frozenset({"email"}))
    v1, v2 = make_record(1), make_record(1, name="Ayşe Yılmaz Demir")
    await store.records.apply_record(None, v1, {"csv": policy})
    [row1] = await store.outbox.batch("csv", 10)
    await store.outbox.dead_letter("csv", [row1.id], "HTTP 400: refused")
    await store.records.apply_record(None, v2, {"csv": policy})
    [row2] = await store.outbox.batch("csv", 10)
    await store.outbox.acknowledge("csv", [row2.id])
    assert await store.outbox.requeue("csv", dead=True, policy=policy) == 1
    [again] = await store.outbox.batch("csv", 10)
    assert again.record_key == v2.key
    assert again.record.person.email is None  # as the sink gets every record
    # A sink whose filters do not admit the latest version gets nothing instead.
    await store.outbox.dead_letter("csv", [again.id], "HTTP 400: refused")
    await store.records.apply_record(None, make_record(1, name="C"), ["other"])
    only_campaigns = SinkPolicy(kinds=frozenset({Kind.CAMPAIGN}))
    assert await store.outbox.requeue("csv", dead=True, policy=only_campaigns) == 0
    assert await store.outbox.batch("csv", 10) == []


async def test_sink_status_counts_deliveries_and_dates_the_first_failure_of_a_run(
    store: Store, clock: FakeClock
) -> None:
    t0 = clock.now()
    assert (await store.outbox.sink_status(["new"]))["new"] == {
        "pending": 0,
        "dead": 0,
        "delivered": 0,
        "last_success_at": None,
        "last_error": None,
        "last_error_at": None,
        "failing_since": None,
    }
    for fid in (1, 2, 3, 4):
        await store.records.apply_record(None, make_record(fid), ["a", "b"])
    rows = await store.outbox.batch("a", 10)
    await store.outbox.acknowledge("a", [rows[0].id, rows[1].id])
    clock.advance(10)
    await store.outbox.acknowledge("a", [rows[2].id])
    clock.advance(10)
    assert await store.outbox.record_failure("a", [rows[3].id], "timeout", dead_after=0) == 0
    clock.advance(10)
    assert await store.outbox.record_failure("a", [rows[3].id], "refused", dead_after=0) == 0
    status = await store.outbox.sink_status(["a", "b"])
    assert status["a"] == {
        "pending": 1,
        "dead": 0,
        "delivered": 3,
        "last_success_at": (t0 + dt.timedelta(seconds=10)).isoformat(),
        "last_error": "refused",
        "last_error_at": (t0 + dt.timedelta(seconds=30)).isoformat(),
        "failing_since": (t0 + dt.timedelta(seconds=20)).isoformat(),  # the run's first
    }
    assert status["b"]["pending"] == 4  # the other sink's rows are its own
    assert status["b"]["delivered"] == 0
    # A success ends the failing run; the last error stays for the operator.
    clock.advance(10)
    await store.outbox.acknowledge("a", [rows[3].id])
    after = (await store.outbox.sink_status(["a"]))["a"]
    assert (after["delivered"], after["failing_since"], after["last_error"]) == (4, None, "refused")
    assert after["last_success_at"] == clock.now().isoformat()
    # A dead letter says why without starting a failing run (the sink works).
    await store.outbox.dead_letter("b", [r.id for r in await store.outbox.batch("b", 1)], "422")
    b = (await store.outbox.sink_status(["b"]))["b"]
    assert (b["pending"], b["dead"], b["last_error"]) == (3, 1, "422")
    assert (b["last_error_at"], b["failing_since"]) == (clock.now().isoformat(), None)


async def test_a_failed_attempt_is_counted_and_only_rows_past_the_limit_go_dead(
    store: Store,
) -> None:
    for fid in (1, 2, 3):
        await store.records.apply_record(None, make_record(fid), ["a", "b"])
    one, two, three = await store.outbox.batch("a", 10)
    assert await store.outbox.record_failure("a", [one.id], "bug", dead_after=2) == 0
    # Row one reaches its second attempt and goes dead; row two is at its first.
    assert await store.outbox.record_failure("a", [one.id, two.id], "bug 2", dead_after=2) == 1
    rows = await store.connection.fetchall(
        "SELECT id, state, attempts, last_error FROM outbox WHERE sink_id = 'a' ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        (one.id, "dead", 2, "bug 2"),
        (two.id, "pending", 1, "bug 2"),
        (three.id, "pending", 0, None),
    ]
    assert [r.attempts for r in await store.outbox.batch("a", 10)] == [1, 0]
    # Another sink's rows are neither counted nor killed, whatever ids are named.
    assert await store.outbox.record_failure("b", [one.id], "bug", dead_after=1) == 0
    assert await store.outbox.record_failure("b", [], "bug", dead_after=1) == 0
    assert [r.attempts for r in await store.outbox.batch("b", 10)] == [0, 0, 0]
    # A dead row stays dead (and is not counted again) when named once more; with a
    # limit of one attempt, a pending row goes dead at its next failure.
    assert await store.outbox.record_failure("a", [one.id], "bug 3", dead_after=1) == 0
    assert await store.outbox.record_failure("a", [three.id], "bug 3", dead_after=1) == 1


async def test_the_oldest_pending_row_says_how_long_a_sink_has_been_behind(
    store: Store, clock: FakeClock
) -> None:
    assert await store.outbox.oldest_pending_age("a") is None
    await store.records.apply_record(None, make_record(1), ["a"])
    clock.advance(30)
    await store.records.apply_record(None, make_record(2), ["a", "b"])
    clock.advance(12.5)
    assert await store.outbox.oldest_pending_age("a") == 42.5
    assert await store.outbox.oldest_pending_age("b") == 12.5
    first, _ = await store.outbox.batch("a", 10)
    await store.outbox.dead_letter("a", [first.id], "refused")  # dead rows wait for no one
    assert await store.outbox.oldest_pending_age("a") == 12.5
    clock.advance(-100)  # the wall clock stepped back: never a negative age
    assert await store.outbox.oldest_pending_age("a") == 0.0


async def test_a_batch_is_the_oldest_rows_of_its_sink_in_queue_order(store: Store) -> None:
    for fid in (3, 1, 2):
        await store.records.apply_record(None, make_record(fid), ["a", "b"])
    batch = await store.outbox.batch("a", 2)
    assert [(r.record_key, r.record, r.attempts) for r in batch] == [
        (make_record(3).key, make_record(3), 0),
        (make_record(1).key, make_record(1), 0),
    ]
    await store.outbox.acknowledge("a", [r.id for r in batch])
    assert [r.record.fonzip_id for r in await store.outbox.batch("a", 2)] == [2]


async def test_replay_by_key_id_and_date_range(store: Store) -> None:
    days = [dt.date(2026, 11, d) for d in (20, 22, 24)]
    for fid, day in zip((1, 2, 3), days, strict=True):
        await store.records.apply_record(None, make_record(fid, day=day), ["a"])
    await store.records.apply_record(None, make_record(1, kind=Kind.TICKET_SALE), ["a"])
    await store.outbox.acknowledge("a", [r.id for r in await store.outbox.batch("a", 10)])

    async def replayed(**how: object) -> list[str]:
        counted = await store.outbox.requeue("a", dead=False, dry_run=True, **how)  # type: ignore[arg-type]
        queued = await store.outbox.requeue("a", dead=False, **how)  # type: ignore[arg-type]
        rows = await store.outbox.batch("a", 10)
        await store.outbox.acknowledge("a", [r.id for r in rows])
        assert counted == queued == len(rows)
        return [r.record_key.rsplit(":", 1)[0] for r in rows]

    assert await replayed(until=days[1]) == ["donation:1", "donation:2"]
    assert await replayed(since=days[1], until=days[1]) == ["donation:2"]
    # A key names the object: its version, if given, is ignored (the latest is sent).
    keys = ["donation:3:0123456789abcdef", "ticket_sale:1"]
    assert sorted(await replayed(keys=keys)) == ["donation:3", "ticket_sale:1"]
    assert await replayed(keys=["donation:1"], kind=Kind.TICKET_SALE) == []
    # Replayed through a sink's policy: what it admits, redacted by it, in the
    # order the records were stored.
    crm = SinkPolicy(kinds=frozenset({Kind.DONATION}), person=frozenset({"email"}))
    assert await store.outbox.requeue("a", dead=False, policy=crm, dry_run=True) == 3
    only = {"keys": ["donation:2"], "since": days[0], "policy": crm, "dry_run": True}
    assert await store.outbox.requeue("a", dead=False, **only) == 1  # type: ignore[arg-type]
    assert await store.outbox.requeue("a", dead=False, policy=crm) == 3
    rows = await store.outbox.batch("a", 10)
    assert [r.record.fonzip_id for r in rows] == [1, 2, 3]
    assert all(r.record.person.email is None for r in rows)
    expected = [make_record(f, day=d) for f, d in zip((1, 2, 3), days, strict=True)]
    assert [r.record_key for r in rows] == [r.key for r in expected]
    assert [r.record.business_date for r in rows] == days
    # Already queued for the sink: not queued twice.
    assert await store.outbox.requeue("a", dead=False, policy=crm) == 0
    assert await store.outbox.requeue("a", dead=False, policy=crm, keys=["donation:2"]) == 0


async def test_dead_letters_replayed_by_key_or_id_leave_the_others_dead(store: Store) -> None:
    for fid in (1, 2, 12):
        await store.records.apply_record(None, make_record(fid), ["a", "b"])
    rows = await store.outbox.batch("a", 10)
    await store.outbox.dead_letter("a", [r.id for r in rows], "refused")
    await store.outbox.dead_letter("b", [r.id for r in await store.outbox.batch("b", 10)], "x")
    # "donation:1" is object 1, not 12 (whose key also starts "donation:1").
    assert await store.outbox.requeue("a", dead=True, keys=["donation:1:old"], dry_run=True) == 1
    # Several keys: any of them, and a date range on top.
    both = ["donation:2", "donation:12"]
    assert await store.outbox.requeue("a", dead=True, keys=both, dry_run=True) == 2
    day, later = dt.date(2026, 11, 26), dt.date(2026, 11, 27)
    assert await store.outbox.requeue("a", dead=True, keys=both, since=day, dry_run=True) == 2
    assert await store.outbox.requeue("a", dead=True, keys=both, since=later, dry_run=True) == 0
    assert await store.outbox.requeue("a", dead=True, keys=["donation:1:old"]) == 1
    [revived] = await store.outbox.batch("a", 10)
    assert (revived.id, revived.record_key, revived.attempts) == (rows[0].id, rows[0].record_key, 0)
    assert await store.outbox.requeue("a", dead=True, ids=[rows[2].id, 999]) == 1
    assert [r.record.fonzip_id for r in await store.outbox.batch("a", 10)] == [1, 12]
    dead = await store.connection.fetchall(
        "SELECT sink_id, record_key, dead_at IS NULL FROM outbox WHERE state = 'dead'"
        " ORDER BY sink_id, id"
    )
    assert [tuple(r) for r in dead] == [("a", rows[1].record_key, 0)] + [
        ("b", make_record(f).key, 0) for f in (1, 2, 12)
    ]
    revived_rows = await store.connection.fetchall(
        "SELECT dead_at FROM outbox WHERE sink_id = 'a' AND state = 'pending'"
    )
    assert [r[0] for r in revived_rows] == [None, None]


async def test_a_row_replayed_through_a_policy_is_found_again_by_date_kind_and_forget(
    store: Store, clock: FakeClock
) -> None:
    day = dt.date(2026, 11, 20)
    # Stored in this order: the ticket sale, which the sink does not take, in between.
    for record in (
        make_record(1, day=day),
        make_record(2, day=day, kind=Kind.TICKET_SALE),
        make_record(3, day=day),
    ):
        await store.records.apply_record(None, record, [])
        clock.advance(1)
    crm = SinkPolicy(kinds=frozenset({Kind.DONATION}), redact=frozenset({"name"}))
    assert await store.outbox.requeue("crm", dead=False, policy=crm) == 2
    rows = await store.outbox.batch("crm", 10)
    assert [r.record.fonzip_id for r in rows] == [1, 3]
    # The replayed rows carry their day and kind like any other: a replay of dead
    # letters by date and kind finds them, and an erasure scrubs them.
    await store.outbox.dead_letter("crm", [r.id for r in rows], "HTTP 400")
    dead = {"dead": True, "since": day, "until": day, "kind": Kind.DONATION}
    assert await store.outbox.requeue("crm", dry_run=True, **dead) == 2  # type: ignore[arg-type]
    assert (
        await store.outbox.requeue("crm", dry_run=True, dead=True, since=day + dt.timedelta(1)) == 0
    )
    await store.erasures.erase([(Kind.DONATION, 1)])
    raw = await store.connection.fetchall(
        "SELECT record FROM outbox WHERE sink_id = 'crm' ORDER BY id"
    )
    assert "ayse@example.com" not in raw[0][0]
    assert "ayse@example.com" in raw[1][0]  # record 3 is someone else's, as far as we know
    # Record 3's dead letter returns in place; record 1's erased state comes behind it.
    assert await store.outbox.requeue("crm", **dead) == 2  # type: ignore[arg-type]
    replayed = await store.outbox.batch("crm", 10)
    assert [(r.record.fonzip_id, r.record.person.email) for r in replayed] == [
        (3, "ayse@example.com"),
        (1, None),
    ]


async def test_a_dead_letters_latest_version_queued_in_its_place_keeps_its_day_and_kind(
    store: Store,
) -> None:
    day = dt.date(2026, 11, 20)
    v1, v2 = make_record(1, day=day), make_record(1, day=day, name="Ayşe Yılmaz Demir")
    await store.records.apply_record(None, v1, ["csv"])
    await store.outbox.dead_letter("csv", [r.id for r in await store.outbox.batch("csv", 10)], "x")
    await store.records.apply_record(None, v2, [])  # stored, not queued for csv
    assert await store.outbox.requeue("csv", dead=True, since=day, kind=Kind.DONATION) == 1
    [again] = await store.outbox.batch("csv", 10)
    assert again.record_key == v2.key
    await store.outbox.dead_letter("csv", [again.id], "x")
    assert await store.outbox.requeue("csv", dead=True, until=day, kind=Kind.DONATION) == 1


async def test_a_dead_letter_whose_record_is_gone_is_replayed_as_it_is(store: Store) -> None:
    await store.records.apply_record(None, make_record(1), ["csv"])
    [row] = await store.outbox.batch("csv", 10)
    await store.outbox.dead_letter("csv", [row.id], "x")
    async with store.connection.transaction() as tx:
        await tx.execute("DELETE FROM records")
    assert await store.outbox.requeue("csv", dead=True) == 1
    assert await store.outbox.batch("csv", 10) == [dataclasses.replace(row, attempts=0)]


async def test_a_record_without_a_date_is_replayed_like_any_other(store: Store) -> None:
    undated = dataclasses.replace(make_record(1), occurred_at=None, business_date=None)
    await store.records.apply_record(None, undated, ["csv"])
    await store.outbox.dead_letter("csv", [r.id for r in await store.outbox.batch("csv", 10)], "x")
    newer = dataclasses.replace(undated, status="refunded", version="v2")
    await store.records.apply_record(None, newer, [])
    policy = SinkPolicy(person=frozenset({"email"}))
    # Its latest version in the dead letter's place, and through a policy on request.
    assert await store.outbox.requeue("csv", dead=True, policy=policy) == 1
    assert await store.outbox.requeue("crm", dead=False, policy=policy) == 1
    for sink in ("csv", "crm"):
        [row] = await store.outbox.batch(sink, 10)
        assert (row.record_key, row.record.business_date) == (newer.key, None)
        assert row.record.person.email is None
