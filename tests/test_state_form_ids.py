"""Tests of fonzipd.state.form_ids: the form-id table as a FormIdCache."""

from __future__ import annotations

from fonzipd.state import Store


async def test_form_id_cache(store: Store) -> None:
    await store.form_ids.put_many([(10, 3), (11, 4)])
    assert await store.form_ids.get(10) == 3
    assert await store.form_ids.get(12) is None


async def test_form_ids_are_replaced_and_an_empty_batch_writes_nothing(store: Store) -> None:
    await store.form_ids.put_many(iter([(10, 3)]))
    await store.form_ids.put_many([(10, 5), (12, 6)])
    assert (await store.form_ids.get(10), await store.form_ids.get(12)) == (5, 6)
    await store.db.execute("PRAGMA query_only = ON")
    try:
        await store.form_ids.put_many([])  # no transaction: nothing to fail
        await store.form_ids.put_many(iter(()))
    finally:
        await store.db.execute("PRAGMA query_only = OFF")
