"""The webhook listener: the aiohttp routes Fonzip POSTs to, plus /healthz and /readyz.

A webhook is answered 200 only once its inbox row is committed. Commits are
grouped: one writer task commits every event that arrived while the previous
commit was running, in one transaction, then answers them all.

The listener faces the internet, so every client is bounded: a connection gets
``header_timeout`` seconds to send its request's headers (ConnectionGuard, in front
of aiohttp's protocol), ``body_timeout`` for the body, ``keepalive_timeout`` idle;
at most ``max_connections`` are open. Rejections are counted and logged at most once
per reason per minute (RejectionLog), so a flood of bad requests is not a flood of
log lines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hmac
import json
import logging
import resource
import sqlite3
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.hdrs import CONTENT_TYPE

from fonzipd import logs
from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import ListenerSettings
from fonzipd.kinds import WEBHOOK_STATUSES, Kind
from fonzipd.records import Source
from fonzipd.state import InboxEvent, Store, StoreError

log = structlog.get_logger(__name__)
hot_log = logs.HotLogger(__name__)

AUTH_HEADER = "X-FZ-Auth-Token"
_FIELDS = ("id", "webhook_id", "operation", "status")


_DECODER = json.JSONDecoder()


class PayloadError(ValueError):
    """A webhook body that is not a valid Fonzip notification."""


# Not frozen: a frozen dataclass's __init__ costs four times a plain one's, once per
# webhook, and nothing keeps a Webhook past its request.
@dataclasses.dataclass(slots=True)
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
        # UTF-8 only (RFC 8259 8.1), decoded here: json.loads(bytes) first guesses among
        # UTF-8, -16 and -32 in Python, which doubled the cost of the parse.
        data = _DECODER.decode(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # json's C scanner recurses per nesting level; a notification is flat.
        raise PayloadError("body is nested too deeply") from None
    if not isinstance(data, dict):
        raise PayloadError(f"body must be a JSON object, got {type(data).__name__}")
    # The common case first, in a few tests: a notification that is valid as it is.
    # json gives int (never a subclass) for a number and bool for true/false, so
    # ``type(v) is int`` is the check below; anything else takes the long way, which
    # says what is wrong.
    try:
        fid, webhook_id, operation, status = (
            data["id"],
            data["webhook_id"],
            data["operation"],
            data["status"],
        )
    except KeyError:
        pass
    else:
        if (
            type(fid) is int
            and type(webhook_id) is int
            and type(operation) is int
            and type(status) is int
            and 0 <= fid < 2**63
            and 0 <= webhook_id < 2**63
            and 1 <= operation <= 6
            and status in WEBHOOK_STATUSES
        ):
            return Webhook(fid, webhook_id, operation, status)
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
        on_failure: Callable[[str], None] | None = None,
        watch: Callable[[asyncio.Task[None]], object] | None = None,
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._on_failure = on_failure
        self._watch = watch
        # A deque and a future to wake the writer, not an asyncio.Queue: a Queue's
        # put, get and task_done cost more per webhook than the rest of submit.
        self._waiting: collections.deque[tuple[InboxEvent, asyncio.Future[bool]]] = (
            collections.deque()
        )
        self._arrived: asyncio.Future[None] | None = None
        """Set by the next submit while the writer waits with nothing to commit."""
        self._idle = asyncio.Event()
        """Set while nothing waits to be committed and no commit runs (or the writer died)."""
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
            await self._idle.wait()
        self._task.cancel()
        # A committer that died has been reported by the daemon's supervisor already.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._task = None

    async def submit(self, event: InboxEvent) -> bool:
        """Wait until the event is committed; True when it was new, False for a duplicate."""
        task = self._task
        if task is None or task.done():
            raise StoreError("the group committer is not running")
        fut: asyncio.Future[bool] = task.get_loop().create_future()
        self._waiting.append((event, fut))
        arrived = self._arrived
        if arrived is not None:
            self._arrived = None
            self._idle.clear()
            arrived.set_result(None)
        return await fut

    def _refuse_queued(self, _task: asyncio.Task[None]) -> None:
        while self._waiting:
            _, fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(StoreError("the group committer is not running"))
        self._idle.set()

    async def _run(self) -> None:
        waiting = self._waiting
        loop = asyncio.get_running_loop()
        while True:
            if not waiting:
                self._arrived = arrived = loop.create_future()
                self._idle.set()
                await arrived
            batch = [waiting.popleft() for _ in range(min(len(waiting), self._max_batch))]
            try:
                added = await self._store.inbox.add_events([ev for ev, _ in batch])
            except (sqlite3.Error, StoreError) as exc:
                log.error("commit_failed", events=len(batch), error=str(exc))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreError(str(exc)))
                if self._on_failure is not None:
                    self._on_failure(str(exc))
            except BaseException:
                # A bug or a cancellation: the batch is answered 503, the task ends.
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreError("the event could not be stored"))
                raise
            else:
                self.commits += 1
                self.committed += len(batch)
                # One line per commit names every webhook it holds: each acknowledged
                # webhook is findable in the log by its id, and the line costs per group
                # what a line per webhook cost per request (the ingest's largest cost).
                if False in added:
                    names = [f"{ev.kind.value}:{ev.fonzip_id}:{ev.event_status}" for ev, _ in batch]
                    webhooks = [name for name, new in zip(names, added, strict=True) if new]
                    duplicates = [name for name, new in zip(names, added, strict=True) if not new]
                else:  # the usual case, in one pass
                    webhooks = [
                        f"{ev.kind.value}:{ev.fonzip_id}:{ev.event_status}" for ev, _ in batch
                    ]
                    duplicates = []
                hot_log.get().info(
                    "webhooks_committed",
                    events=len(batch),
                    webhooks=webhooks,
                    duplicates=duplicates,
                )
                for (_, fut), was_added in zip(batch, added, strict=True):
                    if not fut.done():
                        fut.set_result(was_added)
                self._on_commit()


REJECTION_LOG_INTERVAL = 60.0
"""Seconds between two log lines about one kind of rejected request."""


class RejectionLog:
    """Rejected requests and closed connections, counted by outcome, logged sparingly.

    The first rejection of an outcome logs a line at once (a wrong token shows up
    in the journal immediately); later ones within ``interval`` seconds are only
    counted, and the next line (or ``flush``) carries how many there were. So an
    unauthenticated flood costs at most a few lines a minute, and the counts stay
    exact in ``totals`` (read by /metrics).
    """

    def __init__(self, *, interval: float = REJECTION_LOG_INTERVAL, clock: Clock = SYSTEM_CLOCK):
        self._interval = interval
        self._clock = clock
        self.totals: collections.Counter[str] = collections.Counter()
        """Every rejection since start, by outcome."""
        self._unlogged: collections.Counter[str] = collections.Counter()
        self._quiet_until: dict[str, float] = {}

    def note(self, outcome: str, reason: str, *, level: int = logging.WARNING) -> None:
        """Count one rejection; log it unless a line about ``outcome`` is recent."""
        self.totals[outcome] += 1
        self._unlogged[outcome] += 1
        if self._clock.monotonic() >= self._quiet_until.get(outcome, float("-inf")):
            self._line(outcome, reason, level)

    def flush(self, *, force: bool = False) -> None:
        """Log the counts that waited out their quiet period (all of them with ``force``)."""
        now = self._clock.monotonic()
        for outcome in sorted(self._unlogged):
            if self._unlogged[outcome] and (
                force or now >= self._quiet_until.get(outcome, float("-inf"))
            ):
                self._line(outcome, None, logging.WARNING)

    async def run(self) -> None:
        """Flush every ``interval`` seconds, until cancelled."""
        while True:
            # Real time, like the daemon's other housekeeping: a test's fake clock
            # would make this loop spin.
            await asyncio.sleep(self._interval)
            self.flush()

    def _line(self, outcome: str, reason: str | None, level: int) -> None:
        count = self._unlogged.pop(outcome)
        self._quiet_until[outcome] = self._clock.monotonic() + self._interval
        fields: dict[str, Any] = {"outcome": outcome, "count": count}
        if reason is not None:
            fields["reason"] = reason[:200]
        if count > 1 or reason is None:
            fields["note"] = f"{count} such since the last line; next line in {self._interval:g} s"
        log.log(level, "webhook_rejected", **fields)


class _AiohttpErrors(logging.Handler):
    """aiohttp's own error lines (malformed HTTP, a client gone mid-answer) as rejections.

    aiohttp logs every request it cannot parse with a traceback at ERROR: a flood of
    garbage would be a flood of tracebacks. They are counted and logged sparingly.
    """

    def __init__(self, rejections: RejectionLog) -> None:
        super().__init__(logging.DEBUG)
        self._rejections = rejections

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        # Only the exception's type and text: the remote address and request line
        # in aiohttp's message are the client's, not ours to keep.
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "malformed request"
        self._rejections.note("malformed_http", reason)


def aiohttp_error_logger(rejections: RejectionLog) -> logging.Logger:
    """A logger, outside the logging tree, that feeds aiohttp's error lines to ``rejections``."""
    logger = logging.Logger("fonzipd.listener.http", logging.DEBUG)
    logger.propagate = False
    logger.addHandler(_AiohttpErrors(rejections))
    return logger


