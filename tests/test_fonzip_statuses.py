"""Tests of fonzipd.fonzip.statuses: Fonzip's codes and lists in normalized statuses."""

from __future__ import annotations

import pytest

from fonzipd.fonzip.statuses import (
    CAMPAIGN_STATUSES,
    DUE_RECORD_STATUSES,
    PAYMENT_STATUSES,
    list_holding,
    list_holds,
)
from fonzipd.kinds import Kind


def test_every_list_of_every_kind_holds_known_statuses() -> None:
    normalized = {
        *PAYMENT_STATUSES.values(),
        *DUE_RECORD_STATUSES.values(),
        *CAMPAIGN_STATUSES.values(),
        "answered",
        "waiting_approval",
        "rejected",
    }
    for kind in Kind:
        for list_status in kind.list_statuses:
            held = list_holds(kind, list_status)
            assert held, (kind, list_status)
            assert set(held) <= normalized, (kind, list_status)


@pytest.mark.parametrize(
    ("kind", "list_status", "held"),
    [
        (Kind.DONATION, "paid", ("succeeded",)),
        (Kind.MEMBERSHIP_FEE, "refund", ("refunded",)),
        (Kind.ECARD_SALE, "failed", ("failed",)),
        (Kind.FORM_ANSWER, "answer", ("answered",)),
        (Kind.FORM_ANSWER, "waiting_approval", ("waiting_approval",)),
        (Kind.FORM_ANSWER, "refund", ("refunded",)),
    ],
)
def test_list_holds(kind: Kind, list_status: str, held: tuple[str, ...]) -> None:
    assert list_holds(kind, list_status) == held


def test_the_campaign_list_holds_every_campaign_status() -> None:
    assert set(list_holds(Kind.CAMPAIGN, "created")) == set(CAMPAIGN_STATUSES.values())


def test_a_list_a_kind_does_not_have_is_an_error() -> None:
    with pytest.raises(ValueError, match="donation has no list 'answer'"):
        list_holds(Kind.DONATION, "answer")
    with pytest.raises(ValueError, match="campaign has no list 'paid'"):
        list_holds(Kind.CAMPAIGN, "paid")


def test_list_holding_is_the_inverse() -> None:
    for kind in Kind:
        for list_status in kind.list_statuses:
            for status in list_holds(kind, list_status):
                assert list_holding(kind, status) == list_status
    # An e-card sale's payment status says which list to search for its row.
    assert [list_holding(Kind.ECARD_SALE, PAYMENT_STATUSES[code]) for code in (3, 4, 5)] == [
        "paid",
        "refund",
        "failed",
    ]
    assert list_holding(Kind.ECARD_SALE, "pending") is None
    assert list_holding(Kind.ECARD_SALE, None) is None
