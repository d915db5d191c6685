"""Erasure and retention in a real state database: forget a person, drop old objects."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from fonzipd.kinds import Kind
from fonzipd.privacy import SinkPolicy
from fonzipd.records import Person, Record, Source, content_version
from fonzipd.state import InboxEvent, Store
from fonzipd.state.erasures import ErasureCounts
from tests.support import FakeClock, make_record

EMAIL = "Zeynep.Kaya@Example.org"


def about(fid: int, *, status: str = "succeeded", email: str = EMAIL, user: int = 77) -> Record:
    """Donation ``fid`` by a person with a recognisable e-mail, address and ID number."""
    base = make_record(fid, status=status)
    person = Person(name="Zeynep Kaya", email=email, phone="+905320000077", fonzip_user_id=user)
    tckno = f"9876543{user:04d}"
    data = {**base.data, "email": email, "tckno": tckno, "address": f"Moda Cad. {user}"}
    version = content_version(
        base.kind, fid, status, base.amount, base.currency, base.occurred_at, person, data
    )
    return dataclasses.replace(base, person=person, data=data, version=version)


def _raw(path: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()
    )


async def test_find_by_email_ignores_case_and_by_user_id(store: Store) -> None:
    await store.records.apply_record(None, about(1), ["a"])
    await store.records.apply_record(None, about(2, email="other@example.org", user=78), ["a"])
    await store.records.apply_record(None, about(3), ["a"])
    found = await store.erasures.find(email="zeynep.kaya@example.ORG", fonzip_user_id=None)
    assert found == [(Kind.DONATION, 1), (Kind.DONATION, 3)]
    assert await store.erasures.find(email=None, fonzip_user_id=78) == [(Kind.DONATION, 2)]
    assert await store.erasures.find(email="nobody@example.org", fonzip_user_id=None) == []


async def test_a_pending_fetch_is_found_by_its_list_row_and_keeps_what_it_needs(
    store: Store,
) -> None:
    row = {
        "id": 5,
        "email": EMAIL,
        "first_name": "Zeynep",
        "tckno": "98765430077",
        "transaction__complete_date": "2024-05-06T14:03:12+03:00",
        "transaction__currency__iso_code": "TRY",
    }
    event = InboxEvent(Kind.ECARD_SALE, 5, None, Source.RECONCILE, list_row=row)
    await store.inbox.add_events([event])
    idents = await store.erasures.find(email=EMAIL, fonzip_user_id=None)
    assert idents == [(Kind.ECARD_SALE, 5)]
    counts = await store.erasures.erase(idents)
    assert counts.inbox_list_rows == 1
    claimed = await store.inbox.claim()
    assert claimed is not None
    # The e-card's fetch still gets its completion date and currency; nothing personal.
    assert claimed.list_row == {
        "id": 5,
        "transaction__complete_date": "2024-05-06T14:03:12+03:00",
        "transaction__currency__iso_code": "TRY",
    }


async def test_erase_anonymizes_the_record_scrubs_the_outbox_and_leaves_no_trace(
    store: Store, tmp_path: Path
) -> None:
    sinks = {"crm": SinkPolicy(), "files": SinkPolicy()}
    paid, refund = about(1), about(1, status="refunded")
    await store.records.apply_record(None, paid, sinks)
    await store.records.apply_record(None, refund, sinks)
    await store.records.apply_record(None, about(2, email="other@example.org", user=78), sinks)
    assert b"98765430077" in _raw(tmp_path / "state.db")

    dry = await store.erasures.erase([(Kind.DONATION, 1)], dry_run=True)
    assert (dry.records, dry.outbox_rows, dry.inbox_list_rows) == (1, 4, 0)
    stored = await store.records.get(Kind.DONATION, 1)
    assert stored is not None
    assert stored.person.email == EMAIL  # a dry run changes nothing

    counts = await store.erasures.erase([(Kind.DONATION, 1)])
    assert (counts.records, counts.outbox_rows) == (1, 4)
    stored = await store.records.get(Kind.DONATION, 1)
    assert stored is not None
    assert (stored.status, stored.amount, stored.person, stored.data) == (
        "refunded", refund.amount, Person(), {}
    )  # fmt: skip
    # Queued copies keep their keys and order, without the person.
    queued = await store.outbox.batch("crm", 10)
    assert [q.record_key for q in queued] == [paid.key, refund.key, queued[2].record_key]
    assert [q.record.person for q in queued[:2]] == [Person(), Person()]
    # Not in a free page, not in the WAL: the file holds no copy (secure_delete).
    raw = _raw(tmp_path / "state.db")
    assert b"98765430077" not in raw
    assert b"zeynep.kaya@example.org" not in raw.lower()
    assert b"other@example.org" in raw  # everyone else's data is still there
    assert await store.erasures.erase([(Kind.DONATION, 1)]) == type(counts)()  # idempotent


async def test_a_later_event_about_a_forgotten_object_is_stored_anonymized(
    store: Store,
) -> None:
    await store.records.apply_record(None, about(1), ["crm"])
    await store.outbox.acknowledge("crm", [q.id for q in await store.outbox.batch("crm", 10)])
    await store.erasures.erase([(Kind.DONATION, 1)])
    # The same state fetched again (a reconcile): nothing new for the sinks.
    again = await store.records.apply_record(None, about(1), ["crm"])
    assert (again.outcome, again.enqueued) == ("unchanged", 0)
    # A refund arrives: the sinks get it, without the person.
    later = await store.records.apply_record(None, about(1, status="refunded"), ["crm"])
    assert (later.outcome, later.enqueued) == ("changed", 1)
    (queued,) = await store.outbox.batch("crm", 10)
    assert (queued.record.status, queued.record.person, queued.record.data) == (
        "refunded", Person(), {}
    )  # fmt: skip
    # A new donation by the same person is new data they gave: stored as it comes.
    await store.records.apply_record(None, about(2), ["crm"])
    fresh = await store.records.get(Kind.DONATION, 2)
    assert fresh is not None
    assert fresh.person.email == EMAIL


async def test_retention_drops_old_objects_and_keeps_what_reconciling_needs(
    store: Store, clock: FakeClock
) -> None:
    old = about(1, status="refunded")
    old = dataclasses.replace(
        old, data={**old.data, "transaction": {"refund_date": "2026-11-20T10:00:00+03:00"}}
    )
    await store.records.apply_record(None, old, ["a"])
    clock.advance(20 * 86400)
    await store.records.apply_record(None, about(2), ["a"])
    clock.advance(11 * 86400)

    assert await store.erasures.drop_old_data(dt.timedelta(days=30)) == 1
    assert await store.erasures.drop_old_data(dt.timedelta(days=30)) == 0  # done once
    thin = await store.records.get(Kind.DONATION, 1)
    assert thin is not None
    assert thin.data == {"transaction": {"refund_date": "2026-11-20T10:00:00+03:00"}}
    # The normalized fields stay: the person (for erasure), status, version, dates.
    assert (thin.person, thin.status, thin.version) == (old.person, "refunded", old.version)
    assert await store.records.refund_dates(Kind.DONATION) == [(1, "2026-11-20T10:00:00+03:00")]
    assert old.business_date is not None
    assert await store.records.local_ids(Kind.DONATION, old.business_date, ["refunded"]) == {
        1: "refunded"
    }  # fmt: skip
    # The same state fetched again changes nothing (the version is kept)...
    again = await store.records.apply_record(None, old, ["a"])
    assert again.outcome == "unchanged"
    recent = await store.records.get(Kind.DONATION, 2)
    assert recent is not None
    assert recent.data["tckno"] == "98765430077"


async def test_replay_goes_through_the_sinks_filters_and_redaction(store: Store) -> None:
    await store.records.apply_record(None, about(1), [])
    await store.records.apply_record(None, make_record(2, kind=Kind.TICKET_SALE), [])
    policy = SinkPolicy(redact=frozenset({"tckno"}), kinds=frozenset({Kind.DONATION}))
    assert await store.outbox.requeue("crm", dead=False, policy=policy, dry_run=True) == 1
    assert await store.outbox.requeue("crm", dead=False, policy=policy) == 1
    (queued,) = await store.outbox.batch("crm", 10)
    assert queued.record_key == about(1).key
    assert "tckno" not in queued.record.data
    assert json.dumps(queued.record.data).find("Moda") >= 0


async def test_records_with_only_the_user_id_are_named_not_added_by_an_email_search(
    store: Store,
) -> None:
    # A campaign carries only its fundraiser's user id; her donation carries both.
    await store.records.apply_record(None, about(1), ["a"])
    campaign = make_record(60, kind=Kind.CAMPAIGN)
    campaign = dataclasses.replace(campaign, person=Person(name="Zeynep Kaya", fonzip_user_id=77))
    await store.records.apply_record(None, campaign, ["a"])
    # A family address shared by two users: a search by it must not take either's
    # other records by itself.
    await store.records.apply_record(None, about(2, email="aile@example.org", user=77), ["a"])
    await store.records.apply_record(None, about(3, email="aile@example.org", user=79), ["a"])
    by_email = await store.erasures.find(email=EMAIL, fonzip_user_id=None)
    assert by_email == [(Kind.DONATION, 1)]
    assert await store.erasures.other_records(by_email) == {
        77: [(Kind.CAMPAIGN, 60), (Kind.DONATION, 2)]
    }
    both = await store.erasures.find(email=EMAIL, fonzip_user_id=77)
    assert both == [(Kind.CAMPAIGN, 60), (Kind.DONATION, 1), (Kind.DONATION, 2)]
    assert await store.erasures.other_records(both) == {}
    family = await store.erasures.find(email="aile@example.org", fonzip_user_id=None)
    assert family == [(Kind.DONATION, 2), (Kind.DONATION, 3)]


def listed(fid: int, row: dict[str, object], kind: Kind = Kind.DONATION) -> InboxEvent:
    """A reconcile's pending fetch of ``fid``, carrying its list row."""
    return InboxEvent(kind, fid, None, Source.RECONCILE, list_row=row)


