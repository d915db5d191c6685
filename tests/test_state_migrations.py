"""Tests of fonzipd.state.migrations: existing databases migrate forward, keeping their rows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import structlog

from fonzipd.fonzip.endpoints import Detail
from fonzipd.fonzip.normalizer import normalize
from fonzipd.kinds import Kind
from fonzipd.privacy import NO_POLICY, SinkPolicy
from fonzipd.records import Record, Source, content_version
from fonzipd.state import Store, StoreError, migrations
from tests.fonzip_objects import form_answer
from tests.support import FakeClock, hook, make_record


def _answer(approval_status: int | None, payment_status: int | None, answer_id: int) -> Record:
    obj = form_answer(approval_status, with_transaction=payment_status is not None)
    obj["id"] = answer_id
    if payment_status is not None:
        obj["transaction"]["payment_status"] = payment_status
    return normalize(
        Detail(Kind.FORM_ANSWER, answer_id, obj, None, f"/form/9/answer/{answer_id}"),
        tz=ZoneInfo("Europe/Istanbul"),
        source=Source.WEBHOOK,
        fetched_at=dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC),
    )


def _as_before(record: Record, old_status: str) -> Record:
    """The record as fonzipd stored it before issue 12: approval folded into status."""
    version = content_version(
        record.kind,
        record.fonzip_id,
        old_status,
        record.amount,
        record.currency,
        record.occurred_at,
        record.person,
        record.data,
    )
    return dataclasses.replace(record, status=old_status, approval=None, version=version)


async def test_stored_form_answers_get_their_payment_status_and_reach_each_sink_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    clock = FakeClock(dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC))
    paid_waiting = _answer(0, 3, 401)
    free_approved = _answer(1, None, 402)
    refunded = _answer(1, 4, 403)
    # A database as the previous fonzipd left it (schema 4), holding form answers in
    # their old states, a delivered sink and a sink with a record still queued.
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 4)
    old = await Store.open(path, clock=clock)
    for record, old_status in (
        (paid_waiting, "waiting_approval"),
        (free_approved, "answered"),
        (refunded, "refunded"),
    ):
        await old.records.apply_record(None, _as_before(record, old_status), ["sql", "csv"])
    await old.records.apply_record(None, make_record(7), ["sql", "csv"])
    sql_rows = await old.outbox.batch("sql", 100)
    await old.outbox.acknowledge("sql", [r.id for r in sql_rows])
    await old.close()
    monkeypatch.undo()

    clock.advance(60)
    store = await Store.open(path, clock=clock)
    try:
        assert await store.schema_version() == migrations.SCHEMA_VERSION == 6
        stored = await store.records.get(Kind.FORM_ANSWER, 401)
        assert stored is not None
        assert (stored.status, stored.approval) == ("succeeded", "waiting_approval")
        assert stored.version == paid_waiting.version  # what a fetch gives from now on
        assert stored.fetched_at == clock.now()  # newer than the old state in every sink
        # The reconciler still finds it in Fonzip's waiting_approval list.
        assert await store.records.statuses(Kind.FORM_ANSWER, [401, 402, 403]) == {
            401: "waiting_approval",
            402: "answered",
            403: "refunded",
        }
        day = paid_waiting.business_date
        assert day is not None
        assert await store.records.local_ids(Kind.FORM_ANSWER, day, ["waiting_approval"]) == {
            401: "waiting_approval"
        }
        # Nothing is queued before the daemon says which sinks there are, and how each
        # filters and redacts.
        assert await store.outbox.batch("sql", 100) == []
        policies = {
            "sql": NO_POLICY,
            "csv": NO_POLICY,
            "crm": SinkPolicy(person=frozenset({"email"}), statuses=frozenset({"succeeded"})),
        }
        assert await store.records.redeliver(policies) == 3
        sql = [
            (r.record.fonzip_id, r.record.status, r.record.approval)
            for r in await store.outbox.batch("sql", 100)
        ]
        assert sql == [
            (401, "succeeded", "waiting_approval"),
            (402, "answered", "approved"),
            (403, "refunded", "approved"),
        ]
        csv = await store.outbox.batch("csv", 100)
        assert [r.record.key for r in csv][-3:] == [
            paid_waiting.key,
            free_approved.key,
            refunded.key,
        ]
        assert len(csv) == 4 + 3  # the old, undelivered versions stay ahead of the new ones
        (crm,) = await store.outbox.batch("crm", 100)
        assert crm.record.fonzip_id == 401
        assert crm.record.person.email is None  # redacted before it was queued
        # Once: a second start queues nothing more.
        assert await store.records.redeliver(policies) == 0
    finally:
        await store.close()
    again = await Store.open(path, clock=clock)
    try:
        assert await again.records.redeliver(["sql"]) == 0
        assert len(await again.outbox.batch("sql", 100)) == 3
    finally:
        await again.close()


def make_v2_database(path: Path) -> None:
    """A state database as fonzipd 2's schema left it, with rows in flight."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        for script in migrations.MIGRATIONS[:2]:
            assert isinstance(script, str)
            db.executescript(script)
        db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '2')")
        rec = make_record(1)
        for n, sink in enumerate(("csv", "http", "csv"), start=1):
            db.execute(
                "INSERT INTO outbox (id, sink_id, record_key, kind, record, state, created_at)"
                " VALUES (?, ?, ?, 'donation', ?, 'pending', 0)",
                (n, sink, f"{rec.key}:{n}", json.dumps(rec.to_json_dict())),
            )
        db.execute(
            "INSERT INTO inbox (kind, fonzip_id, event_status, source, priority, state,"
            " next_attempt_at, received_at) VALUES ('donation', 7, 3, 'webhook', 0,"
            " 'claimed', 0, 0)"
        )
    db.close()


