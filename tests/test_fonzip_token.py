"""The token store and lifecycle: reuse across restarts, no early renewal, 409 waits."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import stat
from pathlib import Path

import pytest
import structlog

from fonzipd.fonzip.errors import FonzipTokenLocked, FonzipUnauthorized
from fonzipd.fonzip.token import (
    FileTokenStore,
    MemoryTokenStore,
    StoredToken,
    TokenManager,
    token_key,
)
from tests.support import VirtualClock

START = dt.datetime(2024, 5, 6, 9, 0, tzinfo=dt.UTC)


class FakeFonzipTokens:
    """POST /token as Fonzip does it: one live token per key, 409 while it lives."""

    def __init__(self, clock: VirtualClock, lifetime: float = 3600) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.live: StoredToken | None = None
        self.calls = 0
        self.conflicts = 0
        self.bad_credentials = False

    async def issue(self) -> StoredToken | None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.bad_credentials:
            raise FonzipUnauthorized("POST /token", "bad credentials", status=401)
        now = self.clock.now()
        if self.live is not None and now < self.live.expires_at:
            self.conflicts += 1
            return None
        self.live = StoredToken(
            f"tok{self.calls}", expires_at=now + dt.timedelta(seconds=self.lifetime)
        )
        return self.live


def manager(
    clock: VirtualClock, fonzip: FakeFonzipTokens, store: object, **kw: object
) -> TokenManager:
    return TokenManager(
        key="k" * 32,
        store=store,  # type: ignore[arg-type]
        issue=fonzip.issue,
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


def test_key_hides_the_secret_and_ignores_a_trailing_slash() -> None:
    a = token_key("https://fonzip.com/api/v2", "id1")
    assert a == token_key("https://fonzip.com/api/v2/", "id1")
    assert len(a) == 32
    assert a != token_key("https://fonzip.com/api/v2", "id2")


def test_stored_token_needs_aware_expiry_and_hides_itself() -> None:
    with pytest.raises(ValueError, match="aware"):
        StoredToken("t", dt.datetime(2024, 1, 1))
    assert "secret-token" not in repr(StoredToken("secret-token", START))


async def test_file_store_round_trip_mode_and_discard_only_same_token(tmp_path: Path) -> None:
    path = tmp_path / "state" / "token.json"
    store = FileTokenStore(path)
    token = StoredToken("abc", START + dt.timedelta(hours=1))
    await store.save("key1", token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert await FileTokenStore(path).load("key1") == token
    await store.discard("key1", "other")
    assert await store.load("key1") == token
    await store.discard("key1", "abc")
    assert await store.load("key1") is None


async def test_file_store_prunes_expired_and_survives_corruption(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    store = FileTokenStore(path)
    await store.save("old", StoredToken("x", dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))
    await store.save("new", StoredToken("y", dt.datetime(2999, 1, 1, tzinfo=dt.UTC)))
    assert set(json.loads(path.read_text())["tokens"]) == {"new"}
    path.write_text("{not json")
    with structlog.testing.capture_logs() as logs:
        assert await store.load("new") is None
    assert logs[0]["event"] == "token_store_corrupt"
    await store.save("new", StoredToken("z", dt.datetime(2999, 1, 1, tzinfo=dt.UTC)))
    assert (await store.load("new")) is not None


async def test_token_is_reused_until_expiry_then_renewed_without_early_request() -> None:
    clock = VirtualClock(START)
    fonzip = FakeFonzipTokens(clock)
    store = MemoryTokenStore()
    tokens = manager(clock, fonzip, store)
    first = await clock.run(tokens.get())
    assert fonzip.calls == 1
    await clock.run(clock.sleep(3500))
    assert await clock.run(tokens.get()) == first  # still valid: no /token call
    assert fonzip.calls == 1
    await clock.run(clock.sleep(95))  # 5 s before expiry: inside the 10 s skew
    # Asking now gets 409 (Fonzip's token still lives): the stored one serves to its end.
    assert await clock.run(tokens.get()) == first
    assert await clock.run(tokens.get()) == first
    assert (fonzip.calls, fonzip.conflicts) == (2, 1)
    await clock.run(clock.sleep(5))
    with structlog.testing.capture_logs() as logs:
        second = await clock.run(tokens.get())
    assert second != first
    assert fonzip.calls == 3
    assert store.tokens["k" * 32].access_token == second
    assert "token_locked" not in [e["event"] for e in logs]


async def test_a_409_while_holding_a_token_keeps_it_until_fonzip_answers_401() -> None:
    # Expired by our clock, not by Fonzip's (Fonzip's clock lags, or ours stepped
    # forward): Fonzip refuses a new token, so the held one is still good.
    clock = VirtualClock(START)
    fonzip = FakeFonzipTokens(clock)
    tokens = manager(clock, fonzip, MemoryTokenStore())
    first = await clock.run(tokens.get())
    assert fonzip.live is not None
    fonzip.live = StoredToken(first, fonzip.live.expires_at + dt.timedelta(seconds=12))
    await clock.run(clock.sleep(3600))
    with structlog.testing.capture_logs() as logs:
        kept = await clock.run(tokens.get())
    assert kept == first
    assert clock.t == 3600, "no waiting"
    assert "token_locked" not in [e["event"] for e in logs]
    # When Fonzip ends it (401), the next request gets a new token at once.
    await clock.run(clock.sleep(12))
    await tokens.invalidate(first)
    second = await clock.run(tokens.get())
    assert second != first
    assert clock.t == 3612


async def test_a_clock_step_forward_does_not_stall_calls_for_an_hour() -> None:
    clock = VirtualClock(START)
    fonzip = FakeFonzipTokens(clock)
    tokens = manager(clock, fonzip, MemoryTokenStore())
    first = await clock.run(tokens.get())
    assert fonzip.live is not None
    live = fonzip.live
    await clock.run(clock.sleep(600))
    # Our wall clock jumps two hours ahead; Fonzip's token has 50 minutes left.
    fonzip.live = StoredToken(live.access_token, live.expires_at + dt.timedelta(hours=2))
    clock_jump = dt.timedelta(hours=2).total_seconds()
    await clock.run(clock.sleep(clock_jump))
    assert await clock.run(tokens.get()) == first
    assert clock.t == 600 + clock_jump


async def test_a_restart_reuses_the_stored_token() -> None:
    clock = VirtualClock(START)
    fonzip = FakeFonzipTokens(clock)
    store = MemoryTokenStore()
    first = await clock.run(manager(clock, fonzip, store).get())
    second = await clock.run(manager(clock, fonzip, store).get())  # a new process
    assert first == second
    assert fonzip.calls == 1


async def test_concurrent_callers_share_one_token_request() -> None:
    clock = VirtualClock(START)
    fonzip = FakeFonzipTokens(clock)
    tokens = manager(clock, fonzip, MemoryTokenStore())
    got = await clock.run(asyncio.gather(*(tokens.get() for _ in range(20))))
    assert len(set(got)) == 1
    assert fonzip.calls == 1


async def test_lost_token_waits_out_the_409_and_logs_guidance_once() -> None:
    clock = VirtualClock(START)
    fonzip = FakeFonzipTokens(clock)
    fonzip.live = StoredToken("held-elsewhere", START + dt.timedelta(minutes=20))
    tokens = manager(clock, fonzip, MemoryTokenStore())
    with structlog.testing.capture_logs() as logs:
        token = await clock.run(tokens.get())
    assert token != "held-elsewhere"
    assert 20 * 60 <= clock.t <= 20 * 60 + 30
    locked = [e for e in logs if e["event"] == "token_locked"]
    assert len(locked) == 1
    assert "FONZIPD_FONZIP__ACCESS_TOKEN" in locked[0]["end_early"]
    assert "second API key" in locked[0]["end_early"]
    assert fonzip.calls == 2 + 20 * 60 // 30 - 1


async def test_409_uses_a_token_another_process_just_stored() -> None:
    clock = VirtualClock(START)
    fonzip = FakeFonzipTokens(clock)
    store = MemoryTokenStore()
    other = StoredToken("from-the-cli", START + dt.timedelta(minutes=30))
    fonzip.live = other

    async def other_process_saves_first() -> StoredToken | None:
        await store.save("k" * 32, other)
        return await fonzip.issue()

    tokens = TokenManager(key="k" * 32, store=store, issue=other_process_saves_first, clock=clock)
    assert await clock.run(tokens.get()) == "from-the-cli"
    assert clock.t == 0


async def test_a_wait_deadline_raises_token_locked_with_guidance() -> None:
    clock = VirtualClock(START)
    fonzip = FakeFonzipTokens(clock)
    fonzip.live = StoredToken("held-elsewhere", START + dt.timedelta(minutes=50))
    tokens = manager(clock, fonzip, MemoryTokenStore())
    with pytest.raises(FonzipTokenLocked, match="FONZIPD_FONZIP__ACCESS_TOKEN") as info:
        await clock.run(tokens.get(wait=90))
    assert info.value.status == 409
    assert clock.t == 90
    await tokens.aclose()


async def test_bad_credentials_are_not_retried() -> None:
    clock = VirtualClock(START)
    fonzip = FakeFonzipTokens(clock)
    fonzip.bad_credentials = True
    tokens = manager(clock, fonzip, MemoryTokenStore())
    with pytest.raises(FonzipUnauthorized):
        await clock.run(tokens.get())
    assert fonzip.calls == 1


async def test_invalidate_drops_memory_and_store_then_fetches_anew() -> None:
    clock = VirtualClock(START)
    fonzip = FakeFonzipTokens(clock)
    store = MemoryTokenStore()
    tokens = manager(clock, fonzip, store)
    first = await clock.run(tokens.get())
    fonzip.live = None  # Fonzip revoked it: the next call got 401
    await tokens.invalidate(first)
    assert store.tokens == {}
    second = await clock.run(tokens.get())
    assert second != first
    assert fonzip.calls == 2


async def test_fixed_token_skips_the_flow() -> None:
    clock = VirtualClock(START)
    fonzip = FakeFonzipTokens(clock)
    tokens = manager(clock, fonzip, MemoryTokenStore(), fixed_token="fixed")
    assert await tokens.get() == "fixed"
    await tokens.invalidate("fixed")
    assert await tokens.get() == "fixed"
    assert fonzip.calls == 0
    assert tokens.fixed