class _GuardedConnection(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, the guard's deadline around it."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.waiting_since: float | None = None
        """Loop time since which a complete request is awaited (None: one is handled)."""
        self._deadline: asyncio.TimerHandle | None = None

    # -- the guard's side ---------------------------------------------------------
    # Two calls per request, so they only note the time: a timer made and cancelled
    # per request cost the listener about 4 us of its ~70 us per webhook. The timer
    # is armed once and, when it fires, checks the time the request has been awaited
    # since; if a request came and was answered meanwhile, it is re-armed for the
    # deadline of the wait that is on now. So a deadline is still exact, and a busy
    # keep-alive connection makes a timer per header_timeout, not per request.
    def expect_request(self) -> None:
        """From now, the next request's headers must arrive within header_timeout."""
        self.waiting_since = self._loop.time()
        if self._deadline is None:
            self._deadline = self._loop.call_at(
                self.waiting_since + self._guard.header_timeout, self._check_deadline
            )

    def request_started(self) -> None:
        self.waiting_since = None

    def _check_deadline(self) -> None:
        self._deadline = None
        if self.waiting_since is None:
            return  # a request is being handled; its answer arms the next deadline
        due = self.waiting_since + self._guard.header_timeout
        if self._loop.time() >= due:
            self._expired()
        else:
            self._deadline = self._loop.call_at(due, self._check_deadline)

    def close(self, outcome: str, reason: str) -> None:
        self._guard.rejections_log.note(outcome, reason)
        if self.transport is not None:
            # abort, not close: nothing is owed to this client, and the socket is freed now.
            self.transport.abort()

    def _expired(self) -> None:
        self.close("slow_headers", f"no complete request within {self._guard.header_timeout:g} s")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    # -- asyncio.Protocol, delegated ----------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._guard.admit(self, transport):
            self._guard.rejections_log.note(
                "refused", f"{self._guard.max_connections} connections open, none idle"
            )
            transport.abort()
            return
        self.transport = transport
        self._inner.connection_made(transport)
        self.expect_request()

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self.transport is None:
            return  # refused: aiohttp never saw it
        self._guard.forget(self)
        self.transport = None
        self._inner.connection_lost(exc)


class ConnectionGuard:
    """Bounds the listener's connections: how many, and how long a request may take to arrive.

    aiohttp has no header-read timeout: a client that sends half a request line and
    then a byte a minute holds a socket (and a file descriptor) as long as it likes.
    The guard wraps aiohttp's protocol for each connection (GuardedSite) and keeps
    one deadline per connection: ``header_timeout`` seconds from connecting, or
    from the previous answer, to a complete request's headers (``guarded``
    says when a request reaches the application). A connection past its deadline is
    aborted. At ``max_connections`` a new connection evicts the one that has waited
    longest for its request; if every connection is busy with a request, the new
    one is refused. The body is bounded by the handler (``body_timeout``), and a body
    the application never reads by aiohttp's lingering time.
    """

    def __init__(
        self, *, header_timeout: float, max_connections: int, rejections: RejectionLog
    ) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.rejections_log = rejections
        self._open: dict[asyncio.BaseTransport, _GuardedConnection] = {}

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def rejections(self) -> collections.Counter[str]:
        """Rejections since start by outcome (the RejectionLog's totals)."""
        return self.rejections_log.totals

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], Any]:
        """Wrap aiohttp's protocol factory (the runner's server) for ``create_server``."""
        return lambda: _GuardedConnection(self, inner())

    def admit(self, conn: _GuardedConnection, transport: asyncio.BaseTransport) -> bool:
        """Take a new connection, making room at the cap; False: refuse it."""
        if len(self._open) >= self.max_connections:
            waiting = [c for c in self._open.values() if c.waiting_since is not None]
            if not waiting:
                return False
            oldest = min(waiting, key=lambda c: c.waiting_since or 0.0)
            self.forget(oldest)
            oldest.close("evicted", "connection cap reached: closed the longest-waiting client")
        self._open[transport] = conn
        return True

    def forget(self, conn: _GuardedConnection) -> None:
        if conn.transport is not None:
            self._open.pop(conn.transport, None)

    def connection(self, request: web.Request) -> _GuardedConnection | None:
        return self._open.get(request.transport) if request.transport is not None else None


