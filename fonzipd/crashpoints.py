"""Crash points: named moments at which the crash suite makes the daemon kill itself.

``FONZIPD_CRASH_AT="<point>:<n>"`` (read once, at import) makes the ``n``-th arrival
at ``<point>`` write one JSON line, ``{"event": "crash_point_reached", ...}``, straight
to standard error and SIGKILL the process, as a power cut at that moment would. Unset
(as in production) every point costs one comparison. The points are the windows the
guarantee has to survive:

- ``mid_fetch``: a detail fetched from Fonzip, nothing of it stored yet;
- ``mid_sink_write``: a batch inside a sink's transaction, not yet durable (SQLite);
- ``before_ack``: a batch durable in the sink, its acknowledgement not yet committed;
- ``csv_torn_line``: half of a CSV write on disk (a line cut in two), its ledger not
  yet committed.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable

from fonzipd import logs

__all__ = ["POINTS", "reached"]

POINTS = ("mid_fetch", "mid_sink_write", "before_ack", "csv_torn_line")
ENV = "FONZIPD_CRASH_AT"


def _armed(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    point, _, count = value.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENV}={value!r}: expected <point>:<n>, point one of {POINTS}, n >= 1")
    return point, int(count)


_ARMED = _armed(os.environ.get(ENV))
_hits = 0


def reached(point: str, before: Callable[[], object] | None = None) -> None:
    """Mark an arrival at ``point``; on the armed arrival run ``before``, then die."""
    global _hits
    if _ARMED is None or _ARMED[0] != point:
        return
    _hits += 1
    if _hits < _ARMED[1]:
        return
    if before is not None:
        before()
    # The log lines gathered so far go out first: the next start's test reads them.
    # A real crash may lose them; only logs, never state, are spared here.
    logs.flush()
    line = json.dumps({"event": "crash_point_reached", "point": point, "hit": _hits})
    os.write(2, line.encode() + b"\n")
    os.kill(os.getpid(), signal.SIGKILL)
