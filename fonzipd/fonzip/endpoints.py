"""Per kind: Fonzip's list and detail paths, their parameters and response keys."""

from __future__ import annotations

import dataclasses
from typing import Any

from fonzipd.kinds import Kind


@dataclasses.dataclass(frozen=True, slots=True)
class Detail:
    """One object as fetched from Fonzip, ready to normalize.

    ``obj`` is the detail object unwrapped from its envelope (``{"donation": obj}``).
    For e-card sales, whose detail lacks them, ``transaction__complete_date`` and
    ``transaction__currency__iso_code`` are copied into ``obj`` from the list row.
    ``list_row`` is the list row the object was found through, when there was one.
    ``endpoint`` is the path that answered (``/subscription/5`` or ``/debt/5``).
    """

    kind: Kind
    fonzip_id: int
    obj: dict[str, Any]
    list_row: dict[str, Any] | None
    endpoint: str
