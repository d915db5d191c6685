"""The state database's schema: forward migrations, applied in order at open."""

from __future__ import annotations

import structlog

from fonzipd.state.connection import Connection, StoreError

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 4

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
]


async def schema_version(conn: Connection) -> int:
    """The schema version of the database (0 for an empty file)."""
    row = await conn.fetchone("SELECT value FROM meta WHERE key = 'schema_version'")
    return 0 if row is None else int(row[0])


async def migrate(conn: Connection) -> None:
    """Bring the database to :data:`SCHEMA_VERSION`; refuse one from a newer fonzipd."""
    await conn.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    version = await schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{conn.path}: schema version {version} is newer than this fonzipd "
            f"understands ({SCHEMA_VERSION}); upgrade fonzipd"
        )
    for step in range(version, SCHEMA_VERSION):
        async with conn.transaction() as tx:
            if step == 0:
                await tx.execute("DROP TABLE meta")
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    await tx.execute(statement)
            await tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(step + 1),),
            )
        log.info("schema_migrated", path=str(conn.path), version=step + 1)
