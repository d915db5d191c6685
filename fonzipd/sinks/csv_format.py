"""How the CSV sink lays records out: entries, columns, profiles and cell formats.

Entries, not snapshots: a record becomes the bookkeeping entries its state implies,
each written once, in the file of the entry's own business date:

* ``payment``: money received (status ``succeeded``, or ``refunded``: a refunded
  payment was received first), with the amount, on the business date of its
  completion;
* ``refund``: money paid back (status ``refunded``), with the amount negated, on the
  business date of the refund (``refund_date`` in the Fonzip object; when Fonzip gives
  none, the day fonzipd learned of the refund), ``refund_of`` naming the payment's
  ``entry_id``;
* any other state moves no money (``failed``, ``pending``, ``removed``, ``answered``, a
  campaign's status, a debt, ``deleted``): one row per state, with no amount, on the
  record's business date (``deleted``: the day fonzipd learned of it).

So the amounts of one file sum to that day's money, per currency; a refund made days
later changes only the refund day's file; and since every entry follows from any state
of its record, writing a record's latest state again (a replay, a late reconcile)
writes exactly the entries still missing. A later change that moves no money (a name
corrected, an answer approved) writes no row: a closed day's file stays as it is.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import zoneinfo
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

from fonzipd.days import business_date
from fonzipd.fonzip.fields import parse_fonzip_datetime
from fonzipd.records import DELETED, Record

__all__ = [
    "ENTRY_COLUMNS",
    "PROFILES",
    "Entry",
    "Layout",
    "entries",
    "entry_row",
    "format_amount",
    "text_cell",
]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclasses.dataclass(frozen=True, slots=True)
class Layout:
    """The settings a profile sets; each can be set on its own too."""

    delimiter: str
    decimal_comma: bool
    bom: bool
    local_times: bool


PROFILES: Mapping[str, Layout] = {
    # RFC 4180 as most programs read it: comma, decimal point, UTC ISO-8601 times.
    "standard": Layout(delimiter=",", decimal_comma=False, bom=False, local_times=False),
    # Excel in a Turkish (or other decimal-comma) locale: it splits on ";", reads
    # "250,50" as a number, needs the BOM to read UTF-8, and shows times as written.
    "excel-tr": Layout(delimiter=";", decimal_comma=True, bom=True, local_times=True),
}
"""The profiles ``profile = "..."`` selects."""

ENTRY_COLUMNS: tuple[str, ...] = (
    "entry_id",
    "entry",
    "refund_of",
    "date",
    "time",
    "kind",
    "fonzip_id",
    "status",
    "approval",
    "amount",
    "currency",
    "payment_method",
    "receipt_no",
    "form",
    "campaign",
    "page",
    "category",
    "person_name",
    "person_email",
    "person_phone",
    "fonzip_user_id",
    "source",
    "key",
)
"""The columns of an entries file, in order; ``data`` follows with ``include_data``."""

MINOR_UNITS: Mapping[str, int] = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX"), 0
    ),
    **dict.fromkeys(("UYI", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    "CLF": 4,
    "UYW": 4,
}
"""ISO 4217 minor units of the currencies that do not have two (TRY, EUR, USD do)."""

PAYMENT_METHODS: Mapping[int, str] = {
    0: "Card",
    1: "Cash",
    2: "Wire Transfer",
    3: "POS",
    4: "SMS",
    6: "Postal Check",
    7: "Paypal",
    8: "BKM Express",
    9: "iDEAL",
    10: "Pay With Iyzico",
}
"""Fonzip's ``PaymentMethod`` (reference §0); 5 has no name and is written as a number."""

_MONEY_IN = ("succeeded", "refunded")


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One row of an entries file."""

    entry_id: str
    """``kind:fonzip_id:payment``, ``...:refund`` or ``...:<status>``: the ledger's key."""
    entry: str
    """``payment``, ``refund`` or the status of a state that moved no money."""
    day: dt.date | None
    """The business date the entry belongs to: its file."""
    moment: dt.datetime | None
    amount: Decimal | None
    """Signed: negative for a refund; None when no money moved."""
    status: str
    refund_of: str | None
    record: Record


