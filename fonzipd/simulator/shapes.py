"""How Fonzip shapes each kind's list rows and detail objects, rendered from entries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from fonzipd.kinds import Kind
from fonzipd.simulator.account import FAILED, REFUNDED, Entry, Person

__all__ = [
    "DETAIL_KEYS",
    "LIST_KEYS",
    "detail",
    "ecard_row",
    "iso",
    "row",
    "user_answer_row",
    "user_ecard_row",
]

LIST_KEYS: dict[Kind, str] = {
    Kind.DONATION: "donation_list",
    Kind.MEMBERSHIP_FEE: "subscription_list",
    Kind.TICKET_SALE: "sales_list",
    Kind.FORM_ANSWER: "answer_list",
    Kind.ECARD_SALE: "sale_list",
    Kind.CAMPAIGN: "campaign_list",
}
DETAIL_KEYS: dict[Kind, str] = {
    Kind.DONATION: "donation",
    Kind.MEMBERSHIP_FEE: "subscription",
    Kind.TICKET_SALE: "ticket_sale",
    Kind.FORM_ANSWER: "answer",
    Kind.ECARD_SALE: "ecard_transaction",
    Kind.CAMPAIGN: "campaign",
}

_CURRENCIES: dict[str, dict[str, Any]] = {
    "TRY": {"id": 1, "name": "Türk Lirası", "short": "TL", "display": "TRY", "value": 1.0},
    "USD": {"id": 2, "name": "Amerikan Doları", "short": "$", "display": "USD", "value": 34.2},
    "EUR": {"id": 3, "name": "Euro", "short": "€", "display": "EUR", "value": 37.1},
}
_PAYMENT_STATUS_DISPLAY = {3: "Başarılı", 4: "İade Edildi", 5: "Başarısız"}
_ERROR = ("10051", "Kartın limiti yetersiz, yetersiz bakiye")
_REFUNDER = (7, "Dernek Yöneticisi")
_REFUNDED_BY = "transaction__refunded_by_id"


def iso(value: dt.datetime | None, zone: dt.tzinfo) -> str | None:
    """ISO-8601 with the association's explicit offset (``+03:00``), as a fake should."""
    if value is None:
        return None
    return value.astimezone(zone).isoformat()


def last_update(entry: Entry) -> dt.datetime:
    """When the object last changed at Fonzip: created, refunded or amended (``updated_at``)."""
    moments = [entry.when, entry.refund_date, entry.extra.get("updated_at")]
    return max(m for m in moments if m is not None)


def _amount(entry: Entry) -> float | None:
    return None if entry.amount is None else float(entry.amount)


def _currency(code: str | None, zone: dt.tzinfo) -> dict[str, Any] | None:
    if code is None:
        return None
    base = _CURRENCIES[code]
    return {
        **base,
        "iyzi_code": code,
        "iso_code": code,
        "last_update_date": iso(dt.datetime(2026, 1, 1, 9, 0, tzinfo=dt.UTC), zone),
    }


def _transaction(entry: Entry, zone: dt.tzinfo) -> dict[str, Any] | None:
    if entry.transaction_id is None:
        return None
    refunded = entry.payment_status == REFUNDED
    failed = entry.payment_status == FAILED
    return {
        "id": entry.transaction_id,
        "conversation_id": entry.transaction_id * 7,
        "complete_date": iso(entry.when, zone),
        "amount": _amount(entry),
        "currency": _currency(entry.currency, zone),
        "installment_count": 1,
        "installment_amount": _amount(entry),
        "ip_address": f"88.{entry.id % 250}.12.{entry.transaction_id % 250}",
        "payment_status": entry.payment_status,
        "payment_status_display": _PAYMENT_STATUS_DISPLAY.get(entry.payment_status, ""),
        "error_code": _ERROR[0] if failed else None,
        "error_text": _ERROR[1] if failed else None,
        "refund_date": iso(entry.refund_date, zone),
        "fonzip_id": f"FZ{entry.transaction_id}",
        "fonzip_id_hashed": f"h{entry.transaction_id:x}",
        "transaction_id": f"T{entry.transaction_id}",
        "provision_no": f"P{entry.transaction_id % 100000:05d}",
        "receipt_no": None,
        "auth_code": f"A{entry.transaction_id % 10000:04d}",
        "reference_id": f"R{entry.transaction_id}",
        "order_id": f"O{entry.transaction_id}",
        "payment_settings_id": 1,
        "payment_settings": {
            "id": 1,
            "name": "iyzico",
            "provider_no": "iyzico",
            "status": 1,
            "business_account": True,
        },
        "bank_account_id": None,
        "bank_account": None,
        "payment_method": 0,
        "refunded_by_id": _REFUNDER[0] if refunded else None,
        "refunded_by__name": _REFUNDER[1] if refunded else None,
        "refund_reason": "Bağışçı talebi" if refunded else None,
        "fonzip_framework": True,
        "bin_number": "454671",
        "last_four": f"{entry.transaction_id % 10000:04d}",
    }