async def test_a_person_is_found_by_every_copy_the_database_holds_of_them(store: Store) -> None:
    with pytest.raises(ValueError, match=r"^give an e-mail address, a Fonzip user id, or both$"):
        await store.erasures.find(email=None, fonzip_user_id=None)
    # Donation 1 now names someone else; only its queued older version names her.
    await store.records.apply_record(None, about(1), ["a"])
    moved = about(1, email="yeni@example.org", user=90)
    await store.records.apply_record(None, dataclasses.replace(moved, status="refunded"), ["a"])
    await store.inbox.add_events(
        [
            listed(2, {"id": 2, "user__email": EMAIL.upper()}),
            listed(3, {"id": 3, "user_id": 77}),
            listed(4, {"id": 4, "email": "other@example.org", "user_id": 78}),
        ]
    )
    assert await store.erasures.find(email=f"  {EMAIL} ", fonzip_user_id=None) == [
        (Kind.DONATION, 1),
        (Kind.DONATION, 2),
    ]
    assert await store.erasures.find(email=None, fonzip_user_id=77) == [
        (Kind.DONATION, 1),
        (Kind.DONATION, 3),
    ]
    assert await store.erasures.find(email=None, fonzip_user_id=90) == [(Kind.DONATION, 1)]
    assert await store.erasures.other_records([(Kind.DONATION, 9)]) == {}