def _refund_moment(record: Record, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    data = record.data
    tx = data.get("transaction")
    candidates = [
        tx.get("refund_date") if isinstance(tx, Mapping) else None,
        data.get("transaction__refund_date"),
        data.get("refund_date"),
    ]
    for value in candidates:
        try:
            moment = parse_fonzip_datetime(value, tz)
        except ValueError:
            moment = None
        if moment is not None:
            return moment
    return record.fetched_at


def entries(record: Record, tz: zoneinfo.ZoneInfo) -> list[Entry]:
    """The entries one state of a record implies (see the module's docstring)."""
    base = f"{record.kind}:{record.fonzip_id}"
    if record.status in _MONEY_IN and record.amount is not None:
        payment = Entry(
            entry_id=f"{base}:payment",
            entry="payment",
            day=record.business_date,
            moment=record.occurred_at,
            amount=record.amount,
            status="succeeded",
            refund_of=None,
            record=record,
        )
        if record.status != "refunded":
            return [payment]
        when = _refund_moment(record, tz)
        refund = Entry(
            entry_id=f"{base}:refund",
            entry="refund",
            day=business_date(when, tz),
            moment=when,
            amount=-record.amount,
            status="refunded",
            refund_of=payment.entry_id,
            record=record,
        )
        return [payment, refund]
    if record.status == DELETED:
        day: dt.date | None = business_date(record.fetched_at, tz)
        moment: dt.datetime | None = record.fetched_at
    else:
        day, moment = record.business_date, record.occurred_at
    return [
        Entry(
            entry_id=f"{base}:{record.status}",
            entry=record.status,
            day=day,
            moment=moment,
            amount=None,
            status=record.status,
            refund_of=None,
            record=record,
        )
    ]


def text_cell(value: object) -> str:
    """A text cell a spreadsheet will not run: a leading ``= + - @ TAB CR`` gets a ``'``."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def format_amount(amount: Decimal, currency: str | None, *, decimal_comma: bool) -> str:
    """An amount with its currency's decimals (``250.50``, ``1000.00``, JPY ``1000``).

    Never rounds: an amount with more digits than its currency keeps them all. No
    thousands separator, so that every spreadsheet reads it as one number.
    """
    places = MINOR_UNITS.get(currency or "", 2)
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        places = -exponent
    text = f"{amount:.{places}f}"
    return text.replace(".", ",") if decimal_comma else text


def _moment(value: dt.datetime | None, tz: zoneinfo.ZoneInfo, local: bool) -> str:
    if value is None:
        return ""
    if local:
        # What Excel reads as a date-time in any locale; the zone is the configured one.
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
    return value.astimezone(dt.UTC).isoformat()


def _name(data: Mapping[str, Any], *keys: str) -> object:
    """The first of ``keys`` the object has a value for (a list of names joined)."""
    for key in keys:
        value = data.get(key)
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value if v is not None) or None
        if value is not None and value != "":
            return value
    return None


def _accounting_fields(record: Record) -> tuple[object, ...]:
    """payment_method, receipt_no, form, campaign, page, category, where Fonzip has them."""
    data = record.data
    tx = data.get("transaction")
    tx = tx if isinstance(tx, Mapping) else {}
    method = tx.get("payment_method", data.get("transaction__payment_method"))
    method_name = (
        PAYMENT_METHODS.get(method, method)
        if isinstance(method, int) and not isinstance(method, bool)
        else method
    )
    event = data.get("event")
    event_name = event.get("name") if isinstance(event, Mapping) else None
    return (
        method_name,
        tx.get("receipt_no") or data.get("transaction__receipt_no"),
        # The form paid through: a donation form, a custom form, an event, an e-card.
        event_name
        or _name(data, "module__name", "module__title", "custom_form__title", "certificate__title"),
        _name(data, "fundraising_campaign__title", "fundraising_campaign_id"),
        _name(data, "fundraising_page__title", "fundraising_page_id"),
        _name(data, "sub_donation_type__name", "certificate__categories__name"),
    )


def entry_row(
    entry: Entry,
    *,
    tz: zoneinfo.ZoneInfo,
    layout: Layout,
    include_data: bool,
) -> list[str]:
    """The cells of one entry, in :data:`ENTRY_COLUMNS` order.

    Text goes through :func:`text_cell`; ``fonzip_id``, ``amount`` and
    ``fonzip_user_id`` come from typed values and stay numbers (a refund's ``-250,50``).
    """
    record = entry.record
    person = record.person
    amount = (
        ""
        if entry.amount is None
        else format_amount(entry.amount, record.currency, decimal_comma=layout.decimal_comma)
    )
    row = [
        text_cell(entry.entry_id),
        text_cell(entry.entry),
        text_cell(entry.refund_of),
        "" if entry.day is None else entry.day.isoformat(),
        _moment(entry.moment, tz, layout.local_times),
        text_cell(record.kind),
        str(record.fonzip_id),
        text_cell(entry.status),
        text_cell(record.approval),
        amount,
        text_cell(record.currency),
        *(text_cell(value) for value in _accounting_fields(record)),
        text_cell(person.name),
        text_cell(person.email),
        text_cell(person.phone),
        "" if person.fonzip_user_id is None else str(person.fonzip_user_id),
        text_cell(record.source),
        text_cell(record.key),
    ]
    if include_data:
        row.append(text_cell(json.dumps(record.data, ensure_ascii=False, separators=(",", ":"))))
    return row


Period = Literal["day", "month"]


def entry_path(entry: Entry, period: Period) -> str:
    """The file of an entry, relative to the directory: ``<kind>/<date or month>.csv``."""
    if entry.day is None:
        name = "undated"
    elif period == "month":
        name = entry.day.strftime("%Y-%m")
    else:
        name = entry.day.isoformat()
    return f"{entry.record.kind}/{name}.csv"
