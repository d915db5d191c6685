"""Tests of fonzipd.records: the six normalizers, on objects shaped like the reference's."""

from __future__ import annotations

import copy
import datetime as dt
import subprocess
import sys
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fonzipd.fonzip.endpoints import Detail
from fonzipd.kinds import Kind
from fonzipd.records import (
    DELETED,
    NormalizeError,
    Person,
    Record,
    Source,
    list_row_id,
    list_row_status,
    normalize,
    parse_fonzip_datetime,
    with_status,
)
from tests.support import make_record

ISTANBUL = ZoneInfo("Europe/Istanbul")
FETCHED = dt.datetime(2024, 5, 7, 0, 30, tzinfo=dt.UTC)


# --- fixtures shaped like the reference's detail schemas (§3.0-3.6) --------------------


def currency_try() -> dict[str, Any]:
    return {
        "id": 1,
        "name": "Türk Lirası",
        "short": "TL",
        "display": "TRY",
        "iyzi_code": "TRY",
        "iso_code": "TRY",
        "value": 1.0,
        "last_update_date": "2024-05-06T09:00:00+03:00",
    }


def transaction(
    payment_status: int = 3,
    amount: object = 250.0,
    complete_date: str | None = "2024-05-06T14:03:12+03:00",
) -> dict[str, Any]:
    return {
        "id": 9001,
        "conversation_id": 77001,
        "complete_date": complete_date,
        "amount": amount,
        "currency": currency_try(),
        "installment_count": 1,
        "installment_amount": amount,
        "ip_address": "85.105.12.34",
        "payment_status": payment_status,
        "payment_status_display": "Başarılı",
        "error_code": None,
        "error_text": None,
        "refund_date": None,
        "fonzip_id": "FZ123",
        "fonzip_id_hashed": "a1b2c3",
        "transaction_id": "TX-55",
        "provision_no": "PRV-1",
        "receipt_no": "RCP-1",
        "auth_code": "AUTH-9",
        "reference_id": "REF-4",
        "order_id": "ORD-8",
        "payment_settings_id": 2,
        "payment_settings": {
            "id": 2,
            "name": "iyzico Sanal POS",
            "provider_no": "iyzico",
            "status": 1,
            "business_account": True,
        },
        "bank_account_id": 4,
        "bank_account": {"id": 4, "name": "Ziraat Bankası TL Hesabı", "currency_id": 1},
        "payment_method": 0,
        "refunded_by_id": None,
        "refunded_by__name": None,
        "refund_reason": None,
        "fonzip_framework": True,
        "bin_number": "454671",
        "last_four": "0019",
    }


def user_reference() -> dict[str, Any]:
    return {
        "id": 55,
        "email": "ayse.yilmaz@example.com",
        "phone": "+905321234567",
        "name": "Ayşe Yılmaz",
        "first_name": "Ayşe",
        "last_name": "Yılmaz",
        "tckno": "12345678901",
        "profile_pic": None,
        "corporate_type": False,
        "membership_no": 1204,
    }


def donation(payment_status: int = 3) -> dict[str, Any]:
    return {
        "id": 101,
        "user": user_reference(),
        "transaction": transaction(payment_status),
        "d_type": 0,
        "sub_donation_type_id": 3,
        "donor_type": "personal",
        "name": "Ayşe Yılmaz",
        "phone": "+905321234567",
        "email": "ayse@example.com",
        "address": "Bağdat Caddesi No: 12",
        "city": "İstanbul",
        "district": "Kadıköy",
        "birthday": "1988-04-23",
        "details": "Deprem bölgesi için",
        "tckno": "12345678901",
        "news_via_phone": False,
        "news_via_sms": True,
        "news_via_email": True,
        "recurring_limit": 0,
        "recurring_withdrawal": False,
        "recurring_next_amount": None,
        "recurring_error": None,
        "recurring_next_cycle": None,
        "recurring_last_success_withdrawal_date": None,
        "recurring_status": 0,
        "recurring_cancel_date": None,
        "recurring_order_id": None,
        "recurring_withdraw_count": 0,
        "recurring_total_withdraw_count": 0,
        "recurring_total_withdraw_amount": 0,
        "referring": False,
        "name_hidden": False,
        "amount_visible": True,
        "message": "Geçmiş olsun Türkiye",
        "show_message": True,
        "fundraising_campaign_id": None,
        "fundraising_page_id": 12,
        "module_id": 5,
        "module__name": "Genel Bağış Formu",
        "module__custom_parameters": {},
        "custom_parameters": {"kaynak": "web"},
        "thanks_mail_id": 3,
        "application_id": None,
        "application__name": None,
        "api_tracking_id": None,
        "sent_mail": {"id": 801, "message_id": 9911, "status": 1},
        "sent_mail_to_referring": None,
        "card_info": "454671******0019",
        "added_by_id": None,
        "added_by__name": None,
        "updated_by_id": None,
        "updated_by__name": None,
        "last_update_date": "2024-05-06T14:03:15+03:00",
    }


