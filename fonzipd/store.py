"""The state database: schema, migrations, and the inbox, records and outbox operations.

Everything that matters lives here, in one SQLite file in WAL mode with
``synchronous=FULL``: a transaction that has committed survives a crash, a
``kill -9`` and a power cut. One connection serves the whole process; a lock makes
each transaction atomic with respect to the other tasks sharing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.fonzip.token import StoredToken
from fonzipd.kinds import Kind
from fonzipd.records import Record, Source

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 2

# Forward migrations: MIGRATIONS[n] takes a database at version n to n + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

    CREATE TABLE inbox (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        fonzip_id INTEGER NOT NULL,
        event_status INTEGER,
        source TEXT NOT NULL,
        priority INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'claimed', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        list_row TEXT,
        received_at REAL NOT NULL,
        finished_at REAL,
        outcome TEXT
    );
    -- Deduplicated while pending on (operation, id, status).
    CREATE UNIQUE INDEX inbox_pending_event
        ON inbox (kind, fonzip_id, coalesce(event_status, -1))
        WHERE state IN ('pending', 'claimed');
    CREATE INDEX inbox_ready ON inbox (state, priority, next_attempt_at, id);
    CREATE INDEX inbox_finished ON inbox (finished_at) WHERE finished_at IS NOT NULL;

    CREATE TABLE records (
        kind TEXT NOT NULL,
        fonzip_id INTEGER NOT NULL,
        status TEXT NOT NULL,
        status_rank INTEGER NOT NULL,
        version TEXT NOT NULL,
        business_date TEXT,
        record TEXT NOT NULL,
        first_source TEXT NOT NULL,
        first_seen_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (kind, fonzip_id)
    );
    CREATE INDEX records_business_date ON records (business_date, kind);

    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        sink_id TEXT NOT NULL,
        record_key TEXT NOT NULL,
        kind TEXT NOT NULL,
        business_date TEXT,
        record TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL,
        dead_at REAL
    );
    CREATE UNIQUE INDEX outbox_sink_key ON outbox (sink_id, record_key);
    CREATE INDEX outbox_ready ON outbox (sink_id, state, id);

    CREATE TABLE sink_state (
        sink_id TEXT PRIMARY KEY,
        delivered INTEGER NOT NULL DEFAULT 0,
        last_success_at REAL,
        last_error TEXT,
        last_error_at REAL,
        failing_since REAL
    );

    CREATE TABLE token (
        key TEXT PRIMARY KEY,
        access_token TEXT NOT NULL,
        expires_at REAL NOT NULL
    );

    CREATE TABLE form_ids (
        answer_id INTEGER PRIMARY KEY,
        form_id INTEGER NOT NULL
    );
    """,
    # 2: the reconciler's bookkeeping (fonzipd.reconciler).
    """
    CREATE TABLE reconcile_runs (
        business_date TEXT NOT NULL,
        kind TEXT NOT NULL,
        list_status TEXT NOT NULL,
        run_key TEXT NOT NULL,
        source TEXT NOT NULL,
        fonzip_total INTEGER,
        window_total INTEGER,
        local_before INTEGER,
        local_after INTEGER,
        missing INTEGER NOT NULL DEFAULT 0,
        changed INTEGER NOT NULL DEFAULT 0,
        extra INTEGER NOT NULL DEFAULT 0,
        fetched INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        calls INTEGER NOT NULL DEFAULT 0,
        basis TEXT,
        started_at REAL NOT NULL,
        finished_at REAL,
        outcome TEXT NOT NULL,
        reason TEXT,
        PRIMARY KEY (business_date, kind, list_status)
    );
    CREATE INDEX reconcile_runs_started ON reconcile_runs (started_at);

    CREATE TABLE reconcile_days (
        business_date TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN ('open', 'closed')),
        reason TEXT,
        records INTEGER NOT NULL DEFAULT 0,
        first_by_webhook INTEGER NOT NULL DEFAULT 0,
        first_by_reconcile INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );

    CREATE TABLE reconcile_requests (
        id INTEGER PRIMARY KEY,
        days TEXT NOT NULL,
        kinds TEXT NOT NULL,
        source TEXT NOT NULL,
        dry_run INTEGER NOT NULL,
        requested_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        outcome TEXT
    );
    """,
]

