"""Tests of fonzipd.state.form_ids: the form-id table as a FormIdCache."""

from __future__ import annotations

from fonzipd.state import Store


async def test_form_id_cache(store: Store) -> None:
    await store.form_ids.put_many([(10, 3), (11, 4)])
    assert await store.form_ids.get(10) == 3
    assert await store.form_ids.get(12) is None