async def test_an_erasure_leaves_a_pending_fetch_only_what_it_needs_and_finished_ones_nothing(
    store: Store,
) -> None:
    await store.inbox.add_events([listed(2, {"id": 2, "email": EMAIL})])
    finished = await store.inbox.claim()
    assert finished is not None
    await store.inbox.fail(finished.id, "HTTP 404")
    await store.inbox.add_events(
        [listed(1, {"id": 1, "email": EMAIL, "custom_form_id": 9}, Kind.FORM_ANSWER)]
    )
    claimed = await store.inbox.claim()  # in flight: its fetch still needs the form id
    assert claimed is not None
    await store.inbox.add_events([listed(3, {"email": EMAIL}), listed(4, {"id": 4})])
    idents = await store.erasures.find(email=EMAIL, fonzip_user_id=None)
    assert idents == [(Kind.DONATION, 2), (Kind.DONATION, 3), (Kind.FORM_ANSWER, 1)]
    dry = await store.erasures.erase(idents, dry_run=True)
    assert (dry.records, dry.outbox_rows, dry.inbox_list_rows) == (0, 0, 3)
    assert await store.erasures.forgotten() == []  # a dry run marks nothing
    assert await store.erasures.erase(idents) == dry
    rows = await store.connection.fetchall(
        "SELECT kind, fonzip_id, state, list_row FROM inbox ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        ("donation", 2, "failed", None),
        ("form_answer", 1, "claimed", '{"id": 1, "custom_form_id": 9}'),
        ("donation", 3, "pending", None),
        ("donation", 4, "pending", '{"id": 4}'),  # someone else's
    ]
    assert await store.erasures.forgotten() == idents
    assert await store.erasures.erase(idents) == ErasureCounts()  # idempotent
    assert await store.erasures.erase([]) == ErasureCounts()


