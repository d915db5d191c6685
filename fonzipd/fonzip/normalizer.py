"""The normalizer: a fetched Fonzip object of any of the six kinds becomes a Record.

Strict by design: every value a Record carries is read by :mod:`fonzipd.fonzip.fields`
and the whole object is checked (UTF-8 text, finite numbers, bounded nesting) before
it is hashed, stored and sent, so that what reaches the store and the sinks is always
storable. Anything else is a :class:`NormalizeError` naming the kind, the Fonzip id and
the field, and never the value (Fonzip's objects hold personal data).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import zoneinfo
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from fonzipd.days import business_date
from fonzipd.fonzip.endpoints import Detail
from fonzipd.fonzip.fields import (
    BadField,
    as_amount,
    as_currency,
    as_int,
    as_moment,
    as_object,
    as_text,
    check_tree,
)
from fonzipd.fonzip.statuses import (
    CAMPAIGN_STATUSES,
    DUE_RECORD_STATUSES,
    FORM_APPROVAL_STATUSES,
    PAYMENT_STATUSES,
    list_holds,
)
from fonzipd.kinds import Kind
from fonzipd.records import Person, Record, Source, content_version

__all__ = [
    "NormalizeError",
    "build_record",
    "form_answer_states",
    "list_row_id",
    "list_row_status",
    "normalize",
    "normalizer_of",
]


class NormalizeError(ValueError):
    """A Fonzip object or list row that cannot be normalized.

    The message names the kind, the Fonzip id (when known), the field that was wrong and
    the kind of problem, never the value: e.g. ``donation 101: field
    'transaction.amount': a negative amount``.
    """

    def __init__(self, kind: Kind, fonzip_id: int | None, field: str, problem: str) -> None:
        self.kind = kind
        self.fonzip_id = fonzip_id
        self.field = field
        self.problem = problem
        where = f"{kind} {fonzip_id}" if fonzip_id is not None else f"{kind} (id unknown)"
        super().__init__(f"{where}: field {field!r}: {problem}")


def _as_status(value: object, field: str, table: Mapping[int, str]) -> str:
    code = as_int(value, field)
    if code is None:
        raise BadField(field, "missing")
    try:
        return table[code]
    except KeyError:
        known = ", ".join(str(key) for key in table)
        raise BadField(field, f"unknown status {code} (known: {known})") from None


def _join_name(first: str | None, last: str | None) -> str | None:
    return " ".join(part for part in (first, last) if part) or None


def _person(nested: Mapping[str, Any] | None, nested_field: str, flat: Mapping[str, Any]) -> Person:
    """The person from a nested user/member object, completed from the flat object."""
    inner: Mapping[str, Any] = nested or {}

    def text(source: Mapping[str, Any], key: str, prefix: str) -> str | None:
        return as_text(source.get(key), f"{prefix}{key}")

    inner_prefix = f"{nested_field}."
    name = (
        text(inner, "name", inner_prefix)
        or _join_name(
            text(inner, "first_name", inner_prefix), text(inner, "last_name", inner_prefix)
        )
        or _join_name(text(flat, "first_name", ""), text(flat, "last_name", ""))
        or text(flat, "name", "")
    )
    user_id = as_int(inner.get("id"), f"{nested_field}.id")
    if user_id is None:
        user_id = as_int(flat.get("user_id"), "user_id")
    return Person(
        name=name,
        email=text(inner, "email", inner_prefix) or text(flat, "email", ""),
        phone=text(inner, "phone", inner_prefix) or text(flat, "phone", ""),
        fonzip_user_id=user_id,
    )


def _currency(transaction: Mapping[str, Any] | None) -> str | None:
    if transaction is None:
        return None
    currency = as_object(transaction.get("currency"), "transaction.currency", required=False)
    if currency is None:
        return None
    return as_currency(currency.get("iso_code"), "transaction.currency.iso_code")


def _transaction_dates(
    tx: Mapping[str, Any] | None, tz: zoneinfo.ZoneInfo, prefix: str = "transaction."
) -> dt.datetime | None:
    """The completion date; the refund date is checked too (the reconciler reads it)."""
    if tx is None:
        return None
    as_moment(tx.get("refund_date"), f"{prefix}refund_date", tz)
    return as_moment(tx.get("complete_date"), f"{prefix}complete_date", tz)


@dataclasses.dataclass(frozen=True, slots=True)
class _Normalized:
    status: str
    amount: Decimal | None
    currency: str | None
    occurred_at: dt.datetime | None
    person: Person
    approval: str | None = None


def _paid_by(person_key: str) -> Callable[[Mapping[str, Any], zoneinfo.ZoneInfo], _Normalized]:
    """A normalizer for kinds that nest a required ``transaction`` and a person object
    (donations: ``user``; ticket sales: ``member``)."""

    def normalize_kind(obj: Mapping[str, Any], tz: zoneinfo.ZoneInfo) -> _Normalized:
        tx = as_object(obj.get("transaction"), "transaction", required=True)
        assert tx is not None
        return _Normalized(
            status=_as_status(
                tx.get("payment_status"), "transaction.payment_status", PAYMENT_STATUSES
            ),
            amount=as_amount(tx.get("amount"), "transaction.amount"),
            currency=_currency(tx),
            occurred_at=_transaction_dates(tx, tz),
            person=_person(
                as_object(obj.get(person_key), person_key, required=False), person_key, obj
            ),
        )

    return normalize_kind


_donation = _paid_by("user")
_ticket_sale = _paid_by("member")


def _membership_fee(obj: Mapping[str, Any], tz: zoneinfo.ZoneInfo) -> _Normalized:
    # Payments and debts share one record type (reference §3.2); /debt/{id} answers
    # with the same shape. The transaction, when there is one, says what happened to
    # the money; a debt without one is described by its due-record status. The
    # endpoint that answered (detail.endpoint) does not change the rule.
    tx = as_object(obj.get("transaction"), "transaction", required=False)
    if tx is not None and tx.get("payment_status") is not None:
        status = _as_status(tx["payment_status"], "transaction.payment_status", PAYMENT_STATUSES)
    else:
        status = _as_status(obj.get("status"), "status", DUE_RECORD_STATUSES)
    amount = None if tx is None else as_amount(tx.get("amount"), "transaction.amount")
    if amount is None:
        amount = as_amount(obj.get("amount"), "amount")
    occurred_at = _transaction_dates(tx, tz)
    if occurred_at is None:
        occurred_at = as_moment(obj.get("operation_date"), "operation_date", tz)
    return _Normalized(
        status=status,
        amount=amount,
        currency=_currency(tx),
        occurred_at=occurred_at,
        person=_person(as_object(obj.get("user"), "user", required=False), "user", obj),
    )


def form_answer_states(obj: Mapping[str, Any]) -> tuple[str, str | None]:
    """A form answer's ``(status, approval)``; BadField if a code is malformed.

    ``status`` comes from the transaction's payment status, as for every money kind
    (free forms have no transaction: ``answered``); ``approval`` from
    ``approval_status`` (FORM_APPROVAL_STATUSES; None when absent or unknown).
    """
    tx = as_object(obj.get("transaction"), "transaction", required=False)
    status = "answered"
    if tx is not None and tx.get("payment_status") is not None:
        status = _as_status(tx["payment_status"], "transaction.payment_status", PAYMENT_STATUSES)
    code = as_int(obj.get("approval_status"), "approval_status")
    return status, None if code is None else FORM_APPROVAL_STATUSES.get(code)


def _form_answer(obj: Mapping[str, Any], tz: zoneinfo.ZoneInfo) -> _Normalized:
    # Free forms have no transaction; paid ones carry one.
    tx = as_object(obj.get("transaction"), "transaction", required=False)
    status, approval = form_answer_states(obj)
    paid_at = _transaction_dates(tx, tz)
    occurred_at = as_moment(obj.get("complete_date"), "complete_date", tz) or paid_at
    return _Normalized(
        status=status,
        amount=None if tx is None else as_amount(tx.get("amount"), "transaction.amount"),
        currency=_currency(tx),
        occurred_at=occurred_at,
        person=_person(as_object(obj.get("user"), "user", required=False), "user", obj),
        approval=approval,
    )


def _ecard_sale(obj: Mapping[str, Any], tz: zoneinfo.ZoneInfo) -> _Normalized:
    # Flat, not nested. The client completes the date and ISO currency from the list row
    # (the detail lacks them: see fonzip.endpoints.ECARD_FIELDS_FROM_LIST).
    return _Normalized(
        status=_as_status(
            obj.get("transaction__payment_status"), "transaction__payment_status", PAYMENT_STATUSES
        ),
        amount=as_amount(obj.get("transaction__amount"), "transaction__amount"),
        currency=as_currency(
            obj.get("transaction__currency__iso_code"), "transaction__currency__iso_code"
        ),
        occurred_at=_transaction_dates(
            {
                "complete_date": obj.get("transaction__complete_date"),
                "refund_date": obj.get("transaction__refund_date"),
            },
            tz,
            prefix="transaction__",
        ),
        person=_person(None, "", obj),
    )


def _campaign(obj: Mapping[str, Any], tz: zoneinfo.ZoneInfo) -> _Normalized:
    # The fundraiser is the person; a campaign has no amount of its own (its
    # donations are donation records).
    first = as_text(obj.get("user__first_name"), "user__first_name")
    last = as_text(obj.get("user__last_name"), "user__last_name")
    return _Normalized(
        status=_as_status(obj.get("status"), "status", CAMPAIGN_STATUSES),
        amount=None,
        currency=None,
        occurred_at=as_moment(obj.get("create_date"), "create_date", tz),
        person=Person(
            name=_join_name(first, last), fonzip_user_id=as_int(obj.get("user_id"), "user_id")
        ),
    )


_NORMALIZERS = {
    Kind.DONATION: _donation,
    Kind.MEMBERSHIP_FEE: _membership_fee,
    Kind.TICKET_SALE: _ticket_sale,
    Kind.FORM_ANSWER: _form_answer,
    Kind.ECARD_SALE: _ecard_sale,
    Kind.CAMPAIGN: _campaign,
}


def normalizer_of(kind: Kind) -> Callable[[Mapping[str, Any], zoneinfo.ZoneInfo], _Normalized]:
    """The function that reads ``kind``'s detail object (fonzip.list_rows reads the rows
    of kinds whose list row has the detail's fields with it); raises BadField."""
    return _NORMALIZERS[kind]


