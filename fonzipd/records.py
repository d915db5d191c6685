"""Record: the normalized form of a Fonzip object, the public type every sink receives.

The normalizers that make Records from Fonzip's objects live in
:mod:`fonzipd.fonzip.normalizer`: only ``fonzipd.fonzip`` knows Fonzip's shapes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import json
from decimal import Decimal
from typing import Any

from fonzipd.kinds import Kind

__all__ = [
    "DELETED",
    "Person",
    "Record",
    "Source",
    "content_version",
    "with_status",
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
    """When fonzipd asked Fonzip for this state (the detail request's send time): of two
    reads of one object, the one sent later saw the later state."""
    version: str
    data: dict[str, Any]
    """The full Fonzip object (detail, completed from the list row where needed)."""
    approval: str | None = None
    """Form answers only: the approval state, ``waiting_approval``, ``approved`` or
    ``rejected`` (None for forms that need no approval, and for every other kind).
    ``status`` says what happened to the money; this says what the association decided."""

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
            "approval": self.approval,
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
            approval=value.get("approval"),
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
        approval=record.approval,
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
    *,
    approval: str | None = None,
) -> str:
    """A short stable hash of a record's normalized content.

    ``approval`` is hashed only when there is one, so that records without one (every
    kind but form answers) keep the versions they had before the field existed.
    """
    content: list[Any] = [
        str(kind),
        fonzip_id,
        status,
        None if amount is None else str(amount),
        currency,
        None if occurred_at is None else occurred_at.isoformat(),
        dataclasses.asdict(person),
        data,
    ]
    if approval is not None:
        content.append({"approval": approval})
    payload = json.dumps(
        content,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
