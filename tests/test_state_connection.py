"""Tests of fonzipd.state.connection: one worker per database; a failed commit keeps
nothing; only claims commit without an fsync."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import stat
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fonzipd.state import Store, StoreError
from fonzipd.state.connection import Connection, settled
from tests.support import FakeClock, hook, make_record

NORMAL, FULL = 1, 2


async def test_only_one_worker_per_database(tmp_path: Path, store: Store) -> None:
    other = await Store.open(tmp_path / "state.db")
    try:
        assert store.acquire_worker_lock()
        assert not other.acquire_worker_lock()
    finally:
        await other.close()


async def test_a_failed_commit_raises_and_keeps_nothing(store: Store) -> None:
    await store.db.execute("PRAGMA max_page_count = 1")
    with pytest.raises(sqlite3.Error):
        await store.inbox.add_events([hook(n) for n in range(2000)])
    await store.db.execute("PRAGMA max_page_count = 1073741823")
    assert (await store.inbox.depth())[0] == 0


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_settled_finishes_its_work_before_a_cancellation_is_raised() -> None:
    release = asyncio.Event()
    finished: list[str] = []

    async def work() -> str:
        await release.wait()
        finished.append("work")
        return "done"

    task = asyncio.create_task(settled(work()))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done()  # still waiting for the work, cancelled or not
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ["work"]
    assert await settled(work()) == "done"


async def test_settled_work_that_fails_after_a_cancellation_reports_no_stray_error() -> None:
    loop = asyncio.get_running_loop()
    stray: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: stray.append(context))

    async def cancelled_while_failing() -> None:
        release = asyncio.Event()

        async def work() -> None:
            await release.wait()
            raise sqlite3.OperationalError("disk I/O error")

        task = asyncio.create_task(settled(work()))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        release.set()
        try:
            await task
        except asyncio.CancelledError:
            return
        raise AssertionError("the cancellation was lost")

    try:
        await cancelled_while_failing()
        await asyncio.sleep(0)
        # Its error is moot once the caller is cancelled: asyncio must not log it as
        # "never retrieved" when the work is collected.
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert stray == []


async def test_a_transaction_that_raises_keeps_nothing_and_frees_the_connection(
    store: Store,
) -> None:
    async def fails_midway() -> None:
        async with store.connection.transaction() as tx:
            await tx.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
            raise RuntimeError("the caller failed")

    with pytest.raises(RuntimeError):
        await fails_midway()
    assert not store.db.in_transaction
    assert await store.meta.get("a") is None
    await store.meta.set("a", "2")
    assert await store.meta.get("a") == "2"


async def test_a_cancellation_during_commit_waits_for_the_commit_to_end(store: Store) -> None:
    tasks: list[asyncio.Task[None]] = []

    async def cancel_at_commit(sql: str, call: Callable[[], Awaitable[Any]]) -> Any:
        if sql == "COMMIT":
            tasks[0].cancel()  # the task that runs the transaction
        return await call()

    store.connection.faults = cancel_at_commit
    tasks.append(asyncio.create_task(store.meta.set("k", "kept")))
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    store.connection.faults = None
    assert not store.db.in_transaction
    assert await store.meta.get("k") == "kept"


async def test_a_failed_begin_is_raised_and_the_connection_stays_usable(store: Store) -> None:
    async def busy_begin(sql: str, call: Callable[[], Awaitable[Any]]) -> Any:
        if sql == "BEGIN IMMEDIATE":
            raise sqlite3.OperationalError("database is locked")
        return await call()

    store.connection.faults = busy_begin
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        await store.meta.set("k", "v")
    store.connection.faults = None
    await store.meta.set("k", "v")
    assert await store.meta.get("k") == "v"


async def test_a_self_committing_statement_that_fails_leaves_nothing_open(store: Store) -> None:
    async def fails_midway() -> None:
        async with store.connection.autocommit() as tx:
            await tx.execute("BEGIN")
            await tx.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
            await tx.execute("INSERT INTO meta (key, value) VALUES ('b', NULL)")

    with pytest.raises(sqlite3.IntegrityError):
        await fails_midway()
    assert not store.db.in_transaction
    assert await store.meta.get("a") is None


async def test_writes_wait_for_another_writer_rather_than_fail(
    tmp_path: Path, store: Store
) -> None:
    # Another process (a CLI command) holding the write lock for a moment must not
    # make the daemon's writes fail: both connections wait up to 30 s for a lock.
    for db in (store.db, store.connection.reader):
        async with db.execute("PRAGMA busy_timeout") as cur:
            assert tuple(await cur.fetchone() or ()) == (30000,)
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO meta (key, value) VALUES ('cli', 'x')")
        writing = asyncio.create_task(store.meta.set("daemon", "y"))
        await asyncio.wait([writing], timeout=0.2)
        assert not writing.done()
        other.execute("COMMIT")
        await writing
    finally:
        other.close()
    assert (await store.meta.get("cli"), await store.meta.get("daemon")) == ("x", "y")


async def test_the_write_connection_enforces_keys_and_zeroes_freed_pages(store: Store) -> None:
    for pragma, value in (("foreign_keys", 1), ("secure_delete", 1), ("query_only", 0)):
        async with store.db.execute(f"PRAGMA {pragma}") as cur:
            assert await cur.fetchone() == (value,), pragma
    async with store.connection.reader.execute("PRAGMA query_only") as cur:
        assert tuple(await cur.fetchone() or ()) == (1,)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await store.connection.reads().execute("INSERT INTO meta (key, value) VALUES ('a', '1')")


async def test_reads_see_committed_data_only(store: Store) -> None:
    async with store.connection.transaction() as tx:
        await tx.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
        assert await tx.fetchone("SELECT value FROM meta WHERE key = 'a'") == ("1",)
        assert await store.connection.fetchone("SELECT value FROM meta WHERE key = 'a'") is None
        assert await store.connection.reads().fetchall("SELECT * FROM meta WHERE key = 'a'") == []
    assert await store.connection.fetchdicts("SELECT key, value FROM meta WHERE key = 'a'") == [
        {"key": "a", "value": "1"}
    ]
    assert await store.connection.fetchone("SELECT 1 WHERE 0") is None


@pytest.mark.parametrize("umask", [0o022, 0o277])
async def test_a_new_database_and_its_directories_are_private(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "var" / "fonzipd" / "state.db"
    conn = Connection(path)
    old = os.umask(umask)
    try:
        await conn.connect()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(path.parent.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert conn.acquire_worker_lock()
        lock = path.with_name("state.db.lock")
        assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600
    finally:
        await conn.close()


async def test_a_database_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    conn = Connection(tmp_path / "file" / "state.db")
    with pytest.raises(StoreError, match="cannot open the state database"):
        await conn.connect()


async def test_read_only_needs_an_existing_database(tmp_path: Path) -> None:
    conn = Connection(tmp_path / "state.db", read_only=True)
    with pytest.raises(StoreError) as caught:
        await conn.connect()
    # The operator is told where it looked and what to check.
    assert str(caught.value) == (
        f"{tmp_path / 'state.db'}: no fonzipd state database here "
        "(has the daemon run with this configuration? see state.path)"
    )
    assert names(tmp_path) == []


async def test_a_path_sqlite_cannot_open_is_named_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "state.db").mkdir()  # a folder where the database file should be
    before = set(threading.enumerate())
    conn = Connection(tmp_path / "state.db")
    with pytest.raises(StoreError) as caught:
        await conn.connect()
    assert str(caught.value).startswith(
        f"{tmp_path / 'state.db'}: cannot open the state database: "
    ), caught.value
    # Its SQLite thread has ended: none is left to answer a closed event loop later
    # (that printed a traceback, and failed the next test here).
    left = [t for t in threading.enumerate() if t not in before and "_connection_worker" in t.name]
    assert [t for t in left if t.is_alive()] == []


async def test_read_only_reads_a_stopped_database_without_leaving_files(
    tmp_path: Path, clock: FakeClock
) -> None:
    s = await Store.open(tmp_path / "state.db", clock=clock)
    await s.meta.set("k", "v")
    assert s.acquire_worker_lock()
    await s.close()
    before = names(tmp_path)
    ro = await Store.open(tmp_path / "state.db", read_only=True)
    try:
        assert await ro.meta.get("k") == "v"
        assert ro.connection.snapshot  # later writes by a daemon would stay unseen
        assert ro.acquire_worker_lock()
        with pytest.raises(StoreError, match="opened read-only"):
            ro.connection.db  # noqa: B018
    finally:
        await ro.close()
    assert names(tmp_path) == before


async def test_read_only_sees_what_a_running_daemon_has_committed(
    tmp_path: Path, store: Store
) -> None:
    assert store.acquire_worker_lock()
    await store.meta.set("k", "v1")
    ro = await Store.open(tmp_path / "state.db", read_only=True)
    try:
        assert not ro.acquire_worker_lock()
        assert not ro.connection.snapshot
        assert not store.connection.snapshot
        await store.meta.set("k", "v2")
        assert await ro.meta.get("k") == "v2"
    finally:
        await ro.close()


async def test_read_only_without_a_lock_file_means_no_daemon_ever_worked_it(
    tmp_path: Path, store: Store
) -> None:
    ro = Connection(tmp_path / "state.db", read_only=True)
    await ro.connect()
    try:
        assert ro.acquire_worker_lock()
        assert not (tmp_path / "state.db.lock").exists()
    finally:
        await ro.close()


async def test_closing_checkpoints_and_releases_the_worker_lock(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "state.db"
    s = await Store.open(path, clock=clock)
    # Another connection keeps the WAL alive: only the close's checkpoint moves the
    # committed data into the database file.
    other = sqlite3.connect(path)
    try:
        other.execute("SELECT count(*) FROM meta").fetchone()
        assert s.acquire_worker_lock()
        assert s.acquire_worker_lock()  # held already: still ours
        await s.meta.set("k", "v")
        await s.close()
        uri = "file:" + urllib.parse.quote(str(path)) + "?immutable=1"
        with sqlite3.connect(uri, uri=True) as snapshot:
            assert snapshot.execute("SELECT value FROM meta WHERE key = 'k'").fetchone() == ("v",)
        await s.close()  # closing twice is harmless
        with pytest.raises(StoreError, match="closed"):
            s.connection.db  # noqa: B018
        with pytest.raises(StoreError, match="closed"):
            s.connection.reader  # noqa: B018
        again = await Store.open(path, clock=clock)
        assert again.acquire_worker_lock()
        await again.close()
    finally:
        other.close()


class Levels:
    """The fault seam, used to read the write connection's synchronous level (1 NORMAL,
    2 FULL) at every commit: at each COMMIT, and at a self-committing INSERT."""

    def __init__(self, store: Store, fail: str | None = None) -> None:
        self.store = store
        self.fail = fail
        self.at_commit: list[int] = []

    async def __call__(self, sql: str, call: Callable[[], Awaitable[Any]]) -> Any:
        if sql == self.fail:
            self.fail = None
            raise sqlite3.OperationalError("disk I/O error")
        if sql == "COMMIT" or sql.startswith("INSERT OR IGNORE INTO inbox"):
            rows = await self.store.db.execute_fetchall("PRAGMA synchronous")
            self.at_commit.append(next(iter(rows))[0])
        return await call()


async def test_only_claims_commit_without_fsync(store: Store) -> None:
    levels = Levels(store)
    store.connection.faults = levels
    await store.inbox.add_events([hook(1), hook(2)])
    row = await store.inbox.claim()
    assert row is not None
    await store.inbox.add_events([hook(3)])  # a webhook right after a claim: fsynced
    await store.records.apply_record(row.id, make_record(1), ["a"])
    assert await store.inbox.claim_many(2)
    await store.inbox.retry_later(2, "down", 30)
    assert levels.at_commit == [FULL, NORMAL, FULL, FULL, NORMAL, FULL]


async def test_a_failed_switch_back_to_full_commits_nothing_and_is_made_again(store: Store) -> None:
    await store.inbox.add_events([hook(1)])
    assert await store.inbox.claim() is not None  # the connection is at NORMAL now
    levels = Levels(store, fail="PRAGMA synchronous=FULL")
    store.connection.faults = levels
    with pytest.raises(sqlite3.OperationalError):
        await store.inbox.add_events([hook(2)])
    assert levels.at_commit == []  # nothing committed at the wrong level
    await store.inbox.add_events([hook(2)])
    assert levels.at_commit == [FULL]
    assert (await store.inbox.depth())[0] == 2


async def test_the_synchronous_level_is_set_only_when_it_changes(tmp_path: Path) -> None:
    """A PRAGMA is a round trip to SQLite's thread: durable commits in a row set no
    level (the connection opens at FULL), and a claim switches to NORMAL and back once."""
    store = await Store.open(tmp_path / "state.db")
    pragmas: list[str] = []

    async def seen(sql: str, call: Callable[[], Awaitable[Any]]) -> Any:
        if sql.startswith("PRAGMA synchronous"):
            pragmas.append(sql)
        return await call()

    store.connection.faults = seen
    try:
        await store.inbox.add_events([hook(1), hook(2)])
        await store.meta.set("k", "v")
        assert pragmas == []
        assert await store.inbox.claim() is not None
        assert await store.inbox.claim() is not None
        await store.inbox.add_events([hook(3)])
        await store.meta.set("k", "w")
        assert pragmas == ["PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL"]
    finally:
        store.connection.faults = None
        await store.close()
    # A connection just opened is at FULL already: its first transaction sets nothing.
    pragmas.clear()
    conn = Connection(tmp_path / "state.db")
    conn.faults = seen
    await conn.connect()
    try:
        async with conn.transaction() as tx:
            await tx.execute("UPDATE meta SET value = 'x' WHERE key = 'k'")
        assert pragmas == []
    finally:
        await conn.close()
