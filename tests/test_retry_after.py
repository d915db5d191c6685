"""Tests of the one Retry-After parser: every value a server may send, none crashes it."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fonzipd.retry_after import parse_retry_after

NOW = dt.datetime(2025, 3, 12, 9, 0, tzinfo=dt.UTC)


def test_seconds_and_http_dates_are_read() -> None:
    assert parse_retry_after("120", NOW, cap=600) == 120.0
    assert parse_retry_after(" 7 ", NOW, cap=600) == 7.0
    assert parse_retry_after("Wed, 12 Mar 2025 09:01:00 GMT", NOW, cap=600) == 60.0
    assert parse_retry_after("Wednesday, 12-Mar-25 09:01:00 GMT", NOW, cap=600) == 60.0
    assert parse_retry_after("Wed, 12 Mar 2025 08:00:00 GMT", NOW, cap=600) == 0.0  # past


def test_huge_values_are_capped() -> None:
    assert parse_retry_after("999999999999", NOW, cap=60) == 60.0
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", NOW, cap=60) == 60.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "  ",
        "soon",
        "-5",
        "1.5",
        "nan",
        "NaN",
        "inf",
        "1e3",
        "+3",
        "0x10",
        "²",
        "١٢٠",
        "１２",
        "9" * 13,
        "Wed, 99 Foo 99999 GMT",
        "Wed, 12 Mar 2025 25:61:00 GMT",
        "\x00",
        "\udcff",
    ],
)
def test_malformed_values_are_ignored(value: str | None) -> None:
    assert parse_retry_after(value, NOW, cap=60) is None


@given(st.text(max_size=80))
def test_any_text_gives_none_or_a_finite_wait_within_the_cap(value: str) -> None:
    got = parse_retry_after(value, NOW, cap=60)
    assert got is None or (math.isfinite(got) and 0 <= got <= 60)
