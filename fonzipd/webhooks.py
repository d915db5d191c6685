"""Fonzip webhook management for ``fonzipd webhooks``: register, list, test, delete.

Also the daemon's side of ``test``: a log, in the state database, of when a delivery
from each Fonzip webhook last reached the listener, which the command waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import re
import socket
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import structlog

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import Settings
from fonzipd.fonzip.client import FonzipClient
from fonzipd.listener import Webhook
from fonzipd.state import Store, StoreError

log = structlog.get_logger(__name__)

SEEN_META_PREFIX = "webhook_seen:"
SEEN_THROTTLE = 10.0
"""Seconds during which further real deliveries of one webhook are not written down."""


class WebhookError(Exception):
    """A webhooks command cannot do what was asked; the message says why."""


def webhook_name(host: str | None = None) -> str:
    """A safe, recognisable webhook name: ``fonzipd-<host>``.

    Fonzip answered 500 to parentheses in names; letters, digits, ``-`` and ``_``
    are safe, so everything else in the host name becomes ``-``.
    """
    raw = host if host is not None else socket.gethostname()
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-_")[:80] or "host"
    return f"fonzipd-{cleaned}"


@dataclasses.dataclass(frozen=True, slots=True)
class Registration:
    """The outcome of ``register``: the webhook and whether it was created now."""

    webhook: dict[str, Any]
    created: bool


async def register(
    client: FonzipClient, url: str, auth_token: str, *, name: str | None = None
) -> Registration:
    """Create the webhook for ``url`` (all six events, with the auth token) unless one exists.

    Idempotent by URL: a webhook already delivering to ``url`` is returned as it is
    (Fonzip's list does not show its token; delete and register again to change it).
    Names must be unique per account, so a taken name gets a numeric suffix.
    """
    if not url.startswith("https://"):
        log.warning("webhook_url_not_https", url=url)
    hooks = await client.list_webhooks()
    same = [h for h in hooks if h.get("url") == url]
    if same:
        return Registration(min(same, key=lambda h: int(h["id"])), created=False)
    base = name or webhook_name()
    taken = {str(h.get("name")) for h in hooks}
    chosen, n = base, 2
    while chosen in taken:
        chosen, n = f"{base}-{n}", n + 1
    hook = await client.create_webhook(chosen, url, auth_token)
    log.info("webhook_registered", webhook_id=hook.get("id"), name=chosen, url=url)
    return Registration(hook, created=True)


async def find(
    client: FonzipClient, *, webhook_id: int | None = None, url: str | None = None
) -> dict[str, Any]:
    """The one webhook with this id or URL; with neither, the account's only webhook."""
    hooks = await client.list_webhooks()
    if webhook_id is not None:
        match = [h for h in hooks if h.get("id") == webhook_id]
        what = f"id {webhook_id}"
    elif url is not None:
        match = [h for h in hooks if h.get("url") == url]
        what = f"url {url}"
    else:
        match, what = hooks, "the account"
        if len(hooks) > 1:
            raise WebhookError(
                f"the account has {len(hooks)} webhooks: choose one with --id or --url"
            )
    if not match:
        raise WebhookError(f"no webhook with {what} (see `fonzipd webhooks list`)")
    return min(match, key=lambda h: int(h["id"]))


class DeliveryLog:
    """Writes down, in the state database, when a delivery of each webhook arrived.

    Test deliveries (``id`` 0) are always written; real ones at most once per
    ``throttle`` seconds per webhook, so that a busy listener does not pay a write
    per request. Failures are logged, never raised: this is diagnostics only.
    """

    def __init__(
        self, store: Store, *, clock: Clock = SYSTEM_CLOCK, throttle: float = SEEN_THROTTLE
    ) -> None:
        self._store = store
        self._clock = clock
        self._throttle = throttle
        self._written: dict[int, float] = {}

    async def seen(self, hook: Webhook) -> None:
        """Note that a delivery of ``hook.webhook_id`` arrived now."""
        now = self._clock.monotonic()
        last = self._written.get(hook.webhook_id)
        if hook.id != 0 and last is not None and now - last < self._throttle:
            return
        self._written[hook.webhook_id] = now
        try:
            await self._store.meta.set(
                f"{SEEN_META_PREFIX}{hook.webhook_id}", self._clock.now().isoformat()
            )
        except (sqlite3.Error, StoreError) as exc:
            log.warning("webhook_seen_not_recorded", webhook_id=hook.webhook_id, error=str(exc))


async def last_seen(store: Store, webhook_id: int) -> dt.datetime | None:
    """When a delivery of ``webhook_id`` last reached the daemon (as DeliveryLog wrote it)."""
    value = await store.meta.get(f"{SEEN_META_PREFIX}{webhook_id}")
    return None if value is None else dt.datetime.fromisoformat(value)


async def send_test(
    client: FonzipClient,
    store: Store,
    webhook_id: int,
    *,
    timeout: float = 30.0,
    poll: float = 0.25,
    clock: Clock = SYSTEM_CLOCK,
) -> dt.timedelta:
    """Ask Fonzip for a test delivery and wait until the running daemon has received it.

    Returns how long the delivery took. The reference leaves open whether test
    deliveries carry ``id`` 0 (assumed, as in Fonzip's help page) or a real-looking
    payload; both are recorded by DeliveryLog, the latter throttled, so a delivery of
    this webhook seen up to ``SEEN_THROTTLE`` s before the request also counts.
    """
    requested = clock.now()
    not_before = requested - dt.timedelta(seconds=SEEN_THROTTLE)
    await client.test_webhook(webhook_id)
    deadline = clock.monotonic() + timeout
    while True:
        seen = await last_seen(store, webhook_id)
        if seen is not None and seen >= not_before:
            return max(dt.timedelta(0), seen - requested)
        if clock.monotonic() >= deadline:
            raise WebhookError(
                f"Fonzip accepted the test request, but no delivery of webhook {webhook_id} "
                f"reached the daemon within {timeout:g} s: check the URL, the reverse proxy "
                "and TLS, and the daemon's log (webhook_rejected means a wrong auth token)"
            )
        await asyncio.sleep(poll)


@contextlib.asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[tuple[Store, FonzipClient]]:
    """The state database and a Fonzip client that shares the daemon's stored token.

    Fonzip grants one live token per API key, so commands must reuse the daemon's
    (kept in the state database) rather than ask for their own.
    """
    store = await Store.open(settings.state.path)
    try:
        async with FonzipClient(
            settings.fonzip, token_store=store.tokens, form_ids=store.form_ids, token_wait=60.0
        ) as client:
            yield store, client
    finally:
        await store.close()
