"""Tests of fonzipd.state.meta: named values, and the write probe behind readiness."""

from __future__ import annotations

import sqlite3

import pytest

from fonzipd.state import Store
from tests.support import FakeClock


async def test_a_value_is_stored_replaced_and_read_back(store: Store) -> None:
    assert await store.meta.get("last_webhook_at") is None
    await store.meta.set("last_webhook_at", "2026-11-27T09:00:00+00:00")
    await store.meta.set("last_webhook_at", "2026-11-27T09:05:00+00:00")
    await store.meta.set("other", "x")
    assert await store.meta.get("last_webhook_at") == "2026-11-27T09:05:00+00:00"
    assert await store.meta.get("other") == "x"


async def test_the_write_probe_commits_its_time_and_fails_when_writes_cannot_commit(
    store: Store, clock: FakeClock
) -> None:
    await store.meta.check_writable()
    assert await store.meta.get("readiness_probe") == clock.now().isoformat()
    clock.advance(90)
    await store.meta.check_writable()
    assert await store.meta.get("readiness_probe") == clock.now().isoformat()
    await store.db.execute("PRAGMA query_only = ON")
    with pytest.raises(sqlite3.OperationalError):
        await store.meta.check_writable()
    await store.db.execute("PRAGMA query_only = OFF")
    assert not store.db.in_transaction
