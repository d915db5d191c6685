"""Fonzip's status codes and list filters, and the normalized statuses they stand for.

Normalized statuses, per kind:
- money kinds (donation, membership_fee, ticket_sale, ecard_sale), from the transaction
  payment status: 0-2 pending, 3 succeeded, 4 refunded, 5 failed, 6 removed;
- membership fees without a transaction (debts), from the due-record status: see
  DUE_RECORD_STATUSES;
- form answers with a transaction: from its payment status, like every money kind;
  without one: ``answered``. Their approval is a field of its own, ``approval``
  (FORM_APPROVAL_STATUSES), not a status;
- campaigns: their own status names (CAMPAIGN_STATUSES).

Each list filter (``paid``, ``refund``...) holds the records of one or more list
states: :func:`list_holds` is the one place that says which, for the reconciler's
local counts and for the state a list row implies. A record's list state is its
status, except for form answers, whose lists mix payment and approval:
:func:`list_state`.
"""

from __future__ import annotations

from collections.abc import Mapping

from fonzipd.kinds import Kind

__all__ = [
    "CAMPAIGN_STATUSES",
    "DUE_RECORD_STATUSES",
    "FORM_APPROVAL_STATUSES",
    "FORM_PAYMENT_STATUSES",
    "PAYMENT_STATUSES",
    "list_holding",
    "list_holds",
    "list_state",
]

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

FORM_APPROVAL_STATUSES: Mapping[int, str] = {
    0: "waiting_approval",
    1: "approved",
    2: "rejected",
}
"""Form answer ``approval_status``, undocumented (reference §5.3), to ``Record.approval``.
Assumed: 0 waiting for approval, 1 approved, 2 rejected; None (a form without
approval) and unknown codes give no approval. If Fonzip used 0 for "needs no
approval", such forms would show as waiting_approval here."""

FORM_PAYMENT_STATUSES = frozenset({"pending", "refunded", "failed", "removed", "deleted"})
"""Form-answer statuses that put an answer in a payment list (or none), whatever its
approval: Fonzip lists refunded and failed answers under ``refund`` and ``failed`` only."""

_MONEY_LISTS: Mapping[str, tuple[str, ...]] = {
    "paid": ("succeeded",),
    "refund": ("refunded",),
    "failed": ("failed",),
}
_FORM_LISTS: Mapping[str, tuple[str, ...]] = {
    "answer": ("answered",),
    "waiting_approval": ("waiting_approval",),
    "rejected": ("rejected",),
    "refund": ("refunded",),
    "failed": ("failed",),
}
# Campaigns are listed once, by creation date, whatever their status.
_CAMPAIGN_LISTS: Mapping[str, tuple[str, ...]] = {
    "created": tuple(sorted(set(CAMPAIGN_STATUSES.values())))
}


def list_holds(kind: Kind, list_status: str) -> tuple[str, ...]:
    """The normalized statuses of the records that ``kind``'s list ``list_status`` holds.

    ValueError if ``kind`` has no such list (see :attr:`Kind.list_statuses`).
    """
    if list_status not in kind.list_statuses:
        raise ValueError(f"{kind} has no list {list_status!r}")
    if kind is Kind.CAMPAIGN:
        return _CAMPAIGN_LISTS[list_status]
    return (_FORM_LISTS if kind is Kind.FORM_ANSWER else _MONEY_LISTS)[list_status]


def list_state(kind: Kind, status: str, approval: str | None) -> str:
    """What Fonzip's lists see of a record: the state :func:`list_holds` speaks of.

    Its ``status``, except for form answers, whose lists (``answer``,
    ``waiting_approval``, ``rejected``, ``refund``, ``failed``) sort by payment first,
    then by approval: a paid or free answer waiting approval is ``waiting_approval``, a
    rejected one ``rejected``, any other ``answered``.
    """
    if kind is not Kind.FORM_ANSWER or status in FORM_PAYMENT_STATUSES:
        return status
    if approval in ("waiting_approval", "rejected"):
        return approval
    return "answered"


def list_holding(kind: Kind, status: str | None) -> str | None:
    """The one list of ``kind`` that holds records of normalized ``status``, or None."""
    for list_status in kind.list_statuses:
        if status in list_holds(kind, list_status):
            return list_status
    return None
