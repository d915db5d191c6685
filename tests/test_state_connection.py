"""Tests of fonzipd.state.connection: one worker per database; a failed commit keeps nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fonzipd.state import Store
from tests.support import hook


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
