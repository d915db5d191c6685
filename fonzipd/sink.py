"""The sink contract: what a destination of records implements, and the errors it raises.

This module is the one plugin authors read. A sink is a class with a ``name`` (its
``type`` in the configuration), an ``Options`` model (its own keys in ``[sinks.<id>]``)
and three coroutines: ``open``, ``write`` and ``close``. Everything a sink needs is
importable from here::

    from fonzipd.sink import Record, Sink, SinkOptions, TransientSinkError

How fonzipd drives a sink
-------------------------
One dispatcher task per configured sink calls ``open()`` once, then ``write(batch)``
over and over with batches taken from fonzipd's durable outbox, then ``close()`` on
shutdown. A record is removed from the outbox only after ``write`` returned for its
batch, so:

* ``write`` must return only when the batch is **durable** in the destination
  (committed, fsynced, acknowledged by the remote end);
* ``write`` must be **idempotent per** ``Record.key``: after a crash (``kill -9``, a
  reboot) between your write and fonzipd's acknowledgement, a new instance of your
  sink receives the same records again. Write each key once (upsert, a ledger of keys,
  or an idempotency key the destination honours);
* ``write`` is never called concurrently on one instance, and records arrive in the
  order their versions were created (a refund after the payment it refunds).

What ``write`` raises decides what happens to the batch:

* :class:`TransientSinkError`: the destination may accept it later (down, timeout,
  rate limited, disk full). The batch is retried with exponential backoff, honouring
  ``retry_after`` when given, until the destination is back.
* :class:`PermanentSinkError`: retrying cannot help (the destination rejects the
  data). The records become dead letters at once (all of the batch, or only
  ``failed_keys``), and can be replayed later with ``fonzipd replay``.
* any other exception is a **bug** in the sink: the dispatcher logs its traceback
  and retries the batch, up to the sink's ``max_attempts``; then its records become
  dead letters. Do not rely on that; classify your errors.

``open`` may raise :class:`TransientSinkError` (the destination is unreachable at
start; fonzipd retries it with backoff) or :class:`SinkConfigError` (the sink cannot
work with this configuration, e.g. an environment variable it reads is missing).
``close`` must be idempotent, and ``write`` after ``close`` must raise (a
``RuntimeError`` is right: it is a caller's bug).

Records
-------
:class:`Record` fields a sink reads: ``kind``, ``fonzip_id``, ``status`` (money kinds,
form answers with a payment included: the payment status ``succeeded``, ``refunded``,
``failed``, ``pending``, ``removed``; form answers without one ``answered``; campaigns
their own; any kind ``deleted``), ``approval`` (form answers only: ``waiting_approval``,
``approved``, ``rejected`` or None; an approval is a new version), ``amount``,
``currency``, ``occurred_at``, ``business_date``, ``person``, ``source``,
``fetched_at``, ``version``, ``data`` and ``key``.

Erasure (optional)
------------------
``fonzipd forget`` (a person's right to erasure) opens every enabled sink and calls
``forget(erasure)`` when the sink overrides it: remove the person's data from the
records ``erasure.records`` names (``(kind, fonzip_id)`` pairs), everywhere the
destination keeps them (history tables, old rows). Keep the accounting facts (kind,
id, status, amount, currency, dates) or delete the rows, as the destination needs.
Return how many stored items changed; be idempotent (the command may be run again
after a crash); raise :class:`TransientSinkError` when the destination cannot be
reached. A sink that does not override ``forget`` is reported as one that cannot
delete, and the user erases the person there by hand.

Check your sink with :func:`fonzipd.testing.check_sink`.
"""

from __future__ import annotations

import abc
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pydantic
from pydantic import ConfigDict

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import ConfigError
from fonzipd.kinds import Kind
from fonzipd.privacy import Erasure
from fonzipd.records import Person, Record, Source

__all__ = [
    "Erasure",
    "Kind",
    "PermanentSinkError",
    "Person",
    "Record",
    "Sink",
    "SinkConfigError",
    "SinkContext",
    "SinkError",
    "SinkOptions",
    "Source",
    "TransientSinkError",
]


