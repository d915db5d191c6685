"""Logging: structlog, as JSON lines under systemd or in a pipe, readable on a terminal."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import threading
from typing import Any, TextIO, cast

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


class _Batched:
    """Log lines written to ``out`` in batches, at most ``delay`` seconds late.

    A write (and flush) per line is a system call per webhook, and each one lets the
    database thread take the GIL from the event loop: under load that cost fonzipd
    a third of its ingest rate. Inside an event loop lines are gathered and written
    together ``delay`` seconds after the first; outside one, or past ``limit``
    characters, at once. ``flush()`` (and process exit) writes what is pending; a
    ``kill -9`` may lose the last ``delay`` seconds of log lines, never any data.
    """

    def __init__(self, out: Any, *, delay: float = 0.1, limit: int = 65536) -> None:
        self._out = out
        self._delay = delay
        self._limit = limit
        self._parts: list[str] = []
        self._size = 0
        self._scheduled: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._parts.append(text)
            self._size += len(text)
            if loop is not None and self._size < self._limit:
                if self._scheduled is loop:
                    return len(text)
                if self._scheduled is None:
                    self._scheduled = loop
                    loop.call_later(self._delay, self.write_out)
                    return len(text)
        # No loop (a command's output), too much gathered, or a write-out pending in
        # another loop that may never run it (tests run many loops): write now.
        self.write_out()
        return len(text)

    def flush(self) -> None:
        # Called after every line by the loggers: batching is the point, so nothing.
        pass

    def write_out(self) -> None:
        with self._lock:
            data = "".join(self._parts)
            self._parts.clear()
            self._size = 0
            self._scheduled = None
        if data:
            self._out.write(data)
            self._out.flush()

    def isatty(self) -> bool:
        return bool(self._out.isatty())


_current: _Batched | None = None
_generation = 0
"""Bumped by every (re)configuration, so that HotLogger knows to rebuild."""


class HotLogger:
    """A logger for a hot path (one line per webhook): a concrete bound logger, built
    once per logging configuration.

    structlog's module-level loggers are proxies that assemble a new bound logger on
    every call; on the listener's path that cost a quarter of the ingest rate.
    ``cache_logger_on_first_use`` would save it everywhere, but would also freeze the
    configuration a SIGHUP reload changes, so only the hot path caches, and only until
    the next ``configure``.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._built = -1
        self._log: Any = None

    def get(self) -> structlog.typing.FilteringBoundLogger:
        if self._built != _generation:
            self._log = structlog.get_logger(self._name).bind()
            self._built = _generation
        return cast(structlog.typing.FilteringBoundLogger, self._log)


def reset() -> None:
    """Back to structlog's defaults (for tests that configure logging in-process)."""
    global _generation
    flush()
    structlog.reset_defaults()
    _generation += 1


def flush() -> None:
    """Write out the log lines still gathered (at shutdown)."""
    if _current is not None:
        _current.write_out()


atexit.register(flush)


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog (and the standard logging of libraries) for this process."""
    global _current, _generation
    flush()
    _generation += 1
    out: Any = _Batched(stream if stream is not None else _CurrentStderr())
    _current = out
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