async def test_a_list_row_that_cannot_be_read_is_dropped_by_an_erasure(store: Store) -> None:
    await store.inbox.add_events([listed(1, {"id": 1}), listed(2, {"id": 2})])
    async with store.connection.transaction() as tx:
        await tx.execute("UPDATE inbox SET list_row = 'not json' WHERE fonzip_id = 1")
        await tx.execute("UPDATE inbox SET list_row = '[1, 2]' WHERE fonzip_id = 2")
    counts = await store.erasures.erase([(Kind.DONATION, 1), (Kind.DONATION, 2)])
    assert counts.inbox_list_rows == 2
    rows = await store.connection.fetchall("SELECT list_row FROM inbox")
    assert [r[0] for r in rows] == [None, None]


async def test_retention_thins_records_in_chunks_and_drops_finished_list_rows(
    store: Store, clock: FakeClock
) -> None:
    # More records than one chunk (500), all of them old.
    await store.records.apply_records([about(fid) for fid in range(1, 1002)], [])
    await store.inbox.add_events([listed(fid, {"id": fid, "email": EMAIL}) for fid in (1, 2, 3)])
    done = await store.inbox.claim()
    assert done is not None
    await store.records.apply_record(done.id, about(1), [])
    failed = await store.inbox.claim()
    assert failed is not None
    await store.inbox.fail(failed.id, "HTTP 404")
    clock.advance(31 * 86400)
    await store.records.apply_record(None, about(2000), [])  # recent: kept whole
    await store.inbox.add_events([listed(4, {"id": 4, "email": EMAIL})])
    recent = await store.inbox.claim()  # pending 3 was queued first
    assert recent is not None
    recent = await store.inbox.claim()
    assert recent is not None
    await store.inbox.fail(recent.id, "HTTP 404")  # finished, but recently

    assert await store.erasures.drop_old_data(dt.timedelta(days=30)) == 1001
    thin = await store.records.get_many(Kind.DONATION, [1, 1001, 2000])
    assert (thin[1].data, thin[1001].data) == ({}, {})
    assert thin[2000].data == about(2000).data
    dropped = await store.connection.fetchall(
        "SELECT count(*) FROM records WHERE data_dropped_at = ?", (clock.now().timestamp(),)
    )
    assert dropped[0][0] == 1001
    rows = await store.connection.fetchall(
        "SELECT fonzip_id, state, list_row IS NULL FROM inbox ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        (1, "done", 1),
        (2, "failed", 1),
        (3, "claimed", 0),
        (4, "failed", 0),
    ]


async def test_every_list_row_of_an_object_is_scrubbed_and_a_record_without_a_person_too(
    store: Store,
) -> None:
    # Object 1: a claimed fetch whose row holds nothing personal, then two more with
    # the address (a newer notification claimed meanwhile, and one still pending).
    await store.inbox.add_events([listed(1, {"id": 1})])
    assert await store.inbox.claim() is not None
    await store.inbox.add_events([listed(1, {"id": 1, "email": EMAIL})])
    assert await store.inbox.claim() is not None
    await store.inbox.add_events([listed(1, {"id": 1, "email": EMAIL})])
    # Object 2: its person already empty, its data still personal.
    bare = dataclasses.replace(about(2), person=Person())
    await store.records.apply_record(None, bare, [])
    counts = await store.erasures.erase([(Kind.DONATION, 1), (Kind.DONATION, 2)])
    assert (counts.records, counts.inbox_list_rows) == (1, 2)
    rows = await store.connection.fetchall("SELECT list_row FROM inbox ORDER BY id")
    assert [r[0] for r in rows] == ['{"id": 1}'] * 3
    stored = await store.records.get(Kind.DONATION, 2)
    assert stored is not None
    assert stored.data == {}
