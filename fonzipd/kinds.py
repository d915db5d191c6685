"""The six kinds of Fonzip object, and how webhooks and lists name them."""

from __future__ import annotations

import enum


class Kind(enum.StrEnum):
    """A kind of Fonzip object; the value is the name used in records, config and sinks."""

    DONATION = "donation"
    MEMBERSHIP_FEE = "membership_fee"
    TICKET_SALE = "ticket_sale"
    FORM_ANSWER = "form_answer"
    ECARD_SALE = "ecard_sale"
    CAMPAIGN = "campaign"

    @property
    def operation(self) -> int:
        """The webhook ``operation`` number of this kind (1 to 6)."""
        return _OPERATIONS[self]

    @classmethod
    def from_operation(cls, operation: int) -> Kind:
        """The kind a webhook ``operation`` (1 to 6) stands for; ValueError otherwise."""
        try:
            return _BY_OPERATION[operation]
        except (KeyError, TypeError):
            raise ValueError(f"operation must be 1 to 6, got {operation!r}") from None

    @property
    def list_statuses(self) -> tuple[str, ...]:
        """The values of the list endpoint's ``status`` filter, one list each.

        Campaigns have no status filter that partitions them by date, so they are
        listed once, by creation date, under the pseudo status ``"created"``.
        """
        return _LIST_STATUSES[self]


_OPERATIONS: dict[Kind, int] = {
    Kind.DONATION: 1,
    Kind.MEMBERSHIP_FEE: 2,
    Kind.TICKET_SALE: 3,
    Kind.FORM_ANSWER: 4,
    Kind.ECARD_SALE: 5,
    Kind.CAMPAIGN: 6,
}
# A dict lookup rather than a scan: the listener asks once per webhook.
_BY_OPERATION: dict[int, Kind] = {op: kind for kind, op in _OPERATIONS.items()}

_MONEY_STATUSES = ("paid", "refund", "failed")
_LIST_STATUSES: dict[Kind, tuple[str, ...]] = {
    Kind.DONATION: _MONEY_STATUSES,
    Kind.MEMBERSHIP_FEE: _MONEY_STATUSES,
    Kind.TICKET_SALE: _MONEY_STATUSES,
    Kind.FORM_ANSWER: ("answer", "waiting_approval", "rejected", "refund", "failed"),
    Kind.ECARD_SALE: _MONEY_STATUSES,
    Kind.CAMPAIGN: ("created",),
}

# The webhook `status` values Fonzip documents: 0 campaign created (op 6 only),
# 3 successful, 4 refunded, 5 error.
WEBHOOK_STATUSES = frozenset({0, 3, 4, 5})
