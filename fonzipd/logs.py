"""Logging: structlog, as JSON lines under systemd or in a pipe, readable on a terminal."""

from __future__ import annotations

import asyncio
import atexit
import collections
import json
import logging
import os
import sys
import threading
import urllib.parse
from typing import Any, TextIO, cast

import structlog
import structlog.tracebacks

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


_secrets: set[str] = set()
_rotating: collections.deque[str] = collections.deque(maxlen=8)
_variants: tuple[str, ...] = ()
"""Every form in which a registered secret could appear in a rendered line."""


def never_log(value: str, *, rotating: bool = False) -> None:
    """Register a secret that no log line may contain: it is replaced by ``[redacted]``.

    A backstop behind the rule that secrets are never passed to a logger: it also
    covers what a hostile server echoes into an error message or an exception. Values
    under 8 characters are not registered (they would match ordinary words).
    ``rotating`` values (access tokens) are kept only while they are among the 8 newest.
    """
    global _variants
    if len(value) < 8 or value in _secrets or value in _rotating:
        return
    if rotating:
        _rotating.append(value)
    else:
        _secrets.add(value)
    forms: set[str] = set()
    for secret in (*_secrets, *_rotating):
        forms.update(
            {
                secret,
                json.dumps(secret)[1:-1],
                json.dumps(secret, ensure_ascii=False)[1:-1],
                repr(secret)[1:-1],
                urllib.parse.quote(secret, safe=""),
                urllib.parse.quote_plus(secret),
            }
        )
    # Longest first: a secret's escaped form may contain another's raw form.
    _variants = tuple(sorted((f for f in forms if f), key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[redacted]``."""
    for form in _variants:
        if form in text:
            text = text.replace(form, "[redacted]")
    return text


def _redact_line(_logger: Any, _method: str, line: Any) -> Any:
    # Runs after the renderer, on the finished line.
    return redact(line) if isinstance(line, str) and _variants else line


class _RedactingFormatter(logging.Formatter):
    """The standard library's lines (aiohttp, asyncio) get the same backstop."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


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
            # Never the frames' local variables: the client's hold the access token and
            # the API secret (structlog's dict_tracebacks shows them).
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
            _redact_line,
        ]
    else:
        # The plain traceback, whatever is installed: with rich or better-exceptions
        # present, structlog's default formatter would print every frame's locals.
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        )
        processors.append(_redact_line)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # WriteLogger: one write per line (PrintLogger makes two), then a flush.
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiohttp's access log, asyncio) go through the standard module.
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=out, force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_RedactingFormatter(logging.BASIC_FORMAT))
