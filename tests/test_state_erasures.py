"""Erasure and retention in a real state database: forget a person, drop old objects."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

from fonzipd.kinds import Kind
from fonzipd.privacy import SinkPolicy
from fonzipd.records import Person, Record, Source, content_version
from fonzipd.state import InboxEvent, Store
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
