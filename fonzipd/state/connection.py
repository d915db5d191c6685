"""The connections to the state database: opening, pragmas, transactions, the worker lock.

Everything that matters lives in one SQLite file in WAL mode with
``synchronous=FULL``: a transaction that has committed survives a crash, a
``kill -9`` and a power cut. The process writes through one connection, and a lock
makes each write transaction atomic with respect to the other tasks sharing it. It
reads through a second connection, which in WAL mode sees only committed data: a
read never sees a transaction that another task has open (and may yet roll back).

Every transaction is cancellation-safe. aiosqlite runs a connection's statements
one at a time, in the order they were submitted, on its own thread; a statement
whose caller is cancelled still runs. So whatever ends a transaction early (an
exception, a failed COMMIT, a cancellation at any await, including around BEGIN and
COMMIT), a ROLLBACK is submitted and awaited to its end before the lock is released:
it runs after every statement the transaction submitted, and the next transaction
starts on a clean connection. A COMMIT that was submitted is awaited to its end too,
so a cancelled transaction either committed in full or left nothing.

A transaction may be opened not ``durable`` (a claim, which a power cut may lose:
the row is then simply pending again): it commits with ``synchronous=NORMAL``, in
WAL mode no fsync. The level is set before BEGIN (SQLite refuses to change it
inside a transaction), and every durable transaction and self-committing statement
sets FULL again first: the level a durable commit runs at never depends on an
earlier transaction having cleaned up. The WAL is append-only, so the fsync of the
next durable commit also makes every earlier non-durable one durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import fcntl
import os
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.private_files import create_private_file, make_private_dir, open_private

T = TypeVar("T")

#: A test seam: called with each statement about to be submitted and the call that
#: submits it (``faults(sql, call)`` must await ``call()`` or raise). fonzipd never
#: sets it; the state tests inject cancellations and failed commits through it.
Faults = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class StoreError(Exception):
    """The state database cannot be used (locked by another daemon, corrupt, unwritable)."""


def ts(moment: dt.datetime) -> float:
    """A stored instant: seconds since the epoch."""
    return moment.timestamp()


def iso(value: float | None) -> str | None:
    """A stored instant as ISO 8601 (UTC), for status output."""
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC).isoformat()


async def settled(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile.

    A cancellation that arrives meanwhile is raised once ``aw`` has ended.
    """
    fut = asyncio.ensure_future(aw)
    cancelled = False
    while not fut.done():
        try:
            await asyncio.wait([fut])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not fut.cancelled():
            fut.exception()  # retrieved: its error is moot once the caller is cancelled
        raise asyncio.CancelledError
    return fut.result()


@dataclasses.dataclass(frozen=True, slots=True)
class Done:
    """What one write statement did."""

    rowcount: int
    lastrowid: int | None


