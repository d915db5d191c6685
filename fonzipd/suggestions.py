"""Suggestions for configuration mistakes: the key meant, the line a key is on, the zone meant.

Used by the configuration's error messages, so that ``fonzipd check`` says
``fonzip.timezon: unknown key; did you mean timezone? (line 3)`` instead of leaving
the operator to compare spellings.
"""

from __future__ import annotations

import difflib
import functools
import re
import zoneinfo
from collections.abc import Iterable, Sequence
from pathlib import Path

# Names tzdata keeps only as aliases of another zone ("L Europe/Istanbul Asia/Istanbul").
_TZDATA_INDEX = Path("/usr/share/zoneinfo/tzdata.zi")
_TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\s-]+?)\s*=""")


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` most likely misspells, or None when none is close."""
    options = list(candidates)
    lowered = {c.lower(): c for c in options}
    if word.lower() in lowered:
        return lowered[word.lower()]
    found = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.7)
    return lowered[found[0]] if found else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean X?"``, or ``""`` when nothing is close."""
    found = closest(word, candidates)
    return f"; did you mean {found}?" if found else ""


def _parts(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in dotted.split(".")]


def line_of(text: str, loc: Sequence[str]) -> int | None:
    """The 1-based line of the TOML file ``text`` that sets the key at ``loc``, if any.

    ``("listner",)`` finds the ``[listner]`` header; ``("fonzip", "timezon")`` the
    ``timezon = ...`` line inside ``[fonzip]`` (or a dotted ``fonzip.timezon = ...``).
    A key that came from the environment is on no line: None.
    """
    want = [str(p) for p in loc]
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE.match(line)
        if header:
            table = _parts(header.group(1))
            if table == want or (len(want) == 1 and table[:1] == want):
                return number
            continue
        key = _KEY.match(line)
        if key and [*table, *_parts(key.group(1))] == want:
            return number
    return None


@functools.cache
def _aliases() -> frozenset[str]:
    try:
        index = _TZDATA_INDEX.read_text(encoding="utf-8")
    except OSError:
        return frozenset()
    return frozenset(
        fields[2] for fields in (line.split() for line in index.splitlines()) if fields[:1] == ["L"]
    )


def zone_meant(value: str) -> list[str]:
    """IANA zones a non-IANA ``value`` probably means: ``Istanbul`` -> ``Europe/Istanbul``."""
    zones = zoneinfo.available_timezones()
    canonical = zones - _aliases() or zones
    wanted = value.strip().replace(" ", "_").lower()
    by_city = sorted(z for z in canonical if z.rsplit("/", 1)[-1].lower() == wanted)
    if by_city:
        return by_city
    lowered = {z.lower(): z for z in canonical}
    return [lowered[m] for m in difflib.get_close_matches(wanted, list(lowered), n=2, cutoff=0.8)]
