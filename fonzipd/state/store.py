"""The state database as a whole: opens it and hands out its parts, one per table group."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.state.books import ReconcileBooks
from fonzipd.state.connection import Connection, StoreError
from fonzipd.state.erasures import Erasures
from fonzipd.state.form_ids import FormIdTable
from fonzipd.state.inbox import Inbox
from fonzipd.state.meta import Meta
from fonzipd.state.migrations import check, migrate, schema_version
from fonzipd.state.outbox import Outbox
from fonzipd.state.records import Records
from fonzipd.state.tokens import TokenTable


class Store:
    """fonzipd's state database. Open with :meth:`open`; close with :meth:`close`.

    Its parts share one :class:`~fonzipd.state.connection.Connection`: ``inbox``,
    ``records``, ``outbox`` (with sink state), ``books`` (the reconciler's),
    ``tokens`` (a TokenStore), ``form_ids`` (a FormIdCache), ``meta`` and ``erasures``
    (erasure and retention).
    """

    def __init__(self, path: Path, *, clock: Clock = SYSTEM_CLOCK, read_only: bool = False) -> None:
        self.path = path
        self.connection = Connection(path, clock=clock, read_only=read_only)
        self.inbox = Inbox(self.connection)
        self.records = Records(self.connection)
        self.outbox = Outbox(self.connection)
        self.books = ReconcileBooks(self.connection)
        self.tokens = TokenTable(self.connection)
        self.form_ids = FormIdTable(self.connection)
        self.meta = Meta(self.connection)
        self.erasures = Erasures(self.connection)

    @classmethod
    async def open(
        cls, path: Path, *, clock: Clock = SYSTEM_CLOCK, read_only: bool = False
    ) -> Store:
        """Open (creating and migrating if needed) the database at ``path``.

        ``read_only`` (commands that only read): nothing is created, migrated or
        written; a path that holds no fonzipd database at this schema is refused.
        """
        store = cls(path, clock=clock, read_only=read_only)
        await store.connection.connect()
        try:
            await (check if read_only else migrate)(store.connection)
        except sqlite3.DatabaseError as exc:
            await store.close()
            raise StoreError(f"{path}: not a usable state database: {exc}") from exc
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def db(self) -> aiosqlite.Connection:
        """The raw connection (for tests that inject faults with pragmas)."""
        return self.connection.db

    async def close(self) -> None:
        """Close the connection and release the worker lock."""
        await self.connection.close()

    def acquire_worker_lock(self) -> bool:
        """Become the one process that works this database's inbox and outbox (see Connection)."""
        return self.connection.acquire_worker_lock()

    async def schema_version(self) -> int:
        """The schema version of the open database."""
        return await schema_version(self.connection)