def normalize(
    detail: Detail,
    *,
    tz: zoneinfo.ZoneInfo,
    source: Source,
    fetched_at: dt.datetime,
) -> Record:
    """The Record of one fetched Fonzip object; NormalizeError if it is malformed.

    ``data`` is a deep copy of ``detail.obj`` (for e-card sales the client has completed
    it with the two list-row fields the detail lacks), so the same state fetched through
    a webhook or a reconcile gives the same ``version``. Dates are read as
    :func:`~fonzipd.fonzip.fields.parse_fonzip_datetime` describes; ``business_date``
    is the date of ``occurred_at`` in ``tz``.
    """
    if fetched_at.tzinfo is None or fetched_at.utcoffset() is None:
        raise ValueError(f"fetched_at must be aware, got {fetched_at.isoformat()}")
    kind = detail.kind
    try:
        if not isinstance(detail.obj, Mapping):
            raise BadField("(object)", f"expected an object, got {type(detail.obj).__name__}")
        # First the whole tree: copying, hashing and storing it must not fail.
        check_tree(detail.obj)
        data: dict[str, Any] = copy.deepcopy(dict(detail.obj))
        fonzip_id = as_int(data.get("id"), "id")
        if fonzip_id is None:
            raise BadField("id", "missing")
        if fonzip_id != detail.fonzip_id:
            raise BadField("id", f"is {fonzip_id}, but {detail.endpoint} was asked for it")
        fields = _NORMALIZERS[kind](data, tz)
    except BadField as exc:
        raise NormalizeError(kind, detail.fonzip_id, exc.field, exc.problem) from None
    return build_record(
        kind,
        fonzip_id,
        status=fields.status,
        amount=fields.amount,
        currency=fields.currency,
        occurred_at=fields.occurred_at,
        person=fields.person,
        approval=fields.approval,
        data=data,
        tz=tz,
        source=source,
        fetched_at=fetched_at,
    )