ReadinessProbe = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
WebhookObserver = Callable[[int | None, int | None, str], None]
"""Called once per webhook request with (operation, status, outcome), for metrics."""
DeliverySeen = Callable[[Webhook], Awaitable[None]]
"""Called after an authenticated, valid webhook was answered (``fonzipd webhooks test``)."""

SETTINGS_KEY = web.AppKey("settings", ListenerSettings)
COMMITTER_KEY = web.AppKey("committer", GroupCommitter)
READINESS_KEY: web.AppKey[ReadinessProbe] = web.AppKey("readiness")
GUARD_KEY = web.AppKey("connection_guard", ConnectionGuard)
REJECTIONS_KEY = web.AppKey("rejections", RejectionLog)


def _no_observer(operation: int | None, status: int | None, outcome: str) -> None:
    pass


_ACCEPTED = json.dumps({"result": "ok", "duplicate": False}).encode()
_DUPLICATE = json.dumps({"result": "ok", "duplicate": True}).encode()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _authorized(settings: ListenerSettings, token: bytes | None, given: str | None) -> bool:
    """``token``: the configured token's bytes (None: no token configured)."""
    if token is None:
        # Only the explicit opt-out opens the listener; a missing token never does.
        return settings.allow_unauthenticated
    if given is None:
        return False
    try:
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: back to the bytes.
        sent = given.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(sent, token)


