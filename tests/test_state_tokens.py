"""Tests of fonzipd.state.tokens: the token table as a TokenStore."""

from __future__ import annotations

import datetime as dt

from fonzipd.fonzip.token import StoredToken
from fonzipd.state import Store


async def test_token_store_protocol(store: Store) -> None:
    token = StoredToken(
        access_token="tok-1", expires_at=dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
    )
    assert await store.tokens.load("k") is None
    await store.tokens.save("k", token)
    assert await store.tokens.load("k") == token
    await store.tokens.discard("k", "another-token")
    assert await store.tokens.load("k") == token
    await store.tokens.discard("k", "tok-1")
    assert await store.tokens.load("k") is None
