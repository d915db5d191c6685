"""The webhook listener: the aiohttp routes Fonzip POSTs to, plus /healthz and /readyz.

A webhook is answered 200 only once its inbox row is committed. Commits are
grouped: one writer task commits every event that arrived while the previous
commit was running, in one transaction, then answers them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from fonzipd import logs
from fonzipd.config import ListenerSettings
from fonzipd.kinds import WEBHOOK_STATUSES, Kind
from fonzipd.records import Source
from fonzipd.state import InboxEvent, Store, StoreError

log = structlog.get_logger(__name__)
hot_log = logs.HotLogger(__name__)

AUTH_HEADER = "X-FZ-Auth-Token"
_FIELDS = ("id", "webhook_id", "operation", "status")


class PayloadError(ValueError):
    """A webhook body that is not a valid Fonzip notification."""


@dataclasses.dataclass(frozen=True, slots=True)
class Webhook:
    """A validated Fonzip webhook notification."""

    id: int
    webhook_id: int
    operation: int
    status: int

    @property
    def kind(self) -> Kind:
        return Kind.from_operation(self.operation)


def parse_webhook(body: bytes) -> Webhook:
    """Validate a webhook body strictly; PayloadError says what is wrong."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PayloadError(f"body must be a JSON object, got {type(data).__name__}")
    values: dict[str, int] = {}
    problems: list[str] = []
    for name in _FIELDS:
        if name not in data:
            problems.append(f"{name}: missing")
            continue
        value = data[name]
        # bool is an int in Python; JSON true is not a number.
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{name}: must be an integer, got {json.dumps(value)[:40]}")
            continue
        if not 0 <= value < 2**63:
            problems.append(f"{name}: out of range ({value})")
            continue
        values[name] = value
    if "operation" in values and not 1 <= values["operation"] <= 6:
        problems.append(f"operation: must be 1 to 6, got {values['operation']}")
    if "status" in values and values["status"] not in WEBHOOK_STATUSES:
        problems.append(f"status: must be 0, 3, 4 or 5, got {values['status']}")
    if problems:
        raise PayloadError("; ".join(problems))
    # Unknown extra keys are ignored: Fonzip may add fields, and only the detail
    # fetched over the authenticated API is authoritative anyway.
    return Webhook(**values)