# Higher ranks are later in an object's life: a fetch whose state ranks lower than
# the stored one is stale (it raced a newer fetch) and never overwrites it.
_STATUS_RANK: dict[str, int] = {
    "pending": 0,
    "waiting_approval": 0,
    "waiting_extra_approval": 1,
    "approved": 1,
    "answered": 1,
    "succeeded": 1,
    "failed": 1,
    "rejected": 2,
    "finalized": 2,
    "refunded": 2,
    "archived": 3,
    "removed": 4,
    "deleted": 4,
}


def status_rank(status: str) -> int:
    """How far along its life a status is; unknown statuses rank with the settled ones."""
    return _STATUS_RANK.get(status, 1)


class StoreError(Exception):
    """The state database cannot be used (locked by another daemon, corrupt, unwritable)."""


@dataclasses.dataclass(frozen=True, slots=True)
class InboxEvent:
    """One event to record in the inbox."""

    kind: Kind
    fonzip_id: int
    event_status: int | None
    source: Source
    list_row: dict[str, Any] | None = None

    @property
    def priority(self) -> int:
        """0 for live webhook work, 1 for reconcile, backfill and CLI work."""
        return 0 if self.source is Source.WEBHOOK else 1


@dataclasses.dataclass(frozen=True, slots=True)
class InboxRow:
    """A claimed inbox row, handed to a fetcher worker."""

    id: int
    kind: Kind
    fonzip_id: int
    event_status: int | None
    source: Source
    priority: int
    attempts: int
    list_row: dict[str, Any] | None


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxRow:
    """A record version waiting for one sink."""

    id: int
    record_key: str
    record: Record
    attempts: int


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    """What storing a fetched record did."""

    outcome: str  # "new", "changed", "unchanged" or "stale"
    enqueued: int


def _ts(moment: dt.datetime) -> float:
    return moment.timestamp()


