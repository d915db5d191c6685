"""The state database's schema: forward migrations, applied in order at open."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable

import structlog

from fonzipd.fonzip.fields import BadField
from fonzipd.fonzip.normalizer import form_answer_states
from fonzipd.records import DELETED, Record, content_version
from fonzipd.state.connection import Connection, StoreError, Tx, ts
from fonzipd.state.records import status_rank

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 6

Step = Callable[[Tx, Connection], Awaitable[None]]
"""A migration in Python, for changes SQL alone cannot make (records re-normalized)."""


async def _form_answer_status(tx: Tx, conn: Connection) -> None:
    """Form answers: ``status`` from the payment, the approval in ``approval`` (issue 12).

    Every stored form answer whose state changes under the new rule (a paid answer was
    ``answered``, ``waiting_approval`` or ``rejected``) is stored again in its corrected
    state, re-versioned, with ``fetched_at`` the migration's time (so that the sinks'
    newer-wins takes it), and noted in ``redeliver``: the daemon queues it once for
    every sink at its next start, through each sink's filters and redaction, which only
    the configuration knows (:meth:`~fonzipd.state.records.Records.redeliver`).
    Answers whose ``data`` was dropped (retention) or erased cannot be re-read and keep
    their state, as does one whose data cannot be read.
    """
    await tx.execute(
        "CREATE TABLE redeliver (kind TEXT NOT NULL, fonzip_id INTEGER NOT NULL,"
        " PRIMARY KEY (kind, fonzip_id))"
    )
    now = conn.clock.now()
    rows = await tx.fetchall(
        "SELECT record FROM records WHERE kind = 'form_answer' AND data_dropped_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM forgotten f"
        " WHERE f.kind = records.kind AND f.fonzip_id = records.fonzip_id)"
    )
    stored = [Record.from_json_dict(json.loads(row[0])) for row in rows]
    changed = 0
    for old in stored:
        try:
            status, approval = form_answer_states(old.data)
        except BadField:
            log.warning("record_not_migrated", kind=str(old.kind), fonzip_id=old.fonzip_id)
            continue
        if old.status == DELETED:
            status = DELETED
        if (status, approval) == (old.status, old.approval):
            continue
        version = content_version(
            old.kind,
            old.fonzip_id,
            status,
            old.amount,
            old.currency,
            old.occurred_at,
            old.person,
            old.data,
            approval=approval,
        )
        new = dataclasses.replace(
            old, status=status, approval=approval, version=version, fetched_at=now
        )
        payload = json.dumps(new.to_json_dict(), ensure_ascii=False)
        await tx.execute(
            "UPDATE records SET status = ?, status_rank = ?, version = ?, record = ?,"
            " updated_at = ? WHERE kind = ? AND fonzip_id = ?",
            (status, status_rank(status), version, payload, ts(now), str(new.kind), new.fonzip_id),
        )
        await tx.execute(
            "INSERT OR IGNORE INTO redeliver (kind, fonzip_id) VALUES (?, ?)",
            (str(new.kind), new.fonzip_id),
        )
        changed += 1
    log.info("form_answers_migrated", records=changed)


# Forward migrations: MIGRATIONS[n] takes a database at version n to n + 1.
MIGRATIONS: list[str | Step] = [
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
    -- Deduplicated while pending on (operation, id, status) (pending only: see 6).
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
    # 3: a `fonzipd reconcile` request carries the asker's time limit, and the daemon
    # writes the day reports back (a dry run records nothing else).
    """
    ALTER TABLE reconcile_requests ADD COLUMN deadline_at REAL;
    ALTER TABLE reconcile_requests ADD COLUMN result TEXT
    """,
    # 4: erasure (`fonzipd forget`) and retention (`state.keep_data_days`): the objects
    # whose person was erased (no personal data: kind and id), and when a record's
    # Fonzip object was dropped.
    """
    CREATE TABLE forgotten (
        kind TEXT NOT NULL,
        fonzip_id INTEGER NOT NULL,
        forgotten_at REAL NOT NULL,
        PRIMARY KEY (kind, fonzip_id)
    );
    ALTER TABLE records ADD COLUMN data_dropped_at REAL
    """,
    # 5: form answers' status comes from their payment; approval is its own field.
    _form_answer_status,
    # 6: outbox ids are never reused (an acknowledgement names rows by id, and a
    # reused id would delete another sink's row); an inbox event is deduplicated only
    # against rows still pending, not claimed ones (their fetch may have read the
    # object's older state).
    """
    CREATE TABLE outbox_v6 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    INSERT INTO outbox_v6 (id, sink_id, record_key, kind, business_date, record, state,
        attempts, last_error, created_at, dead_at)
        SELECT id, sink_id, record_key, kind, business_date, record, state,
        attempts, last_error, created_at, dead_at FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v6 RENAME TO outbox;
    CREATE UNIQUE INDEX outbox_sink_key ON outbox (sink_id, record_key);
    CREATE INDEX outbox_ready ON outbox (sink_id, state, id);

    DROP INDEX inbox_pending_event;
    CREATE UNIQUE INDEX inbox_pending_event
        ON inbox (kind, fonzip_id, coalesce(event_status, -1))
        WHERE state = 'pending';
    """,
]


async def schema_version(conn: Connection) -> int:
    """The schema version of the database (0 for an empty file)."""
    tables = await conn.fetchall(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    )
    if not tables:
        return 0
    row = await conn.fetchone("SELECT value FROM meta WHERE key = 'schema_version'")
    return 0 if row is None else int(row[0])


def _newer(conn: Connection, version: int) -> StoreError:
    return StoreError(
        f"{conn.path}: schema version {version} is newer than this fonzipd "
        f"understands ({SCHEMA_VERSION}); upgrade fonzipd"
    )


async def migrate(conn: Connection) -> None:
    """Bring the database to :data:`SCHEMA_VERSION`; refuse one from a newer fonzipd."""
    version = await schema_version(conn)
    if version > SCHEMA_VERSION:
        raise _newer(conn, version)
    for step in range(version, SCHEMA_VERSION):
        async with conn.transaction() as tx:
            if step == 0:
                await tx.execute("DROP TABLE IF EXISTS meta")
            migration = MIGRATIONS[step]
            if isinstance(migration, str):
                for statement in migration.split(";"):
                    if statement.strip():
                        await tx.execute(statement)
            else:
                await migration(tx, conn)
            await tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(step + 1),),
            )
        log.info("schema_migrated", path=str(conn.path), version=step + 1)


async def check(conn: Connection) -> None:
    """For a read-only open: the database must be a fonzipd one at this very version."""
    version = await schema_version(conn)
    if version == 0:
        raise StoreError(f"{conn.path}: not a fonzipd state database (no schema version)")
    if version > SCHEMA_VERSION:
        raise _newer(conn, version)
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"{conn.path}: schema version {version} is older than this fonzipd's "
            f"({SCHEMA_VERSION}); a read-only command never migrates it: restart the "
            "daemon with this fonzipd first"
        )