def membership_payment() -> dict[str, Any]:
    tx = transaction(3, amount=150.0, complete_date="2024-05-06T10:15:00+03:00")
    return {
        "id": 5,
        "user_id": 55,
        "user": user_reference(),
        "transaction": tx,
        "status": 2,
        "status_name": "Ödeme",
        "details": "Mayıs 2024 aidatı",
        "operation_date": "2024-05-06T10:15:00+03:00",
        "period": "2024-05-01",
        "balance": 0.0,
        "first_name": "Ayşe",
        "last_name": "Yılmaz",
        "phone": "+905321234567",
        "email": "ayse.yilmaz@example.com",
        "tckno": "12345678901",
        "amount": 150.0,
        "assignment_status": 2,
        "card_info": "454671******0019",
        "bill_no": "A-2024-0005",
        "due_date": None,
        "recurring": False,
        "recurring_amount": None,
        "recurring_period": None,
        "recurring_collection_period": None,
        "recurring_withdrawal": False,
        "recurring_next_cycle": None,
        "order_id": None,
        "added_by_id": None,
        "added_by__name": None,
        "updated_by_id": None,
        "updated_by__name": None,
    }


def membership_debt(status: int = 1) -> dict[str, Any]:
    return {
        "id": 6,
        "user_id": 56,
        "user": {
            "id": 56,
            "email": "mehmet.ozturk@example.com",
            "phone": "+905331112233",
            "name": "Mehmet Öztürk",
            "first_name": "Mehmet",
            "last_name": "Öztürk",
            "tckno": None,
            "profile_pic": None,
            "corporate_type": False,
            "membership_no": 877,
        },
        "transaction": None,
        "status": status,
        "status_name": "Ödenmemiş Borç",
        "details": "2024 yıllık aidat borcu",
        "operation_date": "2024-05-06T09:00:00+03:00",
        "period": "2024-01-01",
        "balance": -600.0,
        "first_name": "Mehmet",
        "last_name": "Öztürk",
        "phone": "+905331112233",
        "email": "mehmet.ozturk@example.com",
        "tckno": None,
        "amount": 600.0,
        "assignment_status": 4,
        "card_info": None,
        "bill_no": None,
        "due_date": "2024-06-30T23:59:59+03:00",
        "recurring": True,
        "recurring_amount": 50.0,
        "recurring_period": 30,
        "recurring_collection_period": 5,
        "recurring_withdrawal": False,
        "recurring_next_cycle": "2024-06-06",
        "order_id": "DEBT-6",
        "added_by_id": 2,
        "added_by__name": "Dernek Yöneticisi",
        "updated_by_id": None,
        "updated_by__name": None,
    }


def ticket_sale(payment_status: int = 3) -> dict[str, Any]:
    tx = transaction(payment_status, amount=350.0, complete_date="2024-05-06T19:45:00+03:00")
    return {
        "id": 301,
        "transaction": tx,
        "event": {
            "id": 40,
            "name": "Bahar Şenliği Yardım Konseri",
            "url": "bahar-senligi-2024",
            "venue": 0,
            "address": "Harbiye Açıkhava Tiyatrosu, Şişli",
            "details": "Gelir eğitim bursuna aktarılacaktır.",
            "paid_event": True,
            "payment_settings_id": 2,
            "image": None,
            "start_date": "2024-05-18T20:00:00+03:00",
            "all_day": False,
            "end_date": "2024-05-18T23:00:00+03:00",
            "ticket_types": [
                {
                    "id": 71,
                    "title": "Tam Bilet",
                    "sold": 120,
                    "quantity": 500,
                    "price": 350.0,
                    "ticket_type": "paid",
                    "details": "",
                    "post_sale_message": "Etkinlikte görüşmek üzere!",
                    "sales_start_on_date": False,
                    "sales_start": None,
                    "sales_end_on_date": False,
                    "sales_end": None,
                    "max_per_person": 4,
                    "order": 1,
                    "tag_control": 0,
                    "tags_to_control": [],
                    "member_with_no_debt": False,
                    "related_with_no_debt": False,
                }
            ],
            "active": True,
            "max_installment": 1,
            "send_reminder": True,
            "ask_billing_info": False,
            "location": 0,
            "sender_account_id": 1,
        },
        "sold_tickets": [{"id": 9001}, {"id": 9002}],
        "member": {
            "id": 57,
            "first_name": "Zeynep",
            "last_name": "Çelik",
            "name": "Zeynep Çelik",
            "nationality_text": "Türkiye",
            "tckno": None,
            "birthday": None,
            "email": "zeynep.celik@example.com",
            "phone": "+905441234567",
            "city_text": "İzmir",
            "membership_no": None,
            "total_financial": 0.0,
            "user_defined_values": {},
        },
        "name": "Zeynep Çelik",
        "phone": "+905441234567",
        "email": "zeynep@example.com",
        "address": "Alsancak Mah. 1453 Sok. No: 7",
        "city": "İzmir",
        "district": "Konak",
        "post_code": "35220",
        "details": "",
        "sent_mail": {"id": 802, "message_id": 9912, "status": 2},
    }


