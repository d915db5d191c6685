"""The webhook sender: POSTs Fonzip notifications, 3 tries, then gives up."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import aiohttp
import structlog

from fonzipd.clock import Clock

__all__ = ["Delivery", "Sender"]

log = structlog.get_logger(__name__)

ATTEMPTS = 3
"""Fonzip's help page: it tries 3 times and never again."""


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery attempt (or one dropped notification, ``dropped=True``, attempt 0)."""

    payload: dict[str, Any]
    url: str
    attempt: int
    status: int | None
    """The HTTP status the receiver answered, or None on an error or a drop."""
    error: str | None
    at: dt.datetime
    dropped: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> dict[str, Any]:
        return {
            "payload": self.payload,
            "url": self.url,
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
            "at": self.at.isoformat(),
            "dropped": self.dropped,
        }


class Sender:
    """Sends notifications in background tasks and logs every attempt in ``deliveries``.

    An attempt fails on a non-2xx answer, a connection error or a timeout (``timeout``
    seconds). Attempts are ``retry_delays`` apart (1 s, then 2 s by default; Fonzip does
    not document its gaps); after the third failed attempt the notification is abandoned.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        retry_delays: Sequence[float] = (1.0, 2.0),
        timeout: float = 5.0,
    ) -> None:
        self._clock = clock
        self.retry_delays = tuple(retry_delays)
        self.timeout = timeout
        self.deliveries: list[Delivery] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def send(self, url: str, token: str | None, payload: dict[str, Any], *, drop: bool) -> None:
        """Start delivering ``payload`` to ``url`` (or log it as dropped) in the background."""
        if drop:
            self.deliveries.append(
                Delivery(payload, url, 0, None, "dropped by fault", self._clock.now(), True)
            )
            log.info("webhook_dropped", url=url, **payload)
            return
        task = asyncio.get_running_loop().create_task(self._deliver(url, token, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        """Return once every delivery started so far has succeeded or given up."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _deliver(self, url: str, token: str | None, payload: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "Fonzip-Webhook-Sim/1"}
        if token is not None:
            headers["X-FZ-Auth-Token"] = token
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        for attempt in range(1, ATTEMPTS + 1):
            status: int | None = None
            error: str | None = None
            try:
                async with self._session.post(
                    url,
                    json=payload,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as response:
                    await response.read()
                    status = response.status
                    if not 200 <= status < 300:
                        error = f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.deliveries.append(
                Delivery(payload, url, attempt, status, error, self._clock.now())
            )
            if error is None:
                log.info("webhook_delivered", url=url, attempt=attempt, **payload)
                return
            log.info("webhook_attempt_failed", url=url, attempt=attempt, error=error, **payload)
            if attempt == ATTEMPTS:
                break
            if self.retry_delays:
                await self._clock.sleep(self.retry_delays[min(attempt, len(self.retry_delays)) - 1])
        log.warning("webhook_abandoned", url=url, attempts=ATTEMPTS, **payload)

    async def close(self) -> None:
        """Cancel pending deliveries and close the HTTP session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
