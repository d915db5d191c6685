"""Tests of fonzipd.state.store: opening a fresh, a newer and a garbage database."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from fonzipd.state import Store, StoreError
from fonzipd.state.migrations import SCHEMA_VERSION
from tests.support import FakeClock, hook


async def test_new_database_is_private_wal_and_at_the_current_schema(
    tmp_path: Path, store: Store
) -> None:
    mode = stat.S_IMODE(os.stat(tmp_path / "state.db").st_mode)
    assert mode == 0o600
    assert await store.schema_version() == SCHEMA_VERSION
    async with store.db.execute("PRAGMA journal_mode") as cur:
        assert (await cur.fetchone()) == ("wal",)
    async with store.db.execute("PRAGMA synchronous") as cur:
        assert (await cur.fetchone()) == (2,)  # FULL


async def test_a_database_from_a_newer_fonzipd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = await Store.open(path)
    await s.meta.set("schema_version", str(SCHEMA_VERSION + 1))
    await s.close()
    with pytest.raises(StoreError, match="newer than this fonzipd"):
        await Store.open(path)


async def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable state database"):
        await Store.open(path)


async def test_read_only_refuses_a_database_that_is_not_fonzipds_and_leaves_it_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE notes (body TEXT)")
    other.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a fonzipd state database"):
        await Store.open(path, read_only=True)
    assert path.read_bytes() == before


async def test_read_only_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable state database"):
        await Store.open(path, read_only=True)


async def test_the_store_uses_its_clock_and_closes_its_connections(
    tmp_path: Path, clock: FakeClock
) -> None:
    s = await Store.open(tmp_path / "state.db", clock=clock)
    await s.inbox.add_events([hook(1)])
    assert await s.inbox.depth() == (1, 0.0)
    assert s.acquire_worker_lock()
    await s.close()
    with pytest.raises(StoreError, match="closed"):
        s.db  # noqa: B018
    again = await Store.open(tmp_path / "state.db", clock=clock)
    try:
        assert again.acquire_worker_lock()
    finally:
        await again.close()
