"""Per-sink redaction and filters, the sensitive preset, anonymized records, erasure ids."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fonzipd.config import SinkSettings
from fonzipd.kinds import Kind
from fonzipd.privacy import (
    SENSITIVE_FIELDS,
    Erasure,
    SinkPolicy,
    anonymized,
    redact_data,
)
from fonzipd.records import Person
from tests import fonzip_objects as fo
from tests.support import make_record

# Values of the sensitive set planted by the realistic objects of tests/fonzip_objects.py.
SENSITIVE_VALUES = (
    "12345678901",  # tckno
    "85.105.12.34",  # transaction.ip_address
    "454671",  # bin_number, and the start of card_info
    "0019",  # last_four
    "1988-04-23",  # birthday
    "Bağdat Caddesi",  # address
    "Kadıköy",  # district
)


def _policy(**keys: Any) -> SinkPolicy:
    return SinkPolicy.from_settings(SinkSettings(type="sqlite", **keys))


def _text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def test_the_sensitive_preset_removes_ids_cards_ips_birthdays_and_addresses() -> None:
    record = fo.norm(fo.detail(Kind.DONATION, fo.donation()))
    before = _text(record.to_json_dict())
    assert all(v in before for v in SENSITIVE_VALUES)
    seen = _policy(redact=["sensitive"]).apply(record)
    after = _text(seen.to_json_dict())
    assert [v for v in SENSITIVE_VALUES if v in after] == []
    # What a CRM needs stays: the person, the amount, the bank references, the message.
    assert seen.person == record.person
    assert seen.data["transaction"]["receipt_no"] == "RCP-1"
    assert seen.data["message"] == "Geçmiş olsun Türkiye"
    assert seen.data["user"]["email"] == "ayse.yilmaz@example.com"
    # The key is the original record's: redacting makes no new version.
    assert (seen.key, seen.version) == (record.key, record.version)
    assert record.data["tckno"] == "12345678901"  # the stored record is untouched


def test_flattened_names_match_by_their_last_part() -> None:
    row = {"transaction__ip_address": "1.2.3.4", "transaction__bin_number": "4546", "ip": "x"}
    assert redact_data(row, frozenset(SENSITIVE_FIELDS), frozenset()) == {"ip": "x"}


def test_named_fields_go_at_any_depth_including_lists() -> None:
    data = {"a": [{"tckno": 1, "b": {"tckno": 2, "keep": 3}}], "tckno": 4}
    assert redact_data(data, frozenset({"tckno"}), frozenset()) == {"a": [{"b": {"keep": 3}}]}


def test_the_preset_removes_answers_to_identity_birthday_and_address_questions() -> None:
    obj = fo.form_answer()
    items = [
        {"id": 1, "answer": "12345678901", "db_answer": "12345678901",
         "question": {"id": 1, "static_question": 2}},
        {"id": 2, "answer": "1990-01-02", "question": {"id": 2, "static_question": 4}},
        {"id": 3, "answer": "Moda Cad. 5", "question": {"id": 3, "static_question": 33}},
        {"id": 4, "answer": "Gönüllü", "question": {"id": 4, "static_question": None}},
    ]  # fmt: skip
    obj["form_answer_list"] = items
    record = fo.norm(fo.detail(Kind.FORM_ANSWER, obj))
    seen = _policy(redact=["sensitive"]).apply(record)
    answers = [item.get("answer") for item in seen.data["form_answer_list"]]
    assert answers == [None, None, None, "Gönüllü"]
    assert "12345678901" not in _text(seen.data)


def test_person_fields_are_emptied_only_when_named() -> None:
    record = make_record(1)
    seen = _policy(redact=["person_email", "person_phone", "name"]).apply(record)
    assert seen.person == Person(name="Ayşe Yılmaz", fonzip_user_id=55)
    assert "name" not in seen.data


@pytest.mark.parametrize(
    ("keys", "admitted"),
    [
        ({}, [True, True, True]),
        ({"kinds": ["donation"]}, [True, True, False]),
        ({"statuses": ["succeeded"]}, [True, False, True]),
        ({"kinds": ["ticket_sale"], "statuses": ["refunded"]}, [False, False, False]),
    ],
)
def test_kinds_and_statuses_filter_what_a_sink_gets(
    keys: dict[str, Any], admitted: list[bool]
) -> None:
    recs = [
        make_record(1),
        make_record(1, status="refunded"),
        make_record(2, kind=Kind.TICKET_SALE),
    ]
    assert [_policy(**keys).admits(r) for r in recs] == admitted


def test_anonymized_keeps_the_accounting_and_the_refund_date_only() -> None:
    obj = fo.donation(payment_status=4)
    obj["transaction"]["refund_date"] = "2024-05-09T10:00:00+03:00"
    record = fo.norm(fo.detail(Kind.DONATION, obj))
    erased = anonymized(record)
    assert erased.person == Person()
    assert erased.data == {
        "transaction": {"refund_date": "2024-05-09T10:00:00+03:00"},
        "last_update_date": obj["last_update_date"],
    }
    kept = ("kind", "fonzip_id", "status", "amount", "currency", "occurred_at", "business_date")
    assert all(getattr(erased, k) == getattr(record, k) for k in kept)
    assert erased.version != record.version
    assert anonymized(erased) == erased  # idempotent


def test_an_erasure_id_is_stable_and_names_no_one() -> None:
    a = Erasure(((Kind.DONATION, 2), (Kind.DONATION, 1)), email="ayse@example.com")
    b = Erasure(((Kind.DONATION, 1), (Kind.DONATION, 2)), email="ayse@example.com")
    c = Erasure(((Kind.DONATION, 1),), email="ayse@example.com")
    assert a.id == b.id != c.id
    assert "ayse" not in a.id


@pytest.mark.parametrize(
    ("options", "takes"),
    [
        ({"type": "sqlite", "path": "x.db"}, True),
        ({"type": "http", "url": "http://127.0.0.1/"}, True),
        ({"type": "csv", "directory": "csv"}, False),
        ({"type": "csv", "directory": "csv", "include_data": True}, True),
        ({"type": "csv", "directory": "csv", "enrichments": True}, True),
        ({"type": "sqlite", "path": "x.db", "enrichments": False}, False),
    ],
)
def test_a_sink_takes_enrichments_unless_its_rows_would_repeat(
    options: dict[str, Any], takes: bool
) -> None:
    assert SinkPolicy.from_settings(SinkSettings(**options)).enrichments is takes