def form_answer(approval_status: int | None = 1, with_transaction: bool = True) -> dict[str, Any]:
    return {
        "id": 401,
        "transaction": (
            transaction(3, amount=75.0, complete_date="2024-05-06T11:20:00+03:00")
            if with_transaction
            else None
        ),
        "complete_date": "2024-05-06T11:20:00+03:00",
        "user": {"id": 58, "name": "Emre Şahin", "membership_no": None},
        "email": "emre.sahin@example.com",
        "email_verification": True,
        "first_name": "Emre",
        "last_name": "Şahin",
        "approval_status": approval_status,
        "form_answer_list": [
            {
                "id": 1,
                "answer": "Gönüllü olmak istiyorum",
                "db_answer": "Gönüllü olmak istiyorum",
                "selected_option_list": [],
                "question": {
                    "id": 11,
                    "title": "Neden katılmak istiyorsunuz?",
                    "slug": "neden-katilmak",
                    "order": 1,
                    "question_type": 2,
                    "required": True,
                    "information": "",
                    "static_question": None,
                    "udv_question": None,
                    "custom_question": {"id": 3, "name": "Açıklama", "short": "text"},
                },
            }
        ],
        "sent_mail": {"id": 803, "message_id": 9913, "status": 0},
    }


def ecard_detail(payment_status: int = 3) -> dict[str, Any]:
    return {
        "id": 501,
        "user_id": 59,
        "certificate_file": "https://fonzip.com/media/certificates/501.pdf",
        "first_name": "Fatma",
        "last_name": "Kaya",
        "email": "fatma.kaya@example.com",
        "phone": "+905051234567",
        "address": "Atatürk Bulvarı No: 100",
        "city": "Ankara",
        "district": "Çankaya",
        "referring": True,
        "referring_name": "Ali Kaya",
        "referring_phone": None,
        "referring_email": "ali.kaya@example.com",
        "delivery_to": 0,
        "delivery_to_name": None,
        "deliver_as_cargo": False,
        "cargo_status": 0,
        "donor_type": 1,
        "cargo_number": None,
        "cargo_company": None,
        "sent_mail__status": 1,
        "sent_mail_to_referring__message_id": 9914,
        "certificate_id": 8,
        "certificate__title": "Fidan Bağışı Sertifikası",
        "transaction__payment_settings__name": "iyzico Sanal POS",
        "transaction__currency__display": "TRY",
        "transaction__amount": 100.0,
        "transaction__payment_status": payment_status,
        "transaction__transaction_error__text": None,
        "transaction__bin_number": "454671",
        "transaction__refund_date": None,
        "transaction__fonzip_id": "FZ501",
        "transaction__provision_no": "PRV-501",
        "transaction__fonzip_framework": True,
        "certificate__has_cargo": False,
        "transaction__payment_method": 0,
        "added_by__name": None,
        "transaction__refunded_by_id": None,
        "transaction__refunded_by__name": None,
        "updated_by_id": None,
        "updated_by__name": None,
        "last_update_date": "2024-05-06T16:00:05+03:00",
    }


def ecard_list_row() -> dict[str, Any]:
    return {
        "id": 501,
        "user_id": 59,
        "first_name": "Fatma",
        "last_name": "Kaya",
        "email": "fatma.kaya@example.com",
        "phone": "+905051234567",
        "certificate_id": 8,
        "certificate_file": "https://fonzip.com/media/certificates/501.pdf",
        "zip_file": None,
        "cargo_status": 0,
        "cargo_company": None,
        "cargo_number": None,
        "recipient_count": 1,
        "transaction__payment_status": 3,
        "transaction__fonzip_framework": True,
        "certificate__title": "Fidan Bağışı Sertifikası",
        "transaction__amount": 100.0,
        "transaction__currency__display": "TRY",
        "transaction__currency__iso_code": "TRY",
        "transaction__payment_method": 0,
        "transaction__complete_date": "2024-05-06T16:00:00+03:00",
        "delivery_time_mode": 0,
        "delivery_date": None,
    }


def ecard_detail_completed(payment_status: int = 3) -> dict[str, Any]:
    """The detail as the client hands it over: the two list-row fields copied in."""
    obj = ecard_detail(payment_status)
    row = ecard_list_row()
    obj["transaction__complete_date"] = row["transaction__complete_date"]
    obj["transaction__currency__iso_code"] = row["transaction__currency__iso_code"]
    return obj


def campaign(status: int = 1) -> dict[str, Any]:
    return {
        "id": 601,
        "user_id": 60,
        "user__first_name": "Can",
        "user__last_name": "Demir",
        "user__profile_pic": None,
        "create_date": "2024-05-06T08:30:00+03:00",
        "activation_date": "2024-05-06T09:00:00+03:00",
        "finish_date": None,
        "title": "Köy okuluna kütüphane",
        "url": "koy-okuluna-kutuphane",
        "image": "https://fonzip.com/media/campaigns/601.jpg",
        "personal_message": "Doğum günümde hediye yerine bağış istiyorum.",
        "user_note": "",
        "has_target": True,
        "hide_total_donation": False,
        "hide_donor_list": False,
        "target": 20000.0,
        "status": status,
        "donation_total": 3250.0,
        "featured": False,
        "phone_show": True,
        "phone_required": False,
        "birthday_show": False,
        "birthday_required": False,
        "address_show": False,
        "address_required": False,
        "tckno_show": False,
        "tckno_required": False,
        "message_show": True,
        "sub_donation_type_id": 3,
        "thanks_mail_id": 3,
        "payment_settings_id": 2,
        "certificate_id": None,
        "thanks_sms_id": None,
        "referral_certificate_id": None,
        "referral_thanks_mail_id": None,
        "has_special_date": True,
        "event_date": "2024-06-01",
        "bank_account_list": [],
        "update_title": None,
        "update_image": None,
        "update_personal_message": None,
        "association_campaign_target_id": None,
    }


