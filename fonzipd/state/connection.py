"""The connection to the state database: opening, pragmas, transactions, the worker lock.

Everything that matters lives in one SQLite file in WAL mode with
``synchronous=FULL``: a transaction that has committed survives a crash, a
``kill -9`` and a power cut. One connection serves the whole process; a lock makes
each transaction atomic with respect to the other tasks sharing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from fonzipd.clock import SYSTEM_CLOCK, Clock


class StoreError(Exception):
    """The state database cannot be used (locked by another daemon, corrupt, unwritable)."""


def ts(moment: dt.datetime) -> float:
    """A stored instant: seconds since the epoch."""
    return moment.timestamp()


def iso(value: float | None) -> str | None:
    """A stored instant as ISO 8601 (UTC), for status output."""
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC).isoformat()


class Connection:
    """The process's connection to one state database, and the lock that orders its users."""

    def __init__(self, path: Path, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.path = path
        self.clock = clock
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._worker_lock_fd: int | None = None

    async def connect(self) -> None:
        """Open (creating if needed) the file, private to fonzipd, and set the pragmas."""
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
            # Personal data: what an update or a delete frees is zeroed, so that an old
            # version, an erased person or a dropped object is not left in a free page.
            await db.execute("PRAGMA secure_delete=ON")
        except sqlite3.DatabaseError as exc:
            await self.close()
            raise StoreError(f"{self.path}: not a usable state database: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    @property
    def db(self) -> aiosqlite.Connection:
        """The raw connection (for tests that inject faults with pragmas)."""
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

    @contextlib.asynccontextmanager
    async def statement(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for one statement that is its own transaction (no BEGIN)."""
        async with self._lock:
            yield self.db

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one read."""
        return list(await self.db.execute_fetchall(sql, tuple(params)))

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        """The first row of one read, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchdicts(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Rows of one read, as dicts by column name."""
        async with self.db.execute(sql, tuple(params)) as cur:
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) async for r in cur]

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