def _user_reference(person: Person) -> dict[str, Any]:
    return {
        "id": person.id,
        "email": person.email,
        "phone": person.phone,
        "name": person.name,
        "first_name": person.first_name,
        "last_name": person.last_name,
        "tckno": None,
        "profile_pic": None,
        "corporate_type": False,
        "membership_no": person.membership_no,
    }


def _user_details(person: Person) -> dict[str, Any]:
    return {
        **_user_reference(person),
        "nationality_text": "Türkiye",
        "birthday": None,
        "address": "Moda Cad. No: 5, Kadıköy",
        "city_text": "İstanbul",
        "district_text": "Kadıköy",
        "country_text": "Türkiye",
        "private": False,
        "admin": False,
        "total_financial": 0.0,
        "user_defined_values": {},
    }


def _sent_mail(entry: Entry) -> dict[str, Any]:
    return {"id": entry.id + 7_000_000, "message_id": entry.id + 8_000_000, "status": 1}


def _money_row(entry: Entry, zone: dt.tzinfo) -> dict[str, Any]:
    """The ``transaction__*`` fields every flat money row carries."""
    currency = _CURRENCIES[entry.currency] if entry.currency else None
    refunded = entry.payment_status == REFUNDED
    failed = entry.payment_status == FAILED
    return {
        "transaction__fonzip_framework": True,
        "transaction__amount": _amount(entry),
        "transaction__currency__display": currency["display"] if currency else None,
        "transaction__currency__iso_code": entry.currency,
        "transaction__complete_date": iso(entry.when, zone),
        "transaction__payment_status": entry.payment_status,
        "transaction__payment_method": 0,
        "transaction__fonzip_id": f"FZ{entry.transaction_id}",
        "transaction__refund_date": iso(entry.refund_date, zone),
        "transaction__refunded_by_id": _REFUNDER[0] if refunded else None,
        "transaction__transaction_error__code": _ERROR[0] if failed else None,
        "transaction__transaction_error__text": _ERROR[1] if failed else None,
    }


# -- list rows -------------------------------------------------------------------------


def row(entry: Entry, zone: dt.tzinfo) -> dict[str, Any]:
    """The list row of ``entry`` as its list endpoint returns it (e-cards: default set)."""
    person = entry.person
    if entry.kind is Kind.DONATION:
        category_id, category_name = entry.extra["category"]
        return {
            "id": entry.id,
            "user_id": person.id,
            "recurring_status": 0,
            "d_type": 0,
            "email": person.email,
            "user__email": person.email,
            "name": person.name,
            "user__first_name": person.first_name,
            "user__last_name": person.last_name,
            "phone": person.phone,
            "details": None,
            "sub_donation_type_id": category_id,
            "sub_donation_type__name": category_name,
            "donor_type": entry.extra["donor_type"],
            "message": entry.extra["message"],
            "show_message": entry.extra["message"] is not None,
            "amount_visible": True,
            "name_hidden": False,
            **_money_row(entry, zone),
        }
    if entry.kind is Kind.MEMBERSHIP_FEE:
        return {
            "id": entry.id,
            "user_id": person.id,
            "user__name": person.name,
            "first_name": person.first_name,
            "last_name": person.last_name,
            "email": person.email,
            "phone": person.phone,
            "details": "Aidat ödemesi",
            "period": entry.extra["period"].isoformat(),
            "tckno": None,
            # MembershipDues documents no transaction__refunded_by_id: not served.
            **{k: v for k, v in _money_row(entry, zone).items() if k != _REFUNDED_BY},
        }
    if entry.kind is Kind.TICKET_SALE:
        # The reference's list row for ticket sales is TicketSale itself: nested.
        return _ticket_sale(entry, zone)
    if entry.kind is Kind.FORM_ANSWER:
        form_id, form_title, _ = entry.extra["form"]
        return {
            "id": entry.id,
            "first_name": person.first_name,
            "last_name": person.last_name,
            "email": person.email,
            "complete_date": iso(entry.when, zone),
            "user_id": person.id,
            "transaction_id": entry.transaction_id,
            "transaction__amount": _amount(entry),
            "custom_form_id": form_id,
            "custom_form__title": form_title,
        }
    if entry.kind is Kind.ECARD_SALE:
        return ecard_row(entry, zone, status="paid", wanted=None)
    return _campaign_row(entry, zone)