ENDPOINTS = {
    Kind.DONATION: "/donation/{}",
    Kind.MEMBERSHIP_FEE: "/subscription/{}",
    Kind.TICKET_SALE: "/ticket-sale/{}",
    Kind.FORM_ANSWER: "/form/17/answer/{}",
    Kind.ECARD_SALE: "/ecard-transactions/{}",
    Kind.CAMPAIGN: "/fundraising-campaign/{}",
}


def detail(
    kind: Kind,
    obj: dict[str, Any],
    *,
    endpoint: str | None = None,
    list_row: dict[str, Any] | None = None,
    fonzip_id: int | None = None,
) -> Detail:
    fid = obj["id"] if fonzip_id is None else fonzip_id
    return Detail(
        kind=kind,
        fonzip_id=fid,
        obj=obj,
        list_row=list_row,
        endpoint=endpoint or ENDPOINTS[kind].format(fid),
    )


def norm(d: Detail, source: Source = Source.WEBHOOK, fetched_at: dt.datetime = FETCHED) -> Record:
    return normalize(d, tz=ISTANBUL, source=source, fetched_at=fetched_at)


# --- one realistic object of each kind --------------------------------------------------


def test_donation() -> None:
    obj = donation()
    record = norm(detail(Kind.DONATION, obj))
    assert record.kind is Kind.DONATION
    assert record.fonzip_id == 101
    assert record.status == "succeeded"
    assert record.amount == Decimal("250.0")
    assert record.currency == "TRY"
    assert record.occurred_at == dt.datetime(2024, 5, 6, 11, 3, 12, tzinfo=dt.UTC)
    assert record.business_date == dt.date(2024, 5, 6)
    assert record.person == Person(
        name="Ayşe Yılmaz",
        email="ayse.yilmaz@example.com",
        phone="+905321234567",
        fonzip_user_id=55,
    )
    assert record.source is Source.WEBHOOK
    assert record.fetched_at == FETCHED
    assert record.data == obj
    assert record.key == f"donation:101:{record.version}"


def test_membership_fee_payment_takes_the_transaction() -> None:
    record = norm(detail(Kind.MEMBERSHIP_FEE, membership_payment()))
    assert (record.status, record.amount, record.currency) == ("succeeded", Decimal("150.0"), "TRY")
    assert record.occurred_at == dt.datetime(2024, 5, 6, 7, 15, tzinfo=dt.UTC)
    assert record.business_date == dt.date(2024, 5, 6)
    assert record.person.name == "Ayşe Yılmaz"
    assert record.person.fonzip_user_id == 55


def test_membership_fee_debt_takes_the_due_record() -> None:
    record = norm(detail(Kind.MEMBERSHIP_FEE, membership_debt(1), endpoint="/debt/6"))
    assert record.status == "pending"
    assert record.amount == Decimal("600.0")
    assert record.currency is None
    assert record.occurred_at == dt.datetime(2024, 5, 6, 6, 0, tzinfo=dt.UTC)  # operation_date
    assert record.person == Person(
        name="Mehmet Öztürk",
        email="mehmet.ozturk@example.com",
        phone="+905331112233",
        fonzip_user_id=56,
    )


@pytest.mark.parametrize(
    ("due_status", "expected"),
    [
        (1, "pending"),
        (2, "succeeded"),
        (3, "cancelled"),
        (4, "refunded"),
        (6, "removed"),
        (7, "adjusted"),
        (8, "succeeded"),
    ],
)
def test_debt_statuses(due_status: int, expected: str) -> None:
    record = norm(detail(Kind.MEMBERSHIP_FEE, membership_debt(due_status), endpoint="/debt/6"))
    assert record.status == expected


def test_paid_debt_with_a_transaction_prefers_the_transaction() -> None:
    obj = membership_debt(8)
    obj["transaction"] = transaction(4, amount=600.0, complete_date="2024-05-06T12:00:00+03:00")
    record = norm(detail(Kind.MEMBERSHIP_FEE, obj, endpoint="/debt/6"))
    assert record.status == "refunded"
    assert record.currency == "TRY"
    assert record.occurred_at == dt.datetime(2024, 5, 6, 9, 0, tzinfo=dt.UTC)


def test_the_same_due_record_through_subscription_or_debt_has_one_version() -> None:
    via_subscription = norm(detail(Kind.MEMBERSHIP_FEE, membership_debt(8)))
    via_debt = norm(detail(Kind.MEMBERSHIP_FEE, membership_debt(8), endpoint="/debt/6"))
    assert via_subscription.version == via_debt.version