def build_record(
    kind: Kind,
    fonzip_id: int,
    *,
    status: str,
    amount: Decimal | None,
    currency: str | None,
    occurred_at: dt.datetime | None,
    person: Person,
    approval: str | None = None,
    data: dict[str, Any],
    tz: zoneinfo.ZoneInfo,
    source: Source,
    fetched_at: dt.datetime,
) -> Record:
    """The Record of normalized fields and ``data``, from a detail or a list row alike:
    its business date in ``tz`` and its version, so that both paths hash one state the
    same way."""
    return Record(
        kind=kind,
        fonzip_id=fonzip_id,
        status=status,
        amount=amount,
        currency=currency,
        occurred_at=occurred_at,
        business_date=None if occurred_at is None else business_date(occurred_at, tz),
        person=person,
        source=source,
        fetched_at=fetched_at,
        version=content_version(
            kind,
            fonzip_id,
            status,
            amount,
            currency,
            occurred_at,
            person,
            data,
            approval=approval,
        ),
        data=data,
        approval=approval,
    )


def list_row_id(kind: Kind, row: Mapping[str, Any]) -> int:
    """The Fonzip id of a list row; NormalizeError if it has none."""
    try:
        fonzip_id = as_int(row.get("id"), "id")
    except BadField as exc:
        raise NormalizeError(kind, None, exc.field, exc.problem) from None
    if fonzip_id is None:
        raise NormalizeError(kind, None, "id", "missing")
    return fonzip_id