class SinkOptions(pydantic.BaseModel):
    """Base of every sink's ``Options``: the sink type's own keys of ``[sinks.<id>]``.

    Unknown keys are errors and the options are immutable. Declare each option as a
    typed field with a default where one makes sense; use ``pydantic.SecretStr`` for
    secrets so that they never appear in logs or error messages.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class SinkContext:
    """What fonzipd tells a sink about where it runs."""

    sink_id: str
    """The ``<id>`` of its ``[sinks.<id>]`` table (two sinks may share a type)."""
    state_dir: Path
    """The directory of fonzipd's ``state.db``: a place for ledgers a sink may keep."""
    timezone: zoneinfo.ZoneInfo
    """The business-day timezone (``fonzip.timezone``)."""
    clock: Clock = field(default=SYSTEM_CLOCK)
    """Where to read the time from (tests inject their own)."""


class Sink(abc.ABC):
    """A destination of records. Subclass it, set ``name`` and ``Options``, implement
    ``write`` (and ``open``/``close`` when the sink holds resources)."""

    name: ClassVar[str]
    """The sink's ``type`` in the configuration: lower case, unique among sinks."""
    Options: ClassVar[type[SinkOptions]] = SinkOptions
    """The model of the sink's own configuration keys."""
    batch_size: ClassVar[int] = 100
    """Records per ``write`` when the configuration sets no ``batch_size``."""

    def __init__(self, options: SinkOptions, context: SinkContext) -> None:
        """Keep the validated options and the context. Do no I/O here: do it in ``open``."""
        self.options = options
        self.context = context

    def preferred_batch_size(self) -> int:
        """The default batch size of this instance; override when it depends on options."""
        return type(self).batch_size

    async def open(self) -> None:  # noqa: B027 - a sink without resources needs no open
        """Acquire resources (connections, files, sessions). Called once, before ``write``."""

    @abc.abstractmethod
    async def write(self, batch: Sequence[Record]) -> None:
        """Make ``batch`` durable in the destination, each ``Record.key`` exactly once.

        Never called concurrently on one instance; records arrive in the order their
        versions were created; an empty batch is a no-op. Return only when the batch
        is durable. Raise :class:`TransientSinkError` or :class:`PermanentSinkError`.
        """

    async def close(self) -> None:  # noqa: B027 - a sink without resources needs no close
        """Release resources. Idempotent; ``write`` after ``close`` raises."""

    async def forget(self, erasure: Erasure) -> int | None:
        """Remove a person's data from the records ``erasure.records`` names (optional).

        Called after ``open``, by ``fonzipd forget``. Return how many stored items
        changed (0 when there was nothing left to remove: it must be idempotent).
        The default returns None: this sink cannot delete.
        """
        return None

    @property
    def can_forget(self) -> bool:
        """True when this sink implements :meth:`forget`."""
        return type(self).forget is not Sink.forget


class SinkError(Exception):
    """Base of the errors a sink raises from ``write``."""


class TransientSinkError(SinkError):
    """The destination may accept the batch later: retried with backoff until it does."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds the destination asked us to wait (``Retry-After``), if it said."""


class PermanentSinkError(SinkError):
    """Retrying cannot help: the records become dead letters (replayable)."""

    def __init__(self, message: str, *, failed_keys: Iterable[str] | None = None) -> None:
        super().__init__(message)
        self.failed_keys: frozenset[str] | None = (
            None if failed_keys is None else frozenset(failed_keys)
        )
        """``None``: the whole batch failed. Otherwise only these keys failed, and the
        sink guarantees it durably wrote every other record of the batch."""


class SinkConfigError(ConfigError):
    """A sink cannot be used as configured: unknown type, bad options, broken plugin.

    Raised by the registry at start-up, and by a sink's ``open`` for problems that only
    show then. The message names the sink and what is wrong, never a secret.
    """