_ECARD_BASE = (
    "id",
    "user_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "certificate_id",
    "certificate_file",
    "zip_file",
    "cargo_status",
    "cargo_company",
    "cargo_number",
    "recipient_count",
    "transaction__payment_status",
    "transaction__fonzip_framework",
)
_ECARD_DEFAULT = (
    "certificate__title",
    "transaction__amount",
    "transaction__currency__display",
    "transaction__currency__iso_code",
    "transaction__payment_method",
    "transaction__complete_date",
    "delivery_time_mode",
    "delivery_date",
    "sent_mail_id",
    "sent_mail__message_id",
    "sent_mail__status",
    "sent_mail_to_referring_id",
    "sent_mail_to_referring__message_id",
    "sent_mail_to_referring__status",
)
_ECARD_EXPANSIONS: dict[str, tuple[str, ...]] = {
    "ecard": ("certificate__title",),
    "amount": (
        "transaction__amount",
        "transaction__currency__display",
        "transaction__currency__iso_code",
    ),
    "email_status": _ECARD_DEFAULT[8:],
    "card_number": ("transaction__bin_number", "transaction__last_four"),
    "delivery_date": ("delivery_time_mode", "delivery_date"),
    "added_by_id": ("added_by_id", "added_by__name"),
    "category": ("certificate__categories__name",),
}
_ECARD_PREFIXED = (
    "complete_date",
    "payment_method",
    "fonzip_id",
    "transaction_id",
    "provision_no",
    "receipt_no",
    "ip_address",
    "payment_settings_id",
    "payment_settings__name",
    "bank_account_id",
    "bank_account__name",
)
_ECARD_REFUND = (
    "transaction__refund_date",
    "transaction__refund_reason",
    "transaction__refunded_by_id",
    "transaction__refunded_by__name",
)
_ECARD_FAILED = ("transaction__transaction_error__code", "transaction__transaction_error__text")