def test_ticket_sale_person_is_the_member() -> None:
    record = norm(detail(Kind.TICKET_SALE, ticket_sale()))
    assert (record.status, record.amount, record.currency) == ("succeeded", Decimal("350.0"), "TRY")
    assert record.business_date == dt.date(2024, 5, 6)
    assert record.person == Person(
        name="Zeynep Çelik",
        email="zeynep.celik@example.com",
        phone="+905441234567",
        fonzip_user_id=57,
    )


def test_form_answer() -> None:
    record = norm(detail(Kind.FORM_ANSWER, form_answer()))
    assert (record.status, record.amount, record.currency) == ("answered", Decimal("75.0"), "TRY")
    assert record.occurred_at == dt.datetime(2024, 5, 6, 8, 20, tzinfo=dt.UTC)
    assert record.person == Person(
        name="Emre Şahin", email="emre.sahin@example.com", phone=None, fonzip_user_id=58
    )


def test_free_form_answer_has_no_money_and_falls_back_to_names() -> None:
    obj = form_answer(with_transaction=False)
    obj["user"] = None
    record = norm(detail(Kind.FORM_ANSWER, obj))
    assert (record.status, record.amount, record.currency) == ("answered", None, None)
    assert record.person.name == "Emre Şahin"
    assert record.person.fonzip_user_id is None
    assert record.business_date == dt.date(2024, 5, 6)


def test_form_answer_without_complete_date_uses_the_transaction() -> None:
    obj = form_answer()
    obj["complete_date"] = None
    obj["transaction"]["complete_date"] = "2024-05-06T23:59:59+03:00"
    record = norm(detail(Kind.FORM_ANSWER, obj))
    assert record.business_date == dt.date(2024, 5, 6)


def test_ecard_sale_with_the_completed_fields() -> None:
    obj = ecard_detail_completed()
    record = norm(detail(Kind.ECARD_SALE, obj, list_row=ecard_list_row()))
    assert (record.status, record.amount, record.currency) == ("succeeded", Decimal("100.0"), "TRY")
    assert record.occurred_at == dt.datetime(2024, 5, 6, 13, 0, tzinfo=dt.UTC)
    assert record.business_date == dt.date(2024, 5, 6)
    assert record.person == Person(
        name="Fatma Kaya",
        email="fatma.kaya@example.com",
        phone="+905051234567",
        fonzip_user_id=59,
    )
    assert record.data == obj


def test_ecard_fields_missing_from_the_detail_are_taken_from_the_list_row_only() -> None:
    completed = norm(detail(Kind.ECARD_SALE, ecard_detail_completed(), list_row=ecard_list_row()))
    bare = norm(detail(Kind.ECARD_SALE, ecard_detail(), list_row=ecard_list_row()))
    assert bare.occurred_at == completed.occurred_at
    assert bare.currency == "TRY"
    # No other list-row field (recipient_count, delivery_time_mode, ...) gets into data,
    # so the version does not depend on whether a list row was at hand.
    assert "recipient_count" not in bare.data
    assert bare.data == completed.data
    assert bare.version == completed.version


def test_ecard_without_a_list_row_has_no_date_or_currency() -> None:
    record = norm(detail(Kind.ECARD_SALE, ecard_detail()))
    assert (record.occurred_at, record.business_date, record.currency) == (None, None, None)
    assert record.status == "succeeded"


def test_campaign_person_is_the_fundraiser_and_it_has_no_amount() -> None:
    record = norm(detail(Kind.CAMPAIGN, campaign()))
    assert (record.status, record.amount, record.currency) == ("approved", None, None)
    assert record.occurred_at == dt.datetime(2024, 5, 6, 5, 30, tzinfo=dt.UTC)
    assert record.business_date == dt.date(2024, 5, 6)
    assert record.person == Person(name="Can Demir", fonzip_user_id=60)


def test_record_round_trips_through_json() -> None:
    for d in (
        detail(Kind.DONATION, donation()),
        detail(Kind.ECARD_SALE, ecard_detail_completed()),
        detail(Kind.CAMPAIGN, campaign()),
    ):
        record = norm(d)
        assert Record.from_json_dict(record.to_json_dict()) == record


# --- statuses ---------------------------------------------------------------------------

PAYMENT_CASES = [
    (0, "pending"),
    (1, "pending"),
    (2, "pending"),
    (3, "succeeded"),
    (4, "refunded"),
    (5, "failed"),
    (6, "removed"),
]


@pytest.mark.parametrize(("payment_status", "expected"), PAYMENT_CASES)
def test_payment_status_of_the_money_kinds(payment_status: int, expected: str) -> None:
    fee = membership_payment()
    fee["transaction"]["payment_status"] = payment_status
    cases = [
        detail(Kind.DONATION, donation(payment_status)),
        detail(Kind.MEMBERSHIP_FEE, fee),
        detail(Kind.TICKET_SALE, ticket_sale(payment_status)),
        detail(Kind.ECARD_SALE, ecard_detail_completed(payment_status)),
    ]
    assert [norm(d).status for d in cases] == [expected] * 4


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, "waiting_approval"),
        (1, "approved"),
        (2, "rejected"),
        (3, "finalized"),
        (4, "deleted"),
        (5, "waiting_extra_approval"),
        (7, "archived"),
    ],
)
def test_campaign_statuses(status: int, expected: str) -> None:
    assert norm(detail(Kind.CAMPAIGN, campaign(status))).status == expected


