"""The Retry-After header: one parser for the Fonzip client and the HTTP sink.

The header is either delay-seconds (ASCII digits) or an HTTP date (RFC 9110 §10.2.3).
It comes from a server fonzipd does not control, so anything else (a negative or
fractional number, NaN, a non-ASCII digit, a date no calendar has) is ignored rather
than trusted: the caller falls back to its own backoff.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re

_SECONDS = re.compile(r"[0-9]{1,12}")
"""delay-seconds: ASCII digits only (``str.isdigit`` also accepts ``²`` and ``١``)."""
_LONGEST_DATE = 64
"""Longer values are no HTTP date: not handed to the date parser at all."""


def parse_retry_after(value: str | None, now: dt.datetime, *, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, at most ``cap``; None if absent or bad.

    ``now`` (aware) is the time the answer arrived: an HTTP date in the past means 0.
    Never raises, whatever ``value`` holds.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _SECONDS.fullmatch(value):
        return min(float(value), cap)
    if len(value) > _LONGEST_DATE or not value.isascii():
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - now).total_seconds()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, seconds), cap)
