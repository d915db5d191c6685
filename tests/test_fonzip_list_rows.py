"""Records from list rows: the same normalized fields as the detail path, kind by kind."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fonzipd.fonzip.list_rows import (
    FIELDS,
    LIST_SHAPE_KEY,
    is_list_shape,
    record_from_row,
    row_view,
)
from fonzipd.fonzip.normalizer import NormalizeError, normalize
from fonzipd.fonzip.statuses import list_state
from fonzipd.kinds import Kind
from fonzipd.records import Source
from fonzipd.simulator import Simulator
from tests.test_fonzip_client import client_for

IST = ZoneInfo("Europe/Istanbul")
END = dt.date(2024, 5, 8)
DAYS = 3
NOW = dt.datetime(2024, 5, 9, 12, tzinfo=dt.UTC)

# The row properties the reference documents per list (§3.1, §3.2, §3.4, §3.6); a
# simulator that serves more would let rows look more complete than Fonzip's are.
DOCUMENTED: dict[Kind, frozenset[str]] = {
    Kind.DONATION: frozenset(
        [
            "id",
            "user_id",
            "transaction__fonzip_framework",
            "recurring_status",
            "transaction__payment_status",
            "d_type",
            "email",
            "user__email",
            "details",
            "name",
            "user__first_name",
            "user__last_name",
            "address",
            "city",
            "district",
            "transaction__amount",
            "transaction__currency__display",
            "transaction__currency__iso_code",
            "sub_donation_type_id",
            "sub_donation_type__name",
            "birthday",
            "sent_mail_id",
            "sent_mail__message_id",
            "sent_mail__status",
            "sent_mail_to_referring_id",
            "sent_mail_to_referring__message_id",
            "sent_mail_to_referring__status",
            "transaction__complete_date",
            "fundraising_campaign_id",
            "fundraising_campaign__title",
            "tckno",
            "phone",
            "fundraising_page_id",
            "fundraising_page__title",
            "module_id",
            "module__title",
            "transaction__payment_method",
            "added_by_id",
            "added_by__name",
            "f2f_group_id",
            "f2f_group__title",
            "transaction__fonzip_id",
            "recurring_order_id",
            "recurring_withdraw_count",
            "recurring_total_withdraw_count",
            "recurring_total_withdraw_amount",
            "transaction__transaction_id",
            "transaction__provision_no",
            "transaction__auth_code",
            "transaction__reference_id",
            "transaction__ip_address",
            "transaction__bank_account__name",
            "transaction__payment_settings__name",
            "fundraising_campaign__user_id",
            "fundraising_campaign__user__title",
            "api_tracking_id",
            "news_via_phone",
            "news_via_sms",
            "news_via_email",
            "application_id",
            "application__title",
            "transaction__bin_number",
            "transaction__receipt_no",
            "donor_type",
            "amount_visible",
            "name_hidden",
            "message",
            "show_message",
            "referring_name",
            "referring_email",
            "referring_phone",
            "transaction__refund_date",
            "transaction__transaction_error__code",
            "transaction__transaction_error__text",
            "transaction__refunded_by_id",
            "updated_by_id",
            "last_update_date",
            "recurring_cancel_reason",
            "recurring_cancel_date",
            "recurring_start_date",
            "cancelled_by_id",
            "cancelled_by__name",
            "marketing_channel__utm_source",
            "marketing_channel__utm_medium",
            "marketing_channel__utm_campaign",
            "marketing_channel__utm_content",
        ]
    ),
    Kind.MEMBERSHIP_FEE: frozenset(
        [
            "id",
            "user_id",
            "user__name",
            "first_name",
            "last_name",
            "email",
            "phone",
            "details",
            "period",
            "tckno",
            "transaction__fonzip_framework",
            "transaction__amount",
            "transaction__complete_date",
            "transaction__payment_status",
            "transaction__payment_method",
            "transaction__currency__display",
            "transaction__currency__iso_code",
            "transaction__fonzip_id",
            "transaction__refund_date",
            "transaction__transaction_error__code",
            "transaction__transaction_error__text",
        ]
    ),
    Kind.FORM_ANSWER: frozenset(
        [
            "id",
            "first_name",
            "last_name",
            "email",
            "complete_date",
            "user_id",
            "transaction_id",
            "transaction__amount",
            "custom_form_id",
            "custom_form__title",
        ]
    ),
    Kind.CAMPAIGN: frozenset(
        [
            "id",
            "user_id",
            "user__first_name",
            "user__last_name",
            "user__name",
            "create_date",
            "activation_date",
            "finish_date",
            "title",
            "url",
            "status",
            "donation_total",
            "team_id",
            "team_campaign__title",
            "target_currency_id",
            "target_currency__display",
            "featured",
        ]
    ),
}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(
        seed=14, days=DAYS, per_day=15, end_date=END, rate_per_minute=600_000
    ) as simulator:
        # A refunded object of every money kind, so that every list has rows.
        for kind in (Kind.DONATION, Kind.MEMBERSHIP_FEE, Kind.TICKET_SALE, Kind.ECARD_SALE):
            paid = [o for o in simulator.objects(kind) if _paid(kind, o)]
            await simulator.refund(kind, paid[0]["id"], deliver=False)
        yield simulator


def _paid(kind: Kind, obj: dict[str, Any]) -> bool:
    if kind is Kind.ECARD_SALE:
        return bool(obj["transaction__payment_status"] == 3)
    return bool(obj["transaction"] and obj["transaction"]["payment_status"] == 3)


def _window() -> tuple[dt.datetime, dt.datetime]:
    first = END - dt.timedelta(days=DAYS - 1)
    return (
        dt.datetime.combine(first, dt.time(), IST),
        dt.datetime.combine(END + dt.timedelta(days=2), dt.time(), IST),
    )


async def test_a_list_row_and_the_detail_give_the_same_normalized_fields(sim: Simulator) -> None:
    """Every object of every kind and list: the record built from its list row equals,
    field for field on the normalized fields, the record the detail path gives; where
    the row lacks a field (form answers: the currency), no record is built from it and
    the fields it does show still agree."""
    assert sim.base_url is not None
    start, end = _window()
    built: dict[Kind, int] = dict.fromkeys(Kind, 0)
    seen: dict[Kind, int] = dict.fromkeys(Kind, 0)
    async with client_for(sim.base_url) as client:
        for kind in Kind:
            for list_status in kind.list_statuses:
                listed = await client.list_window(kind, list_status, start, end)
                for row in listed.rows:
                    seen[kind] += 1
                    detail = await client.fetch_detail(kind, row["id"], list_row=row)
                    from_detail = normalize(detail, tz=IST, source=Source.BACKFILL, fetched_at=NOW)
                    view = row_view(kind, list_status, row, IST)
                    # What a row shows of the status is the list state (form answers'
                    # lists sort by payment, then approval).
                    listed_as = dataclasses.replace(
                        from_detail,
                        status=list_state(kind, from_detail.status, from_detail.approval),
                    )
                    for name in FIELDS:
                        if name not in view.missing:
                            assert getattr(view, name) == getattr(listed_as, name), (
                                kind,
                                row["id"],
                                name,
                            )
                    record = record_from_row(
                        kind, list_status, row, tz=IST, source=Source.BACKFILL, fetched_at=NOW
                    )
                    if kind is Kind.FORM_ANSWER:
                        assert record is None
                        assert "currency" in view.missing
                        continue
                    assert record is not None, (kind, row["id"], view.missing)
                    built[kind] += 1
                    for name in (*FIELDS, "business_date", "fonzip_id", "kind"):
                        assert getattr(record, name) == getattr(from_detail, name), (
                            kind,
                            row["id"],
                            name,
                        )
                    if kind is Kind.TICKET_SALE:
                        # The row is the detail's schema: the same record, the same version.
                        assert record.version == from_detail.version
                        assert not is_list_shape(record)
                    else:
                        assert record.data[LIST_SHAPE_KEY] == {
                            "shape": "list_row",
                            "list": list_status,
                        }
                        assert is_list_shape(record)
                        assert not is_list_shape(from_detail)
                        assert {k: v for k, v in record.data.items() if k != LIST_SHAPE_KEY} == row
    assert all(seen.values()), seen
    assert all(built[k] == seen[k] for k in Kind if k is not Kind.FORM_ANSWER), (built, seen)


async def test_rows_ask_for_the_documented_list_fields_and_carry_no_more(sim: Simulator) -> None:
    assert sim.base_url is not None
    start, end = _window()
    async with client_for(sim.base_url) as client:
        for kind, documented in DOCUMENTED.items():
            for list_status in kind.list_statuses:
                for row in (await client.list_window(kind, list_status, start, end)).rows:
                    assert set(row) <= documented, (kind, set(row) - documented)
        await client.list_window(Kind.DONATION, "paid", start, end)
        await client.list_window(Kind.ECARD_SALE, "paid", start, end)
    donations = [r.query for r in sim.requests if r.path.endswith("/donations")]
    ecards = [r.query for r in sim.requests if r.path.endswith("/ecard-transactions")]
    assert donations
    assert all("list=amount" in q and "list=complete_date" in q for q in donations)
    # E-card refund and failed lists ignore `list`: it is sent to the paid list only.
    assert all(("list=amount" in q) == ("status=paid" in q) for q in ecards), ecards


def test_a_row_that_lacks_a_field_builds_no_record_and_a_bad_value_is_named() -> None:
    row = {
        "id": 5,
        "user_id": 9,
        "name": "A B",
        "email": "a@example.org",
        "phone": "1",
        "transaction__payment_status": 3,
        "transaction__amount": 10.5,
        "transaction__complete_date": "2024-05-06T10:00:00+03:00",
    }
    # No ISO currency in the row: the detail must be fetched.
    assert row_view(Kind.DONATION, "paid", row, IST).missing == {"currency"}
    assert (
        record_from_row(Kind.DONATION, "paid", row, tz=IST, source=Source.RECONCILE, fetched_at=NOW)
        is None
    )
    row["transaction__currency__iso_code"] = "TRY"
    record = record_from_row(
        Kind.DONATION, "paid", row, tz=IST, source=Source.RECONCILE, fetched_at=NOW
    )
    assert record is not None
    assert str(record.amount) == "10.5"
    assert record.currency == "TRY"
    row["transaction__amount"] = -1
    with pytest.raises(NormalizeError, match=r"donation 5: field 'transaction__amount'"):
        row_view(Kind.DONATION, "paid", row, IST)
    # A debt's row without a transaction: its status is its due record's (detail only).
    debt = {"id": 6, "user_id": 9, "user__name": "A B", "email": None, "phone": None}
    debt |= {"transaction__payment_status": None, "transaction__amount": None}
    assert "status" in row_view(Kind.MEMBERSHIP_FEE, "paid", debt, IST).missing
