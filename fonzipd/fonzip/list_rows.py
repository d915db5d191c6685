"""List rows as records: the normalized fields a list row shows, and the Record of a complete one.

A list row (100 to a request) carries most of what a record needs; a detail costs one
request per record. For each kind, :func:`row_view` reads the normalized fields the
row shows, exactly as :func:`~fonzipd.fonzip.normalizer.normalize` reads them from the
detail, and names the ones it cannot tell (``missing``). A row that shows every field
becomes a Record by :func:`record_from_row`; the reconciler compares the fields a row
shows with the stored record to find edits that keep the status.

What a row lacks, per kind (reference §3; DESIGN.md, "Records from list rows"):

- donation: nothing, with the ``list=`` fields :data:`LIST_FIELDS` asks for; the phone
  is the one entered on the donation (the row has no ``user__phone``);
- membership fee: a debt without a transaction (no payment status, amount or date in
  the row: the detail's due-record status decides);
- ticket sale: nothing (the row is the detail's schema, ``TicketSale``);
- form answer: the currency (and the form's questions and answers): always fetched;
- e-card sale: nothing (the detail lacks more than the row);
- campaign: nothing normalized (the detail adds texts and settings).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import zoneinfo
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from fonzipd.fonzip.fields import (
    BadField,
    as_amount,
    as_currency,
    as_int,
    as_moment,
    as_text,
    check_tree,
)
from fonzipd.fonzip.normalizer import (
    NormalizeError,
    build_record,
    list_row_status,
    normalizer_of,
)
from fonzipd.kinds import Kind
from fonzipd.records import Person, Record, Source

__all__ = [
    "LIST_FIELDS",
    "LIST_SHAPE_KEY",
    "RowView",
    "is_list_shape",
    "record_from_row",
    "row_view",
    "same_fields",
]

LIST_SHAPE_KEY = "_fonzipd"
"""The key of ``Record.data`` that marks a record built from a list row: its value is
``{"shape": "list_row", "list": <the list's status filter>}``. Fonzip's own keys never
start with an underscore. Ticket sales are not marked: their rows are the detail schema."""

LIST_FIELDS: Mapping[Kind, tuple[str, ...]] = {
    # The reference leaves the donation mapping open (§8, 12); these are the values
    # whose fields a record needs, named as the e-card convention suggests.
    Kind.DONATION: (
        "name_surname",
        "amount",
        "complete_date",
        "phone",
        "payment_method",
        "sub_donation_type",
        "fonzip_id",
        "donor_type",
    ),
    # ``list`` replaces the default set: ask for the default set's values and more.
    Kind.ECARD_SALE: (
        "ecard",
        "amount",
        "complete_date",
        "payment_method",
        "fonzip_id",
        "delivery_date",
        "email_status",
    ),
}
"""The ``list=`` values sent per kind (only donations and e-cards take ``list``)."""

FIELDS = ("status", "amount", "currency", "occurred_at", "person")


@dataclasses.dataclass(frozen=True, slots=True)
class RowView:
    """The normalized fields one list row shows; ``missing`` names those it cannot tell."""

    status: str
    amount: Decimal | None
    currency: str | None
    occurred_at: dt.datetime | None
    person: Person
    missing: frozenset[str] = frozenset()

    @property
    def complete(self) -> bool:
        return not self.missing

    def differs(self, record: Record) -> list[str]:
        """The fields the row shows that differ from ``record``'s."""
        return [
            name
            for name in FIELDS
            if name not in self.missing and getattr(self, name) != getattr(record, name)
        ]


def is_list_shape(record: Record) -> bool:
    """Whether ``record`` was built from a list row (see LIST_SHAPE_KEY)."""
    marker = record.data.get(LIST_SHAPE_KEY)
    return isinstance(marker, Mapping) and marker.get("shape") == "list_row"


def same_fields(one: Record, other: Record) -> bool:
    """Whether two records have equal normalized fields (data and version aside)."""
    return all(getattr(one, name) == getattr(other, name) for name in FIELDS)


def _join(first: str | None, last: str | None) -> str | None:
    return " ".join(part for part in (first, last) if part) or None


def _has(row: Mapping[str, Any], *keys: str) -> bool:
    return all(key in row for key in keys)


def _text(row: Mapping[str, Any], key: str) -> str | None:
    return as_text(row.get(key), key)


def _flat_money(
    row: Mapping[str, Any], missing: set[str], tz: zoneinfo.ZoneInfo
) -> tuple[Decimal | None, str | None, dt.datetime | None]:
    """Amount, ISO currency and completion date of a flat ``transaction__*`` row."""
    amount = currency = occurred = None
    if "transaction__amount" in row:
        amount = as_amount(row["transaction__amount"], "transaction__amount")
    else:
        missing.add("amount")
    if "transaction__currency__iso_code" in row:
        currency = as_currency(
            row["transaction__currency__iso_code"], "transaction__currency__iso_code"
        )
    else:
        missing.add("currency")
    # Read like the detail's: the refund date must be readable (the reconciler counts by it).
    as_moment(row.get("transaction__refund_date"), "transaction__refund_date", tz)
    if "transaction__complete_date" in row:
        occurred = as_moment(row["transaction__complete_date"], "transaction__complete_date", tz)
    else:
        missing.add("occurred_at")
    return amount, currency, occurred


def _donation(row: Mapping[str, Any], status: str, tz: zoneinfo.ZoneInfo) -> RowView:
    missing: set[str] = set()
    amount, currency, occurred = _flat_money(row, missing, tz)
    person = Person()
    if (
        ("user__first_name" in row or "user__last_name" in row or "name" in row)
        and ("user__email" in row or "email" in row)
        and _has(row, "phone", "user_id")
    ):
        person = Person(
            name=_join(_text(row, "user__first_name"), _text(row, "user__last_name"))
            or _text(row, "name"),
            email=_text(row, "user__email") or _text(row, "email"),
            phone=_text(row, "phone"),
            fonzip_user_id=as_int(row.get("user_id"), "user_id"),
        )
    else:
        missing.add("person")
    return RowView(status, amount, currency, occurred, person, frozenset(missing))


def _membership_fee(row: Mapping[str, Any], status: str, tz: zoneinfo.ZoneInfo) -> RowView:
    missing: set[str] = set()
    amount, currency, occurred = _flat_money(row, missing, tz)
    if row.get("transaction__payment_status") is None:
        # No transaction: a debt, whose status is its due record's (detail only), and
        # whose amount and date the detail takes from the record itself.
        missing.update(("status", "amount", "currency", "occurred_at"))
    if amount is None:
        missing.add("amount")
    if occurred is None:
        missing.add("occurred_at")
    person = Person()
    if ("user__name" in row or _has(row, "first_name", "last_name")) and _has(
        row, "email", "phone", "user_id"
    ):
        person = Person(
            name=_text(row, "user__name")
            or _join(_text(row, "first_name"), _text(row, "last_name")),
            email=_text(row, "email"),
            phone=_text(row, "phone"),
            fonzip_user_id=as_int(row.get("user_id"), "user_id"),
        )
    else:
        missing.add("person")
    return RowView(status, amount, currency, occurred, person, frozenset(missing))


def _form_answer(row: Mapping[str, Any], status: str, tz: zoneinfo.ZoneInfo) -> RowView:
    # Never complete: the row has no currency, and the record's worth is the answers
    # to the form's questions, which only the detail holds. Shown for the diff.
    missing = {"currency"}
    amount = None
    if "transaction__amount" in row:
        amount = as_amount(row["transaction__amount"], "transaction__amount")
    else:
        missing.add("amount")
    occurred = None
    if "complete_date" in row:
        occurred = as_moment(row["complete_date"], "complete_date", tz)
    else:
        missing.add("occurred_at")
    person = Person()
    if _has(row, "first_name", "last_name", "email", "user_id"):
        person = Person(
            name=_join(_text(row, "first_name"), _text(row, "last_name")),
            email=_text(row, "email"),
            phone=None,  # neither the row nor the detail has one
            fonzip_user_id=as_int(row.get("user_id"), "user_id"),
        )
    else:
        missing.add("person")
    return RowView(
        status,
        amount,
        currency=None,
        occurred_at=occurred,
        person=person,
        missing=frozenset(missing),
    )


_ECARD_NEEDS = (
    "transaction__payment_status",
    "transaction__amount",
    "transaction__currency__iso_code",
    "transaction__complete_date",
    "first_name",
    "last_name",
    "email",
    "phone",
    "user_id",
)


def _as_detail(kind: Kind, row: Mapping[str, Any], status: str, tz: zoneinfo.ZoneInfo) -> RowView:
    """Kinds whose row the detail's own normalizer reads (tickets, e-cards, campaigns)."""
    if kind is Kind.TICKET_SALE and not isinstance(row.get("transaction"), Mapping):
        return RowView(status, None, None, None, Person(), frozenset(FIELDS[1:]))
    if kind is Kind.ECARD_SALE and not _has(row, *_ECARD_NEEDS):
        return RowView(status, None, None, None, Person(), frozenset(FIELDS[1:]))
    fields = normalizer_of(kind)(row, tz)
    return RowView(fields.status, fields.amount, fields.currency, fields.occurred_at, fields.person)


def row_view(
    kind: Kind, list_status: str, row: Mapping[str, Any], tz: zoneinfo.ZoneInfo
) -> RowView:
    """The normalized fields ``row`` (of ``kind``'s list ``list_status``) shows.

    NormalizeError (naming the field, never the value) for a value the detail's
    normalizer would refuse too.
    """
    status = list_row_status(kind, list_status, row)
    try:
        if kind is Kind.DONATION:
            return _donation(row, status, tz)
        if kind is Kind.MEMBERSHIP_FEE:
            return _membership_fee(row, status, tz)
        if kind is Kind.FORM_ANSWER:
            return _form_answer(row, status, tz)
        return _as_detail(kind, row, status, tz)
    except BadField as exc:
        raise NormalizeError(kind, as_int_or_none(row.get("id")), exc.field, exc.problem) from None


def as_int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def record_from_row(
    kind: Kind,
    list_status: str,
    row: Mapping[str, Any],
    *,
    tz: zoneinfo.ZoneInfo,
    source: Source,
    fetched_at: dt.datetime,
) -> Record | None:
    """The Record ``row`` shows, or None when it lacks a normalized field (fetch the detail).

    ``data`` is a copy of the row, marked with LIST_SHAPE_KEY (ticket sales: the row as
    it is, the detail's schema, so it has the detail's version). ``fetched_at`` is when
    the list page was requested. NormalizeError as :func:`row_view`.
    """
    fonzip_id = as_int_or_none(row.get("id"))
    try:
        check_tree(row)
    except BadField as exc:
        raise NormalizeError(kind, fonzip_id, exc.field, exc.problem) from None
    if fonzip_id is None:
        raise NormalizeError(kind, None, "id", "missing")
    view = row_view(kind, list_status, row, tz)
    if not view.complete:
        return None
    data: dict[str, Any] = copy.deepcopy(dict(row))
    if kind is not Kind.TICKET_SALE:
        data[LIST_SHAPE_KEY] = {"shape": "list_row", "list": list_status}
    return build_record(
        kind,
        fonzip_id,
        status=view.status,
        amount=view.amount,
        currency=view.currency,
        occurred_at=view.occurred_at,
        person=view.person,
        data=data,
        tz=tz,
        source=source,
        fetched_at=fetched_at,
    )