def list_row_status(kind: Kind, list_status: str, row: Mapping[str, Any]) -> str:
    """The list state a list row implies (:func:`~fonzipd.fonzip.statuses.list_state`).

    For the reconciler's diff: a row whose status differs from the stored record's
    is fetched again. Money kinds: the row's payment status when it carries one
    (``transaction__payment_status``, or a nested ``transaction`` for ticket sales),
    otherwise the list it came from (paid, refund, failed). Form answers: the list
    (answer, waiting_approval, rejected, refund, failed). Campaigns: the row's status.
    """
    try:
        if kind is Kind.CAMPAIGN:
            return _as_status(row.get("status"), "status", CAMPAIGN_STATUSES)
        payment = None
        field = "transaction__payment_status"
        if kind is not Kind.FORM_ANSWER:
            payment = row.get(field)
            nested = row.get("transaction")
            if payment is None and isinstance(nested, Mapping):
                payment = nested.get("payment_status")
                field = "transaction.payment_status"
        if payment is not None:
            return _as_status(payment, field, PAYMENT_STATUSES)
        try:
            (status,) = list_holds(kind, list_status)
        except ValueError:
            known = ", ".join(kind.list_statuses)
            raise BadField(
                "(list status)", f"unknown list {list_status!r} (known: {known})"
            ) from None
        return status
    except BadField as exc:
        fonzip_id = row.get("id")
        known_id = (
            fonzip_id if isinstance(fonzip_id, int) and not isinstance(fonzip_id, bool) else None
        )
        raise NormalizeError(kind, known_id, exc.field, exc.problem) from None
