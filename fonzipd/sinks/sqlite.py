"""The SQLite sink: the latest state of every record, and every version ever seen.

Table ``records`` holds one row per ``(kind, fonzip_id)``: an upsert that never lets an
older fetch overwrite a newer one. Table ``record_history`` holds one row per
``(kind, fonzip_id, version)``. Each batch is one transaction (WAL, ``synchronous=FULL``),
so ``write`` returns only once the batch is on disk, and writing it again changes nothing.

The file holds personal data: fonzipd creates it 0600 (and its missing directories
0700) whatever the umask, before SQLite opens it; SQLite gives the ``-wal`` and
``-shm`` files the database file's mode.

``forget`` (``fonzipd forget``) empties the person columns and ``data`` of the records
about a person in both tables, keeping amounts, statuses and dates.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import aiosqlite
import structlog

from fonzipd import crashpoints
from fonzipd.private_files import create_private_file, make_private_dir
from fonzipd.sink import Erasure, Record, Sink, SinkContext, SinkOptions, TransientSinkError

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    fonzip_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    amount TEXT,
    currency TEXT,
    occurred_at TEXT,
    business_date TEXT,
    person_name TEXT,
    person_email TEXT,
    person_phone TEXT,
    fonzip_user_id INTEGER,
    version TEXT NOT NULL,
    source TEXT NOT NULL,
    data TEXT NOT NULL,
    fetched_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    approval TEXT,
    PRIMARY KEY (kind, fonzip_id)
);
CREATE INDEX IF NOT EXISTS records_business_date ON records (business_date, kind);
CREATE TABLE IF NOT EXISTS record_history (
    kind TEXT NOT NULL,
    fonzip_id INTEGER NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL,
    amount TEXT,
    currency TEXT,
    occurred_at TEXT,
    business_date TEXT,
    source TEXT NOT NULL,
    data TEXT NOT NULL,
    fetched_at TEXT NOT NULL,
    written_at TEXT NOT NULL,
    approval TEXT,
    PRIMARY KEY (kind, fonzip_id, version)
);
"""

# Columns added since the first layout: (table, column, type). A file made by an
# older fonzipd gets them at open.
_ADDED_COLUMNS = (("records", "approval", "TEXT"), ("record_history", "approval", "TEXT"))

_COLUMNS = (
    "kind, fonzip_id, status, amount, currency, occurred_at, business_date, person_name, "
    "person_email, person_phone, fonzip_user_id, version, source, data, fetched_at, approval, "
    "updated_at"
)
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

# fetched_at is stored as UTC ISO-8601 with microseconds, so text order is time order.
# An equal version is a no-op (the same state again); an older fetch never wins.
_UPSERT = f"""
INSERT INTO records ({_COLUMNS})
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {_NOW})
ON CONFLICT (kind, fonzip_id) DO UPDATE SET
    status = excluded.status, amount = excluded.amount, currency = excluded.currency,
    occurred_at = excluded.occurred_at, business_date = excluded.business_date,
    person_name = excluded.person_name, person_email = excluded.person_email,
    person_phone = excluded.person_phone, fonzip_user_id = excluded.fonzip_user_id,
    version = excluded.version, source = excluded.source, data = excluded.data,
    fetched_at = excluded.fetched_at, approval = excluded.approval,
    updated_at = excluded.updated_at
WHERE excluded.version <> records.version AND excluded.fetched_at > records.fetched_at
"""

_HISTORY = f"""
INSERT OR IGNORE INTO record_history (kind, fonzip_id, version, status, amount, currency,
    occurred_at, business_date, source, data, fetched_at, approval, written_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {_NOW})
"""


class SQLiteOptions(SinkOptions):
    """``[sinks.<id>] type = "sqlite"``."""

    path: Path
    """The database file; created 0600 (missing parent directories 0700) if missing."""


def utc_text(value: dt.datetime) -> str:
    """A datetime as UTC ISO-8601 with microseconds: sortable as text."""
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _row(record: Record) -> tuple[Any, ...]:
    return (
        str(record.kind),
        record.fonzip_id,
        record.status,
        None if record.amount is None else str(record.amount),
        record.currency,
        None if record.occurred_at is None else utc_text(record.occurred_at),
        None if record.business_date is None else record.business_date.isoformat(),
        record.person.name,
        record.person.email,
        record.person.phone,
        record.person.fonzip_user_id,
        record.version,
        str(record.source),
        json.dumps(record.data, ensure_ascii=False, separators=(",", ":")),
        utc_text(record.fetched_at),
        record.approval,
    )


