"""The CSV layout: amounts with their currency's decimals, and the entries a state implies."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest

from fonzipd.kinds import Kind
from fonzipd.records import DELETED
from fonzipd.sinks.csv_format import ENTRY_COLUMNS, PROFILES, entries, entry_row, format_amount
from tests.fonzip_objects import ISTANBUL, detail, donation, form_answer, norm


@pytest.mark.parametrize(
    ("amount", "currency", "point", "comma"),
    [
        ("250.5", "TRY", "250.50", "250,50"),
        ("1000.0", "TRY", "1000.00", "1000,00"),
        ("1000", "EUR", "1000.00", "1000,00"),
        ("0.1", "USD", "0.10", "0,10"),
        ("1000", "JPY", "1000", "1000"),
        ("12.5", "KWD", "12.500", "12,500"),
        ("-250.5", "TRY", "-250.50", "-250,50"),
        # Never rounded: more digits than the currency has are kept.
        ("1.2345", "TRY", "1.2345", "1,2345"),
        ("12345678901234.5", None, "12345678901234.50", "12345678901234,50"),
    ],
)
def test_amounts_have_their_currencys_decimals(
    amount: str, currency: str | None, point: str, comma: str
) -> None:
    assert format_amount(Decimal(amount), currency, decimal_comma=False) == point
    assert format_amount(Decimal(amount), currency, decimal_comma=True) == comma


def _refunded_donation() -> dict[str, object]:
    obj = donation(4)
    obj["transaction"]["refund_date"] = "2024-05-09T10:30:00+03:00"
    return obj


def test_a_payment_is_one_entry_on_its_day() -> None:
    record = norm(detail(Kind.DONATION, donation(3)))
    (payment,) = entries(record, ISTANBUL)
    assert (payment.entry_id, payment.entry, payment.status) == (
        "donation:101:payment",
        "payment",
        "succeeded",
    )
    assert (payment.day, payment.amount) == (dt.date(2024, 5, 6), Decimal("250.0"))


def test_a_refund_is_its_own_negative_entry_on_the_refund_day_pointing_at_the_payment() -> None:
    record = norm(detail(Kind.DONATION, _refunded_donation()))
    payment, refund = entries(record, ISTANBUL)
    # The payment entry is what the paid state gave: same id, day and amount.
    assert payment == dataclasses.replace(
        entries(norm(detail(Kind.DONATION, donation(3))), ISTANBUL)[0], record=record
    )
    assert (refund.entry_id, refund.entry, refund.refund_of) == (
        "donation:101:refund",
        "refund",
        "donation:101:payment",
    )
    assert (refund.day, refund.amount, refund.status) == (
        dt.date(2024, 5, 9),
        Decimal("-250.0"),
        "refunded",
    )
    assert refund.moment == dt.datetime(2024, 5, 9, 7, 30, tzinfo=dt.UTC)


def test_a_refund_without_a_refund_date_is_on_the_day_fonzipd_learned_of_it() -> None:
    record = norm(
        detail(Kind.DONATION, donation(4)),
        fetched_at=dt.datetime(2024, 5, 10, 22, 0, tzinfo=dt.UTC),  # May 11 in Istanbul
    )
    assert entries(record, ISTANBUL)[1].day == dt.date(2024, 5, 11)


def test_states_that_move_no_money_are_one_row_without_an_amount() -> None:
    failed = norm(detail(Kind.DONATION, donation(5)))
    (entry,) = entries(failed, ISTANBUL)
    assert (entry.entry_id, entry.amount, entry.day) == (
        "donation:101:failed",
        None,
        dt.date(2024, 5, 6),
    )
    free = norm(detail(Kind.FORM_ANSWER, form_answer(0, with_transaction=False)))
    assert [e.entry for e in entries(free, ISTANBUL)] == ["answered"]
    gone = dataclasses.replace(
        failed, status=DELETED, fetched_at=dt.datetime(2024, 6, 1, 8, 0, tzinfo=dt.UTC)
    )
    assert entries(gone, ISTANBUL)[0].day == dt.date(2024, 6, 1)


def test_an_approval_changes_no_entry() -> None:
    waiting = norm(detail(Kind.FORM_ANSWER, form_answer(0)))
    approved = norm(detail(Kind.FORM_ANSWER, form_answer(1)))
    assert waiting.version != approved.version
    assert [e.entry_id for e in entries(waiting, ISTANBUL)] == [
        e.entry_id for e in entries(approved, ISTANBUL)
    ]


def test_a_row_carries_what_an_accountant_asks_for() -> None:
    record = norm(detail(Kind.DONATION, _refunded_donation()))
    payment, refund = entries(record, ISTANBUL)
    excel = PROFILES["excel-tr"]
    row = entry_row(refund, tz=ISTANBUL, layout=excel, include_data=False)
    cells = dict(zip(ENTRY_COLUMNS, row, strict=True))
    assert cells["amount"] == "-250,00"
    assert cells["currency"] == "TRY"
    assert cells["time"] == "2024-05-09 10:30:00"  # local, as Excel shows it
    assert cells["date"] == "2024-05-09"
    assert cells["refund_of"] == "donation:101:payment"
    assert cells["payment_method"] == "Card"
    assert cells["receipt_no"] == "RCP-1"
    assert cells["form"] == "Genel Bağış Formu"
    assert cells["page"] == "12"  # the detail has the page's id, not its title
    standard = dict(
        zip(
            ENTRY_COLUMNS,
            entry_row(payment, tz=ISTANBUL, layout=PROFILES["standard"], include_data=False),
            strict=True,
        )
    )
    assert standard["amount"] == "250.00"
    assert standard["time"] == "2024-05-06T11:03:12+00:00"
