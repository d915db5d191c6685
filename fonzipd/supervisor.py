"""The supervisor: watches the daemon's long-lived tasks and reports the first one that dies.

Every task that must run as long as the daemon does (fetch workers, sink runners, the
group committer, the reconcile scheduler, the status and housekeeping tasks) is
watched. Each of them waits out what is expected to go wrong inside itself (Fonzip
down, a destination down, "database is locked"); an exception that escapes one is a
bug, and the state it left behind is unknown. So a death is logged once with its
traceback, readiness turns 503 naming the component, and the daemon stops and exits
non-zero: systemd restarts it (``Restart=on-failure``), and the start-up path,
proven by the crash tests, puts back whatever the dead task held.
"""

from __future__ import annotations

import asyncio
import functools
import traceback
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Supervisor:
    """Watches tasks; the first exception of each is reported once, then ``on_death``."""

    def __init__(self, on_death: Callable[[str], None]) -> None:
        self._on_death = on_death
        self.failed: dict[str, str] = {}
        """Component name -> the exception that killed it."""

    def watch(self, task: asyncio.Task[Any], name: str | None = None) -> asyncio.Task[Any]:
        """Watch ``task`` (named after the task unless ``name`` is given); returns it."""
        task.add_done_callback(functools.partial(self._ended, name or task.get_name()))
        return task

    def _ended(self, name: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return  # stopped on purpose
        exc = task.exception()
        if exc is None or name in self.failed:
            return  # ended by its own stop, or already reported
        self.failed[name] = f"{type(exc).__name__}: {exc}"
        log.error(
            "component_died",
            component=name,
            error=self.failed[name],
            traceback="".join(traceback.format_exception(exc)),
        )
        self._on_death(name)