class Store:
    """fonzipd's state database. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, path: Path, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.path = path
        self._clock = clock
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._worker_lock_fd: int | None = None

    @classmethod
    async def open(cls, path: Path, *, clock: Clock = SYSTEM_CLOCK) -> Store:
        """Open (creating and migrating if needed) the database at ``path``."""
        store = cls(path, clock=clock)
        await store._connect()
        return store

    async def _connect(self) -> None:
        fresh = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if fresh:
                # The database holds the Fonzip access token: readable by fonzipd only.
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            db = await aiosqlite.connect(self.path, isolation_level=None, timeout=30)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{self.path}: cannot open the state database: {exc}") from exc
        self._db = db
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=30000")
            await self._migrate()
        except sqlite3.DatabaseError as exc:
            await db.close()
            self._db = None
            raise StoreError(f"{self.path}: not a usable state database: {exc}") from exc
        except BaseException:
            await db.close()
            self._db = None
            raise

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the state database is closed")
        return self._db

    async def close(self) -> None:
        """Close the connection and release the worker lock."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            await self._db.close()
            self._db = None
        if self._worker_lock_fd is not None:
            os.close(self._worker_lock_fd)
            self._worker_lock_fd = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction, atomic with respect to the process's other tasks."""
        async with self._lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise
            else:
                await db.execute("COMMIT")

    async def _migrate(self) -> None:
        db = self.db
        await db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        version = await self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this fonzipd "
                f"understands ({SCHEMA_VERSION}); upgrade fonzipd"
            )
        for step in range(version, SCHEMA_VERSION):
            async with self.transaction() as tx:
                if step == 0:
                    await tx.execute("DROP TABLE meta")
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        await tx.execute(statement)
                await tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(step + 1),),
                )
            log.info("schema_migrated", path=str(self.path), version=step + 1)

    async def schema_version(self) -> int:
        """The schema version of the open database (0 for an empty file)."""
        async with self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'") as cur:
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    # -- worker lock ---------------------------------------------------------------

    def acquire_worker_lock(self) -> bool:
        """Become the one process that works the inbox and outbox of this database.

        The lock is an ``flock`` on ``<state>.lock``, released by the kernel when the
        process dies, so a ``kill -9`` never leaves it held. Returns False when another
        process holds it.
        """
        if self._worker_lock_fd is not None:
            return True
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._worker_lock_fd = fd
        return True

    # -- meta ----------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        async with self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        async with self.transaction() as tx:
            await tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- inbox ---------------------------------------------------------------------

    async def add_events(self, events: Sequence[InboxEvent]) -> list[bool]:
        """Commit events to the inbox in one transaction; True where a row was added.

        When this returns, the rows are durable.

        An event equal to one still pending is not stored again (False).
        """
        now = _ts(self._clock.now())
        values = [
            [
                str(ev.kind),
                ev.fonzip_id,
                ev.event_status,
                str(ev.source),
                ev.priority,
                None if ev.list_row is None else json.dumps(ev.list_row),
            ]
            for ev in events
        ]
        # One statement for the whole group, in one round trip to aiosqlite's thread:
        # per-event statements held group-commit ingest to ~22% of a no-op handler
        # (bench/bench_ingest.py). A lone statement outside BEGIN is its own
        # transaction, committed (and, with synchronous=FULL, fsynced) when it completes,
        # so no BEGIN/COMMIT round trips are needed; the lock keeps it out of another
        # task's open transaction. RETURNING names the rows actually inserted; rows go
        # in order, so of two equal events in one group the first is the one added.
        async with self._lock:
            rows = await self.db.execute_fetchall(
                "INSERT OR IGNORE INTO inbox (kind, fonzip_id, event_status, source,"
                " priority, state, next_attempt_at, list_row, received_at)"
                " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
                " json_extract(value, '$[2]'), json_extract(value, '$[3]'),"
                " json_extract(value, '$[4]'), 'pending', ?, json_extract(value, '$[5]'), ?"
                " FROM json_each(?) ORDER BY key"
                " RETURNING kind, fonzip_id, coalesce(event_status, -1)",
                (now, now, json.dumps(values)),
            )
            if self.db.in_transaction:
                # Never expected; a statement left open would hold the commit back.
                raise StoreError("the inbox insert did not complete its transaction")
        inserted = {(str(k), int(i), int(st)) for k, i, st in rows}
        added: list[bool] = []
        for ev in events:
            key = (str(ev.kind), ev.fonzip_id, -1 if ev.event_status is None else ev.event_status)
            added.append(key in inserted)
            inserted.discard(key)
        return added

    async def release_claims(self) -> int:
        """Put every claimed row back to pending (at start, and at shutdown)."""
        async with self.transaction() as tx:
            cur = await tx.execute("UPDATE inbox SET state = 'pending' WHERE state = 'claimed'")
            return cur.rowcount

    async def claim(self) -> InboxRow | None:
        """Claim the next ready inbox row: live work first, then oldest first.

        A row never tried is ready whatever the clock says: after the wall clock steps
        back, its ``next_attempt_at`` (the time it was received) lies in the future,
        and waiting for it would hold every event queued before the step for as long
        as the step. Only retries wait for their (wall-clock) backoff.
        """
        now = _ts(self._clock.now())
        async with self.transaction() as tx:
            cur = await tx.execute(
                "UPDATE inbox SET state = 'claimed', attempts = attempts + 1"
                " WHERE id = (SELECT id FROM inbox WHERE state = 'pending'"
                "   AND (next_attempt_at <= ? OR attempts = 0)"
                "   ORDER BY priority, next_attempt_at, id LIMIT 1)"
                " RETURNING id, kind, fonzip_id, event_status, source, priority, attempts,"
                " list_row",
                (now,),
            )
            row = await cur.fetchone()
            await cur.close()
        if row is None:
            return None
        return InboxRow(
            id=row[0],
            kind=Kind(row[1]),
            fonzip_id=row[2],
            event_status=row[3],
            source=Source(row[4]),
            priority=row[5],
            attempts=row[6],
            list_row=None if row[7] is None else json.loads(row[7]),
        )

    async def next_inbox_due(self) -> dt.datetime | None:
        """When the earliest pending row becomes ready, or None when none is pending."""
        now = _ts(self._clock.now())
        async with self.db.execute(
            # A row never tried is ready now (see claim), even if received "later".
            "SELECT min(iif(attempts = 0, min(next_attempt_at, ?), next_attempt_at))"
            " FROM inbox WHERE state = 'pending'",
            (now,),
        ) as cur:
            row = await cur.fetchone()
        if row is None or row[0] is None:
            return None
        return dt.datetime.fromtimestamp(row[0], dt.UTC)

    async def retry_later(self, row_id: int, error: str, delay: float) -> None:
        """Give a claimed row back, to be tried again after ``delay`` seconds."""
        when = _ts(self._clock.now()) + delay
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE inbox SET state = 'pending', next_attempt_at = ?, last_error = ?"
                " WHERE id = ? AND state = 'claimed'",
                (when, error, row_id),
            )

    async def unclaim(self, row_id: int) -> None:
        """Give a claimed row back untouched (shutdown): the attempt does not count."""
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE inbox SET state = 'pending', attempts = max(attempts - 1, 0)"
                " WHERE id = ? AND state = 'claimed'",
                (row_id,),
            )

    async def fail(self, row_id: int, error: str) -> None:
        """End a row that can never succeed; it stays visible in ``status``."""
        now = _ts(self._clock.now())
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE inbox SET state = 'failed', last_error = ?, finished_at = ?,"
                " outcome = 'failed' WHERE id = ?",
                (error, now, row_id),
            )

    async def finish_ignored(self, row_id: int, outcome: str) -> None:
        """End a row that needs no record (a test delivery, say)."""
        now = _ts(self._clock.now())
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE inbox SET state = 'done', finished_at = ?, outcome = ? WHERE id = ?",
                (now, outcome, row_id),
            )

    async def apply_record(
        self, row_id: int | None, record: Record, sink_ids: Iterable[str]
    ) -> Applied:
        """Store a fetched record and queue it for every sink, in one transaction.

        The record is stored and queued only when its version is new and its status
        is not older than the stored one. The inbox row (if any) is finished in the
        same transaction, so a crash leaves either all of it or none.
        """
        now = _ts(self._clock.now())
        rank = status_rank(record.status)
        sinks = list(sink_ids)
        async with self.transaction() as tx:
            async with tx.execute(
                "SELECT version, status_rank FROM records WHERE kind = ? AND fonzip_id = ?",
                (str(record.kind), record.fonzip_id),
            ) as cur:
                current = await cur.fetchone()
            if current is not None and current[0] == record.version:
                outcome = "unchanged"
            elif current is not None and rank < current[1]:
                outcome = "stale"
            else:
                outcome = "new" if current is None else "changed"
            enqueued = 0
            if outcome in ("new", "changed"):
                payload = json.dumps(record.to_json_dict(), ensure_ascii=False)
                bdate = None if record.business_date is None else record.business_date.isoformat()
                await tx.execute(
                    "INSERT INTO records (kind, fonzip_id, status, status_rank, version,"
                    " business_date, record, first_source, first_seen_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (kind, fonzip_id) DO UPDATE SET status = excluded.status,"
                    " status_rank = excluded.status_rank, version = excluded.version,"
                    " business_date = excluded.business_date, record = excluded.record,"
                    " updated_at = excluded.updated_at",
                    (
                        str(record.kind),
                        record.fonzip_id,
                        record.status,
                        rank,
                        record.version,
                        bdate,
                        payload,
                        str(record.source),
                        now,
                        now,
                    ),
                )
                for sink_id in sinks:
                    cur2 = await tx.execute(
                        "INSERT OR IGNORE INTO outbox (sink_id, record_key, kind,"
                        " business_date, record, state, created_at)"
                        " VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                        (sink_id, record.key, str(record.kind), bdate, payload, now),
                    )
                    enqueued += cur2.rowcount
            if row_id is not None:
                await tx.execute(
                    "UPDATE inbox SET state = 'done', finished_at = ?, outcome = ?,"
                    " last_error = NULL WHERE id = ?",
                    (now, outcome, row_id),
                )
        return Applied(outcome=outcome, enqueued=enqueued)

    async def prune_inbox(self, older_than: dt.timedelta) -> int:
        """Delete finished (done) inbox rows older than ``older_than``; failed rows stay."""
        cutoff = _ts(self._clock.now() - older_than)
        async with self.transaction() as tx:
            cur = await tx.execute(
                "DELETE FROM inbox WHERE state = 'done' AND finished_at < ?", (cutoff,)
            )
            return cur.rowcount

    # -- records -------------------------------------------------------------------

    async def get_record(self, kind: Kind, fonzip_id: int) -> Record | None:
        """The latest stored state of one object."""
        async with self.db.execute(
            "SELECT record FROM records WHERE kind = ? AND fonzip_id = ?",
            (str(kind), fonzip_id),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else Record.from_json_dict(json.loads(row[0]))

    async def record_statuses(self, kind: Kind, ids: Iterable[int]) -> dict[int, str]:
        """The stored status of each of ``ids`` that is known."""
        wanted = list(ids)
        out: dict[int, str] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            async with self.db.execute(
                f"SELECT fonzip_id, status FROM records WHERE kind = ? AND fonzip_id IN ({marks})",
                (str(kind), *chunk),
            ) as cur:
                async for fid, status in cur:
                    out[int(fid)] = str(status)
        return out

    # -- outbox --------------------------------------------------------------------

    async def outbox_batch(self, sink_id: str, limit: int) -> list[OutboxRow]:
        """The oldest pending record versions for one sink, in the order they were queued."""
        async with self.db.execute(
            "SELECT id, record_key, record, attempts FROM outbox"
            " WHERE sink_id = ? AND state = 'pending' ORDER BY id LIMIT ?",
            (sink_id, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [
            OutboxRow(
                id=r[0],
                record_key=r[1],
                record=Record.from_json_dict(json.loads(r[2])),
                attempts=r[3],
            )
            for r in rows
        ]

    async def oldest_pending_age(self, sink_id: str) -> float | None:
        """Seconds since the oldest pending row of a sink was queued."""
        async with self.db.execute(
            "SELECT min(created_at) FROM outbox WHERE sink_id = ? AND state = 'pending'",
            (sink_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None or row[0] is None:
            return None
        return max(0.0, _ts(self._clock.now()) - float(row[0]))

    async def acknowledge(self, sink_id: str, row_ids: Sequence[int]) -> None:
        """The sink holds these durably: forget them."""
        now = _ts(self._clock.now())
        async with self.transaction() as tx:
            await tx.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in row_ids])
            await tx.execute(
                "INSERT INTO sink_state (sink_id, delivered, last_success_at) VALUES (?, ?, ?)"
                " ON CONFLICT (sink_id) DO UPDATE SET delivered = delivered + excluded.delivered,"
                " last_success_at = excluded.last_success_at, failing_since = NULL",
                (sink_id, len(row_ids), now),
            )

    async def record_sink_failure(
        self, sink_id: str, row_ids: Sequence[int], error: str, *, dead_after: int
    ) -> int:
        """Count a failed attempt on these rows; rows past ``dead_after`` attempts go dead.

        ``dead_after`` 0 means never. Returns how many rows went dead.
        """
        now = _ts(self._clock.now())
        dead = 0
        async with self.transaction() as tx:
            await tx.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                [(error, i) for i in row_ids],
            )
            if dead_after > 0:
                marks = ",".join("?" * len(row_ids))
                cur = await tx.execute(
                    f"UPDATE outbox SET state = 'dead', dead_at = ? WHERE id IN ({marks})"
                    " AND attempts >= ?",
                    (now, *row_ids, dead_after),
                )
                dead = cur.rowcount
            await tx.execute(
                "INSERT INTO sink_state (sink_id, last_error, last_error_at, failing_since)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (sink_id) DO UPDATE SET"
                " last_error = excluded.last_error, last_error_at = excluded.last_error_at,"
                " failing_since = coalesce(sink_state.failing_since, excluded.failing_since)",
                (sink_id, error, now, now),
            )
        return dead

    async def dead_letter(self, sink_id: str, row_ids: Sequence[int], reason: str) -> None:
        """Park rows the sink refused for good; ``replay --dead`` requeues them."""
        now = _ts(self._clock.now())
        async with self.transaction() as tx:
            await tx.executemany(
                "UPDATE outbox SET state = 'dead', dead_at = ?, last_error = ?,"
                " attempts = attempts + 1 WHERE id = ?",
                [(now, reason, i) for i in row_ids],
            )
            await tx.execute(
                "INSERT INTO sink_state (sink_id, last_error, last_error_at) VALUES (?, ?, ?)"
                " ON CONFLICT (sink_id) DO UPDATE SET last_error = excluded.last_error,"
                " last_error_at = excluded.last_error_at",
                (sink_id, reason, now),
            )

    async def requeue(
        self,
        sink_id: str,
        *,
        dead: bool,
        since: dt.date | None = None,
        kind: Kind | None = None,
        dry_run: bool = False,
    ) -> int:
        """Queue records for one sink again; returns how many.

        ``dead``: the sink's dead letters. Otherwise: the latest version of every
        stored record (optionally since a business date, of one kind), through the same
        idempotent path as any delivery.
        """
        now = _ts(self._clock.now())
        where = ["sink_id = ?", "state = 'dead'"] if dead else []
        params: list[Any] = [sink_id] if dead else []
        if since is not None:
            where.append("business_date >= ?")
            params.append(since.isoformat())
        if kind is not None:
            where.append("kind = ?")
            params.append(str(kind))
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        async with self.transaction() as tx:
            if dead:
                if dry_run:
                    sql = f"SELECT count(*) FROM outbox{clause}"
                    async with tx.execute(sql, params) as cur:
                        row = await cur.fetchone()
                    return 0 if row is None else int(row[0])
                cur = await tx.execute(
                    f"UPDATE outbox SET state = 'pending', attempts = 0, dead_at = NULL{clause}",
                    params,
                )
                return cur.rowcount
            if dry_run:
                async with tx.execute(f"SELECT count(*) FROM records{clause}", params) as cur:
                    row = await cur.fetchone()
                return 0 if row is None else int(row[0])
            cur = await tx.execute(
                "INSERT OR IGNORE INTO outbox (sink_id, record_key, kind, business_date,"
                " record, state, created_at)"
                " SELECT ?, kind || ':' || fonzip_id || ':' || version, kind, business_date,"
                f" record, 'pending', ? FROM records{clause} ORDER BY updated_at",
                (sink_id, now, *params),
            )
            return cur.rowcount

    # -- token (the TokenStore protocol of fonzipd.fonzip.token) ----------------------

    async def load(self, key: str) -> StoredToken | None:
        async with self.db.execute(
            "SELECT access_token, expires_at FROM token WHERE key = ?", (key,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return StoredToken(
            access_token=row[0], expires_at=dt.datetime.fromtimestamp(row[1], dt.UTC)
        )

    async def save(self, key: str, token: StoredToken) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT OR REPLACE INTO token (key, access_token, expires_at) VALUES (?, ?, ?)",
                (key, token.access_token, _ts(token.expires_at)),
            )

    async def discard(self, key: str, access_token: str) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "DELETE FROM token WHERE key = ? AND access_token = ?", (key, access_token)
            )

    # -- form ids (the FormIdCache protocol of fonzipd.fonzip.client) ------------------

    async def get(self, answer_id: int) -> int | None:
        async with self.db.execute(
            "SELECT form_id FROM form_ids WHERE answer_id = ?", (answer_id,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def put_many(self, pairs: Iterable[tuple[int, int]]) -> None:
        rows = list(pairs)
        if not rows:
            return
        async with self.transaction() as tx:
            await tx.executemany(
                "INSERT OR REPLACE INTO form_ids (answer_id, form_id) VALUES (?, ?)", rows
            )

    # -- status --------------------------------------------------------------------

    async def inbox_depth(self) -> tuple[int, float | None]:
        """Pending and claimed rows, and the age in seconds of the oldest."""
        async with self.db.execute(
            "SELECT count(*), min(received_at) FROM inbox WHERE state IN ('pending', 'claimed')"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        age = None if row[1] is None else max(0.0, _ts(self._clock.now()) - float(row[1]))
        return int(row[0]), age

    async def inbox_counts(self) -> dict[str, int]:
        """Inbox rows by state."""
        async with self.db.execute("SELECT state, count(*) FROM inbox GROUP BY state") as cur:
            return {str(s): int(n) async for s, n in cur}

    async def failed_events(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent inbox rows that ended as failed, with their reason."""
        async with self.db.execute(
            "SELECT kind, fonzip_id, event_status, source, attempts, last_error, finished_at"
            " FROM inbox WHERE state = 'failed' ORDER BY finished_at DESC LIMIT ?",
            (limit,),
        ) as cur:
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) async for r in cur]

    async def sink_status(self, sink_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Per sink: pending, dead, delivered, last error, last success, failing since."""
        out: dict[str, dict[str, Any]] = {}
        for sink_id in sink_ids:
            async with self.db.execute(
                "SELECT sum(state = 'pending'), sum(state = 'dead') FROM outbox WHERE sink_id = ?",
                (sink_id,),
            ) as cur:
                counts = await cur.fetchone()
            async with self.db.execute(
                "SELECT delivered, last_success_at, last_error, last_error_at, failing_since"
                " FROM sink_state WHERE sink_id = ?",
                (sink_id,),
            ) as cur:
                state = await cur.fetchone()
            out[sink_id] = {
                "pending": int((counts or (0, 0))[0] or 0),
                "dead": int((counts or (0, 0))[1] or 0),
                "delivered": int(state[0]) if state else 0,
                "last_success_at": _iso(state[1]) if state else None,
                "last_error": state[2] if state else None,
                "last_error_at": _iso(state[3]) if state else None,
                "failing_since": _iso(state[4]) if state else None,
            }
        return out

    async def check_writable(self) -> None:
        """Raise sqlite3.Error when a write transaction cannot be committed."""
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('readiness_probe', ?)",
                (self._clock.now().isoformat(),),
            )

    # -- reconcile runs (fonzipd.reconciler) -------------------------------------------

    async def save_reconcile_run(self, run: dict[str, Any]) -> None:
        """Insert or replace the run row of one (business date, kind, list status)."""
        cols = list(run)
        async with self.transaction() as tx:
            await tx.execute(
                f"INSERT OR REPLACE INTO reconcile_runs ({', '.join(cols)})"
                f" VALUES ({', '.join('?' * len(cols))})",
                [run[c] for c in cols],
            )

    async def reconcile_runs(
        self, *, days: Sequence[dt.date] | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Run rows of these business dates (all, newest first, when None)."""
        sql = "SELECT * FROM reconcile_runs"
        params: list[Any] = []
        if days is not None:
            sql += f" WHERE business_date IN ({','.join('?' * len(days))})"
            params = [d.isoformat() for d in days]
        sql += " ORDER BY business_date DESC, kind, list_status LIMIT ?"
        async with self.db.execute(sql, (*params, limit)) as cur:
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) async for r in cur]

    async def local_ids(self, kind: Kind, day: dt.date, statuses: Iterable[str]) -> dict[int, str]:
        """Stored records of ``kind`` on business date ``day`` with one of ``statuses``."""
        wanted = list(statuses)
        async with self.db.execute(
            "SELECT fonzip_id, status FROM records WHERE kind = ? AND business_date = ?"
            f" AND status IN ({','.join('?' * len(wanted))})",
            (str(kind), day.isoformat(), *wanted),
        ) as cur:
            return {int(i): str(st) async for i, st in cur}

    async def refund_dates(self, kind: Kind, status: str = "refunded") -> list[tuple[int, Any]]:
        """(id, refund date as Fonzip wrote it) of every stored record of ``kind`` in ``status``."""
        async with self.db.execute(
            "SELECT fonzip_id, coalesce(json_extract(record, '$.data.transaction.refund_date'),"
            " json_extract(record, '$.data.transaction__refund_date'),"
            " json_extract(record, '$.data.refund_date')) FROM records"
            " WHERE kind = ? AND status = ?",
            (str(kind), status),
        ) as cur:
            return [(int(i), when) async for i, when in cur]

    async def unfinished_events(self, kind: Kind, ids: Iterable[int]) -> int:
        """How many inbox rows for these ids of ``kind`` are still pending or claimed."""
        wanted = list(ids)
        count = 0
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            async with self.db.execute(
                "SELECT count(*) FROM inbox WHERE kind = ? AND state IN ('pending', 'claimed')"
                f" AND fonzip_id IN ({','.join('?' * len(chunk))})",
                (str(kind), *chunk),
            ) as cur:
                row = await cur.fetchone()
            count += int(row[0]) if row else 0
        return count

    async def first_sources(self, day: dt.date) -> dict[str, int]:
        """Records of business date ``day`` by the source they were first seen through."""
        async with self.db.execute(
            "SELECT first_source, count(*) FROM records WHERE business_date = ?"
            " GROUP BY first_source",
            (day.isoformat(),),
        ) as cur:
            return {str(s): int(n) async for s, n in cur}

    async def save_reconcile_day(
        self,
        day: dt.date,
        *,
        closed: bool,
        reason: str | None,
        records: int,
        first_by_webhook: int,
        first_by_reconcile: int,
    ) -> None:
        """Record whether a business day is closed (or why it stays open), with coverage."""
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT OR REPLACE INTO reconcile_days (business_date, state, reason, records,"
                " first_by_webhook, first_by_reconcile, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    day.isoformat(),
                    "closed" if closed else "open",
                    reason,
                    records,
                    first_by_webhook,
                    first_by_reconcile,
                    _ts(self._clock.now()),
                ),
            )

    async def reconcile_days(
        self, *, days: Sequence[dt.date] | None = None, open_only: bool = False
    ) -> list[dict[str, Any]]:
        """Day rows (state, reason, coverage), newest first."""
        where: list[str] = []
        params: list[Any] = []
        if days is not None:
            where.append(f"business_date IN ({','.join('?' * len(days))})")
            params.extend(d.isoformat() for d in days)
        if open_only:
            where.append("state = 'open'")
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        async with self.db.execute(
            f"SELECT * FROM reconcile_days{clause} ORDER BY business_date DESC", params
        ) as cur:
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) async for r in cur]

    async def add_reconcile_request(
        self, days: Sequence[dt.date], kinds: Sequence[Kind], source: Source, *, dry_run: bool
    ) -> int:
        """Ask the running daemon to reconcile these days; returns the request id."""
        async with self.transaction() as tx:
            cur = await tx.execute(
                "INSERT INTO reconcile_requests (days, kinds, source, dry_run, requested_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    json.dumps([d.isoformat() for d in days]),
                    json.dumps([str(k) for k in kinds]),
                    str(source),
                    int(dry_run),
                    _ts(self._clock.now()),
                ),
            )
            assert cur.lastrowid is not None
            return int(cur.lastrowid)

    async def claim_reconcile_request(self) -> dict[str, Any] | None:
        """The oldest request not started yet, marked started; None when there is none."""
        async with self.transaction() as tx:
            cur = await tx.execute(
                "UPDATE reconcile_requests SET started_at = ? WHERE id = (SELECT id FROM"
                " reconcile_requests WHERE started_at IS NULL ORDER BY id LIMIT 1)"
                " RETURNING id, days, kinds, source, dry_run",
                (_ts(self._clock.now()),),
            )
            row = await cur.fetchone()
            await cur.close()
        if row is None:
            return None
        return {
            "id": int(row[0]),
            "days": [dt.date.fromisoformat(d) for d in json.loads(row[1])],
            "kinds": [Kind(k) for k in json.loads(row[2])],
            "source": Source(row[3]),
            "dry_run": bool(row[4]),
        }

    async def finish_reconcile_request(self, request_id: int, outcome: str) -> None:
        """Mark a request done with its outcome (``closed``, ``open`` or an error)."""
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE reconcile_requests SET finished_at = ?, outcome = ? WHERE id = ?",
                (_ts(self._clock.now()), outcome, request_id),
            )

    async def reconcile_request(self, request_id: int) -> dict[str, Any] | None:
        """One request's row: ``started_at``, ``finished_at`` and ``outcome``."""
        async with self.db.execute(
            "SELECT id, started_at, finished_at, outcome FROM reconcile_requests WHERE id = ?",
            (request_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return {"id": row[0], "started_at": row[1], "finished_at": row[2], "outcome": row[3]}


def _iso(value: float | None) -> str | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC).isoformat()
