"""The MySQL/MariaDB sink: the SQLite sink's tables in a MySQL or MariaDB server (asyncmy).

Table ``records`` (or ``table``) holds one row per ``(kind, fonzip_id)`` and
``record_history`` one row per version, with the SQLite sink's columns: ``DECIMAL``
amounts, ``DATETIME(6)`` times in UTC, ``DATE`` business dates, ``JSON`` data, all text
utf8mb4. The sink creates both at ``open`` (and adds columns an older layout lacks).

Each batch is one transaction. Records not yet in the table are inserted (a plain
INSERT: a row another writer added meanwhile fails the batch, which is retried); the
others are updated one by one, in order, by ``UPDATE ... WHERE version <> new AND
fetched_at < new``, so the database itself decides that an older fetch never
overwrites a newer version. (``INSERT ... ON DUPLICATE KEY UPDATE`` cannot say that in
one statement: MySQL evaluates its assignments left to right, so the condition would
see the columns it has just changed.)

A lost connection (the server restarting mid-batch) rolls the transaction back;
``write`` raises :class:`TransientSinkError` and the next attempt reconnects and writes
the batch again. A record the server refuses is isolated and becomes a dead letter alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic
import structlog

from fonzipd.sink import (
    Erasure,
    PermanentSinkError,
    Record,
    Sink,
    SinkConfigError,
    SinkContext,
    SinkOptions,
    TransientSinkError,
)
from fonzipd.sinks import require_driver
from fonzipd.sinks.database import (
    DatabaseOptions,
    Endpoint,
    check_identifier,
    client_tls,
    opened,
    read_password,
)
from fonzipd.sinks.tls import raise_if_tls_refused

if TYPE_CHECKING:
    from asyncmy.connection import Connection

log = structlog.get_logger(__name__)

DEFAULT_PORT = 3306
_MAX_TABLE_BYTES = 48
_AMOUNT_LIMIT = Decimal(10) ** 16
# The session is UTC (DATETIME has no zone) and strict: a value that does not fit is an
# error, never silently cut.
_INIT = (
    "SET time_zone = '+00:00', "
    "sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,NO_ENGINE_SUBSTITUTION'"
)
# "Incorrect string value: '<bytes of a name>' for column": a donor's data, not logged.
_QUOTED_VALUE = re.compile(r"(value: )'.*?'( for column)", re.S)
_LOGIN_ERRORS = frozenset({1044, 1045, 1049, 1698, 1251})
# Errors of one record's values: it becomes a dead letter, the batch goes on.
_DATA_ERRORS = frozenset({1048, 1264, 1265, 1292, 1366, 1406, 1411, 3140, 4025})

# (name, type of a new table, information_schema DATA_TYPE values accepted)
_RECORD_COLUMNS = (
    ("kind", "VARCHAR(32) NOT NULL", {"varchar"}),
    ("fonzip_id", "BIGINT NOT NULL", {"bigint"}),
    ("status", "VARCHAR(64) NOT NULL", {"varchar"}),
    ("amount", "DECIMAL(20,4) NULL", {"decimal"}),
    ("currency", "VARCHAR(8) NULL", {"varchar"}),
    ("occurred_at", "DATETIME(6) NULL", {"datetime"}),
    ("business_date", "DATE NULL", {"date"}),
    ("person_name", "TEXT NULL", {"text"}),
    ("person_email", "TEXT NULL", {"text"}),
    ("person_phone", "TEXT NULL", {"text"}),
    ("fonzip_user_id", "BIGINT NULL", {"bigint"}),
    ("version", "VARCHAR(64) NOT NULL", {"varchar"}),
    ("source", "VARCHAR(16) NOT NULL", {"varchar"}),
    ("data", "JSON NOT NULL", {"json", "longtext"}),  # MariaDB's JSON is LONGTEXT
    ("fetched_at", "DATETIME(6) NOT NULL", {"datetime"}),
    ("updated_at", "DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)", {"datetime"}),
    ("approval", "VARCHAR(32) NULL", {"varchar"}),
)
_HISTORY_COLUMNS = (
    ("seq", "BIGINT NOT NULL AUTO_INCREMENT", {"bigint"}),
    ("kind", "VARCHAR(32) NOT NULL", {"varchar"}),
    ("fonzip_id", "BIGINT NOT NULL", {"bigint"}),
    ("version", "VARCHAR(64) NOT NULL", {"varchar"}),
    ("status", "VARCHAR(64) NOT NULL", {"varchar"}),
    ("amount", "DECIMAL(20,4) NULL", {"decimal"}),
    ("currency", "VARCHAR(8) NULL", {"varchar"}),
    ("occurred_at", "DATETIME(6) NULL", {"datetime"}),
    ("business_date", "DATE NULL", {"date"}),
    ("source", "VARCHAR(16) NOT NULL", {"varchar"}),
    ("data", "JSON NOT NULL", {"json", "longtext"}),
    ("fetched_at", "DATETIME(6) NOT NULL", {"datetime"}),
    ("written_at", "DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)", {"datetime"}),
    ("approval", "VARCHAR(32) NULL", {"varchar"}),
)
_INSERTED = [c for c, _, _ in _RECORD_COLUMNS if c != "updated_at"]
_HISTORY_WRITTEN = [c for c, _, _ in _HISTORY_COLUMNS if c not in ("seq", "written_at")]


def quote(identifier: str) -> str:
    """A MySQL identifier in backticks: any character is safe inside."""
    return "`" + identifier.replace("`", "``") + "`"


class MySQLOptions(DatabaseOptions):
    """``[sinks.<id>] type = "mysql"`` (MySQL 5.7+ or MariaDB 10.5+)."""

    @pydantic.field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        return check_identifier(value, "table", max_bytes=_MAX_TABLE_BYTES)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.astimezone(dt.UTC).replace(tzinfo=None)


def _row(record: Record) -> tuple[Any, ...]:
    return (
        str(record.kind),
        record.fonzip_id,
        record.status,
        record.amount,
        record.currency,
        _utc(record.occurred_at),
        record.business_date,
        record.person.name,
        record.person.email,
        record.person.phone,
        record.person.fonzip_user_id,
        record.version,
        str(record.source),
        json.dumps(record.data, ensure_ascii=False, separators=(",", ":")),
        _utc(record.fetched_at),
        record.approval,
    )


def _history_row(record: Record) -> tuple[Any, ...]:
    r = _row(record)
    return (r[0], r[1], r[11], r[2], r[3], r[4], r[5], r[6], r[12], r[13], r[14], r[15])


def _update_row(record: Record) -> tuple[Any, ...]:
    r = _row(record)
    return (*r[2:], r[0], r[1], r[11], r[14])


def _unfit(record: Record) -> str | None:
    """Why the record cannot be stored exactly, checked before the server rounds it."""
    amount = record.amount
    if amount is not None and (
        abs(amount) >= _AMOUNT_LIMIT or amount != amount.quantize(Decimal("0.0001"))
    ):
        return "amount does not fit DECIMAL(20,4) exactly"
    return None


class MySQLSink(Sink):
    """Upserts records into a MySQL or MariaDB table; every version into its history."""

    name: ClassVar[str] = "mysql"
    Options: ClassVar[type[SinkOptions]] = MySQLOptions
    batch_size: ClassVar[int] = 500

    def __init__(self, options: SinkOptions, context: SinkContext) -> None:
        super().__init__(options, context)
        assert isinstance(options, MySQLOptions)
        require_driver(self.name)
        self._opts = options
        self._where = f"sinks.{context.sink_id}"
        self._endpoint = Endpoint.of(options, ("mysql", "mariadb"))
        if not self._endpoint.database:
            raise SinkConfigError(f"{self._where}: name the database (mysql://user@host/db)")
        self._conn: Connection | None = None
        self._closed = False
        self._table = quote(options.table)
        self._history = quote(options.history_table())
        cols = ", ".join(_INSERTED)
        marks = ", ".join(["%s"] * len(_INSERTED))
        self._insert = f"INSERT INTO {self._table} ({cols}) VALUES ({marks})"
        sets = ", ".join(f"{c} = %s" for c in _INSERTED[2:])
        # The WHERE is evaluated once, before any assignment: an equal version is the
        # same state again, and an older fetch never wins.
        self._update = (
            f"UPDATE {self._table} SET {sets}, updated_at = CURRENT_TIMESTAMP(6) "
            "WHERE kind = %s AND fonzip_id = %s AND version <> %s AND fetched_at < %s"
        )
        hcols = ", ".join(_HISTORY_WRITTEN)
        hmarks = ", ".join(["%s"] * len(_HISTORY_WRITTEN))
        self._insert_history = (
            f"INSERT INTO {self._history} ({hcols}) VALUES ({hmarks}) "
            "ON DUPLICATE KEY UPDATE seq = seq"
        )
        self._log = log.bind(
            sink_id=context.sink_id,
            server=self._endpoint.describe(DEFAULT_PORT),
            table=options.table,
        )

    async def open(self) -> None:
        self._closed = False
        self._conn = await self._connect(at_open=True)
        opened(self._log, self._opts, self._endpoint)

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            self._log.info("sink_closed")

    async def write(self, batch: Sequence[Record]) -> None:
        if self._closed:
            raise RuntimeError(f"MySQL sink {self.context.sink_id!r} is closed")
        if not batch:
            return
        from asyncmy.errors import MySQLError

        unfit = {r.key: why for r in batch if (why := _unfit(r)) is not None}
        good = [r for r in batch if r.key not in unfit]
        failed = dict(unfit)
        try:
            async with asyncio.timeout(self._opts.timeout):
                if self._conn is None or not self._conn.connected:
                    self._conn = await self._connect(at_open=False)
                conn = self._conn
                try:
                    await self._write_batch(conn, good)
                except (MySQLError, UnicodeEncodeError) as exc:
                    if not _refused_data(exc):
                        raise
                    await _rollback(conn)
                    # One bad record must not hold back the others: each alone.
                    for record in good:
                        try:
                            await self._write_batch(conn, [record])
                        except (MySQLError, UnicodeEncodeError) as one:
                            if not _refused_data(one):
                                raise
                            await _rollback(conn)
                            failed[record.key] = _describe_error(one)
        except (TimeoutError, OSError, MySQLError) as exc:
            self._drop_connection()
            reason = (
                f"no answer within {self._opts.timeout:g} s"
                if isinstance(exc, TimeoutError)
                else _describe_error(exc)
            )
            raise TransientSinkError(f"MySQL sink {self._where}: {reason}") from exc
        if failed:
            first = next(iter(failed.values()))
            self._log.warning("records_refused", refused=len(failed), error=first)
            raise PermanentSinkError(
                f"MySQL refused {len(failed)} of {len(batch)} record(s): {first}",
                failed_keys=failed,
            )
        self._log.debug("batch_written", records=len(batch))

    async def _write_batch(self, conn: Connection, batch: Sequence[Record]) -> None:
        if not batch:
            return
        async with conn.cursor() as cur:
            await cur.execute("START TRANSACTION")
            existing = await self._existing(cur, batch)
            inserts: list[Record] = []
            updates: list[Record] = []
            for record in batch:
                ident = (str(record.kind), record.fonzip_id)
                (updates if ident in existing else inserts).append(record)
                existing.add(ident)
            if inserts:
                await cur.executemany(self._insert, [_row(r) for r in inserts])
            if updates:
                # One by one, in batch order: two versions of one record in a batch
                # are applied in the order they were made.
                await cur.executemany(self._update, [_update_row(r) for r in updates])
            await cur.executemany(self._insert_history, [_history_row(r) for r in batch])
        await conn.commit()

    async def _existing(self, cur: Any, batch: Sequence[Record]) -> set[tuple[str, int]]:
        by_kind: dict[str, set[int]] = {}
        for record in batch:
            by_kind.setdefault(str(record.kind), set()).add(record.fonzip_id)
        clauses: list[str] = []
        args: list[Any] = []
        for kind, ids in by_kind.items():
            clauses.append(f"(kind = %s AND fonzip_id IN ({', '.join(['%s'] * len(ids))}))")
            args += [kind, *sorted(ids)]
        await cur.execute(
            f"SELECT kind, fonzip_id FROM {self._table} WHERE {' OR '.join(clauses)} FOR UPDATE",
            args,
        )
        return {(str(k), int(i)) for k, i in await cur.fetchall()}

    async def forget(self, erasure: Erasure) -> int:
        """Empty the person columns and ``data`` of a person's records, in the table and
        its history, in one transaction (amounts, statuses and dates stay)."""
        if self._closed:
            raise RuntimeError(f"MySQL sink {self.context.sink_id!r} is closed")
        from asyncmy.errors import MySQLError

        changed = 0
        try:
            async with asyncio.timeout(self._opts.timeout):
                if self._conn is None or not self._conn.connected:
                    self._conn = await self._connect(at_open=False)
                conn = self._conn
                async with conn.cursor() as cur:
                    await cur.execute("START TRANSACTION")
                    for kind, fid in erasure.records:
                        changed += await cur.execute(
                            f"UPDATE {self._table} SET person_name = NULL, person_email = NULL,"
                            " person_phone = NULL, fonzip_user_id = NULL, data = JSON_OBJECT()"
                            " WHERE kind = %s AND fonzip_id = %s AND (JSON_LENGTH(data) > 0"
                            " OR person_name IS NOT NULL OR person_email IS NOT NULL"
                            " OR person_phone IS NOT NULL OR fonzip_user_id IS NOT NULL)",
                            (str(kind), fid),
                        )
                        changed += await cur.execute(
                            f"UPDATE {self._history} SET data = JSON_OBJECT()"
                            " WHERE kind = %s AND fonzip_id = %s AND JSON_LENGTH(data) > 0",
                            (str(kind), fid),
                        )
                await conn.commit()
        except (TimeoutError, OSError, MySQLError) as exc:
            self._drop_connection()
            reason = (
                f"no answer within {self._opts.timeout:g} s"
                if isinstance(exc, TimeoutError)
                else _describe_error(exc)
            )
            raise TransientSinkError(f"MySQL sink {self._where}: {reason}") from exc
        self._log.info("person_forgotten", records=len(erasure.records), rows=changed)
        return changed

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _connect(self, *, at_open: bool) -> Connection:
        """Connect, log in and make the tables ready.

        A refused login or an unknown database is :class:`SinkConfigError` at ``open``
        (what ``fonzipd check --online`` reports) and transient afterwards.
        """
        import asyncmy
        from asyncmy.errors import MySQLError

        password = read_password(self._opts, self._where)
        ep = self._endpoint
        tls = client_tls(self._opts, ep, self._where)
        server = ep.describe(DEFAULT_PORT)
        try:
            async with asyncio.timeout(self._opts.connect_timeout + 1):
                conn = await asyncmy.connect(
                    host=ep.host or "localhost",
                    port=ep.port or DEFAULT_PORT,
                    user=ep.user,
                    password=password or "",
                    database=ep.database,
                    charset="utf8mb4",
                    autocommit=False,
                    connect_timeout=self._opts.connect_timeout,
                    init_command=_INIT,
                    program_name=f"fonzipd:{self.context.sink_id}",
                    ssl=tls,
                )
        except MySQLError as exc:
            raise_if_tls_refused(exc, tls, f"{self._where}: MySQL {server}", at_open=at_open)
            message = f"{self._where}: MySQL {server}: {_describe_error(exc)}"
            if _code(exc) in _LOGIN_ERRORS:
                message = f"{self._where}: MySQL {server} refused the login: {exc.args[-1]}"
                if at_open:
                    raise SinkConfigError(message) from None
            raise TransientSinkError(message) from exc
        except (TimeoutError, OSError) as exc:
            raise_if_tls_refused(exc, tls, f"{self._where}: MySQL {server}", at_open=at_open)
            raise TransientSinkError(
                f"{self._where}: cannot connect to MySQL {server}: {_describe_error(exc)}"
            ) from exc
        try:
            async with asyncio.timeout(self._opts.timeout):
                await self._prepare(conn)
        except SinkConfigError:
            conn.close()
            raise
        except (TimeoutError, OSError, MySQLError) as exc:
            conn.close()
            raise TransientSinkError(
                f"{self._where}: preparing {self._opts.table} on {server}: {_describe_error(exc)}"
            ) from exc
        return conn

    async def _prepare(self, conn: Connection) -> None:
        """Create the tables, or add the columns an older layout lacks."""
        opts = self._opts
        async with conn.cursor() as cur:
            lock = f"fonzipd:{self._endpoint.database}.{opts.table}"[:64]
            # Two processes opening at once must not race on CREATE TABLE.
            await cur.execute("SELECT GET_LOCK(%s, %s)", (lock, int(self._opts.timeout)))
            try:
                for table, name, columns, key, extra in (
                    (
                        self._table,
                        opts.table,
                        _RECORD_COLUMNS,
                        ("kind", "fonzip_id"),
                        f", KEY {quote(opts.table + '_business_date')} (business_date, kind)",
                    ),
                    (
                        self._history,
                        opts.history_table(),
                        _HISTORY_COLUMNS,
                        ("kind", "fonzip_id", "version"),
                        ", UNIQUE KEY seq (seq)",
                    ),
                ):
                    defs = ", ".join(f"{c} {t}" for c, t, _ in columns)
                    await cur.execute(
                        f"CREATE TABLE IF NOT EXISTS {table} ({defs}, "
                        f"PRIMARY KEY ({', '.join(key)}){extra}) ENGINE=InnoDB "
                        "DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
                    )
                    await self._migrate(cur, table, name, columns, key)
            finally:
                await cur.execute("SELECT RELEASE_LOCK(%s)", (lock,))
        await conn.commit()

    async def _migrate(
        self,
        cur: Any,
        table: str,
        name: str,
        columns: tuple[tuple[str, str, set[str]], ...],
        key: tuple[str, ...],
    ) -> None:
        await cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (name,),
        )
        have = {str(c): str(t).lower() for c, t in await cur.fetchall()}
        for column, sql_type, accepted in columns:
            if column not in have:
                # An older layout: the column is added nullable, so old rows stay valid.
                nullable = sql_type.replace("NOT NULL", "NULL")
                await cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {nullable}")
                self._log.info("table_migrated", added_column=column)
            elif have[column] not in accepted:
                raise SinkConfigError(
                    f"{self._where}: {name}.{column} is {have[column]}, fonzipd needs "
                    f"{sql_type.split()[0]}: rename the table or set another `table`"
                )
        await cur.execute(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY' "
            "ORDER BY ORDINAL_POSITION",
            (name,),
        )
        primary = tuple(str(r[0]) for r in await cur.fetchall())
        if primary != key:
            raise SinkConfigError(
                f"{self._where}: {name} has the primary key {primary}, fonzipd needs "
                f"({', '.join(key)}): set another `table`"
            )


async def _rollback(conn: Connection) -> None:
    await conn.rollback()


def _refused_data(exc: BaseException) -> bool:
    """A record's values cannot be stored: a lone surrogate in a text, a value too long."""
    return isinstance(exc, UnicodeEncodeError) or _code(exc) in _DATA_ERRORS


def _code(exc: BaseException) -> int | None:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _describe_error(exc: BaseException) -> str:
    """The server's error code and message, without the value it may quote."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if len(args) == 2 and isinstance(args[0], int):
        message = _QUOTED_VALUE.sub(r"\1'...'\2", str(args[1]))
        return f"{type(exc).__name__} ({args[0]}): {message}"
    return f"{type(exc).__name__}: {exc}"