@pytest.mark.parametrize(
    ("payment_status", "approval_status", "expected"),
    [
        (3, 1, "answered"),
        (3, None, "answered"),
        (3, 0, "waiting_approval"),
        (3, 2, "rejected"),
        (3, 9, "answered"),
        (4, 1, "refunded"),
        (5, 0, "failed"),
        (0, 1, "pending"),
        (2, 1, "pending"),
        (6, 1, "removed"),
        (None, 0, "waiting_approval"),
        (None, 2, "rejected"),
        (None, None, "answered"),
    ],
)
def test_form_answer_statuses(
    payment_status: int | None, approval_status: int | None, expected: str
) -> None:
    obj = form_answer(approval_status, with_transaction=payment_status is not None)
    if payment_status is not None:
        obj["transaction"]["payment_status"] = payment_status
    assert norm(detail(Kind.FORM_ANSWER, obj)).status == expected


def test_the_same_state_fetched_twice_has_the_same_version() -> None:
    by_webhook = norm(detail(Kind.DONATION, donation()), Source.WEBHOOK, FETCHED)
    by_reconcile = norm(
        detail(Kind.DONATION, donation(), list_row={"id": 101, "transaction__payment_status": 3}),
        Source.RECONCILE,
        FETCHED + dt.timedelta(days=1),
    )
    assert by_webhook.version == by_reconcile.version
    assert by_webhook.key == by_reconcile.key
    assert by_reconcile.data == donation()


def test_a_refund_of_a_donation_is_a_new_version() -> None:
    paid = norm(detail(Kind.DONATION, donation(3)))
    refunded_obj = donation(4)
    refunded_obj["transaction"]["refund_date"] = "2024-05-09T10:00:00+03:00"
    refunded_obj["transaction"]["refunded_by_id"] = 2
    refunded_obj["transaction"]["refund_reason"] = "Bağışçı talebi"
    refunded = norm(detail(Kind.DONATION, refunded_obj), Source.RECONCILE)
    assert refunded.status == "refunded"
    assert refunded.version != paid.version
    assert refunded.key != paid.key
    # Still the donation of the 6th: business dates follow the completion time.
    assert refunded.business_date == paid.business_date == dt.date(2024, 5, 6)


# --- dates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("complete_date", "expected"),
    [
        ("2024-05-06T23:59:59+03:00", dt.date(2024, 5, 6)),
        ("2024-05-07T00:00:00+03:00", dt.date(2024, 5, 7)),
        ("2024-05-06T20:59:59Z", dt.date(2024, 5, 6)),
        ("2024-05-06T21:00:00Z", dt.date(2024, 5, 7)),
        ("2024-05-06T23:59:59", dt.date(2024, 5, 6)),  # naive: Istanbul time, assumed
        ("2024-05-07T00:00:00", dt.date(2024, 5, 7)),
        ("2024-05-06T23:59:59.999999+03:00", dt.date(2024, 5, 6)),
    ],
)
def test_business_date_at_the_edges_of_the_day(complete_date: str, expected: dt.date) -> None:
    obj = donation()
    obj["transaction"]["complete_date"] = complete_date
    assert norm(detail(Kind.DONATION, obj)).business_date == expected


def test_business_date_follows_the_configured_zone() -> None:
    obj = donation()
    obj["transaction"]["complete_date"] = "2024-05-06T22:30:00Z"
    d = detail(Kind.DONATION, obj)
    assert normalize(
        d, tz=ISTANBUL, source=Source.CLI, fetched_at=FETCHED
    ).business_date == dt.date(2024, 5, 7)
    assert normalize(
        d, tz=ZoneInfo("Europe/Berlin"), source=Source.CLI, fetched_at=FETCHED
    ).business_date == dt.date(2024, 5, 7)
    assert normalize(
        d, tz=ZoneInfo("America/New_York"), source=Source.CLI, fetched_at=FETCHED
    ).business_date == dt.date(2024, 5, 6)


@pytest.mark.parametrize(
    "value",
    [
        "2024-05-06T14:03:12+03:00",
        "2024-05-06T11:03:12Z",
        "2024-05-06T11:03:12+00:00",
        "2024-05-06T14:03:12",
        "2024-05-06 14:03:12",
        "2024-05-06T13:03:12+02:00",
        " 2024-05-06T14:03:12+03:00 ",
        dt.datetime(2024, 5, 6, 14, 3, 12),
    ],
)
def test_parse_fonzip_datetime_accepts_offset_z_and_naive(value: object) -> None:
    parsed = parse_fonzip_datetime(value, ISTANBUL)
    assert parsed == dt.datetime(2024, 5, 6, 11, 3, 12, tzinfo=dt.UTC)
    assert parsed is not None
    assert parsed.utcoffset() == dt.timedelta(0)


