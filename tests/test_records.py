"""Tests of fonzipd.records: the Record every sink receives, its versions and its JSON form."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import subprocess
import sys
from decimal import Decimal

from fonzipd.kinds import Kind
from fonzipd.records import DELETED, Person, Record, Source, content_version, with_status
from tests.fonzip_objects import campaign, detail, donation, ecard_detail_completed, norm
from tests.support import make_record


def test_record_round_trips_through_json() -> None:
    for d in (
        detail(Kind.DONATION, donation()),
        detail(Kind.ECARD_SALE, ecard_detail_completed()),
        detail(Kind.CAMPAIGN, campaign()),
    ):
        record = norm(d)
        assert Record.from_json_dict(record.to_json_dict()) == record


def test_the_module_does_no_io_and_needs_no_aiohttp() -> None:
    probe = "import sys, fonzipd.records; print(any(m.startswith('aiohttp') for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_with_status_marks_a_record_deleted_with_a_new_version() -> None:
    record = make_record(7)
    now = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    gone = with_status(record, DELETED, source=Source.RECONCILE, fetched_at=now)
    assert (gone.status, gone.source, gone.fetched_at) == (DELETED, Source.RECONCILE, now)
    assert gone.version != record.version
    assert gone.key != record.key
    assert (gone.amount, gone.person, gone.data) == (record.amount, record.person, record.data)


def test_a_deleted_version_follows_every_part_of_the_state_and_nothing_else() -> None:
    base = make_record(7)
    now = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    variants = [
        base,
        dataclasses.replace(base, kind=Kind.TICKET_SALE),
        dataclasses.replace(base, fonzip_id=8),
        dataclasses.replace(base, amount=Decimal("1.00")),
        dataclasses.replace(base, currency="EUR"),
        dataclasses.replace(base, occurred_at=now),
        dataclasses.replace(base, person=dataclasses.replace(base.person, name="Başka")),
        dataclasses.replace(base, data={**base.data, "note": "x"}),
        dataclasses.replace(base, approval="approved"),
    ]
    versions = [
        with_status(v, DELETED, source=Source.CLI, fetched_at=now).version for v in variants
    ]
    assert len(set(versions)) == len(variants), "two different states, one deleted version"
    # The same deletion seen twice (another source, another time) is the same version.
    again = with_status(base, DELETED, source=Source.WEBHOOK, fetched_at=now + dt.timedelta(1))
    assert again.version == versions[0]
    assert with_status(base, "removed", source=Source.CLI, fetched_at=now).version != versions[0]


def test_versions_are_stable_across_releases_and_key_order() -> None:
    # A version that changed between releases would make every stored record look new
    # after an upgrade, and deliver all of them again: these values are pinned.
    record = make_record(7)
    assert record.version == "046970a021866258"
    args = (
        record.kind,
        7,
        record.status,
        record.amount,
        record.currency,
        record.occurred_at,
        record.person,
    )
    reordered = dict(reversed(list(record.data.items())))
    assert content_version(*args, reordered) == "046970a021866258"
    assert content_version(*args, {**record.data, "note": "ü"}) != record.version
    assert content_version(*args, record.data, approval="approved") != record.version


def test_versions_hash_exactly_the_documented_payload() -> None:
    # The version is the first 16 hex digits of the SHA-256 of the compact, key-sorted,
    # UTF-8 JSON list of the content: written out here by hand, so that any change to
    # what is hashed (and so every stored version, after an upgrade) fails this test.

    def sha(payload: str) -> str:
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    empty_person = '{"email":null,"fonzip_user_id":null,"name":null,"phone":null}'
    bare = content_version(Kind.CAMPAIGN, 7, "active", None, None, None, Person(), {"id": 7})
    assert bare == sha(f'["campaign",7,"active",null,null,null,{empty_person},{{"id":7}}]')
    assert bare == "63f32e848c1e5c96"
    # A form answer's approval is hashed after the rest; non-ASCII stays UTF-8.
    when = dt.datetime(2026, 11, 26, 11, 3, tzinfo=dt.UTC)
    person = Person(name="Ayşe", fonzip_user_id=55)
    answered = content_version(
        Kind.CAMPAIGN,
        8,
        "succeeded",
        Decimal("10.50"),
        "TRY",
        when,
        person,
        {"b": 1, "a": "ü"},
        approval="approved",
    )
    assert answered == sha(
        '["campaign",8,"succeeded","10.50","TRY","2026-11-26T11:03:00+00:00",'
        '{"email":null,"fonzip_user_id":55,"name":"Ayşe","phone":null},{"a":"ü","b":1},'
        '{"approval":"approved"}]'
    )
    # A value JSON cannot hold (a Decimal in the data) is hashed as its text, not refused.
    assert content_version(
        Kind.CAMPAIGN, 7, "active", None, None, None, Person(), {"id": Decimal("7.0")}
    ) == sha(f'["campaign",7,"active",null,null,null,{empty_person},{{"id":"7.0"}}]')


def test_a_deleted_version_is_pinned() -> None:
    # Re-deleting after an upgrade must not deliver a second deletion of the same object.
    record = make_record(7)
    now = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    assert with_status(record, DELETED, source=Source.CLI, fetched_at=now).version == (
        "d2d203894fd3d6ac"
    )
    answered = dataclasses.replace(record, approval="approved")
    assert with_status(answered, DELETED, source=Source.CLI, fetched_at=now).version == (
        content_version(
            record.kind,
            7,
            DELETED,
            record.amount,
            record.currency,
            record.occurred_at,
            record.person,
            record.data,
            approval="approved",
        )
    )


def test_the_json_form_every_sink_receives_is_pinned() -> None:
    record = dataclasses.replace(make_record(7), approval="approved", source=Source.BACKFILL)
    assert record.to_json_dict() == {
        "key": f"donation:7:{record.version}",
        "kind": "donation",
        "fonzip_id": 7,
        "status": "succeeded",
        "amount": "250.00",
        "currency": "TRY",
        "occurred_at": "2026-11-26T11:03:00+00:00",
        "business_date": "2026-11-26",
        "person": {
            "name": "Ayşe Yılmaz",
            "email": "ayse@example.com",
            "phone": None,
            "fonzip_user_id": 55,
        },
        "source": "backfill",
        "fetched_at": "2026-11-27T09:00:00+00:00",
        "version": record.version,
        "data": {"id": 7, "name": "Ayşe Yılmaz", "transaction": {"payment_status": "succeeded"}},
        "approval": "approved",
    }
    undated = dataclasses.replace(record, amount=None, occurred_at=None, business_date=None)
    as_json = undated.to_json_dict()
    assert (as_json["amount"], as_json["occurred_at"], as_json["business_date"]) == (None,) * 3
    assert Record.from_json_dict(as_json) == undated
    assert Record.from_json_dict(record.to_json_dict()) == record


def test_a_record_stored_before_its_optional_fields_existed_still_reads() -> None:
    # Only the fields every release has written; the rest read as absent.
    stored = {
        "kind": "ticket_sale",
        "fonzip_id": "9",
        "status": "succeeded",
        "source": "webhook",
        "fetched_at": "2026-11-27T09:00:00+00:00",
        "version": "0123456789abcdef",
        "data": {"id": 9},
    }
    assert Record.from_json_dict(stored) == Record(
        kind=Kind.TICKET_SALE,
        fonzip_id=9,
        status="succeeded",
        amount=None,
        currency=None,
        occurred_at=None,
        business_date=None,
        person=Person(),
        source=Source.WEBHOOK,
        fetched_at=dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC),
        version="0123456789abcdef",
        data={"id": 9},
        approval=None,
    )
    assert make_record(9, kind=Kind.TICKET_SALE).key.startswith("ticket_sale:9:")
    assert [str(s) for s in Source] == ["webhook", "reconcile", "backfill", "cli"]