class GroupCommitter:
    """Commits inbox events in groups: whatever arrived during the last commit.

    If the committer task dies (a bug: SQLite errors are answered 503 and it goes on),
    the requests of its batch, those queued and those arriving later get 503 at once:
    no webhook waits forever. ``watch`` hands the task to the daemon's supervisor.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int,
        on_commit: Callable[[], None],
        watch: Callable[[asyncio.Task[None]], object] | None = None,
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._watch = watch
        self._queue: asyncio.Queue[tuple[InboxEvent, asyncio.Future[bool]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.committed = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-committer")
        self._task.add_done_callback(self._refuse_queued)
        if self._watch is not None:
            self._watch(self._task)

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        if self._task is None:
            return
        if not self._task.done():
            await self._queue.join()
        self._task.cancel()
        # A committer that died has been reported by the daemon's supervisor already.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._task = None

    async def submit(self, event: InboxEvent) -> bool:
        """Wait until the event is committed; True when it was new, False for a duplicate."""
        if self._task is None or self._task.done():
            raise StoreError("the group committer is not running")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, fut))
        return await fut

    def _refuse_queued(self, _task: asyncio.Task[None]) -> None:
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(StoreError("the group committer is not running"))
            self._queue.task_done()

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                added = await self._store.inbox.add_events([ev for ev, _ in batch])
            except (sqlite3.Error, StoreError) as exc:
                log.error("commit_failed", events=len(batch), error=str(exc))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreError(str(exc)))
            except BaseException:
                # A bug or a cancellation: the batch is answered 503, the task ends.
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreError("the event could not be stored"))
                raise
            else:
                self.commits += 1
                self.committed += len(batch)
                for (_, fut), was_added in zip(batch, added, strict=True):
                    if not fut.done():
                        fut.set_result(was_added)
                self._on_commit()
            finally:
                for _ in batch:
                    self._queue.task_done()


ReadinessProbe = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
WebhookObserver = Callable[[int | None, int | None, str], None]
"""Called once per webhook request with (operation, status, outcome), for metrics."""
DeliverySeen = Callable[[Webhook], Awaitable[None]]
"""Called after an authenticated, valid webhook was answered (``fonzipd webhooks test``)."""

SETTINGS_KEY = web.AppKey("settings", ListenerSettings)
COMMITTER_KEY = web.AppKey("committer", GroupCommitter)
READINESS_KEY: web.AppKey[ReadinessProbe] = web.AppKey("readiness")
OBSERVER_KEY: web.AppKey[WebhookObserver] = web.AppKey("webhook_observer")
SEEN_KEY: web.AppKey[DeliverySeen] = web.AppKey("delivery_seen")


def _observe(request: web.Request, hook: Webhook | None, outcome: str) -> None:
    observer = request.app.get(OBSERVER_KEY)
    if observer is not None:
        observer(
            None if hook is None else hook.operation, None if hook is None else hook.status, outcome
        )


async def _seen(request: web.Request, hook: Webhook) -> None:
    seen = request.app.get(SEEN_KEY)
    if seen is not None:
        await seen(hook)


_ACCEPTED = json.dumps({"result": "ok", "duplicate": False}).encode()
_DUPLICATE = json.dumps({"result": "ok", "duplicate": True}).encode()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def handle_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    token = settings.auth_token
    if token is not None:
        given = request.headers.get(AUTH_HEADER)
        expected = token.get_secret_value().encode()
        if given is None or not hmac.compare_digest(given.encode(), expected):
            log.warning(
                "webhook_rejected",
                reason="missing token" if given is None else "wrong token",
                remote=request.remote,
            )
            _observe(request, None, "unauthorized")
            return _error(401, f"missing or wrong {AUTH_HEADER} header")
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        _observe(request, None, "too_large")
        return _error(413, f"body larger than {settings.max_body_bytes} bytes")
    if request.content_type != "application/json":
        _observe(request, None, "unsupported_media_type")
        return _error(415, f"Content-Type must be application/json, got {request.content_type!r}")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        _observe(request, None, "too_large")
        return _error(413, f"body larger than {settings.max_body_bytes} bytes")
    try:
        hook = parse_webhook(body)
    except PayloadError as exc:
        log.warning("webhook_rejected", reason=str(exc), remote=request.remote)
        _observe(request, None, "invalid")
        return _error(422, str(exc))
    fields = {
        "kind": str(hook.kind),
        "fonzip_id": hook.id,
        "status": hook.status,
        "webhook_id": hook.webhook_id,
    }
    if hook.id == 0:
        # Fonzip's test deliveries (PATCH /webhook/{id}) carry id 0: nothing to fetch.
        log.info("webhook_test_received", **fields)
        _observe(request, hook, "test")
        await _seen(request, hook)
        return web.json_response({"result": "ok", "test": True})
    event = InboxEvent(
        kind=hook.kind, fonzip_id=hook.id, event_status=hook.status, source=Source.WEBHOOK
    )
    try:
        added = await request.app[COMMITTER_KEY].submit(event)
    except StoreError:
        # Never 200 without a committed row: Fonzip retries a non-2xx answer.
        log.error("webhook_not_stored", **fields)
        _observe(request, hook, "not_stored")
        return _error(503, "the event could not be stored; please retry")
    hot_log.get().info("webhook_accepted", duplicate=not added, **fields)
    _observe(request, hook, "accepted" if added else "duplicate")
    await _seen(request, hook)
    # The hot path: a ready-made body rather than a json.dumps per request.
    return web.Response(body=_ACCEPTED if added else _DUPLICATE, content_type="application/json")


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def handle_readyz(request: web.Request) -> web.Response:
    ok, details = await request.app[READINESS_KEY]()
    return web.json_response(
        {"status": "ready" if ok else "not ready", **details}, status=200 if ok else 503
    )


def build_app(
    settings: ListenerSettings,
    committer: GroupCommitter,
    readiness: ReadinessProbe,
    *,
    extra_routes: list[web.RouteDef] | None = None,
    observer: WebhookObserver | None = None,
    seen: DeliverySeen | None = None,
) -> web.Application:
    """The listener's aiohttp application.

    ``observer`` counts every webhook request by outcome; ``seen`` hears of every
    authenticated, valid one once it is answered.
    """
    # client_max_size bounds what aiohttp reads even without a Content-Length.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS_KEY] = settings
    app[COMMITTER_KEY] = committer
    app[READINESS_KEY] = readiness
    if observer is not None:
        app[OBSERVER_KEY] = observer
    if seen is not None:
        app[SEEN_KEY] = seen
    app.router.add_post(settings.path, handle_webhook)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    if extra_routes:
        app.router.add_routes(extra_routes)

    async def committer_ctx(app: web.Application) -> AsyncIterator[None]:
        app[COMMITTER_KEY].start()
        yield
        await app[COMMITTER_KEY].stop()

    app.cleanup_ctx.append(committer_ctx)
    return app