def test_parse_fonzip_datetime_empty_and_bad_values() -> None:
    assert parse_fonzip_datetime(None, ISTANBUL) is None
    assert parse_fonzip_datetime("", ISTANBUL) is None
    assert parse_fonzip_datetime("2024-05-06", ISTANBUL) == dt.datetime(
        2024, 5, 5, 21, tzinfo=dt.UTC
    )
    with pytest.raises(ValueError, match="not an ISO-8601"):
        parse_fonzip_datetime("06.05.2024 14:03", ISTANBUL)
    with pytest.raises(ValueError, match="got int"):
        parse_fonzip_datetime(1714993392, ISTANBUL)


# --- amounts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (250, Decimal("250")),
        (19.99, Decimal("19.99")),
        (0.1, Decimal("0.1")),
        ("250.00", Decimal("250.00")),
        (" 1250.5 ", Decimal("1250.5")),
        (None, None),
    ],
)
def test_amounts_are_exact_decimals(raw: object, expected: Decimal | None) -> None:
    obj = donation()
    obj["transaction"]["amount"] = raw
    amount = norm(detail(Kind.DONATION, obj)).amount
    assert amount == expected
    assert str(amount) == str(expected)


# --- malformed objects ------------------------------------------------------------------


def break_donation(change: str) -> dict[str, Any]:
    obj = donation()
    tx = obj["transaction"]
    if change == "no id":
        del obj["id"]
    elif change == "text amount":
        tx["amount"] = "iki yüz elli"
    elif change == "bool amount":
        tx["amount"] = True
    elif change == "nan amount":
        tx["amount"] = "NaN"
    elif change == "bad date":
        tx["complete_date"] = "6 Mayıs 2024"
    elif change == "no transaction":
        obj["transaction"] = None
    elif change == "transaction list":
        obj["transaction"] = [tx]
    elif change == "unknown payment status":
        tx["payment_status"] = 7
    elif change == "no payment status":
        del tx["payment_status"]
    elif change == "currency text":
        tx["currency"] = "TRY"
    elif change == "user name number":
        obj["user"]["name"] = ["Ayşe"]
    return obj


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("no id", "id"),
        ("text amount", "transaction.amount"),
        ("bool amount", "transaction.amount"),
        ("nan amount", "transaction.amount"),
        ("bad date", "transaction.complete_date"),
        ("no transaction", "transaction"),
        ("transaction list", "transaction"),
        ("unknown payment status", "transaction.payment_status"),
        ("no payment status", "transaction.payment_status"),
        ("currency text", "transaction.currency"),
        ("user name number", "user.name"),
    ],
)
def test_malformed_donation_names_kind_id_and_field(change: str, field: str) -> None:
    with pytest.raises(NormalizeError) as caught:
        norm(detail(Kind.DONATION, break_donation(change), fonzip_id=101))
    error = caught.value
    assert (error.kind, error.fonzip_id, error.field) == (Kind.DONATION, 101, field)
    assert str(error).startswith(f"donation 101: field {field!r}: ")
    assert isinstance(error, ValueError)


def test_id_mismatch_is_refused() -> None:
    with pytest.raises(NormalizeError, match=r"donation 102: field 'id': is 101") as caught:
        norm(detail(Kind.DONATION, donation(), fonzip_id=102))
    assert caught.value.field == "id"


def test_numeric_string_id_is_accepted() -> None:
    obj = donation()
    obj["id"] = "101"
    assert norm(detail(Kind.DONATION, obj, fonzip_id=101)).fonzip_id == 101


@pytest.mark.parametrize(
    ("kind", "obj", "field"),
    [
        (Kind.TICKET_SALE, {**ticket_sale(), "transaction": None}, "transaction"),
        (Kind.MEMBERSHIP_FEE, {**membership_debt(), "status": None}, "status"),
        (Kind.MEMBERSHIP_FEE, {**membership_debt(), "status": 5}, "status"),
        (Kind.MEMBERSHIP_FEE, {**membership_debt(), "amount": "altı yüz"}, "amount"),
        (Kind.MEMBERSHIP_FEE, {**membership_debt(), "operation_date": "dün"}, "operation_date"),
        (Kind.FORM_ANSWER, {**form_answer(), "approval_status": "onaylı"}, "approval_status"),
        (Kind.FORM_ANSWER, {**form_answer(), "complete_date": 5}, "complete_date"),
        (
            Kind.ECARD_SALE,
            {**ecard_detail(), "transaction__payment_status": None},
            "transaction__payment_status",
        ),
        (Kind.ECARD_SALE, {**ecard_detail(), "transaction__amount": "yüz"}, "transaction__amount"),
        (Kind.CAMPAIGN, {**campaign(), "status": 6}, "status"),
        (Kind.CAMPAIGN, {**campaign(), "create_date": "geçen hafta"}, "create_date"),
        (Kind.CAMPAIGN, {**campaign(), "user_id": 1.5}, "user_id"),
    ],
)
def test_malformed_objects_of_every_kind(kind: Kind, obj: dict[str, Any], field: str) -> None:
    with pytest.raises(NormalizeError) as caught:
        norm(detail(kind, obj))
    assert (caught.value.kind, caught.value.field) == (kind, field)
    assert str(caught.value).startswith(f"{kind} {obj['id']}: field {field!r}")