class Tx:
    """Statements inside one write transaction (or one self-committing statement)."""

    def __init__(self, conn: Connection, db: aiosqlite.Connection) -> None:
        self._conn = conn
        self._db = db

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Done:
        """Run one statement; its row count and last row id."""
        cur = await self._conn.call(sql, lambda: self._db.execute(sql, params))
        return Done(rowcount=cur.rowcount, lastrowid=cur.lastrowid)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run one statement once per row; the total row count."""
        cur = await self._conn.call(sql, lambda: self._db.executemany(sql, rows))
        return cur.rowcount

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one statement (a SELECT, or a write with RETURNING)."""
        rows = await self._conn.call(sql, lambda: self._db.execute_fetchall(sql, params))
        return list(rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """The first row of one statement, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class Connection:
    """The process's connections to one state database, and the lock that orders writers."""

    def __init__(self, path: Path, *, clock: Clock = SYSTEM_CLOCK, read_only: bool = False) -> None:
        self.path = path
        self.clock = clock
        self.read_only = read_only
        # Read as a snapshot (immutable): later writes by another process stay unseen.
        self.snapshot = False
        self.faults: Faults | None = None
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        # The write connection's synchronous level as last set, or None while unknown
        # (a PRAGMA cancelled or failed): then the next transaction sets it again.
        self._synchronous: str | None = None
        self._worker_lock_fd: int | None = None

    async def connect(self) -> None:
        """Open the file (read-write: creating it, private to fonzipd) and set the pragmas.

        Read-only: the file must exist; nothing is created or written.
        """
        if self.read_only:
            if not self.path.is_file():
                raise StoreError(
                    f"{self.path}: no fonzipd state database here "
                    "(has the daemon run with this configuration? see state.path)"
                )
        else:
            try:
                # The database holds the Fonzip access token and personal data: fonzipd's
                # only, and so are the -wal and -shm files SQLite makes with its mode.
                make_private_dir(self.path.parent)
                create_private_file(self.path)
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot open the state database: {exc}") from exc
        try:
            if not self.read_only:
                self._db = await self._open(f"{self._uri}?mode=rw")
                await self._db.execute("PRAGMA journal_mode=WAL")
                await self._db.execute("PRAGMA synchronous=FULL")
                self._synchronous = "FULL"
                await self._db.execute("PRAGMA foreign_keys=ON")
                # Personal data: what an update or a delete frees is zeroed, so that an
                # old version, an erased person or a dropped object is not left in a
                # free page.
                await self._db.execute("PRAGMA secure_delete=ON")
            reader_uri = f"{self._uri}?mode=ro"
            if self.read_only and not self.path.with_name(self.path.name + "-wal").exists():
                # No -wal file: no process has the database open (a live connection
                # keeps it). Read the file as it is rather than create -wal and -shm
                # files, which would outlive this command and, made by another user
                # (root running `status`), could lock the daemon out of its database.
                reader_uri += "&immutable=1"
                self.snapshot = True
            self._reader = await self._open(reader_uri)
            await self._reader.execute("PRAGMA query_only=ON")
            self._reader.row_factory = sqlite3.Row
        except sqlite3.DatabaseError as exc:
            await self.close()
            raise StoreError(f"{self.path}: not a usable state database: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    @property
    def _uri(self) -> str:
        return "file:" + urllib.parse.quote(str(self.path.absolute()))

    async def _open(self, uri: str) -> aiosqlite.Connection:
        connecting = aiosqlite.connect(uri, uri=True, isolation_level=None, timeout=30)
        try:
            db = await connecting
        except sqlite3.Error as exc:
            # aiosqlite stops its worker thread after a failed connect without waiting
            # for it; unjoined, the thread may answer an event loop that has closed
            # meanwhile, and print a traceback as the command exits.
            worker = getattr(connecting, "_thread", None)
            if worker is not None:
                await asyncio.to_thread(worker.join, 5)
            raise StoreError(f"{self.path}: cannot open the state database: {exc}") from exc
        await db.execute("PRAGMA busy_timeout=30000")
        return db

    @property
    def db(self) -> aiosqlite.Connection:
        """The write connection (tests inject faults through its pragmas)."""
        if self._db is None:
            if self.read_only and self._reader is not None:
                raise StoreError(f"{self.path}: opened read-only")
            raise StoreError("the state database is closed")
        return self._db

    @property
    def reader(self) -> aiosqlite.Connection:
        """The read connection: it sees committed data only."""
        if self._reader is None:
            raise StoreError("the state database is closed")
        return self._reader

    async def close(self) -> None:
        """Close the connections and release the worker lock."""
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            await self._db.close()
            self._db = None
        if self._worker_lock_fd is not None:
            os.close(self._worker_lock_fd)
            self._worker_lock_fd = None

    async def call(self, sql: str, submit: Callable[[], Awaitable[T]]) -> T:
        """Submit one statement and await it (through the test seam when set)."""
        if self.faults is not None:
            result: T = await self.faults(sql, submit)
            return result
        return await submit()

    async def _synchronous_level(self, db: aiosqlite.Connection, level: str) -> None:
        """Set the write connection's synchronous level (outside any transaction)."""
        if self._synchronous == level:
            return
        self._synchronous = None
        sql = f"PRAGMA synchronous={level}"
        await self.call(sql, lambda: db.execute(sql))
        self._synchronous = level

    @contextlib.asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[Tx]:
        """One write transaction, atomic with respect to the process's other tasks.

        ``durable=False``: committed without an fsync (see the module's text); only
        for what a power cut may lose without harm.
        """
        async with self._lock:
            db = self.db
            tx = Tx(self, db)
            try:
                await self._synchronous_level(db, "FULL" if durable else "NORMAL")
                await self.call("BEGIN IMMEDIATE", lambda: db.execute("BEGIN IMMEDIATE"))
                yield tx
                await settled(self.call("COMMIT", lambda: db.execute("COMMIT")))
            except BaseException:
                await settled(self._rollback(db))
                raise

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[Tx]:
        """One statement that commits by itself (no BEGIN/COMMIT round trips)."""
        async with self._lock:
            db = self.db
            try:
                await self._synchronous_level(db, "FULL")
                yield Tx(self, db)
            except BaseException:
                # Also a barrier: it runs after the statement, which then has ended.
                await settled(self._rollback(db))
                raise

    async def _rollback(self, db: aiosqlite.Connection) -> None:
        # Fails harmlessly when no transaction is open (BEGIN failed, COMMIT ended it).
        with contextlib.suppress(sqlite3.Error):
            await self.call("ROLLBACK", lambda: db.execute("ROLLBACK"))

    def reads(self) -> Tx:
        """Statements on the read connection, each its own snapshot of committed data."""
        return Tx(self, self.reader)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one read (committed data only)."""
        reader = self.reader
        return list(await self.call(sql, lambda: reader.execute_fetchall(sql, params)))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """The first row of one read, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchdicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of one read, as dicts by column name."""
        return [dict(r) for r in await self.fetchall(sql, params)]

    def acquire_worker_lock(self) -> bool:
        """Become the one process that works the inbox and outbox of this database.

        The lock is an ``flock`` on ``<state>.lock``, released by the kernel when the
        process dies, so a ``kill -9`` never leaves it held. Returns False when another
        process holds it. Read-only, the lock file is not created: none means no
        daemon has ever worked this database.
        """
        if self._worker_lock_fd is not None:
            return True
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            if self.read_only:
                fd = os.open(lock_path, os.O_RDONLY)
            else:
                fd, _ = open_private(lock_path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._worker_lock_fd = fd
        return True
