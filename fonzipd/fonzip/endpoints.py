"""Per kind: Fonzip's list and detail paths, their parameters and response keys."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from fonzipd.fonzip.errors import FonzipBadResponse
from fonzipd.kinds import Kind

HOW_MANY = 100
"""Rows per list page: Fonzip's maximum."""


@dataclasses.dataclass(frozen=True, slots=True)
class Detail:
    """One object as fetched from Fonzip, ready to normalize.

    ``obj`` is the detail object unwrapped from its envelope (``{"donation": obj}``).
    For e-card sales, whose detail lacks them, ``transaction__complete_date`` and
    ``transaction__currency__iso_code`` are copied into ``obj`` from the list row.
    ``list_row`` is the list row the object was found through, when there was one.
    ``endpoint`` is the path that answered (``/subscription/5`` or ``/debt/5``).
    ``read_at`` is when the request that read ``obj`` was sent: Fonzip held this state
    then (or a newer one), which orders two reads of one object (None: not known).
    """

    kind: Kind
    fonzip_id: int
    obj: dict[str, Any]
    list_row: dict[str, Any] | None
    endpoint: str
    read_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a list endpoint.

    ``rows`` holds only ids not seen on earlier pages of the same listing (and, for
    campaigns, only rows created inside the window). ``total`` is Fonzip's count of
    all matching rows; None for campaigns, whose list has no upper date bound.
    ``page`` is the 1-based ``start_page`` that answered; ``read_at`` when its request
    was sent (the rows show Fonzip's state at that moment, or a newer one).
    """

    rows: list[dict[str, Any]]
    total: int | None
    page: int
    read_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ListResult:
    """A whole listing: every distinct row, Fonzip's ``total`` and the requests made."""

    rows: list[dict[str, Any]]
    total: int | None
    calls: int


@dataclasses.dataclass(frozen=True, slots=True)
class KindEndpoints:
    """How Fonzip serves one kind."""

    kind: Kind
    list_path: str
    list_key: str
    """Key of the rows in the list response (they differ per kind)."""
    detail_path: str
    """Template; ``{id}`` is the object id, ``{form_id}`` the form of a form answer."""
    detail_key: str
    """Envelope key of the detail response."""
    order_by: str | None
    """Ascending sort sent with list requests; None where the list has no ``order_by``."""
    date_field: str
    """The row field the list's date filter applies to (paid and failed lists)."""
    refund_date_field: str | None
    """The row field the ``refund`` list filters on; documented for e-cards only.

    Open question for donations, dues and tickets (reference §6.1): assumed the same as
    e-cards (the refund date). Rows carry both fields; reconcile may check either.
    """
    fallback_detail_path: str | None = None
    """Tried on 404 from ``detail_path`` (dues: the webhook id may be a debt)."""


ENDPOINTS: Mapping[Kind, KindEndpoints] = {
    Kind.DONATION: KindEndpoints(
        Kind.DONATION,
        list_path="/donations",
        list_key="donation_list",
        detail_path="/donation/{id}",
        detail_key="donation",
        order_by="transaction__complete_date",
        date_field="transaction__complete_date",
        refund_date_field="transaction__refund_date",
    ),
    Kind.MEMBERSHIP_FEE: KindEndpoints(
        Kind.MEMBERSHIP_FEE,
        list_path="/subscriptions",
        list_key="subscription_list",
        detail_path="/subscription/{id}",
        detail_key="subscription",
        order_by="transaction__complete_date",
        date_field="transaction__complete_date",
        refund_date_field="transaction__refund_date",
        # Open question (reference §3.2): the op-2 webhook id may be the payment or the
        # paid debt. Both paths answer the same schema under the same key.
        fallback_detail_path="/debt/{id}",
    ),
    Kind.TICKET_SALE: KindEndpoints(
        Kind.TICKET_SALE,
        list_path="/ticket-sales",
        list_key="sales_list",
        detail_path="/ticket-sale/{id}",
        detail_key="ticket_sale",
        order_by="transaction__complete_date",
        # Ticket rows nest the transaction: the date is transaction.complete_date.
        date_field="transaction.complete_date",
        refund_date_field="transaction.refund_date",
    ),
    Kind.FORM_ANSWER: KindEndpoints(
        Kind.FORM_ANSWER,
        list_path="/form-answers",
        list_key="answer_list",
        detail_path="/form/{form_id}/answer/{id}",
        detail_key="answer",
        order_by=None,
        date_field="complete_date",
        refund_date_field=None,
    ),
    Kind.ECARD_SALE: KindEndpoints(
        Kind.ECARD_SALE,
        list_path="/ecard-transactions",
        list_key="sale_list",
        detail_path="/ecard-transactions/{id}",
        detail_key="ecard_transaction",
        order_by="transaction__complete_date",
        date_field="transaction__complete_date",
        refund_date_field="transaction__refund_date",
    ),
    Kind.CAMPAIGN: KindEndpoints(
        Kind.CAMPAIGN,
        list_path="/fundraising-campaigns",
        list_key="campaign_list",
        detail_path="/fundraising-campaign/{id}",
        detail_key="campaign",
        order_by="create_date",
        date_field="create_date",
        refund_date_field=None,
    ),
}

ECARD_FIELDS_FROM_LIST = ("transaction__complete_date", "transaction__currency__iso_code")
"""What the e-card detail lacks and its list row has."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind_of(value: object) -> str:
    return "null" if value is None else type(value).__name__


def validate_rows(endpoint: str, body: object, key: str) -> list[dict[str, Any]]:
    """The rows under ``key``: a list of objects, each with an integer ``id``."""
    if not isinstance(body, dict):
        raise FonzipBadResponse(endpoint, f"expected a JSON object, got {_kind_of(body)}")
    if key not in body:
        keys = ", ".join(sorted(map(str, body))) or "none"
        raise FonzipBadResponse(endpoint, f"missing key {key!r} (keys present: {keys})")
    rows = body[key]
    if not isinstance(rows, list):
        raise FonzipBadResponse(endpoint, f"{key!r} is {_kind_of(rows)}, expected a list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise FonzipBadResponse(endpoint, f"{key}[{i}] is {_kind_of(row)}, expected an object")
        if not _is_int(row.get("id")):
            raise FonzipBadResponse(
                endpoint, f"{key}[{i}].id is {_kind_of(row.get('id'))}, expected an integer"
            )
    return rows


def validate_list(endpoint: str, body: object, key: str) -> tuple[list[dict[str, Any]], int]:
    """A list response: its rows (see validate_rows) and its integer ``total``."""
    rows = validate_rows(endpoint, body, key)
    assert isinstance(body, dict)
    total = body.get("total")
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise FonzipBadResponse(
            endpoint, f"'total' is {total!r} ({_kind_of(total)}), expected an integer >= 0"
        )
    return rows, total


def validate_detail(
    endpoint: str, body: object, key: str, expected_id: int | None = None
) -> dict[str, Any]:
    """A detail response: the object under ``key``, with an integer ``id``."""
    if not isinstance(body, dict):
        raise FonzipBadResponse(endpoint, f"expected a JSON object, got {_kind_of(body)}")
    obj = body.get(key)
    if not isinstance(obj, dict):
        keys = ", ".join(sorted(map(str, body))) or "none"
        what = f"missing key {key!r} (keys present: {keys})" if key not in body else None
        raise FonzipBadResponse(endpoint, what or f"{key!r} is {_kind_of(obj)}, expected object")
    if not _is_int(obj.get("id")):
        raise FonzipBadResponse(
            endpoint, f"{key}.id is {_kind_of(obj.get('id'))}, expected an integer"
        )
    if expected_id is not None and obj["id"] != expected_id:
        raise FonzipBadResponse(endpoint, f"{key}.id is {obj['id']}, expected {expected_id}")
    return obj


def format_query_datetime(value: dt.datetime, *, round_up: bool = False) -> str:
    """ISO-8601 with the value's own offset, to whole seconds (``2024-05-06T00:00:00+03:00``).

    Sub-second values round down, or up with ``round_up`` (for an upper bound), so that
    the window sent never shrinks.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"a query date must be timezone-aware, got {value!r}")
    if value.microsecond and round_up:
        value = value + dt.timedelta(seconds=1)
    return value.replace(microsecond=0).isoformat()


def max_pages(total: int) -> int:
    """A bound on the pages a listing of ``total`` rows may take (a server that ignores
    ``start_page`` must not keep us paging forever)."""
    return math.ceil(total / HOW_MANY) + 2
