"""Logging: structlog, as JSON lines under systemd or in a pipe, readable on a terminal."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def wants_json(fmt: str, stream: Any) -> bool:
    """JSON for ``json``; for ``auto``, JSON under journald or when not on a terminal."""
    if fmt != "auto":
        return fmt == "json"
    return "JOURNAL_STREAM" in os.environ or not stream.isatty()


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at the time of writing (it may be replaced, as by tests)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog (and the standard logging of libraries) for this process."""
    out: Any = stream if stream is not None else _CurrentStderr()
    as_json = wants_json(fmt, out)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # WriteLogger: one write per line (PrintLogger makes two), then a flush.
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiohttp's access log, asyncio) go through the standard module.
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=out, force=True)