def _ecard_full(entry: Entry, zone: dt.tzinfo) -> dict[str, Any]:
    person = entry.person
    ecard_id, ecard_title = entry.extra["ecard"]
    recipients = entry.extra["recipients"]
    refunded = entry.payment_status == REFUNDED
    currency = _CURRENCIES[entry.currency] if entry.currency else None
    return {
        **_money_row(entry, zone),
        "id": entry.id,
        "user_id": person.id,
        "first_name": person.first_name,
        "last_name": person.last_name,
        "email": person.email,
        "phone": person.phone,
        "certificate_id": ecard_id,
        "certificate__title": ecard_title,
        "certificate_file": f"https://files.example.com/ecard/{entry.id}.pdf",
        "zip_file": f"https://files.example.com/ecard/{entry.id}.zip" if recipients > 1 else None,
        "cargo_status": 0,
        "cargo_company": None,
        "cargo_number": None,
        "recipient_count": recipients,
        "transaction__currency__display": currency["display"] if currency else None,
        "transaction__transaction_id": f"T{entry.transaction_id}",
        "transaction__provision_no": f"P{(entry.transaction_id or 0) % 100000:05d}",
        "transaction__receipt_no": None,
        "transaction__ip_address": "88.1.12.7",
        "transaction__payment_settings_id": 1,
        "transaction__payment_settings__name": "iyzico",
        "transaction__bank_account_id": None,
        "transaction__bank_account__name": None,
        "transaction__bin_number": "454671",
        "transaction__last_four": f"{(entry.transaction_id or 0) % 10000:04d}",
        "transaction__refund_reason": "Bağışçı talebi" if refunded else None,
        "transaction__refunded_by__name": "Dernek Yöneticisi" if refunded else None,
        "delivery_time_mode": 0,
        "delivery_date": None,
        "sent_mail_id": entry.id + 7_000_000,
        "sent_mail__message_id": entry.id + 8_000_000,
        "sent_mail__status": 1,
        "sent_mail_to_referring_id": None,
        "sent_mail_to_referring__message_id": None,
        "sent_mail_to_referring__status": None,
        "added_by_id": None,
        "added_by__name": None,
        "news_via_phone": False,
        "news_via_sms": False,
        "news_via_email": True,
        "recipient_list": [
            {"index": i, "name": person.name, "email": person.email, "cargo_status": 0}
            for i in range(recipients)
        ],
        "bill_type": 0,
        "billing_name": None,
        "tax_info": None,
        "billing_address": None,
        "billing_district": None,
        "billing_city": None,
        "address": None,
        "city": "İstanbul",
        "district": None,
        "referring": False,
        "third_name": None,
        "referring_name": None,
        "referring_email": None,
        "referring_phone": None,
        "language": "tr",
        "donor_type": 1,
        "delivery_to": 0,
        "delivery_to_name": None,
        "custom_message": None,
        "has_cargo": False,
        "deliver_as_mail": True,
        "deliver_as_cargo": False,
        "ecard_date": None,
        "certificate__categories__name": ["Sertifikalar"],
        "marketing_channel__utm_source": None,
        "marketing_channel__utm_medium": None,
        "marketing_channel__utm_campaign": None,
        "marketing_channel__utm_content": None,
    }


def _ecard_fields(wanted: Iterable[str]) -> list[str]:
    fields: list[str] = []
    for value in wanted:
        if value in _ECARD_EXPANSIONS:
            fields.extend(_ECARD_EXPANSIONS[value])
        elif value in _ECARD_PREFIXED:
            fields.append(f"transaction__{value}")
        elif value.startswith("marketing_channel__utm_") or value in _ECARD_OTHER:
            fields.append(value)
        # Unknown values are ignored, as the reference says.
    return fields


_ECARD_OTHER = frozenset(
    [
        "news_via_phone",
        "news_via_sms",
        "news_via_email",
        "recipient_list",
        "bill_type",
        "billing_name",
        "tax_info",
        "billing_address",
        "billing_district",
        "billing_city",
        "address",
        "city",
        "district",
        "referring",
        "third_name",
        "referring_name",
        "referring_email",
        "referring_phone",
        "language",
        "donor_type",
        "delivery_to",
        "delivery_to_name",
        "custom_message",
        "has_cargo",
        "deliver_as_mail",
        "deliver_as_cargo",
        "ecard_date",
    ]
)


def ecard_row(
    entry: Entry, zone: dt.tzinfo, *, status: str, wanted: list[str] | None
) -> dict[str, Any]:
    """An e-card list row: base set plus the default set, or the ``list`` fields (paid only).

    Refund and failed lists return a fixed set and ignore ``list``; fields not selected
    are left out entirely, not sent as null.
    """
    full = _ecard_full(entry, zone)
    fields = list(_ECARD_BASE)
    if status == "paid" and wanted:
        fields += _ecard_fields(wanted)
    else:
        fields += _ECARD_DEFAULT
    if status == "refund":
        fields += _ECARD_REFUND
    elif status == "failed":
        fields += _ECARD_FAILED
    return {name: full[name] for name in dict.fromkeys(fields)}


def _campaign_row(entry: Entry, zone: dt.tzinfo) -> dict[str, Any]:
    person = entry.person
    status = entry.extra["campaign_status"]
    return {
        "id": entry.id,
        "user_id": person.id,
        "user__first_name": person.first_name,
        "user__last_name": person.last_name,
        "user__name": person.name,
        "create_date": iso(entry.when, zone),
        "activation_date": iso(entry.when, zone) if status in (1, 3, 7) else None,
        "finish_date": None,
        "title": entry.extra["title"],
        "url": f"kampanya-{entry.id}",
        "status": status,
        "donation_total": float(entry.extra["donation_total"]),
        "team_id": None,
        "team_campaign__title": None,
        "target_currency_id": 1,
        "target_currency__display": "TRY",
        "featured": False,
    }


