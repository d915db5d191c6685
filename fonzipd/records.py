"""Record, the normalized form of a Fonzip object, and the normalizers of the six kinds."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import hashlib
import json
import zoneinfo
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from fonzipd.days import business_date
from fonzipd.kinds import Kind

if TYPE_CHECKING:
    # Only a type here: keeps records importable from fonzipd.fonzip without a cycle.
    from fonzipd.fonzip.endpoints import Detail

__all__ = [
    "NormalizeError",
    "Person",
    "Record",
    "Source",
    "content_version",
    "list_row_id",
    "list_row_status",
    "normalize",
    "parse_fonzip_datetime",
]


class Source(enum.StrEnum):
    """How fonzipd learned of a record."""

    WEBHOOK = "webhook"
    RECONCILE = "reconcile"
    BACKFILL = "backfill"
    CLI = "cli"


@dataclasses.dataclass(frozen=True, slots=True)
class Person:
    """Who a record is about: the donor, member, buyer, respondent or fundraiser."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None
    fonzip_user_id: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """One state of one Fonzip object, as every sink receives it.

    ``version`` is a hash of the normalized content (not of ``source`` or
    ``fetched_at``), so the same state fetched twice has the same version and the
    same ``key``; a new state (a refund, say) has a new one.
    """

    kind: Kind
    fonzip_id: int
    status: str
    amount: Decimal | None
    currency: str | None
    occurred_at: dt.datetime | None
    """When it happened (completion, or creation for campaigns); aware, in UTC."""
    business_date: dt.date | None
    """The date of ``occurred_at`` in the configured timezone."""
    person: Person
    source: Source
    fetched_at: dt.datetime
    version: str
    data: dict[str, Any]
    """The full Fonzip object (detail, completed from the list row where needed)."""

    @property
    def key(self) -> str:
        """The idempotency key: ``kind:fonzip_id:version``."""
        return f"{self.kind}:{self.fonzip_id}:{self.version}"

    def to_json_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values: Decimal as string, datetimes as ISO-8601."""
        return {
            "key": self.key,
            "kind": str(self.kind),
            "fonzip_id": self.fonzip_id,
            "status": self.status,
            "amount": None if self.amount is None else str(self.amount),
            "currency": self.currency,
            "occurred_at": None if self.occurred_at is None else self.occurred_at.isoformat(),
            "business_date": (
                None if self.business_date is None else self.business_date.isoformat()
            ),
            "person": dataclasses.asdict(self.person),
            "source": str(self.source),
            "fetched_at": self.fetched_at.isoformat(),
            "version": self.version,
            "data": self.data,
        }

    @classmethod
    def from_json_dict(cls, value: dict[str, Any]) -> Record:
        """The inverse of :meth:`to_json_dict`."""
        occurred = value.get("occurred_at")
        bdate = value.get("business_date")
        amount = value.get("amount")
        return cls(
            kind=Kind(value["kind"]),
            fonzip_id=int(value["fonzip_id"]),
            status=str(value["status"]),
            amount=None if amount is None else Decimal(amount),
            currency=value.get("currency"),
            occurred_at=None if occurred is None else dt.datetime.fromisoformat(occurred),
            business_date=None if bdate is None else dt.date.fromisoformat(bdate),
            person=Person(**value.get("person", {})),
            source=Source(value["source"]),
            fetched_at=dt.datetime.fromisoformat(value["fetched_at"]),
            version=str(value["version"]),
            data=dict(value["data"]),
        )


DELETED = "deleted"
"""The status of a record whose object Fonzip no longer has (its detail answers 404)."""


def with_status(record: Record, status: str, *, source: Source, fetched_at: dt.datetime) -> Record:
    """``record`` in another state (a deletion Fonzip sends no webhook for), re-versioned."""
    version = content_version(
        record.kind,
        record.fonzip_id,
        status,
        record.amount,
        record.currency,
        record.occurred_at,
        record.person,
        record.data,
    )
    return dataclasses.replace(
        record, status=status, source=source, fetched_at=fetched_at, version=version
    )


def content_version(
    kind: Kind,
    fonzip_id: int,
    status: str,
    amount: Decimal | None,
    currency: str | None,
    occurred_at: dt.datetime | None,
    person: Person,
    data: dict[str, Any],
) -> str:
    """A short stable hash of a record's normalized content."""
    payload = json.dumps(
        [
            str(kind),
            fonzip_id,
            status,
            None if amount is None else str(amount),
            currency,
            None if occurred_at is None else occurred_at.isoformat(),
            dataclasses.asdict(person),
            data,
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --- normalizers ------------------------------------------------------------------------
#
# Normalized statuses, per kind:
# - money kinds (donation, membership_fee, ticket_sale, ecard_sale), from the transaction
#   payment status: 0-2 pending, 3 succeeded, 4 refunded, 5 failed, 6 removed;
# - membership fees without a transaction (debts), from the due-record status: see
#   DUE_RECORD_STATUSES;
# - form answers: refunded, failed, pending or removed from the payment; otherwise
#   waiting_approval, rejected or answered from the approval status;
# - campaigns: their own status names (CAMPAIGN_STATUSES).

PAYMENT_STATUSES: Mapping[int, str] = {
    0: "pending",  # initialized
    1: "pending",  # processing
    2: "pending",  # 3-D Secure initialized
    3: "succeeded",
    4: "refunded",
    5: "failed",
    6: "removed",
}
"""Transaction ``payment_status`` (reference §5.1) to normalized status."""

DUE_RECORD_STATUSES: Mapping[int, str] = {
    1: "pending",  # unpaid debt
    2: "succeeded",  # a payment record
    # A cancellation is neither a deletion nor a refund: it gets its own name rather
    # than being folded into "removed", so that sinks can tell the two apart.
    3: "cancelled",
    4: "refunded",
    6: "removed",  # removed (inactive) debt
    7: "adjusted",  # fixed balance: a balance correction, not money received
    8: "succeeded",  # paid debt
}
"""Membership due-record ``status`` (reference §3.2), used when there is no transaction."""

CAMPAIGN_STATUSES: Mapping[int, str] = {
    0: "waiting_approval",
    1: "approved",
    2: "rejected",
    3: "finalized",
    4: "deleted",
    5: "waiting_extra_approval",
    7: "archived",
}
"""Fundraising campaign ``status`` (reference §3.6) to normalized status."""

# Form answer `approval_status` is undocumented (reference §5.3). Assumed: 0 waiting for
# approval, 2 rejected, anything else (1, None, unknown) answered. If Fonzip used 0 for
# "needs no approval", answered forms would show as waiting_approval here.
_FORM_APPROVAL_STATUSES: Mapping[int, str] = {0: "waiting_approval", 2: "rejected"}
_FORM_PAYMENT_STATUSES = frozenset({"pending", "refunded", "failed", "removed"})

_MONEY_LIST_STATUSES: Mapping[str, str] = {
    "paid": "succeeded",
    "refund": "refunded",
    "failed": "failed",
}
_FORM_LIST_STATUSES: Mapping[str, str] = {
    "answer": "answered",
    "waiting_approval": "waiting_approval",
    "rejected": "rejected",
    "refund": "refunded",
    "failed": "failed",
}

# The e-card detail lacks these two; the client copies them from the list row.
ECARD_LIST_ROW_FIELDS = ("transaction__complete_date", "transaction__currency__iso_code")


class NormalizeError(ValueError):
    """A Fonzip object or list row that cannot be normalized.

    The message names the kind, the Fonzip id (when known) and the field that was
    wrong, e.g. ``donation 101: field 'transaction.amount': not a number: 'abc'``.
    """

    def __init__(self, kind: Kind, fonzip_id: int | None, field: str, problem: str) -> None:
        self.kind = kind
        self.fonzip_id = fonzip_id
        self.field = field
        self.problem = problem
        where = f"{kind} {fonzip_id}" if fonzip_id is not None else f"{kind} (id unknown)"
        super().__init__(f"{where}: field {field!r}: {problem}")


class _BadField(Exception):
    """Raised by the field readers; turned into NormalizeError where kind and id are known."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field = field
        self.problem = problem


def parse_fonzip_datetime(value: object, tz: zoneinfo.ZoneInfo) -> dt.datetime | None:
    """A Fonzip date-time as an aware datetime in UTC; None for None or an empty string.

    Accepts ISO-8601 with ``Z``, with an offset, or naive. The reference does not say
    which form responses use (§3.0, open question). A naive value is ASSUMED to be the
    association's local time, ``tz`` (where a naive wall time is repeated or skipped
    by a DST change, the earlier offset applies). A date alone means local midnight.
    Raises ValueError for anything else.
    """
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO-8601 date-time: {value!r}") from None
    else:
        raise ValueError(f"expected an ISO-8601 date-time string, got {type(value).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=tz)
    return moment.astimezone(dt.UTC)


def _as_int(value: object, field: str) -> int | None:
    # Numeric strings ("3") and integral floats (3.0) are accepted: the reference
    # warns that field types in the spec are not always what is sent (§8, 14).
    if value is None:
        return None
    if isinstance(value, bool):
        raise _BadField(field, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _BadField(field, f"expected an integer, got {value!r}")


def _as_text(value: object, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a phone number sent as a number
    raise _BadField(field, f"expected a string, got {value!r}")


def _as_amount(value: object, field: str) -> Decimal | None:
    # Decimal(str(x)) keeps the number as Fonzip printed it (250.5, not the binary
    # float 250.4999...). Strings with numeric content ("250.00") are accepted.
    if value is None:
        return None
    if isinstance(value, bool):
        raise _BadField(field, f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
    else:
        raise _BadField(field, f"expected a number, got {value!r}")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise _BadField(field, f"not a number: {value!r}") from None
    if not amount.is_finite():
        raise _BadField(field, f"not a finite number: {value!r}")
    return amount


def _as_moment(value: object, field: str, tz: zoneinfo.ZoneInfo) -> dt.datetime | None:
    try:
        return parse_fonzip_datetime(value, tz)
    except ValueError as exc:
        raise _BadField(field, str(exc)) from None


def _as_object(value: object, field: str, *, required: bool) -> Mapping[str, Any] | None:
    if value is None:
        if required:
            raise _BadField(field, "missing")
        return None
    if not isinstance(value, Mapping):
        raise _BadField(field, f"expected an object, got {type(value).__name__}")
    return value


def _as_status(value: object, field: str, table: Mapping[int, str]) -> str:
    code = _as_int(value, field)
    if code is None:
        raise _BadField(field, "missing")
    try:
        return table[code]
    except KeyError:
        known = ", ".join(str(key) for key in table)
        raise _BadField(field, f"unknown status {code} (known: {known})") from None


def _join_name(first: str | None, last: str | None) -> str | None:
    return " ".join(part for part in (first, last) if part) or None


def _person(nested: Mapping[str, Any] | None, nested_field: str, flat: Mapping[str, Any]) -> Person:
    """The person from a nested user/member object, completed from the flat object."""
    inner: Mapping[str, Any] = nested or {}

    def text(source: Mapping[str, Any], key: str, prefix: str) -> str | None:
        return _as_text(source.get(key), f"{prefix}{key}")

    inner_prefix = f"{nested_field}."
    name = (
        text(inner, "name", inner_prefix)
        or _join_name(
            text(inner, "first_name", inner_prefix), text(inner, "last_name", inner_prefix)
        )
        or _join_name(text(flat, "first_name", ""), text(flat, "last_name", ""))
        or text(flat, "name", "")
    )
    user_id = _as_int(inner.get("id"), f"{nested_field}.id")
    if user_id is None:
        user_id = _as_int(flat.get("user_id"), "user_id")
    return Person(
        name=name,
        email=text(inner, "email", inner_prefix) or text(flat, "email", ""),
        phone=text(inner, "phone", inner_prefix) or text(flat, "phone", ""),
        fonzip_user_id=user_id,
    )


def _currency(transaction: Mapping[str, Any] | None) -> str | None:
    if transaction is None:
        return None
    currency = _as_object(transaction.get("currency"), "transaction.currency", required=False)
    if currency is None:
        return None
    return _as_text(currency.get("iso_code"), "transaction.currency.iso_code")


@dataclasses.dataclass(frozen=True, slots=True)
class _Normalized:
    status: str
    amount: Decimal | None
    currency: str | None
    occurred_at: dt.datetime | None
    person: Person


def _paid_by(person_key: str) -> Callable[[Mapping[str, Any], zoneinfo.ZoneInfo], _Normalized]:
    """A normalizer for kinds that nest a required ``transaction`` and a person object
    (donations: ``user``; ticket sales: ``member``)."""

    def normalize_kind(obj: Mapping[str, Any], tz: zoneinfo.ZoneInfo) -> _Normalized:
        tx = _as_object(obj.get("transaction"), "transaction", required=True)
        assert tx is not None
        return _Normalized(
            status=_as_status(
                tx.get("payment_status"), "transaction.payment_status", PAYMENT_STATUSES
            ),
            amount=_as_amount(tx.get("amount"), "transaction.amount"),
            currency=_currency(tx),
            occurred_at=_as_moment(tx.get("complete_date"), "transaction.complete_date", tz),
            person=_person(
                _as_object(obj.get(person_key), person_key, required=False), person_key, obj
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
    tx = _as_object(obj.get("transaction"), "transaction", required=False)
    if tx is not None and tx.get("payment_status") is not None:
        status = _as_status(tx["payment_status"], "transaction.payment_status", PAYMENT_STATUSES)
    else:
        status = _as_status(obj.get("status"), "status", DUE_RECORD_STATUSES)
    amount = None if tx is None else _as_amount(tx.get("amount"), "transaction.amount")
    if amount is None:
        amount = _as_amount(obj.get("amount"), "amount")
    occurred_at = (
        None if tx is None else _as_moment(tx.get("complete_date"), "transaction.complete_date", tz)
    )
    if occurred_at is None:
        occurred_at = _as_moment(obj.get("operation_date"), "operation_date", tz)
    return _Normalized(
        status=status,
        amount=amount,
        currency=_currency(tx),
        occurred_at=occurred_at,
        person=_person(_as_object(obj.get("user"), "user", required=False), "user", obj),
    )


def _form_answer(obj: Mapping[str, Any], tz: zoneinfo.ZoneInfo) -> _Normalized:
    # Free forms have no transaction; paid ones carry one.
    tx = _as_object(obj.get("transaction"), "transaction", required=False)
    status: str | None = None
    if tx is not None and tx.get("payment_status") is not None:
        paid = _as_status(tx["payment_status"], "transaction.payment_status", PAYMENT_STATUSES)
        if paid in _FORM_PAYMENT_STATUSES:
            status = paid
    if status is None:
        approval = _as_int(obj.get("approval_status"), "approval_status")
        status = (
            _FORM_APPROVAL_STATUSES.get(approval, "answered")
            if approval is not None
            else "answered"
        )
    occurred_at = _as_moment(obj.get("complete_date"), "complete_date", tz)
    if occurred_at is None and tx is not None:
        occurred_at = _as_moment(tx.get("complete_date"), "transaction.complete_date", tz)
    return _Normalized(
        status=status,
        amount=None if tx is None else _as_amount(tx.get("amount"), "transaction.amount"),
        currency=_currency(tx),
        occurred_at=occurred_at,
        person=_person(_as_object(obj.get("user"), "user", required=False), "user", obj),
    )


def _ecard_sale(obj: Mapping[str, Any], tz: zoneinfo.ZoneInfo) -> _Normalized:
    # Flat, not nested. Date and ISO currency come from the list row (see normalize).
    return _Normalized(
        status=_as_status(
            obj.get("transaction__payment_status"), "transaction__payment_status", PAYMENT_STATUSES
        ),
        amount=_as_amount(obj.get("transaction__amount"), "transaction__amount"),
        currency=_as_text(
            obj.get("transaction__currency__iso_code"), "transaction__currency__iso_code"
        ),
        occurred_at=_as_moment(
            obj.get("transaction__complete_date"), "transaction__complete_date", tz
        ),
        person=_person(None, "", obj),
    )


def _campaign(obj: Mapping[str, Any], tz: zoneinfo.ZoneInfo) -> _Normalized:
    # The fundraiser is the person; a campaign has no amount of its own (its
    # donations are donation records).
    first = _as_text(obj.get("user__first_name"), "user__first_name")
    last = _as_text(obj.get("user__last_name"), "user__last_name")
    return _Normalized(
        status=_as_status(obj.get("status"), "status", CAMPAIGN_STATUSES),
        amount=None,
        currency=None,
        occurred_at=_as_moment(obj.get("create_date"), "create_date", tz),
        person=Person(
            name=_join_name(first, last), fonzip_user_id=_as_int(obj.get("user_id"), "user_id")
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


def normalize(
    detail: Detail,
    *,
    tz: zoneinfo.ZoneInfo,
    source: Source,
    fetched_at: dt.datetime,
) -> Record:
    """The Record of one fetched Fonzip object; NormalizeError if it is malformed.

    ``data`` is a deep copy of ``detail.obj`` (for e-card sales, completed with the two
    list-row fields the detail lacks), and never other list-row fields: the same state
    fetched through a webhook or a reconcile gives the same ``version``. Dates are
    read as :func:`parse_fonzip_datetime` describes; ``business_date`` is the date of
    ``occurred_at`` in ``tz``.
    """
    if fetched_at.tzinfo is None or fetched_at.utcoffset() is None:
        raise ValueError(f"fetched_at must be aware, got {fetched_at.isoformat()}")
    kind = detail.kind
    try:
        if not isinstance(detail.obj, Mapping):
            raise _BadField("(object)", f"expected an object, got {type(detail.obj).__name__}")
        data: dict[str, Any] = copy.deepcopy(dict(detail.obj))
        if kind is Kind.ECARD_SALE and detail.list_row is not None:
            for key in ECARD_LIST_ROW_FIELDS:
                if data.get(key) is None and detail.list_row.get(key) is not None:
                    data[key] = copy.deepcopy(detail.list_row[key])
        fonzip_id = _as_int(data.get("id"), "id")
        if fonzip_id is None:
            raise _BadField("id", "missing")
        if fonzip_id != detail.fonzip_id:
            raise _BadField("id", f"is {fonzip_id}, but {detail.endpoint} was asked for it")
        fields = _NORMALIZERS[kind](data, tz)
    except _BadField as exc:
        raise NormalizeError(kind, detail.fonzip_id, exc.field, exc.problem) from None
    return Record(
        kind=kind,
        fonzip_id=fonzip_id,
        status=fields.status,
        amount=fields.amount,
        currency=fields.currency,
        occurred_at=fields.occurred_at,
        business_date=(
            None if fields.occurred_at is None else business_date(fields.occurred_at, tz)
        ),
        person=fields.person,
        source=source,
        fetched_at=fetched_at,
        version=content_version(
            kind,
            fonzip_id,
            fields.status,
            fields.amount,
            fields.currency,
            fields.occurred_at,
            fields.person,
            data,
        ),
        data=data,
    )


def list_row_id(kind: Kind, row: Mapping[str, Any]) -> int:
    """The Fonzip id of a list row; NormalizeError if it has none."""
    try:
        fonzip_id = _as_int(row.get("id"), "id")
    except _BadField as exc:
        raise NormalizeError(kind, None, exc.field, exc.problem) from None
    if fonzip_id is None:
        raise NormalizeError(kind, None, "id", "missing")
    return fonzip_id


def list_row_status(kind: Kind, list_status: str, row: Mapping[str, Any]) -> str:
    """The normalized status a list row implies, as :func:`normalize` would give it.

    For the reconciler's diff: a row whose status differs from the stored record's
    is fetched again. Money kinds: the row's payment status when it carries one
    (``transaction__payment_status``, or a nested ``transaction`` for ticket sales),
    otherwise the list it came from (paid, refund, failed). Form answers: the list
    (answer, waiting_approval, rejected, refund, failed). Campaigns: the row's status.
    """
    try:
        if kind is Kind.CAMPAIGN:
            return _as_status(row.get("status"), "status", CAMPAIGN_STATUSES)
        if kind is Kind.FORM_ANSWER:
            return _from_list(_FORM_LIST_STATUSES, list_status)
        payment = row.get("transaction__payment_status")
        field = "transaction__payment_status"
        nested = row.get("transaction")
        if payment is None and isinstance(nested, Mapping):
            payment = nested.get("payment_status")
            field = "transaction.payment_status"
        if payment is not None:
            return _as_status(payment, field, PAYMENT_STATUSES)
        return _from_list(_MONEY_LIST_STATUSES, list_status)
    except _BadField as exc:
        fonzip_id = row.get("id")
        known_id = (
            fonzip_id if isinstance(fonzip_id, int) and not isinstance(fonzip_id, bool) else None
        )
        raise NormalizeError(kind, known_id, exc.field, exc.problem) from None


def _from_list(table: Mapping[str, str], list_status: str) -> str:
    try:
        return table[list_status]
    except KeyError:
        known = ", ".join(table)
        raise _BadField("(list status)", f"unknown list {list_status!r} (known: {known})") from None