def _history_row(record: Record) -> tuple[Any, ...]:
    r = _row(record)
    return (r[0], r[1], record.version, r[2], r[3], r[4], r[5], r[6], r[12], r[13], r[14], r[15])


class SQLiteSink(Sink):
    """Upserts records into a SQLite file of your own (not fonzipd's state.db)."""

    name: ClassVar[str] = "sqlite"
    Options: ClassVar[type[SinkOptions]] = SQLiteOptions
    batch_size: ClassVar[int] = 500

    def __init__(self, options: SinkOptions, context: SinkContext) -> None:
        super().__init__(options, context)
        assert isinstance(options, SQLiteOptions)
        self._path = options.path
        self._db: aiosqlite.Connection | None = None
        self._log = log.bind(sink_id=context.sink_id, path=str(self._path))

    async def open(self) -> None:
        try:
            make_private_dir(self._path.parent)
            create_private_file(self._path)
            db = await aiosqlite.connect(self._path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise TransientSinkError(f"cannot open SQLite sink file {self._path}: {exc}") from exc
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=5000")
            # What an upsert or forget frees is zeroed: no old copy of a person's data
            # stays in a free page.
            await db.execute("PRAGMA secure_delete=ON")
            await db.executescript(_SCHEMA)
            for table, column, kind in _ADDED_COLUMNS:
                async with db.execute(f"PRAGMA table_info({table})") as cur:
                    have = {row[1] for row in await cur.fetchall()}
                if column not in have:
                    await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except sqlite3.Error as exc:
            await db.close()
            raise TransientSinkError(
                f"cannot prepare SQLite sink file {self._path}: {exc}"
            ) from exc
        self._db = db
        self._log.info("sink_opened")

    async def write(self, batch: Sequence[Record]) -> None:
        if self._db is None:
            raise RuntimeError(f"SQLite sink {self.context.sink_id!r} is not open")
        if not batch:
            return
        db = self._db
        try:
            await db.execute("BEGIN IMMEDIATE")
            try:
                # Row by row, in order: two versions of one record in a batch must
                # be applied in the order they were created.
                await db.executemany(_UPSERT, [_row(r) for r in batch])
                await db.executemany(_HISTORY, [_history_row(r) for r in batch])
                crashpoints.reached("mid_sink_write")
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            # Locked, disk full, I/O error: all may pass. A corrupt file will not, but
            # then the sink is down until someone repairs it, and this message says why.
            raise TransientSinkError(f"SQLite sink {self._path}: {exc}") from exc
        self._log.debug("batch_written", records=len(batch))

    async def forget(self, erasure: Erasure) -> int:
        """Empty the person columns and the ``data`` of the records about a person, in
        ``records`` and ``record_history`` (amounts, statuses and dates stay); the
        connection zeroes what it frees (``secure_delete``) and the WAL is truncated
        after, so no copy lingers."""
        if self._db is None:
            raise RuntimeError(f"SQLite sink {self.context.sink_id!r} is not open")
        db = self._db
        idents = [(str(kind), fid) for kind, fid in erasure.records]
        try:
            await db.execute("BEGIN IMMEDIATE")
            try:
                changed = 0
                for kind, fid in idents:
                    cur = await db.execute(
                        "UPDATE records SET person_name = NULL, person_email = NULL,"
                        " person_phone = NULL, fonzip_user_id = NULL, data = '{}'"
                        " WHERE kind = ? AND fonzip_id = ? AND (data <> '{}'"
                        " OR coalesce(person_name, person_email, person_phone,"
                        " fonzip_user_id) IS NOT NULL)",
                        (kind, fid),
                    )
                    changed += cur.rowcount
                    cur = await db.execute(
                        "UPDATE record_history SET data = '{}'"
                        " WHERE kind = ? AND fonzip_id = ? AND data <> '{}'",
                        (kind, fid),
                    )
                    changed += cur.rowcount
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
            await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise TransientSinkError(f"SQLite sink {self._path}: {exc}") from exc
        self._log.info("person_forgotten", records=len(idents), rows=changed)
        return changed

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()
            self._log.info("sink_closed")