def user_answer_row(entry: Entry, zone: dt.tzinfo) -> dict[str, Any]:
    """A row of ``GET /user/{id}/form-answers`` (``UsersAnswers``)."""
    form_id, form_title, _ = entry.extra["form"]
    return {
        "id": entry.id,
        "complete_date": iso(entry.when, zone),
        "transaction_id": entry.transaction_id,
        "transaction__amount": _amount(entry),
        "custom_form_id": form_id,
        "custom_form__title": form_title,
    }


def user_ecard_row(entry: Entry, zone: dt.tzinfo) -> dict[str, Any]:
    """A row of ``GET /user/{id}/ecard-transactions`` (``UsersEcardTransactions``)."""
    full = _ecard_full(entry, zone)
    names = (
        "id",
        "certificate_id",
        "certificate__title",
        "transaction__amount",
        "transaction__currency__display",
        "transaction__currency__iso_code",
        "transaction__complete_date",
    )
    return {name: full[name] for name in names}


# -- details ---------------------------------------------------------------------------


def detail(entry: Entry, zone: dt.tzinfo) -> dict[str, Any]:
    """The detail object of ``entry``, unwrapped from its envelope key."""
    person = entry.person
    if entry.kind is Kind.DONATION:
        category_id, _ = entry.extra["category"]
        message = entry.extra["message"]
        return {
            "id": entry.id,
            "user": _user_reference(person),
            "transaction": _transaction(entry, zone),
            "d_type": 0,
            "sub_donation_type_id": category_id,
            "donor_type": entry.extra["donor_type"],
            "name": person.name,
            "phone": person.phone,
            "email": person.email,
            "address": None,
            "city": "İstanbul",
            "district": None,
            "birthday": None,
            "details": None,
            "tckno": None,
            "news_via_phone": False,
            "news_via_sms": False,
            "news_via_email": True,
            "recurring_limit": 0,
            "recurring_withdrawal": False,
            "recurring_status": 0,
            "recurring_cancel_date": None,
            "recurring_order_id": None,
            "referring": False,
            "name_hidden": False,
            "amount_visible": True,
            "message": message,
            "show_message": message is not None,
            "fundraising_campaign_id": None,
            "fundraising_page_id": None,
            "module_id": 11,
            "module__name": "Genel Bağış Formu",
            "module__custom_parameters": {},
            "custom_parameters": {},
            "api_tracking_id": None,
            "sent_mail": _sent_mail(entry),
            "sent_mail_to_referring": None,
            "card_info": None,
            "added_by_id": None,
            "added_by__name": None,
            "last_update_date": iso(last_update(entry), zone),
        }
    if entry.kind is Kind.MEMBERSHIP_FEE:
        is_debt = entry.extra["is_debt"]
        if entry.payment_status == REFUNDED:
            status, status_name = 4, "İade"
        elif is_debt:
            status, status_name = (
                (1, "Ödenmemiş Borç")
                if entry.payment_status == FAILED
                else (
                    8,
                    "Ödenmiş Borç",
                )
            )
        else:
            status, status_name = 2, "Ödeme"
        return {
            "id": entry.id,
            "user_id": person.id,
            "user": _user_reference(person),
            "transaction": _transaction(entry, zone),
            "status": status,
            "status_name": status_name,
            "details": "Aidat borcu" if is_debt else "Aidat ödemesi",
            "operation_date": iso(entry.when, zone),
            "period": entry.extra["period"].isoformat(),
            "balance": 0.0,
            "first_name": person.first_name,
            "last_name": person.last_name,
            "phone": person.phone,
            "email": person.email,
            "tckno": None,
            "amount": _amount(entry),
            "assignment_status": 1,
            "card_info": "4546 71** **** 1234",
            "bill_no": None,
            "due_date": iso(entry.when, zone) if is_debt else None,
            "recurring": False,
            "order_id": None,
            "added_by_id": None,
            "added_by__name": None,
        }
    if entry.kind is Kind.TICKET_SALE:
        return _ticket_sale(entry, zone)
    if entry.kind is Kind.FORM_ANSWER:
        return {
            "id": entry.id,
            "transaction": _transaction(entry, zone),
            "complete_date": iso(entry.when, zone),
            "user": {"id": person.id, "name": person.name, "membership_no": person.membership_no},
            "email": person.email,
            "email_verification": True,
            "first_name": person.first_name,
            "last_name": person.last_name,
            # Undocumented in the reference; assumed 0 waiting, 1 approved, 2 rejected.
            "approval_status": entry.extra["approval_status"],
            "form_answer_list": [
                {
                    "id": entry.id * 10 + 1,
                    "answer": person.phone,
                    "db_answer": person.phone,
                    "selected_option_list": [],
                    "question": {
                        "id": 1,
                        "title": "Telefon",
                        "slug": "telefon",
                        "order": 1,
                        "question_type": 0,
                        "required": True,
                        "information": None,
                        "static_question": 1,
                    },
                }
            ],
            "sent_mail": _sent_mail(entry),
        }
    if entry.kind is Kind.ECARD_SALE:
        full = _ecard_full(entry, zone)
        names = [
            "id",
            "user_id",
            "certificate_file",
            "first_name",
            "last_name",
            "email",
            "phone",
            "address",
            "city",
            "district",
            "referring",
            "referring_name",
            "referring_phone",
            "referring_email",
            "delivery_to",
            "delivery_to_name",
            "deliver_as_cargo",
            "cargo_status",
            "donor_type",
            "cargo_number",
            "cargo_company",
            "sent_mail__status",
            "sent_mail_to_referring__message_id",
            "certificate_id",
            "certificate__title",
            "transaction__payment_settings__name",
            "transaction__currency__display",
            "transaction__amount",
            "transaction__payment_status",
            "transaction__transaction_error__text",
            "transaction__bin_number",
            "transaction__refund_date",
            "transaction__fonzip_id",
            "transaction__provision_no",
            "transaction__fonzip_framework",
            "transaction__payment_method",
            "added_by__name",
            "transaction__refunded_by_id",
            "transaction__refunded_by__name",
        ]
        # No transaction__complete_date and no transaction__currency__iso_code: the
        # reference's detail schema lacks them, and so does this fake.
        return {
            **{name: full[name] for name in names},
            "certificate__has_cargo": False,
            "updated_by_id": None,
            "updated_by__name": None,
            "last_update_date": iso(last_update(entry), zone),
        }
    status = entry.extra["campaign_status"]
    return {
        "id": entry.id,
        "user_id": person.id,
        "user__first_name": person.first_name,
        "user__last_name": person.last_name,
        "user__profile_pic": None,
        "create_date": iso(entry.when, zone),
        "activation_date": iso(entry.when, zone) if status in (1, 3, 7) else None,
        "finish_date": None,
        "title": entry.extra["title"],
        "url": f"kampanya-{entry.id}",
        "image": None,
        "personal_message": "Desteğiniz için teşekkürler, birlikte başaracağız!",
        "user_note": None,
        "has_target": True,
        "hide_total_donation": False,
        "hide_donor_list": False,
        "target": entry.extra["target"],
        "status": status,
        "donation_total": float(entry.extra["donation_total"]),
        "featured": False,
        "message_show": True,
        "sub_donation_type_id": 3,
        "payment_settings_id": 1,
        "has_special_date": False,
        "event_date": None,
        "bank_account_list": [],
        "association_campaign_target_id": None,
    }


def _ticket_sale(entry: Entry, zone: dt.tzinfo) -> dict[str, Any]:
    person = entry.person
    event_id, event_name, event_url = entry.extra["event"]
    return {
        "id": entry.id,
        "transaction": _transaction(entry, zone),
        "event": {
            "id": event_id,
            "name": event_name,
            "url": event_url,
            "venue": 0,
            "address": "Harbiye Açıkhava, İstanbul",
            "paid_event": True,
            "start_date": "2026-06-01T19:00:00+03:00",
            "all_day": False,
            "end_date": "2026-06-01T22:00:00+03:00",
            "active": True,
            "location": 0,
        },
        "sold_tickets": [{"id": entry.id * 10 + i} for i in range(entry.extra["quantity"])],
        "member": _user_details(person),
        "name": person.name,
        "phone": person.phone,
        "email": person.email,
        "address": None,
        "city": "İstanbul",
        "district": None,
        "post_code": None,
        "details": None,
        "sent_mail": _sent_mail(entry),
    }