async def test_a_version_2_database_migrates_and_keeps_its_rows(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "state.db"
    make_v2_database(path)
    store = await Store.open(path, clock=clock)
    try:
        assert await store.schema_version() == migrations.SCHEMA_VERSION
        assert [r.id for r in await store.outbox.batch("csv", 10)] == [1, 3]
        assert [r.id for r in await store.outbox.batch("http", 10)] == [2]
        # Outbox ids are never reused any more: the highest one deleted, the next is new.
        await store.outbox.acknowledge("csv", [3])
        await store.records.apply_record(None, make_record(2), ["http"])
        assert [r.id for r in await store.outbox.batch("http", 10)] == [2, 4]
        # The claimed event no longer hides a new notification of the same object.
        assert await store.inbox.add_events([hook(7)]) == [True]
        assert await store.inbox.release_claims() == 0  # superseded by its pending twin
        assert (await store.inbox.depth())[0] == 1
    finally:
        await store.close()
    # Migrated once: opening again changes nothing.
    store = await Store.open(path, clock=clock)
    assert await store.schema_version() == migrations.SCHEMA_VERSION
    await store.close()


def _schema(path: Path) -> list[tuple[str, str, str]]:
    """Every table's and index's definition, as SQLite holds it (whitespace folded)."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
    db.close()
    return [(t, n, " ".join(s.split())) for t, n, s in rows]


async def test_every_step_is_applied_once_in_order_and_an_old_database_ends_as_a_new_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    fresh = tmp_path / "fresh.db"
    with structlog.testing.capture_logs() as logs:
        await (await Store.open(fresh, clock=clock)).close()
    assert [e["version"] for e in logs if e["event"] == "schema_migrated"] == [1, 2, 3, 4, 5, 6]
    assert {e["path"] for e in logs if e["event"] == "schema_migrated"} == {str(fresh)}
    old = tmp_path / "old.db"
    make_v2_database(old)
    with structlog.testing.capture_logs() as logs:
        await (await Store.open(old, clock=clock)).close()
    assert [e["version"] for e in logs if e["event"] == "schema_migrated"] == [3, 4, 5, 6]
    assert _schema(old) == _schema(fresh)
    with sqlite3.connect(old) as db:
        assert db.execute("SELECT key, value FROM meta").fetchall() == [("schema_version", "6")]
    db.close()


async def test_a_meta_table_without_a_version_is_an_empty_database(
    tmp_path: Path, clock: FakeClock
) -> None:
    # What a crash inside a very first start could leave behind in older releases.
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('other', 'x')")
    db.close()
    with pytest.raises(StoreError, match="no schema version"):
        await Store.open(path, clock=clock, read_only=True)
    store = await Store.open(path, clock=clock)
    try:
        assert await store.schema_version() == migrations.SCHEMA_VERSION
        assert await store.meta.get("other") is None  # the empty table was made anew
    finally:
        await store.close()


async def test_a_read_only_open_never_migrates_and_says_what_to_do(
    tmp_path: Path, clock: FakeClock
) -> None:
    old = tmp_path / "old.db"
    make_v2_database(old)
    with pytest.raises(StoreError) as older:
        await Store.open(old, clock=clock, read_only=True)
    assert str(older.value) == (
        f"{old}: schema version 2 is older than this fonzipd's (6); a read-only command"
        " never migrates it: restart the daemon with this fonzipd first"
    )
    assert _schema(old) == _schema_of_v2(tmp_path)
    newer = tmp_path / "newer.db"
    store = await Store.open(newer, clock=clock)
    await store.meta.set("schema_version", "7")
    await store.close()
    for read_only in (True, False):
        with pytest.raises(StoreError) as refused:
            await Store.open(newer, clock=clock, read_only=read_only)
        assert str(refused.value) == (
            f"{newer}: schema version 7 is newer than this fonzipd understands (6); upgrade fonzipd"
        )
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StoreError) as none:
        await Store.open(empty, clock=clock, read_only=True)
    assert str(none.value) == f"{empty}: not a fonzipd state database (no schema version)"
    current = tmp_path / "current.db"
    await (await Store.open(current, clock=clock)).close()
    reader = await Store.open(current, clock=clock, read_only=True)
    try:
        assert await reader.schema_version() == 6
    finally:
        await reader.close()


def _schema_of_v2(tmp_path: Path) -> list[tuple[str, str, str]]:
    again = tmp_path / "v2-again.db"
    make_v2_database(again)
    return _schema(again)


async def test_only_form_answers_whose_state_changes_and_can_be_reread_are_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    clock = FakeClock(dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC))
    gone = _as_before(_answer(0, 3, 501), "deleted")  # Fonzip answers 404 for it now
    same = _answer(1, 3, 502)  # already in its new state
    unreadable = _as_before(_answer(0, 3, 503), "waiting_approval")
    unreadable = dataclasses.replace(unreadable, data={**unreadable.data, "approval_status": "?"})
    dropped = _as_before(_answer(0, 3, 504), "waiting_approval")
    erased = _as_before(_answer(0, 3, 505), "waiting_approval")
    donation = make_record(506, status="succeeded")
    last = _as_before(_answer(0, 3, 507), "waiting_approval")  # after those left alone
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 4)
    old = await Store.open(path, clock=clock)
    await old.records.apply_records(
        [gone, same, unreadable, dropped, erased, donation, last], ["sql"]
    )
    await old.erasures.erase([(Kind.FORM_ANSWER, 505)])
    async with old.connection.transaction() as tx:
        await tx.execute("UPDATE records SET data_dropped_at = 1 WHERE fonzip_id = 504")
    before = await old.records.get_many(Kind.FORM_ANSWER, [502, 503, 504, 505])
    await old.close()
    monkeypatch.undo()

    clock.advance(60)
    with structlog.testing.capture_logs() as logs:
        store = await Store.open(path, clock=clock)
    try:
        assert {"event": "form_answers_migrated", "records": 2, "log_level": "info"} in logs
        assert {
            "event": "record_not_migrated",
            "kind": "form_answer",
            "fonzip_id": 503,
            "log_level": "warning",
        } in logs
        migrated = await store.records.get(Kind.FORM_ANSWER, 501)
        assert migrated is not None
        # Still deleted (its status says what Fonzip did), now with its approval.
        assert (migrated.status, migrated.approval) == ("deleted", "waiting_approval")
        assert migrated.version == content_version(
            gone.kind,
            gone.fonzip_id,
            "deleted",
            gone.amount,
            gone.currency,
            gone.occurred_at,
            gone.person,
            gone.data,
            approval="waiting_approval",
        )
        assert await store.records.get_many(Kind.FORM_ANSWER, [502, 503, 504, 505]) == before
        assert await store.records.get(Kind.DONATION, 506) == donation
        rows = await store.connection.fetchall(
            "SELECT fonzip_id, status, updated_at FROM records ORDER BY fonzip_id"
        )
        updated = {fid: (status, at) for fid, status, at in rows}
        assert updated[501] == ("deleted", clock.now().timestamp())
        assert updated[502][1] < clock.now().timestamp()
        moved = await store.records.get(Kind.FORM_ANSWER, 507)
        assert moved is not None
        assert (moved.status, moved.approval) == ("succeeded", "waiting_approval")
        assert await store.records.redeliver(["sql"]) == 2
        (queued,) = [r for r in await store.outbox.batch("sql", 100) if r.record == migrated]
        assert queued.record_key == migrated.key
    finally:
        await store.close()
