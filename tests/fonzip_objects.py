"""Test support: Fonzip objects of the six kinds, shaped like the reference's (§3.0-3.6)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from fonzipd.fonzip.endpoints import Detail
from fonzipd.fonzip.normalizer import normalize
from fonzipd.kinds import Kind
from fonzipd.records import Record, Source

ISTANBUL = ZoneInfo("Europe/Istanbul")
FETCHED = dt.datetime(2024, 5, 7, 0, 30, tzinfo=dt.UTC)


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


# --- hostile values: what a broken or hostile API can send (issue 11, item 9) -----------

PERSONAL = ("Ayşe", "Yılmaz", "12345678901")
"""Planted in the hostile values below: no error message, log line or status may show them."""


def set_path(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A change that sets the dotted ``path`` of a detail object to ``value``."""
    *parents, last = path.split(".")

    def change(obj: dict[str, Any]) -> None:
        for key in parents:
            obj = obj[key]
        obj[last] = value

    return change


def _deep(levels: int) -> dict[str, Any]:
    tree: dict[str, Any] = {"name": "Ayşe Yılmaz"}
    for _ in range(levels):
        tree = {"x": tree}
    return tree


@dataclasses.dataclass(frozen=True)
class Hostile:
    """One hostile value in one kind's detail, and the field the error must name."""

    name: str
    kind: Kind
    change: Callable[[dict[str, Any]], None]
    field: str
    problem: str


HOSTILE = [
    Hostile(
        "lone surrogate in a name",
        Kind.DONATION,
        set_path("user.name", "Ay\ud800şe Yılmaz"),
        "user.name",
        "lone surrogate",
    ),
    Hostile(
        "lone surrogate in free text",
        Kind.DONATION,
        set_path("message", "Geçmiş olsun, Ayşe \udfff"),
        "message",
        "lone surrogate",
    ),
    Hostile(
        "string where a number belongs",
        Kind.DONATION,
        set_path("transaction.amount", "Ayşe Yılmaz"),
        "transaction.amount",
        "expected a number, got a string",
    ),
    Hostile(
        "negative amount",
        Kind.TICKET_SALE,
        set_path("transaction.amount", -350.0),
        "transaction.amount",
        "a negative amount",
    ),
    Hostile(
        "object where a name belongs",
        Kind.FORM_ANSWER,
        set_path("user.name", {"first": "Ayşe", "last": "Yılmaz"}),
        "user.name",
        "expected a string, got an object",
    ),
    Hostile(
        "object where a status belongs",
        Kind.ECARD_SALE,
        set_path("transaction__payment_status", {"code": 3, "by": "Ayşe"}),
        "transaction__payment_status",
        "expected an integer, got an object",
    ),
    Hostile(
        "currency that is not ISO 4217",
        Kind.DONATION,
        set_path("transaction.currency.iso_code", "Ayşe TL"),
        "transaction.currency.iso_code",
        "not an ISO 4217 currency code",
    ),
    Hostile(
        "date that does not parse",
        Kind.CAMPAIGN,
        set_path("create_date", "Ayşe'nin doğum günü"),
        "create_date",
        "not an ISO-8601 date-time",
    ),
    Hostile(
        "date out of range",
        Kind.DONATION,
        set_path("transaction.complete_date", "9999-12-31T23:59:59-05:00"),
        "transaction.complete_date",
        "outside the years",
    ),
    Hostile(
        "NaN in a number",
        Kind.DONATION,
        set_path("transaction.installment_amount", float("nan")),
        "transaction.installment_amount",
        "not a finite number",
    ),
    Hostile(
        "nested too deep",
        Kind.DONATION,
        set_path("custom_parameters", _deep(40)),  # deeper than 32; the client refuses beyond 64
        "custom_parameters.x.x",
        "nested more than",
    ),
]
