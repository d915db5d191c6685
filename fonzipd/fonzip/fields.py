"""Strict readers of Fonzip's field values: integers, amounts, text, currencies, date-times.

Every reader returns a clean Python value or raises :class:`BadField` naming the field
and the kind of problem. A problem never quotes the value: Fonzip's objects hold donors'
personal data, and these messages reach logs and ``fonzipd status``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zoneinfo
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "BadField",
    "as_amount",
    "as_currency",
    "as_int",
    "as_moment",
    "as_object",
    "as_text",
    "check_tree",
    "parse_fonzip_datetime",
]

MAX_ID = 2**63 - 1
"""Largest integer read as an id or a code: what SQLite (and most sinks) can store."""
MAX_AMOUNT = Decimal(10) ** 15
"""Amounts are below this: a larger one is a broken answer, not a donation."""
MAX_DECIMALS = 18
"""Digits after the point an amount may have (a printed double has at most 17)."""
MAX_DEPTH = 32
"""How deeply a Fonzip object may nest (the reference's deepest is four levels)."""
YEARS = (1900, 2999)
"""Date-times outside these years are refused (and could not be moved between zones)."""

_CURRENCY = re.compile(r"[A-Z]{3}")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class BadField(Exception):
    """A field value that cannot be read: ``field`` is its path, ``problem`` says why."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field = field
        self.problem = problem


def type_name(value: object) -> str:
    """What a JSON value is, in words (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def parse_fonzip_datetime(value: object, tz: zoneinfo.ZoneInfo) -> dt.datetime | None:
    """A Fonzip date-time as an aware datetime in UTC; None for None or an empty string.

    Accepts ISO-8601 with ``Z``, with an offset, or naive, with ``T`` or a space
    between date and time. The reference does not say which form responses use (§3.0,
    open question). A naive value is ASSUMED to be the association's local time, ``tz``
    (where a naive wall time is repeated or skipped by a DST change, the earlier offset
    applies). A date alone means local midnight. Raises ValueError, without quoting the
    value, for anything else and for years outside 1900 to 2999.
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
            raise ValueError("not an ISO-8601 date-time") from None
    else:
        raise ValueError(f"expected an ISO-8601 date-time string, got {type_name(value)}")
    if not YEARS[0] <= moment.year <= YEARS[1]:
        raise ValueError(f"a date-time outside the years {YEARS[0]} to {YEARS[1]}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=tz)
    return moment.astimezone(dt.UTC)


def as_int(value: object, field: str) -> int | None:
    """An id, code or count from 0 to MAX_ID; None for null.

    Numeric strings ("3") and integral floats (3.0) are accepted: the reference warns
    that field types in the spec are not always what is sent (§8, 14).
    """
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            raise BadField(field, "expected an integer, got a string that is not one") from None
    if number is None:
        raise BadField(field, f"expected an integer, got {type_name(value)}")
    if not 0 <= number <= MAX_ID:
        raise BadField(field, f"an integer outside 0 to {MAX_ID}")
    return number


def as_text(value: object, field: str) -> str | None:
    """Text, stripped; None for null or blank. It must be encodable as UTF-8."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a phone number sent as a number
    if not isinstance(value, str):
        raise BadField(field, f"expected a string, got {type_name(value)}")
    _check_utf8(value, field)
    return value.strip() or None


def as_amount(value: object, field: str) -> Decimal | None:
    """An amount of money: exact, finite, from 0 to below MAX_AMOUNT; None for null or blank.

    ``Decimal(str(x))`` keeps the number as Fonzip printed it (250.5, not the binary
    float 250.4999...). Strings with numeric content ("250.00") are accepted.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadField(field, f"expected a number, got {type_name(value)}")
    text = value.strip() if isinstance(value, str) else str(value)
    if not text:
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise BadField(field, "expected a number, got a string that is not one") from None
    if not amount.is_finite():
        raise BadField(field, "not a finite number")
    if amount < 0:
        raise BadField(field, "a negative amount")
    if amount >= MAX_AMOUNT:
        raise BadField(field, f"an amount of {MAX_AMOUNT:.0E} or more")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMALS:
        raise BadField(field, f"more than {MAX_DECIMALS} digits after the point")
    return amount


def as_currency(value: object, field: str) -> str | None:
    """An ISO 4217 code (three capital letters, ``TRY``); None for null or blank."""
    text = as_text(value, field)
    if text is not None and not _CURRENCY.fullmatch(text):
        raise BadField(field, "not an ISO 4217 currency code (three capital letters)")
    return text


def as_moment(value: object, field: str, tz: zoneinfo.ZoneInfo) -> dt.datetime | None:
    """A date-time read as :func:`parse_fonzip_datetime` says; None for null or blank."""
    try:
        return parse_fonzip_datetime(value, tz)
    except ValueError as exc:
        raise BadField(field, str(exc)) from None


def as_object(value: object, field: str, *, required: bool) -> Mapping[str, Any] | None:
    """A nested object; None for null unless ``required``."""
    if value is None:
        if required:
            raise BadField(field, "missing")
        return None
    if not isinstance(value, Mapping):
        raise BadField(field, f"expected an object, got {type_name(value)}")
    return value


def check_tree(value: object, field: str = "", depth: int = 0) -> None:
    """Check a whole JSON value before it is hashed, stored and sent to sinks.

    Every string (keys too) must be encodable as UTF-8 (JSON's ``\\ud800`` escape gives a
    lone surrogate, which SQLite, files and HTTP refuse), every number finite, nesting
    at most MAX_DEPTH deep, and only JSON types. Field paths name keys that are plain
    identifiers; other keys are shown as ``[?]``.
    """
    if depth > MAX_DEPTH:
        raise BadField(field or "(object)", f"nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, str):
        _check_utf8(value, field or "(object)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadField(field or "(object)", "not a finite number")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadField(field or "(object)", f"a key that is {type_name(key)}")
            name = key if _PLAIN_KEY.fullmatch(key) else "[?]"
            path = f"{field}.{name}" if field else name
            _check_utf8(key, f"{path} (its key)")
            check_tree(item, path, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_tree(item, f"{field}[{i}]", depth + 1)
    else:
        raise BadField(field or "(object)", f"not a JSON value: {type_name(value)}")


def _check_utf8(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadField(field, "text that is not valid UTF-8 (a lone surrogate)") from None
