"""The rate limiter every Fonzip call of the process goes through, live work first."""

from __future__ import annotations

import asyncio
import collections
import enum
import math

from fonzipd.clock import SYSTEM_CLOCK, Clock

WINDOW = 60.0
"""Fonzip counts requests per minute."""
_EPSILON = 1e-6
"""Waits shorter than this are rounding noise of the bucket arithmetic: waiting them
could spin forever on a clock whose time does not move by so little."""


class Priority(enum.IntEnum):
    """Who waits for whom: a lower value is always served first."""

    LIVE = 0
    """Detail fetches for webhooks, and the token request they need."""
    BULK = 1
    """Reconcile, backfill and CLI listing."""


class RateLimiter:
    """Spaces requests so that no 60-second window holds more than ``per_minute`` of them.

    A token bucket (``burst`` tokens, refilled at ``per_minute / 60`` per second) keeps
    the flow smooth; a log of the last minute's send times is the hard cap, so the
    burst can never push a window over the limit. Waiters are served strictly by
    priority (every LIVE waiter before any BULK waiter), first come first served
    within a priority. ``pause`` stops everyone, e.g. after a 429.

    One instance is shared by all calls of the process; it must be used from one
    event loop.
    """

    def __init__(
        self, per_minute: float, *, clock: Clock = SYSTEM_CLOCK, burst: int | None = None
    ) -> None:
        if per_minute <= 0:
            raise ValueError(f"per_minute must be positive, got {per_minute!r}")
        if burst is not None and burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.per_minute = per_minute
        self._clock = clock
        self._interval = WINDOW / per_minute
        self._cap = max(1, math.floor(per_minute))
        self._burst = burst if burst is not None else max(1, min(4, math.floor(per_minute / 60)))
        self._tokens = float(self._burst)
        self._refilled_at = clock.monotonic()
        self._paused_until = -math.inf
        self._log: collections.deque[float] = collections.deque()
        self._waiters: dict[Priority, collections.deque[asyncio.Future[None]]] = {
            p: collections.deque() for p in Priority
        }
        self._pump: asyncio.Task[None] | None = None
        self.sent = 0
        """Requests let through since the start."""
        self.sent_by_priority: dict[Priority, int] = dict.fromkeys(Priority, 0)
        """Requests let through since the start, per priority."""

    async def acquire(self, priority: Priority) -> None:
        """Wait until this caller may send one request."""
        if not any(self._waiters.values()) and self._delay() <= _EPSILON:
            self._grant(priority)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[priority].append(fut)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run())
        # A cancelled waiter leaves a cancelled future behind; the pump skips it.
        await fut

    def pause(self, seconds: float) -> None:
        """Let nobody send for ``seconds`` from now (extends, never shortens, a pause)."""
        self._paused_until = max(self._paused_until, self._clock.monotonic() + max(0.0, seconds))

    @property
    def paused_for(self) -> float:
        """Seconds left of the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock.monotonic())

    def sent_last_minute(self) -> int:
        """Requests let through in the last 60 seconds (for metrics)."""
        self._evict(self._clock.monotonic())
        return len(self._log)

    @property
    def waiting(self) -> dict[Priority, int]:
        """Callers waiting now, per priority."""
        return {p: sum(1 for f in q if not f.done()) for p, q in self._waiters.items()}

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._refilled_at)
        self._tokens = min(float(self._burst), self._tokens + elapsed / self._interval)
        self._refilled_at = now

    def _evict(self, now: float) -> None:
        while self._log and self._log[0] <= now - WINDOW:
            self._log.popleft()

    def _delay(self) -> float:
        now = self._clock.monotonic()
        self._refill(now)
        self._evict(now)
        delay = self._paused_until - now
        if self._tokens < 1:
            delay = max(delay, (1 - self._tokens) * self._interval)
        if len(self._log) >= self._cap:
            delay = max(delay, self._log[0] + WINDOW - now)
        return delay

    def _grant(self, priority: Priority) -> None:
        now = self._clock.monotonic()
        self._tokens = max(0.0, self._tokens - 1)
        self._log.append(now)
        self.sent += 1
        self.sent_by_priority[priority] += 1

    def _next_waiter(self) -> tuple[Priority, asyncio.Future[None]] | None:
        for priority in Priority:
            queue = self._waiters[priority]
            while queue and queue[0].done():
                queue.popleft()
            if queue:
                return priority, queue[0]
        return None

    async def _run(self) -> None:
        while True:
            head = self._next_waiter()
            if head is None:
                return
            delay = self._delay()
            if delay > _EPSILON:
                # The head is chosen again after the wait, so a LIVE caller that
                # arrives meanwhile still goes first.
                await self._clock.sleep(delay)
                continue
            priority, fut = head
            self._waiters[priority].popleft()
            self._grant(priority)
            fut.set_result(None)
