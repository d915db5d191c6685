"""Tests of fonzipd.fonzip.fields: strict readers of Fonzip's values."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from fonzipd.fonzip.fields import (
    BadField,
    as_amount,
    as_currency,
    as_int,
    as_moment,
    as_object,
    as_text,
    check_tree,
    parse_fonzip_datetime,
)
from tests.fonzip_objects import ISTANBUL, donation


@pytest.mark.parametrize(
    "value",
    [
        "2024-05-06T14:03:12+03:00",
        "2024-05-06T11:03:12Z",
        "2024-05-06T11:03:12+00:00",
        "2024-05-06T14:03:12",
        "2024-05-06 14:03:12",
        "2024-05-06T13:03:12+02:00",
        " 2024-05-06T14:03:12+03:00 ",
        dt.datetime(2024, 5, 6, 14, 3, 12),
    ],
)
def test_parse_fonzip_datetime_accepts_offset_z_and_naive(value: object) -> None:
    parsed = parse_fonzip_datetime(value, ISTANBUL)
    assert parsed == dt.datetime(2024, 5, 6, 11, 3, 12, tzinfo=dt.UTC)
    assert parsed is not None
    assert parsed.utcoffset() == dt.timedelta(0)


def test_parse_fonzip_datetime_empty_and_bad_values() -> None:
    assert parse_fonzip_datetime(None, ISTANBUL) is None
    assert parse_fonzip_datetime("", ISTANBUL) is None
    assert parse_fonzip_datetime("2024-05-06", ISTANBUL) == dt.datetime(
        2024, 5, 5, 21, tzinfo=dt.UTC
    )
    with pytest.raises(ValueError, match="not an ISO-8601"):
        parse_fonzip_datetime("06.05.2024 14:03", ISTANBUL)
    with pytest.raises(ValueError, match="got a number"):
        parse_fonzip_datetime(1714993392, ISTANBUL)


@pytest.mark.parametrize(
    "value",
    ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+03:00", "1899-12-31T23:59:59Z"],
)
def test_dates_out_of_range_are_a_value_error_not_an_overflow(value: str) -> None:
    # 9999-12-31T23:59:59-05:00 in UTC is past datetime.max: an OverflowError before.
    with pytest.raises(ValueError, match="outside the years 1900 to 2999"):
        parse_fonzip_datetime(value, ISTANBUL)


SECRET = "Ayşe Yılmaz 12345678901"
"""Personal data planted in hostile values: no error message may quote it."""


@pytest.mark.parametrize(
    ("read", "value", "problem"),
    [
        (as_int, SECRET, "expected an integer, got a string"),
        (as_int, {"name": SECRET}, "expected an integer, got an object"),
        (as_int, -5, "outside 0 to"),
        (as_int, 2**63, "outside 0 to"),
        (as_int, True, "got a boolean"),
        (as_text, [SECRET], "expected a string, got a list"),
        (as_text, {"first": SECRET}, "expected a string, got an object"),
        (as_text, SECRET + "\ud800", "not valid UTF-8 (a lone surrogate)"),
        (as_amount, SECRET, "expected a number, got a string"),
        (as_amount, {"value": 5}, "expected a number, got an object"),
        (as_amount, [250], "expected a number, got a list"),
        (as_amount, -250.0, "a negative amount"),
        (as_amount, "-0.01", "a negative amount"),
        (as_amount, "NaN", "not a finite number"),
        (as_amount, float("inf"), "not a finite number"),
        (as_amount, "1e15", "1E+15 or more"),
        (as_amount, "1e-19", "more than 18 digits after the point"),
        (as_currency, "TL", "not an ISO 4217"),
        (as_currency, "try", "not an ISO 4217"),
        (as_currency, "₺", "not an ISO 4217"),
        (as_currency, SECRET, "not an ISO 4217"),
        (as_currency, 949, "not an ISO 4217"),
        (lambda v, f: as_object(v, f, required=False), SECRET, "expected an object, got a str"),
        (lambda v, f: as_object(v, f, required=True), [SECRET], "expected an object, got a list"),
    ],
)
def test_readers_name_the_problem_and_never_the_value(
    read: Callable[[object, str], object], value: object, problem: str
) -> None:
    with pytest.raises(BadField) as caught:
        read(value, "user.name")
    assert caught.value.field == "user.name"
    assert problem in caught.value.problem
    assert "Ayşe" not in str(caught.value)
    assert "12345678901" not in str(caught.value)


def test_moments_name_the_problem_and_never_the_value() -> None:
    for value in (SECRET, "9999-12-31T23:59:59-05:00", {"date": SECRET}, "2024-05-06\ud800"):
        with pytest.raises(BadField) as caught:
            as_moment(value, "transaction.complete_date", ISTANBUL)
        assert caught.value.field == "transaction.complete_date"
        assert "Ayşe" not in str(caught.value)
        assert "9999" not in str(caught.value)


@pytest.mark.parametrize(
    ("read", "value", "expected"),
    [
        (as_int, "42", 42),
        (as_int, 42.0, 42),
        (as_int, 0, 0),
        (as_text, "  Ayşe  ", "Ayşe"),
        (as_text, "   ", None),
        (as_text, 5321234567, "5321234567"),
        (as_amount, 0, Decimal("0")),
        (as_amount, 0.1, Decimal("0.1")),
        (as_amount, "250.00", Decimal("250.00")),
        (as_amount, "", None),
        (as_amount, 999_999_999_999_999, Decimal("999999999999999")),
        (as_currency, "TRY", "TRY"),
        (as_currency, " EUR ", "EUR"),
        (as_currency, None, None),
    ],
)
def test_readers_accept_what_fonzip_sends(
    read: Callable[[object, str], object], value: object, expected: object
) -> None:
    assert read(value, "f") == expected


@pytest.mark.parametrize(
    ("tree", "field", "problem"),
    [
        ({"user": {"name": "Ay\ud800e"}}, "user.name", "lone surrogate"),
        ({"form_answer_list": [{"answer": "\udfff"}]}, "form_answer_list[0].answer", "UTF-8"),
        ({"custom_parameters": {"k\ud800": 1}}, "custom_parameters.[?] (its key)", "UTF-8"),
        ({"custom_parameters": {"Ayşe Yılmaz": "\ud800"}}, "custom_parameters.[?]", "UTF-8"),
        ({"transaction": {"value": float("nan")}}, "transaction.value", "not a finite number"),
        ({"a": {1: 2}}, "a", "a key that is a number"),
    ],
)
def test_check_tree_finds_what_cannot_be_stored(
    tree: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(BadField) as caught:
        check_tree(tree)
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert "Ayşe" not in str(caught.value)


def test_check_tree_bounds_nesting() -> None:
    deep: dict[str, Any] = {"id": 1}
    for _ in range(40):
        deep = {"x": deep}
    with pytest.raises(BadField, match="nested more than 32 levels deep"):
        check_tree(deep)
    # A chain of 5,000 would overflow the stack of copy.deepcopy and json.dumps.
    deeper: list[Any] = []
    for _ in range(5000):
        deeper = [deeper]
    with pytest.raises(BadField, match="nested more than"):
        check_tree({"x": deeper})


def test_check_tree_accepts_a_realistic_object() -> None:
    check_tree(donation())
