"""Tests of fonzipd.state.records: new, changed, unchanged and stale fetches."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from fonzipd.kinds import Kind
from fonzipd.privacy import NO_POLICY, SinkPolicy
from fonzipd.records import Record, Source
from fonzipd.state import InboxEvent, Store
from fonzipd.state.records import Applied, is_newer
from tests.support import FakeClock, hook, make_record


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


T0 = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)


def state(
    status: str = "succeeded",
    *,
    name: str = "Ayşe Yılmaz",
    read: float = 0.0,
    updated: str | None = None,
) -> Record:
    """Donation 1 in one state, read ``read`` seconds after T0, with a last_update_date."""
    base = make_record(1, status=status, name=name)
    data = dict(base.data)
    if updated is not None:
        data["last_update_date"] = updated
    return dataclasses.replace(
        base,
        fetched_at=T0 + dt.timedelta(seconds=read),
        data=data,
        version=f"{status}-{name}-{updated}-{read}",
    )


@pytest.mark.parametrize(
    ("candidate", "stored", "newer"),
    [
        # 1. Status rank decides first, whatever the other rules would say.
        (state("refunded", read=0), state("succeeded", read=5), True),
        (state("succeeded", read=5), state("refunded", read=0), False),
        (
            state("succeeded", updated="2026-11-27T12:00:00+03:00"),
            state("refunded", updated="2026-11-27T10:00:00+03:00"),
            False,
        ),
        # 2. Equal rank: Fonzip's last_update_date, when both have one and they differ.
        (
            state("failed", read=0, updated="2026-11-27T12:00:01+03:00"),
            state("succeeded", read=5, updated="2026-11-27T12:00:00+03:00"),
            True,
        ),
        (
            state("succeeded", read=5, updated="2026-11-27T12:00:00+03:00"),
            state("failed", read=0, updated="2026-11-27T12:00:01+03:00"),
            False,
        ),
        # The same instant written in two zones is equal: the read order decides.
        (
            state(name="B", read=5, updated="2026-11-27T09:00:00Z"),
            state(name="A", read=0, updated="2026-11-27T12:00:00+03:00"),
            True,
        ),
        # 3. Otherwise the read sent later wins (one side lacks the date, or it is junk).
        (state(name="B", read=5), state(name="A", read=0), True),
        (state(name="B", read=0), state(name="A", read=5), False),
        (state(name="B", read=0, updated="2026-11-28T00:00:00Z"), state(name="A", read=5), False),
        (state(name="B", read=5), state(name="A", read=0, updated="2026-11-28T00:00:00Z"), True),
        (state(name="B", read=5, updated="not a date"), state(name="A", read=0), True),
        (state(name="B", read=0, updated="not a date"), state(name="A", read=5), False),
        # A form answer's approval only orders two states that both carry one.
        (
            dataclasses.replace(state(name="B", read=5), approval=None),
            dataclasses.replace(state(name="A", read=0), approval="approved"),
            True,
        ),
        (
            dataclasses.replace(state(name="B", read=0), approval="approved"),
            dataclasses.replace(state(name="A", read=5), approval="waiting_approval"),
            True,
        ),
        # Equal read times keep the newcomer.
        (state(name="B", read=1), state(name="A", read=1), True),
        # A form answer's decision comes after its waiting, whatever the read order;
        # without an approval on both sides the next rules decide.
        (
            dataclasses.replace(state(read=0), approval="approved"),
            dataclasses.replace(state(read=5), approval="waiting_approval"),
            True,
        ),
        (
            dataclasses.replace(state(read=5), approval="waiting_approval"),
            dataclasses.replace(state(read=0), approval="rejected"),
            False,
        ),
        (
            dataclasses.replace(state(read=0), approval="approved"),
            dataclasses.replace(state(read=5), approval=None),
            False,
        ),
    ],
)
def test_two_states_are_ordered_by_rank_then_last_update_then_read_time(
    candidate: Record, stored: Record, newer: bool
) -> None:
    assert is_newer(candidate, stored) is newer


async def test_an_equal_rank_read_sent_earlier_is_stale_a_later_one_wins(store: Store) -> None:
    await store.records.apply_record(None, state(name="Düzeltilmiş", read=5), ["a"])
    late = await store.records.apply_record(None, state(name="Ayşe", read=1), ["a"])
    assert (late.outcome, late.enqueued) == ("stale", 0)
    newer = await store.records.apply_record(None, state("failed", read=9), ["a"])
    assert (newer.outcome, newer.enqueued) == ("changed", 1)
    stored = await store.records.get(Kind.DONATION, 1)
    assert stored is not None
    assert (stored.status, stored.fetched_at) == ("failed", T0 + dt.timedelta(seconds=9))
    assert [r.record.person.name for r in await store.outbox.batch("a", 10)] == [
        "Düzeltilmiş",
        "Ayşe Yılmaz",
    ]


async def test_each_sink_gets_what_its_filters_admit_redacted_before_it_is_queued(
    store: Store,
) -> None:
    from fonzipd.privacy import SENSITIVE_FIELDS, SinkPolicy

    rec = make_record(1)
    rec = dataclasses.replace(rec, data={**rec.data, "tckno": "11111111110"})
    sinks = {
        "full": SinkPolicy(),
        "crm": SinkPolicy(redact=frozenset(SENSITIVE_FIELDS), person=frozenset({"email"})),
        "tickets": SinkPolicy(kinds=frozenset({Kind.TICKET_SALE})),
        "ids": SinkPolicy(redact=frozenset({"tckno"})),
    }
    applied = await store.records.apply_record(None, rec, sinks)
    assert applied.enqueued == 3
    (ids,) = await store.outbox.batch("ids", 10)
    assert "tckno" not in ids.record.data
    assert ids.record.person == rec.person  # its own policy's copy, not another's
    assert await store.outbox.batch("tickets", 10) == []
    (full,) = await store.outbox.batch("full", 10)
    (crm,) = await store.outbox.batch("crm", 10)
    assert full.record == rec
    # The same key (no new version), without the ID number and the e-mail, in the outbox
    # row itself: the redacted values never reach the sink's queue.
    assert crm.record_key == rec.key
    assert "tckno" not in crm.record.data
    assert crm.record.person.email is None
    raw = await store.connection.fetchall("SELECT record FROM outbox WHERE sink_id = 'crm'")
    assert "11111111110" not in raw[0][0]
    assert "ayse@example.com" not in raw[0][0]
    stored = await store.records.get(Kind.DONATION, 1)
    assert stored == rec  # the state database keeps the whole record


def list_row_state(*, name: str = "Ayşe Yılmaz", read: float = 0.0) -> Record:
    """Donation 1, succeeded, as a record built from its list row (fonzip.list_rows)."""
    base = state(name=name, read=read)
    data = {"id": 1, "_fonzipd": {"shape": "list_row", "list": "paid"}}
    return dataclasses.replace(base, data=data, version=f"row-{name}-{read}")


async def test_a_list_row_and_a_detail_of_one_state_never_replace_each_other(
    store: Store,
) -> None:
    # The detail (richer data) wins over the row of the same state, even read earlier.
    await store.records.apply_record(None, list_row_state(read=5), ["a"])
    enriched = await store.records.apply_record(None, state(read=1), ["a"])
    assert enriched.outcome == "changed"
    # A row of that same state read later does not take the detail's place...
    again = await store.records.apply_record(None, list_row_state(read=9), ["a"])
    assert (again.outcome, again.enqueued) == ("stale", 0)
    stored = await store.records.get(Kind.DONATION, 1)
    assert stored is not None
    assert "_fonzipd" not in stored.data
    # ...but a row showing a corrected name, read later, does (the newer read wins).
    corrected = await store.records.apply_record(
        None, list_row_state(name="Ayşe Yıldız", read=12), ["a"]
    )
    assert corrected.outcome == "changed"
    batch = await store.outbox.batch("a", 10)
    assert [r.record.version for r in batch] == [
        "row-Ayşe Yılmaz-5",
        "succeeded-Ayşe Yılmaz-None-1",
        "row-Ayşe Yıldız-12",
    ]


async def test_records_from_list_rows_are_applied_together(store: Store) -> None:
    applied = await store.records.apply_records([make_record(1), make_record(2)], ["a", "b"])
    assert [(a.outcome, a.enqueued) for a in applied] == [("new", 2), ("new", 2)]
    assert set(await store.records.get_many(Kind.DONATION, [1, 2, 3])) == {1, 2}


def test_a_naive_last_update_date_is_read_alike_on_any_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The host's zone must not decide: a naive value is read as UTC here, wherever
    # fonzipd runs (10:00 naive is after 12:00+03:00, which is 09:00 UTC).
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        naive = state(name="B", read=0, updated="2026-11-27T10:00:00")
        aware = state(name="A", read=5, updated="2026-11-27T12:00:00+03:00")
        assert is_newer(naive, aware) is True
        assert is_newer(aware, naive) is False
    finally:
        monkeypatch.undo()
        time.tzset()


async def test_a_later_state_of_a_forgotten_object_is_stored_and_queued_anonymized(
    store: Store,
) -> None:
    # Donation 1's person was erased; campaign 1 (same id, another kind) was not.
    await store.records.apply_record(None, make_record(1), ["a"])
    campaign = make_record(1, kind=Kind.CAMPAIGN, status="active")
    await store.records.apply_record(None, campaign, ["a"])
    await store.erasures.erase([(Kind.DONATION, 1)])
    refund = await store.records.apply_record(None, make_record(1, status="refunded"), ["a"])
    assert (refund.outcome, refund.enqueued) == ("changed", 1)
    stored = await store.records.get(Kind.DONATION, 1)
    assert stored is not None
    assert stored.status == "refunded"
    assert stored.person.name is None
    assert stored.person.email is None
    raw = await store.connection.fetchall(
        "SELECT record FROM outbox WHERE sink_id = 'a' AND record_key LIKE 'donation%'"
    )
    assert all("ayse@example.com" not in r[0] for r in raw)
    edited = make_record(1, kind=Kind.CAMPAIGN, status="active", name="Ayşe Yıldız")
    await store.records.apply_record(None, edited, ["a"])
    kept = await store.records.get(Kind.CAMPAIGN, 1)
    assert kept == edited  # the erasure was of the donation only


async def test_a_detail_enriching_a_list_row_goes_only_to_sinks_that_take_enrichments(
    store: Store,
) -> None:
    from fonzipd.privacy import SinkPolicy

    sinks = {"csv": SinkPolicy(enrichments=False), "crm": SinkPolicy()}
    await store.records.apply_record(None, list_row_state(read=5), sinks)
    # A corrected list row is a new state for everyone, not an enrichment.
    corrected = await store.records.apply_record(
        None, list_row_state(name="Ayşe Yıldız", read=6), sinks
    )
    assert (corrected.outcome, corrected.enqueued) == ("changed", 2)
    enriched = await store.records.apply_record(None, state(name="Ayşe Yıldız", read=7), sinks)
    assert (enriched.outcome, enriched.enqueued) == ("changed", 1)
    assert [r.record.version for r in await store.outbox.batch("csv", 10)] == [
        "row-Ayşe Yılmaz-5",
        "row-Ayşe Yıldız-6",
    ]
    assert len(await store.outbox.batch("crm", 10)) == 3
    # A detail replacing a detail is no enrichment, even with the same normalized
    # fields (Fonzip's data changed), nor is a new state of the object.
    for later in (
        state(name="Ayşe Yıldız", read=8, updated="2026-11-27 10:00:00"),
        state("refunded", name="Ayşe Yıldız", read=9),
    ):
        applied = await store.records.apply_record(None, later, sinks)
        assert (applied.outcome, applied.enqueued) == ("changed", 2)


async def test_the_inbox_row_records_what_its_fetch_did_and_the_first_source_stays(
    store: Store,
) -> None:
    await store.inbox.add_events([hook(1), hook(2)])
    first, second = await store.inbox.claim(), await store.inbox.claim()
    assert first is not None
    assert second is not None
    await store.records.apply_record(first.id, make_record(1, status="refunded"), ["a"])
    await store.records.apply_record(second.id, make_record(1), ["a"])  # stale
    rows = await store.connection.fetchall(
        "SELECT state, outcome, last_error FROM inbox ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [("done", "new", None), ("done", "stale", None)]
    reconciled = dataclasses.replace(
        make_record(1, status="refunded", name="Ayşe Yıldız"), source=Source.RECONCILE
    )
    await store.records.apply_record(None, reconciled, ["a"])
    assert await store.records.first_sources(dt.date(2026, 11, 26)) == {"webhook": 1}


async def test_a_record_without_a_date_is_stored_and_queued_on_no_day(store: Store) -> None:
    # Fonzip gave no usable date (the normalizer leaves occurred_at and the day empty).
    undated = dataclasses.replace(make_record(1), occurred_at=None, business_date=None)
    applied = await store.records.apply_record(None, undated, ["a"])
    assert (applied.outcome, applied.enqueued) == ("new", 1)
    assert await store.records.get(Kind.DONATION, 1) == undated
    (queued,) = await store.outbox.batch("a", 10)
    assert queued.record == undated
    assert await store.records.local_ids(Kind.DONATION, dt.date(2026, 11, 26), ["succeeded"]) == {}


async def test_records_are_stored_and_the_next_rows_claimed_in_one_transaction(
    store: Store,
) -> None:
    await store.inbox.add_events([hook(1), hook(2)])
    first = await store.inbox.claim_many(2)
    backlog = [InboxEvent(Kind.DONATION, 9, 3, Source.RECONCILE)]
    await store.inbox.add_events([*backlog, hook(3), hook(4), hook(5)])
    begun: list[str] = []

    async def seen(sql: str, call: Any) -> Any:
        begun.append(sql)
        return await call()

    store.connection.faults = seen
    applied, rows = await store.records.apply_and_claim(
        [(row.id, make_record(row.fonzip_id), ["a"]) for row in first], 2
    )
    store.connection.faults = None
    assert begun.count("BEGIN IMMEDIATE") == 1
    assert [a.outcome for a in applied] == ["new", "new"]
    # Never more rows than asked for, live work first.
    assert [r.fonzip_id for r in rows] == [3, 4]
    assert await store.inbox.counts() == {"done": 2, "claimed": 2, "pending": 2}
    assert len(await store.outbox.batch("a", 10)) == 2
    nothing, none = await store.records.apply_and_claim([(rows[0].id, make_record(3), ["a"])], 0)
    assert ([a.outcome for a in nothing], none) == (["new"], [])
    assert await store.inbox.counts() == {"done": 3, "claimed": 1, "pending": 2}


async def test_a_group_stores_and_queues_exactly_what_its_records_one_by_one_would(
    tmp_path: Path, clock: FakeClock
) -> None:
    def fetched(fid: int, n: int, **fields: Any) -> Record:
        rec = make_record(fid, **fields)
        return dataclasses.replace(rec, fetched_at=rec.fetched_at + dt.timedelta(seconds=n))

    # One object changed, changed back and read late (stale), another new then
    # refunded, a third fetched twice unchanged: all in one group.
    group = [
        fetched(1, 1),
        fetched(2, 1),
        fetched(1, 2, name="Ayşe Y."),
        fetched(1, 3),  # changed back: queued again behind the version before it
        fetched(3, 1),
        fetched(2, 2, status="refunded"),
        fetched(1, 0, name="Ayşe Y."),  # an older read landing last: stale
        fetched(3, 2),
    ]
    refunds = SinkPolicy(statuses=frozenset({"refunded"}), person=frozenset({"name"}))
    sinks = {"all": NO_POLICY, "refunds": refunds}
    alone = await Store.open(tmp_path / "alone.db", clock=clock)
    together = await Store.open(tmp_path / "together.db", clock=clock)
    try:
        one_by_one = [await alone.records.apply_record(None, rec, sinks) for rec in group]
        statements: list[str] = []

        async def seen(sql: str, call: Any) -> Any:
            statements.append(sql)
            return await call()

        together.connection.faults = seen
        grouped = await together.records.apply_many([(None, rec, sinks) for rec in group])
        together.connection.faults = None
        assert grouped == one_by_one
        assert [a.outcome for a in grouped] == [
            "new", "new", "changed", "changed", "new", "changed", "stale", "unchanged",
        ]  # fmt: skip
        # A constant number of statements, however many records: BEGIN, two reads,
        # one write per table (records, outbox deletes, outbox inserts), COMMIT.
        assert len(statements) == 7, statements

        def contents(store: Store, sql: str) -> list[Any]:
            with sqlite3.connect(store.path) as db:
                return db.execute(sql).fetchall()

        for sql in (
            "SELECT kind, fonzip_id, status, version, record FROM records ORDER BY 1, 2",
            "SELECT sink_id, record_key, state, record FROM outbox ORDER BY id",
        ):
            assert contents(together, sql) == contents(alone, sql)
        queued = contents(together, "SELECT sink_id, record_key FROM outbox ORDER BY id")
        first, second = group[0].key, group[2].key
        assert [k for s, k in queued if s == "all" and k in (first, second)] == [second, first]
        assert [k for s, k in queued if s == "refunds"] == [group[5].key]
    finally:
        await alone.close()
        await together.close()


async def test_many_objects_are_read_back_whatever_their_number(store: Store) -> None:
    # More ids than one SQL statement is given at a time (chunks of 500).
    records = [
        make_record(fid, status="refunded" if fid % 2 else "succeeded") for fid in range(1, 1203)
    ]
    await store.records.apply_records(records, [])
    ids = [*range(1, 1203), 5000]
    got = await store.records.get_many(Kind.DONATION, ids)
    assert got == {r.fonzip_id: r for r in records}
    statuses = await store.records.statuses(Kind.DONATION, ids)
    assert statuses == {r.fonzip_id: r.status for r in records}
    assert await store.records.get_many(Kind.TICKET_SALE, ids) == {}
    assert await store.records.statuses(Kind.DONATION, []) == {}
    assert await store.records.get(Kind.DONATION, 1202) == records[-1]
    assert await store.records.get(Kind.DONATION, 5000) is None
    assert await store.records.get(Kind.TICKET_SALE, 1) is None


def answer(fid: int, status: str, approval: str | None, *, day: dt.date | None = None) -> Record:
    base = make_record(fid, kind=Kind.FORM_ANSWER, status=status, day=day or dt.date(2026, 11, 26))
    return dataclasses.replace(base, approval=approval, version=f"{status}-{approval}")


async def test_form_answers_are_listed_by_payment_then_approval(store: Store) -> None:
    day = dt.date(2026, 11, 26)
    answers = [
        answer(1, "succeeded", "waiting_approval"),
        answer(2, "succeeded", "rejected"),
        answer(3, "succeeded", "approved"),
        answer(4, "refunded", "approved"),
        answer(5, "succeeded", "waiting_approval", day=dt.date(2026, 11, 25)),
    ]
    await store.records.apply_records([*answers, make_record(6, day=day)], ["a"])
    assert await store.records.statuses(Kind.FORM_ANSWER, [1, 2, 3, 4, 6]) == {
        1: "waiting_approval",
        2: "rejected",
        3: "answered",
        4: "refunded",
    }
    assert await store.records.local_ids(
        Kind.FORM_ANSWER, day, ["waiting_approval", "answered"]
    ) == {1: "waiting_approval", 3: "answered"}
    assert await store.records.local_ids(Kind.FORM_ANSWER, day, ["refunded", "rejected"]) == {
        2: "rejected",
        4: "refunded",
    }
    assert await store.records.local_ids(Kind.DONATION, day, ["succeeded"]) == {6: "succeeded"}
    assert await store.records.local_ids(Kind.DONATION, day, []) == {}


async def test_refund_dates_are_read_wherever_the_kind_keeps_them(store: Store) -> None:
    def refunded(fid: int, data: dict[str, object], status: str = "refunded") -> Record:
        base = make_record(fid, status=status)
        return dataclasses.replace(base, data=data, version=f"v{fid}")

    await store.records.apply_records(
        [
            refunded(1, {"transaction": {"refund_date": "2026-11-20 10:00:00"}}),
            refunded(2, {"transaction__refund_date": "2026-11-21 10:00:00"}),
            refunded(3, {"refund_date": "2026-11-22 10:00:00"}),
            refunded(4, {}),
            refunded(5, {"refund_date": "2026-11-23 10:00:00"}, status="succeeded"),
        ],
        [],
    )
    assert sorted(await store.records.refund_dates(Kind.DONATION)) == [
        (1, "2026-11-20 10:00:00"),
        (2, "2026-11-21 10:00:00"),
        (3, "2026-11-22 10:00:00"),
        (4, None),
    ]
    assert await store.records.refund_dates(Kind.DONATION, "succeeded") == [
        (5, "2026-11-23 10:00:00")
    ]
    assert await store.records.refund_dates(Kind.TICKET_SALE) == []


async def test_first_sources_count_each_day_by_how_its_records_were_first_seen(
    store: Store,
) -> None:
    day = dt.date(2026, 11, 26)

    def seen(fid: int, source: Source, on: dt.date = day) -> Record:
        return dataclasses.replace(make_record(fid, day=on), source=source)

    await store.records.apply_records(
        [
            seen(1, Source.WEBHOOK),
            seen(2, Source.RECONCILE),
            seen(3, Source.RECONCILE),
            seen(4, Source.BACKFILL, dt.date(2026, 11, 25)),
        ],
        [],
    )
    assert await store.records.first_sources(day) == {"webhook": 1, "reconcile": 2}
    assert await store.records.first_sources(dt.date(2026, 11, 24)) == {}


async def test_a_group_of_fetches_is_stored_each_with_its_sinks_and_inbox_row(
    store: Store,
) -> None:
    await store.inbox.add_events([hook(1), hook(2)])
    first, second = await store.inbox.claim(), await store.inbox.claim()
    assert first is not None
    assert second is not None
    applied = await store.records.apply_many(
        [
            (first.id, make_record(1), ["a", "b"]),
            (second.id, make_record(2), {"a": SinkPolicy(kinds=frozenset({Kind.CAMPAIGN}))}),
            (None, make_record(1), ["a", "b"]),
        ]
    )
    assert applied == [Applied("new", 2), Applied("new", 0), Applied("unchanged", 0)]
    assert [r.record.fonzip_id for r in await store.outbox.batch("a", 10)] == [1]
    assert [r.record.fonzip_id for r in await store.outbox.batch("b", 10)] == [1]
    assert await store.inbox.counts() == {"done": 2}
    assert set(await store.records.get_many(Kind.DONATION, [1, 2])) == {1, 2}


async def test_corrected_records_are_queued_once_for_each_sink_that_admits_them(
    store: Store,
) -> None:
    await store.records.apply_records([make_record(f) for f in (1, 2, 3)], [])
    await store.records.apply_record(None, make_record(1, kind=Kind.TICKET_SALE), [])
    async with store.connection.transaction() as tx:
        for kind, fid in (("donation", 3), ("donation", 1), ("ticket_sale", 1)):
            await tx.execute("INSERT INTO redeliver (kind, fonzip_id) VALUES (?, ?)", (kind, fid))
    sinks = {
        "all": SinkPolicy(enrichments=False),  # a correction is no enrichment
        "crm": SinkPolicy(kinds=frozenset({Kind.DONATION}), person=frozenset({"email"})),
    }
    assert await store.records.redeliver(sinks) == 3
    everything = await store.outbox.batch("all", 10)
    assert [(r.record_key, r.record) for r in everything] == [
        (r.key, r) for r in (make_record(1), make_record(3), make_record(1, kind=Kind.TICKET_SALE))
    ]
    crm = await store.outbox.batch("crm", 10)
    assert [r.record_key for r in crm] == [make_record(f).key for f in (1, 3)]
    assert all(r.record.person.email is None for r in crm)
    assert await store.records.redeliver(sinks) == 0  # once
    assert len(await store.outbox.batch("all", 10)) == 3


def test_a_status_fonzipd_does_not_know_ranks_with_the_settled_ones() -> None:
    # A status Fonzip adds later: after pending, before refunds; the read order decides
    # between it and another settled state.
    assert is_newer(state("on_hold", read=0), state("pending", read=5)) is True
    assert is_newer(state("on_hold", read=5), state("refunded", read=0)) is False
    assert is_newer(state("on_hold", read=0), state("succeeded", read=5)) is False
    assert is_newer(state("succeeded", read=5), state("on_hold", read=0)) is True


async def test_a_group_commit_claims_a_row_whose_retry_is_due(
    store: Store, clock: FakeClock
) -> None:
    await store.inbox.add_events([hook(1)])
    first = await store.inbox.claim()
    assert first is not None
    await store.inbox.retry_later(first.id, "HTTP 503", 10)
    _, none_yet = await store.records.apply_and_claim([(None, make_record(7), ["a"])], 1)
    assert none_yet == []  # not due yet
    clock.advance(11)
    _, rows = await store.records.apply_and_claim([(None, make_record(8), ["a"])], 1)
    assert [(r.id, r.fonzip_id, r.attempts) for r in rows] == [(first.id, 1, 2)]