def webhook_handler(
    settings: ListenerSettings,
    committer: GroupCommitter,
    rejections: RejectionLog,
    observer: WebhookObserver | None,
    seen: DeliverySeen | None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of ``POST settings.path``.

    What it needs is bound here once, not looked up in the application per request:
    on one core every microsecond of a webhook's path is throughput.
    """
    observe = observer if observer is not None else _no_observer
    token = None if settings.auth_token is None else settings.auth_token.get_secret_value().encode()
    max_body = settings.max_body_bytes
    body_timeout = settings.body_timeout

    async def handle_webhook(request: web.Request) -> web.Response:
        given = request.headers.get(AUTH_HEADER)
        if not _authorized(settings, token, given):
            rejections.note("unauthorized", "missing token" if given is None else "wrong token")
            observe(None, None, "unauthorized")
            return _error(401, f"missing or wrong {AUTH_HEADER} header")
        if request.content_length is not None and request.content_length > max_body:
            rejections.note("too_large", f"Content-Length {request.content_length}")
            observe(None, None, "too_large")
            return _error(413, f"body larger than {max_body} bytes")
        # The raw header first: parsing it (request.content_type) costs ~4 us, and
        # Fonzip sends exactly this.
        if request.headers.get(CONTENT_TYPE) != "application/json" and (
            request.content_type != "application/json"
        ):
            rejections.note("unsupported_media_type", f"Content-Type {request.content_type[:40]!r}")
            observe(None, None, "unsupported_media_type")
            return _error(
                415, f"Content-Type must be application/json, got {request.content_type!r}"
            )
        try:
            if request.content.is_eof():
                # The whole body came with the headers (a webhook's usual case): reading
                # it cannot wait, so no deadline is armed (one cost ~7 us per request).
                body = await request.read()
            else:
                async with asyncio.timeout(body_timeout):
                    body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            rejections.note("too_large", "body over the limit")
            observe(None, None, "too_large")
            return _error(413, f"body larger than {max_body} bytes")
        except TimeoutError:
            rejections.note("slow_body", f"body not received within {body_timeout:g} s")
            observe(None, None, "slow_body")
            slow = _error(408, f"body not received within {body_timeout:g} s")
            slow.force_close()
            return slow
        try:
            hook = parse_webhook(body)
        except PayloadError as exc:
            rejections.note("invalid", str(exc))
            observe(None, None, "invalid")
            return _error(422, str(exc))
        kind = hook.kind
        if hook.id == 0:
            # Fonzip's test deliveries (PATCH /webhook/{id}) carry id 0: nothing to fetch.
            log.info("webhook_test_received", **_fields(hook, kind))
            observe(hook.operation, hook.status, "test")
            if seen is not None:
                await seen(hook)
            return web.json_response({"result": "ok", "test": True})
        event = InboxEvent(
            kind=kind, fonzip_id=hook.id, event_status=hook.status, source=Source.WEBHOOK
        )
        try:
            added = await committer.submit(event)
        except StoreError:
            # Never 200 without a committed row: Fonzip retries a non-2xx answer.
            log.error("webhook_not_stored", **_fields(hook, kind))
            observe(hook.operation, hook.status, "not_stored")
            return _error(503, "the event could not be stored; please retry")
        observe(hook.operation, hook.status, "accepted" if added else "duplicate")
        if seen is not None:
            await seen(hook)
        # The hot path: a ready-made body rather than a json.dumps per request.
        return web.Response(
            body=_ACCEPTED if added else _DUPLICATE, content_type="application/json"
        )

    return handle_webhook


def _fields(hook: Webhook, kind: Kind) -> dict[str, Any]:
    return {
        "kind": str(kind),
        "fonzip_id": hook.id,
        "status": hook.status,
        "webhook_id": hook.webhook_id,
    }


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def handle_readyz(request: web.Request) -> web.Response:
    ok, details = await request.app[READINESS_KEY]()
    return web.json_response(
        {"status": "ready" if ok else "not ready", **details}, status=200 if ok else 503
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(
    handler: Handler,
    guard: ConnectionGuard,
    rejections: RejectionLog,
    observer: WebhookObserver | None,
) -> Handler:
    """``handler``, telling the connection guard a request arrived and was answered,
    and answering 500 to a bug.

    Each route's handler is wrapped at build time rather than by a middleware: with
    any middleware aiohttp adds one of its own and builds the chain per request
    (about 1.5% of a webhook's time on the event loop). So the guard hears only of
    routed requests: on a connection that gets nothing but 404 and 405 answers,
    ``header_timeout`` runs from its last routed answer (or its opening), and it is
    cut then.
    """
    observe = observer if observer is not None else _no_observer
    connection = guard.connection

    async def guarded_handler(request: web.Request) -> web.StreamResponse:
        conn = connection(request)
        if conn is not None:
            conn.request_started()
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            # A bug: answered 500, logged sparingly (type and place only: no locals, no
            # request data), so that a request that triggers it cannot flood the log.
            where = traceback.extract_tb(exc.__traceback__)[-1]
            rejections.note(
                "error",
                f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}",
                level=logging.ERROR,
            )
            observe(None, None, "error")
            return _error(500, "internal error")
        finally:
            if conn is not None and conn.transport is not None:
                conn.expect_request()

    return guarded_handler


def build_app(
    settings: ListenerSettings,
    committer: GroupCommitter,
    readiness: ReadinessProbe,
    *,
    extra_routes: list[web.RouteDef] | None = None,
    observer: WebhookObserver | None = None,
    seen: DeliverySeen | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> web.Application:
    """The listener's aiohttp application; serve it with ``listener_runner``.

    ``observer`` counts every webhook request by outcome; ``seen`` hears of every
    authenticated, valid one once it is answered.
    """
    if settings.auth_token is None and not settings.allow_unauthenticated:
        raise ValueError("listener.auth_token is not set and allow_unauthenticated is false")
    if settings.auth_token is not None:
        # The backstop, as for Fonzip's secrets: a client echoing it, or an error
        # quoting a header, never puts it in a log line.
        logs.never_log(settings.auth_token.get_secret_value())
    rejections = RejectionLog(clock=clock)
    guard = ConnectionGuard(
        header_timeout=settings.header_timeout,
        max_connections=settings.max_connections,
        rejections=rejections,
    )
    # client_max_size bounds what aiohttp reads even without a Content-Length.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[REJECTIONS_KEY] = rejections
    app[GUARD_KEY] = guard
    app[SETTINGS_KEY] = settings
    app[COMMITTER_KEY] = committer
    app[READINESS_KEY] = readiness

    def wrap(handler: Handler) -> Handler:
        return guarded(handler, guard, rejections, observer)

    app.router.add_post(
        settings.path, wrap(webhook_handler(settings, committer, rejections, observer, seen))
    )
    app.router.add_get("/healthz", wrap(handle_healthz))
    app.router.add_get("/readyz", wrap(handle_readyz))
    app.router.add_routes(
        web.RouteDef(route.method, route.path, wrap(route.handler), route.kwargs)
        for route in extra_routes or ()
    )

    async def committer_ctx(app: web.Application) -> AsyncIterator[None]:
        app[COMMITTER_KEY].start()
        summaries = asyncio.create_task(rejections.run(), name="rejection-log")
        yield
        await app[COMMITTER_KEY].stop()
        summaries.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await summaries
        rejections.flush(force=True)

    app.cleanup_ctx.append(committer_ctx)
    return app


FD_RESERVE = 128
"""File descriptors kept for everything but client connections (databases, sinks, Fonzip)."""


def fit_to_file_limit(guard: ConnectionGuard) -> None:
    """Lower the connection cap to fit the process's file limit (``ulimit -n``).

    Past the limit ``accept`` fails with EMFILE and every client is refused, valid
    webhooks too; under the cap the guard evicts idle clients instead.
    """
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except OSError:
        return  # a system-call filter that refuses even reading the limit: trust the unit's
    room = soft - FD_RESERVE
    if soft != resource.RLIM_INFINITY and guard.max_connections > room:
        log.warning(
            "listener_connections_capped",
            max_connections=max(8, room),
            file_limit=soft,
            hint="raise the file limit (LimitNOFILE=, ulimit -n) or lower max_connections",
        )
        guard.max_connections = max(8, room)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through the app's ConnectionGuard."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, backlog: int = 1024):
        # A deep accept queue: under a connection flood the kernel keeps completed
        # handshakes for us rather than dropping them (Linux caps it at somaxconn).
        super().__init__(runner, backlog=backlog)
        self._guarded_runner = runner
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._guarded_runner.server
        assert server is not None
        guard = self._guarded_runner.app[GUARD_KEY]
        fit_to_file_limit(guard)
        self._server = await asyncio.get_running_loop().create_server(
            guard.protocol_factory(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )


def listener_runner(app: web.Application) -> web.AppRunner:
    """The runner of a ``build_app`` application, with its slow-client bounds.

    Serve it with ``GuardedSite``: the header deadline and the connection cap live
    there; the keep-alive and lingering times are aiohttp's own.
    """
    settings = app[SETTINGS_KEY]
    return web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=5.0,
        keepalive_timeout=settings.keepalive_timeout,
        # A body the application does not read (a 401, a 404) is drained this long at most.
        lingering_time=settings.body_timeout,
        logger=aiohttp_error_logger(app[REJECTIONS_KEY]),
    )


async def start_listener(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve a ``build_app`` application as the daemon does (its runner, a GuardedSite).

    The daemon and bench/bench_ingest.py both start the listener here, so that the
    benchmark measures the listener as it ships.
    """
    runner = listener_runner(app)
    await runner.setup()
    try:
        await GuardedSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
