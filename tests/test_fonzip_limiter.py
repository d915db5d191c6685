"""The shared rate limiter: the per-minute cap, smooth spacing, LIVE before BULK, pauses."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from fonzipd.fonzip.limiter import Priority, RateLimiter
from tests.support import VirtualClock


async def test_no_minute_window_exceeds_the_limit_and_sends_are_spaced() -> None:
    clock = VirtualClock(horizon=3600)
    limiter = RateLimiter(240, clock=clock, burst=4)
    times: list[float] = []

    async def caller() -> None:
        for _ in range(100):
            await limiter.acquire(Priority.BULK)
            times.append(clock.monotonic())

    await clock.run(asyncio.gather(*(caller() for _ in range(10))))
    assert len(times) == 1000
    # The hard cap: any 60-second window [t, t+60) holds at most 240 sends.
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t < start + 60)
        assert in_window <= 240
    # Smooth: the long-run rate is the limit, and past the first burst sends are spaced.
    # 4 at once, then one every 0.25 s: 240/minute, not slower.
    assert times[-1] == pytest.approx(996 * 0.25, abs=1)
    gaps = [b - a for a, b in itertools.pairwise(times[4:240])]
    assert min(gaps) >= 0.25 - 1e-9
    assert limiter.sent == 1000


async def test_sent_last_minute_counts_a_sliding_minute() -> None:
    clock = VirtualClock(horizon=3600)
    limiter = RateLimiter(120, clock=clock, burst=2)

    async def send(n: int) -> None:
        for _ in range(n):
            await limiter.acquire(Priority.LIVE)

    await clock.run(send(30))
    assert limiter.sent_last_minute() == 30
    await clock.run(clock.sleep(61))
    assert limiter.sent_last_minute() == 0
    assert limiter.sent == 30


async def test_live_waiters_are_served_before_bulk_waiters() -> None:
    clock = VirtualClock(horizon=3600)
    limiter = RateLimiter(60, clock=clock, burst=1)
    order: list[str] = []
    await limiter.acquire(Priority.BULK)  # uses the only token: everyone else queues

    async def one(name: str, priority: Priority) -> None:
        await limiter.acquire(priority)
        order.append(name)

    async def scenario() -> None:
        bulk = [asyncio.create_task(one(f"bulk{i}", Priority.BULK)) for i in range(3)]
        await asyncio.sleep(0)
        live = [asyncio.create_task(one(f"live{i}", Priority.LIVE)) for i in range(2)]
        await asyncio.gather(*bulk, *live)

    await clock.run(scenario())
    assert order == ["live0", "live1", "bulk0", "bulk1", "bulk2"]
    assert limiter.sent_by_priority == {Priority.LIVE: 2, Priority.BULK: 4}


async def test_live_caller_arriving_during_a_wait_overtakes_queued_bulk() -> None:
    clock = VirtualClock(horizon=3600)
    limiter = RateLimiter(60, clock=clock, burst=1)
    order: list[str] = []
    await limiter.acquire(Priority.BULK)

    async def one(name: str, priority: Priority) -> None:
        await limiter.acquire(priority)
        order.append(name)

    async def scenario() -> None:
        bulk = [asyncio.create_task(one(f"bulk{i}", Priority.BULK)) for i in range(2)]
        await clock.sleep(0.5)  # the limiter is waiting for its next token (1 s)
        live = asyncio.create_task(one("live", Priority.LIVE))
        await asyncio.gather(*bulk, live)

    await clock.run(scenario())
    assert order == ["live", "bulk0", "bulk1"]


async def test_pause_stops_everyone_until_it_ends() -> None:
    clock = VirtualClock(horizon=3600)
    limiter = RateLimiter(6000, clock=clock, burst=10)
    limiter.pause(30)
    limiter.pause(5)  # a shorter pause does not shorten the current one
    assert limiter.paused_for == 30

    async def send() -> float:
        await limiter.acquire(Priority.LIVE)
        return clock.monotonic()

    assert await clock.run(send()) == 30
    assert limiter.paused_for == 0


async def test_cancelled_waiter_does_not_block_the_queue() -> None:
    clock = VirtualClock(horizon=3600)
    limiter = RateLimiter(60, clock=clock, burst=1)
    await limiter.acquire(Priority.LIVE)

    async def scenario() -> float:
        doomed = asyncio.create_task(limiter.acquire(Priority.LIVE))
        await asyncio.sleep(0)
        doomed.cancel()
        await limiter.acquire(Priority.BULK)
        return clock.monotonic()

    assert await clock.run(scenario()) == pytest.approx(1.0)
    assert limiter.waiting == {Priority.LIVE: 0, Priority.BULK: 0}


async def test_rounding_noise_of_the_bucket_never_stalls_virtual_time() -> None:
    # 228/minute makes the refill interval a float that does not sum exactly; a wait
    # of 1e-17 s would leave a virtual clock (and a real one, for a while) spinning.
    clock = VirtualClock(horizon=3600)
    limiter = RateLimiter(228, clock=clock, burst=3)

    async def send() -> None:
        for _ in range(300):
            await limiter.acquire(Priority.LIVE)

    await clock.run(send())
    assert limiter.sent == 300
    assert clock.t == pytest.approx(297 * 60 / 228, abs=0.5)


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="per_minute"):
        RateLimiter(0)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(10, burst=0)