def test_object_that_is_not_a_mapping_is_refused() -> None:
    bad = Detail(
        kind=Kind.CAMPAIGN,
        fonzip_id=601,
        obj=["not", "an", "object"],  # type: ignore[arg-type]
        list_row=None,
        endpoint="/fundraising-campaign/601",
    )
    with pytest.raises(NormalizeError, match="campaign 601"):
        norm(bad)


def test_naive_fetched_at_is_refused() -> None:
    with pytest.raises(ValueError, match="fetched_at"):
        normalize(
            detail(Kind.CAMPAIGN, campaign()),
            tz=ISTANBUL,
            source=Source.CLI,
            fetched_at=dt.datetime(2024, 5, 7),
        )


def test_data_is_a_copy_of_the_object() -> None:
    obj = donation()
    record = norm(detail(Kind.DONATION, obj))
    obj["transaction"]["payment_status"] = 4
    assert record.data["transaction"]["payment_status"] == 3
    assert norm(detail(Kind.DONATION, copy.deepcopy(record.data))).version == record.version


# --- list rows --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("list_status", "expected"),
    [("paid", "succeeded"), ("refund", "refunded"), ("failed", "failed")],
)
def test_money_list_rows_without_payment_status_follow_their_list(
    list_status: str, expected: str
) -> None:
    for kind in (Kind.DONATION, Kind.MEMBERSHIP_FEE, Kind.TICKET_SALE, Kind.ECARD_SALE):
        assert list_row_status(kind, list_status, {"id": 1}) == expected


def test_list_rows_prefer_their_payment_status() -> None:
    # A refunded e-card still found under `paid` (open question §6.3) reads as refunded,
    # which is what the normalized record says: no needless refetch.
    row = {**ecard_list_row(), "transaction__payment_status": 4}
    assert list_row_status(Kind.ECARD_SALE, "paid", row) == "refunded"
    assert list_row_status(Kind.DONATION, "paid", {"id": 1, "transaction__payment_status": 5}) == (
        "failed"
    )
    assert list_row_status(Kind.TICKET_SALE, "paid", ticket_sale(4)) == "refunded"


def test_list_row_status_agrees_with_normalize_for_ecards() -> None:
    for payment_status, _ in PAYMENT_CASES:
        row = {**ecard_list_row(), "transaction__payment_status": payment_status}
        record = norm(detail(Kind.ECARD_SALE, ecard_detail_completed(payment_status), list_row=row))
        assert list_row_status(Kind.ECARD_SALE, "paid", row) == record.status


@pytest.mark.parametrize(
    ("list_status", "expected"),
    [
        ("answer", "answered"),
        ("waiting_approval", "waiting_approval"),
        ("rejected", "rejected"),
        ("refund", "refunded"),
        ("failed", "failed"),
    ],
)
def test_form_list_rows_follow_their_list(list_status: str, expected: str) -> None:
    row = {
        "id": 401,
        "first_name": "Emre",
        "last_name": "Şahin",
        "email": "emre.sahin@example.com",
        "complete_date": "2024-05-06T11:20:00+03:00",
        "user_id": 58,
        "transaction_id": 9001,
        "transaction__amount": 75.0,
        "custom_form_id": 17,
        "custom_form__title": "Gönüllü Başvuru Formu",
    }
    assert list_row_status(Kind.FORM_ANSWER, list_status, row) == expected


def test_campaign_list_rows_follow_their_status() -> None:
    row = {"id": 601, "user_id": 60, "title": "Köy okuluna kütüphane", "status": 3}
    assert list_row_status(Kind.CAMPAIGN, "created", row) == "finalized"
    with pytest.raises(NormalizeError, match=r"campaign 601: field 'status'"):
        list_row_status(Kind.CAMPAIGN, "created", {**row, "status": 6})


def test_unknown_list_status_is_an_error() -> None:
    with pytest.raises(NormalizeError, match="unknown list 'answer'"):
        list_row_status(Kind.DONATION, "answer", {"id": 1})
    with pytest.raises(NormalizeError, match="unknown list 'paid'"):
        list_row_status(Kind.FORM_ANSWER, "paid", {"id": 1})


def test_list_row_id() -> None:
    assert list_row_id(Kind.DONATION, {"id": 101}) == 101
    assert list_row_id(Kind.DONATION, {"id": "101"}) == 101
    with pytest.raises(NormalizeError, match=r"donation \(id unknown\): field 'id': missing"):
        list_row_id(Kind.DONATION, {"name": "Ayşe"})
    with pytest.raises(NormalizeError, match="field 'id'"):
        list_row_id(Kind.ECARD_SALE, {"id": "beş yüz bir"})
    with pytest.raises(NormalizeError, match="field 'id'"):
        list_row_id(Kind.CAMPAIGN, {"id": True})


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
