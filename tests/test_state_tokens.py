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


async def test_tokens_are_kept_per_key_and_replaced(store: Store) -> None:
    first = StoredToken(access_token="tok-1", expires_at=dt.datetime(2026, 11, 27, tzinfo=dt.UTC))
    second = StoredToken(
        access_token="tok-2", expires_at=dt.datetime(2026, 11, 28, 9, 30, 15, tzinfo=dt.UTC)
    )
    await store.tokens.save("account-a", first)
    await store.tokens.save("account-b", first)
    await store.tokens.save("account-a", second)
    assert await store.tokens.load("account-a") == second
    assert await store.tokens.load("account-b") == first
    await store.tokens.discard("account-b", "tok-1")
    assert await store.tokens.load("account-a") == second
