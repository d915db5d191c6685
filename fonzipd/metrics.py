"""The Prometheus metrics: events counted as they happen, everything else read at scrape time.

Most figures already exist somewhere (the client's call counter, the limiter's
window, the sink runners' counters, the state database), so a custom collector reads
them when Prometheus scrapes instead of mirroring them in counters all over the code.
Only what must be counted at the moment it happens is counted then: webhooks by
operation, status and outcome (in a dict the collector reads: once per webhook, a
Counter's lock was a cost), and fetches by kind and outcome with their latency (a
Histogram). Each Metrics object has its own registry: no global state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fonzipd import __version__
from fonzipd.config import FonzipSettings
from fonzipd.dispatcher import SinkRunner
from fonzipd.fonzip.client import FonzipClient
from fonzipd.fonzip.endpoints import Detail
from fonzipd.fonzip.errors import (
    FonzipBadResponse,
    FonzipError,
    FonzipNotFound,
    FonzipRateLimited,
    FonzipRequestError,
    FonzipUnauthorized,
    FonzipUnavailable,
)
from fonzipd.fonzip.limiter import Priority
from fonzipd.kinds import Kind
from fonzipd.reconciler import coverage_judged, installed_at
from fonzipd.state import Store

FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds; the long tail is the rate limiter and retries, not Fonzip itself."""

WEBHOOK_OUTCOMES = (
    "accepted",
    "duplicate",
    "test",
    "unauthorized",
    "invalid",
    "too_large",
    "unsupported_media_type",
    "not_stored",
    "slow_body",
    "error",
)
"""The ``outcome`` label of ``fonzipd_webhooks_received_total``."""


class ListenerFigures(Protocol):
    """What the listener counts about its clients (fonzipd.listener)."""

    @property
    def open_connections(self) -> int: ...

    @property
    def rejections(self) -> Mapping[str, int]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class ReconcileFigures:
    """What the reconciler reports: last finished run, days not closed, webhook coverage."""

    last_run_at: dt.datetime | None
    """When the last reconcile run finished (any outcome); before the first run, when
    the daemon was installed (None: neither yet)."""
    open_days: int
    """Business days whose counts did not match Fonzip's yet."""
    coverage: float | None
    """Share of recent records first seen through a webhook (None: no records yet)."""


class ReconcileSource(Protocol):
    """Where the figures of the reconciler come from (the reconciler's Store queries)."""

    async def __call__(self) -> ReconcileFigures: ...


_UTC_ZONE = ZoneInfo("UTC")

_MAX_WEBHOOK_KEYS = 512
"""Combinations of operation, status and outcome counted apart (the listener makes ~350)."""


def _webhook_labels(
    operation: int | None, status: int | None, outcome: str
) -> tuple[str, str, str]:
    try:
        op = str(Kind.from_operation(operation)) if operation is not None else "unknown"
    except ValueError:
        op = "unknown"
    return op, "unknown" if status is None else str(status), outcome


COVERAGE_DAYS = 7
"""Recent business days the webhook coverage is computed over."""


def store_reconcile_figures(store: Store, tz: ZoneInfo = _UTC_ZONE) -> ReconcileSource:
    """The reconciler's figures, read from its tables in the state database.

    Before any run, the last run is the installation (the daemon's first start), so
    the "no reconcile in 36 hours" alert fires on an install that never reconciles.
    Coverage counts only days after the installation's date (``coverage_judged``).
    """

    async def figures() -> ReconcileFigures:
        runs = await store.books.runs(limit=100)
        finished = [float(r["finished_at"]) for r in runs if r.get("finished_at") is not None]
        days = await store.books.days()
        open_days = sum(1 for d in days if d["state"] == "open")
        installed = await installed_at(store)
        recent = [
            d
            for d in days
            if coverage_judged(dt.date.fromisoformat(d["business_date"]), installed, tz)
        ][:COVERAGE_DAYS]
        records = sum(int(d["records"]) for d in recent)
        by_webhook = sum(int(d["first_by_webhook"]) for d in recent)
        last = dt.datetime.fromtimestamp(max(finished), dt.UTC) if finished else installed
        return ReconcileFigures(
            last_run_at=last,
            open_days=open_days,
            coverage=by_webhook / records if records else None,
        )

    return figures


def _fetch_outcome(exc: FonzipError) -> str:
    if isinstance(exc, FonzipNotFound):
        return "not_found"
    if isinstance(exc, FonzipUnauthorized):
        return "unauthorized"
    if isinstance(exc, FonzipRateLimited):
        return "rate_limited"
    if isinstance(exc, FonzipUnavailable):
        return "unavailable"
    if isinstance(exc, FonzipBadResponse):
        return "malformed"
    if isinstance(exc, FonzipRequestError):
        return "refused"
    return "error"


def _epoch(value: str | None) -> float | None:
    return None if value is None else dt.datetime.fromisoformat(value).timestamp()


@dataclasses.dataclass(slots=True)
class _Snapshot:
    """What the state database said at the start of this scrape."""

    inbox_depth: int = 0
    inbox_oldest_age: float | None = None
    inbox_rows: dict[str, int] = dataclasses.field(default_factory=dict)
    sinks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    outbox_oldest_age: dict[str, float | None] = dataclasses.field(default_factory=dict)
    token_expires_at: float | None = None
    reconcile: ReconcileFigures | None = None
    taken_at: float = 0.0


class Metrics:
    """fonzipd's metrics. ``bind`` the running components, then serve ``handle``.

    Counted as they happen: ``observe_webhook`` (the listener) and ``observe_fetch``
    (MeteredClient). Read at scrape time: the inbox, the outboxes, the sinks, Fonzip
    API calls and the rate limit, the token's expiry and the reconciler's figures.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.fetches = Histogram(
            "fonzipd_fetch_duration_seconds",
            "Detail fetches from Fonzip by kind and outcome, with their latency "
            "(rate-limit waits and retries included).",
            ["kind", "outcome"],
            buckets=FETCH_BUCKETS,
            registry=self.registry,
        )
        self._store: Store | None = None
        self._client: FonzipClient | None = None
        self._runners: Callable[[], Mapping[str, SinkRunner]] = dict
        self._sink_ids: Callable[[], Iterable[str]] = tuple
        self._reconcile: ReconcileSource | None = None
        self._listener: ListenerFigures | None = None
        self._snapshot = _Snapshot()
        # Webhooks are counted in a plain dict, read at scrape time: a prometheus Counter
        # takes a lock per increment: counting one webhook took 1.4 us with it, 0.7 without.
        self._webhooks: dict[tuple[int | None, int | None, str], int] = {}
        self._webhooks_created: dict[tuple[str, str, str], float] = {}
        self._webhooks_past_cap: dict[tuple[str, str, str], int] = {}
        self._lock = asyncio.Lock()
        self.registry.register(_StateCollector(self))

    def bind(
        self,
        *,
        store: Store,
        client: FonzipClient,
        runners: Callable[[], Mapping[str, SinkRunner]],
        sink_ids: Callable[[], Iterable[str]],
        reconcile: ReconcileSource | None = None,
    ) -> None:
        """Read these components at scrape time (callables: they change on reload)."""
        self._store = store
        self._client = client
        self._runners = runners
        self._sink_ids = sink_ids
        self._reconcile = reconcile

    def bind_listener(self, listener: ListenerFigures) -> None:
        """Read the listener's connection and rejection counts at scrape time."""
        self._listener = listener

    def observe_webhook(self, operation: int | None, status: int | None, outcome: str) -> None:
        """Count one webhook request; operation and status are None when unreadable."""
        key = (operation, status, outcome)
        counts = self._webhooks
        if key in counts:
            counts[key] += 1
            return
        labels = _webhook_labels(operation, status, outcome)
        self._webhooks_created.setdefault(labels, time.time())
        if len(counts) < _MAX_WEBHOOK_KEYS:
            counts[key] = 1
        else:  # never expected (operation and status are validated), but still exact
            self._webhooks_past_cap[labels] = self._webhooks_past_cap.get(labels, 0) + 1

    def _webhook_families(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "fonzipd_webhooks_received",
            "Webhooks received, by operation (kind), Fonzip status and outcome.",
            labels=["operation", "status", "outcome"],
        )
        totals = dict(self._webhooks_past_cap)
        for key, count in list(self._webhooks.items()):
            labels = _webhook_labels(*key)
            totals[labels] = totals.get(labels, 0) + count
        for labels, total in totals.items():
            family.add_metric(labels, total, created=self._webhooks_created.get(labels))
        yield family

    def observe_fetch(self, kind: Kind, outcome: str, seconds: float) -> None:
        """Count one detail fetch and its latency."""
        self.fetches.labels(str(kind), outcome).observe(seconds)

    async def render(self) -> bytes:
        """The Prometheus text exposition, after reading the state database."""
        async with self._lock:
            self._snapshot = await self._read()
            return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler of ``GET /metrics``."""
        body = await self.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def _read(self) -> _Snapshot:
        snap = _Snapshot(taken_at=time.time())
        store = self._store
        if store is None:
            return snap
        snap.inbox_depth, snap.inbox_oldest_age = await store.inbox.depth()
        snap.inbox_rows = await store.inbox.counts()
        ids = list(self._sink_ids())
        snap.sinks = await store.outbox.sink_status(ids)
        for sid in ids:
            snap.outbox_oldest_age[sid] = await store.outbox.oldest_pending_age(sid)
        if self._client is not None and not self._client.tokens.fixed:
            token = await store.tokens.load(self._client.tokens.key)
            snap.token_expires_at = None if token is None else token.expires_at.timestamp()
        if self._reconcile is not None:
            snap.reconcile = await self._reconcile()
        return snap


class _StateCollector(Collector):
    """Yields the figures read at scrape time (the snapshot and the live counters)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        snap = m._snapshot
        info = GaugeMetricFamily("fonzipd_build_info", "fonzipd's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield from m._webhook_families()
        yield from self._inbox(snap)
        yield from self._listener(m._listener)
        yield from self._fonzip(m._client)
        yield from self._sinks(snap, m._runners())
        yield from self._reconcile(snap.reconcile)

    def _inbox(self, snap: _Snapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "fonzipd_inbox_depth", "Events waiting to be fetched.", value=snap.inbox_depth
        )
        yield GaugeMetricFamily(
            "fonzipd_inbox_oldest_age_seconds",
            "Age of the oldest event waiting to be fetched (0 when none waits).",
            value=snap.inbox_oldest_age or 0.0,
        )
        rows = GaugeMetricFamily(
            "fonzipd_inbox_rows", "Inbox rows by state (done rows are pruned).", labels=["state"]
        )
        for state in ("pending", "claimed", "done", "failed"):
            rows.add_metric([state], snap.inbox_rows.get(state, 0))
        yield rows

    def _listener(self, listener: ListenerFigures | None) -> Iterator[Metric]:
        if listener is None:
            return
        yield GaugeMetricFamily(
            "fonzipd_listener_connections_open",
            "Client connections open on the webhook listener.",
            value=listener.open_connections,
        )
        rejected = CounterMetricFamily(
            "fonzipd_listener_rejected",
            "Requests and connections the listener turned away, by outcome: the webhook "
            "outcomes, and slow_headers, evicted, refused (connections) and "
            "malformed_http (not HTTP).",
            labels=["outcome"],
        )
        for outcome, n in sorted(listener.rejections.items()):
            rejected.add_metric([outcome], n)
        yield rejected

    def _fonzip(self, client: FonzipClient | None) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "fonzipd_fonzip_api_calls",
            "Requests to the Fonzip API by endpoint template and HTTP status "
            '("network" when no answer came).',
            labels=["endpoint", "status"],
        )
        retries = CounterMetricFamily(
            "fonzipd_fonzip_api_retries", "Fonzip requests sent again (429, 5xx, network)."
        )
        if client is not None:
            for (endpoint, status), n in sorted(client.calls.items()):
                calls.add_metric([endpoint, status], n)
            retries.add_metric([], client.retries)
        yield calls
        yield retries
        if client is None:
            return
        used = client.limiter.sent_last_minute()
        yield GaugeMetricFamily(
            "fonzipd_fonzip_rate_limit_used",
            "Requests sent to Fonzip in the last 60 seconds.",
            value=used,
        )
        yield GaugeMetricFamily(
            "fonzipd_fonzip_rate_limit_per_minute",
            "Requests per minute fonzipd allows itself (Fonzip's limit less the margin).",
            value=client.limiter.per_minute,
        )
        yield GaugeMetricFamily(
            "fonzipd_fonzip_rate_limit_budget_used_ratio",
            "Share of the per-minute budget used in the last 60 seconds.",
            value=used / client.limiter.per_minute,
        )
        expiry = self._m._snapshot.token_expires_at
        if expiry is not None:
            yield GaugeMetricFamily(
                "fonzipd_fonzip_token_expiry_timestamp_seconds",
                "When the stored Fonzip access token expires (Unix time).",
                value=expiry,
            )
        rejected = isinstance(client, MeteredClient) and client.credentials_error is not None
        yield GaugeMetricFamily(
            "fonzipd_fonzip_credentials_rejected",
            "1 while Fonzip refuses the credentials (the last call was a 401/403).",
            value=int(rejected),
        )

    def _sinks(self, snap: _Snapshot, runners: Mapping[str, SinkRunner]) -> Iterator[Metric]:
        delivered = CounterMetricFamily(
            "fonzipd_sink_records_delivered",
            "Records a sink acknowledged, since this process started.",
            labels=["sink"],
        )
        dead = CounterMetricFamily(
            "fonzipd_sink_records_dead",
            "Records that became dead letters, since this process started.",
            labels=["sink"],
        )
        for sid, runner in sorted(runners.items()):
            delivered.add_metric([sid], runner.delivered)
            dead.add_metric([sid], runner.dead)
            retried = getattr(runner, "retried", None)
            if isinstance(retried, int):
                snap.sinks.setdefault(sid, {})["retried"] = retried
        yield delivered
        yield dead
        retried_family = CounterMetricFamily(
            "fonzipd_sink_records_retried",
            "Records whose write failed and is retried, since this process started.",
            labels=["sink"],
        )
        depth = GaugeMetricFamily(
            "fonzipd_outbox_depth", "Records waiting for a sink.", labels=["sink"]
        )
        age = GaugeMetricFamily(
            "fonzipd_outbox_oldest_age_seconds",
            "Age of the oldest record waiting for a sink (0 when none waits).",
            labels=["sink"],
        )
        letters = GaugeMetricFamily(
            "fonzipd_outbox_dead_letters",
            "Dead letters parked for a sink (replay with `fonzipd replay --dead`).",
            labels=["sink"],
        )
        failing = GaugeMetricFamily(
            "fonzipd_sink_failing_seconds",
            "Seconds since a sink's failures began (0 while it works).",
            labels=["sink"],
        )
        success = GaugeMetricFamily(
            "fonzipd_sink_last_success_timestamp_seconds",
            "When a sink last acknowledged a batch (Unix time).",
            labels=["sink"],
        )
        for sid, st in sorted(snap.sinks.items()):
            if "retried" in st:
                retried_family.add_metric([sid], st["retried"])
            if "pending" not in st:
                continue
            depth.add_metric([sid], st["pending"])
            age.add_metric([sid], snap.outbox_oldest_age.get(sid) or 0.0)
            letters.add_metric([sid], st["dead"])
            since = _epoch(st["failing_since"])
            failing.add_metric([sid], 0.0 if since is None else max(0.0, snap.taken_at - since))
            last = _epoch(st["last_success_at"])
            if last is not None:
                success.add_metric([sid], last)
        yield from (retried_family, depth, age, letters, failing, success)

    def _reconcile(self, figures: ReconcileFigures | None) -> Iterator[Metric]:
        if figures is None:
            return
        if figures.last_run_at is not None:
            yield GaugeMetricFamily(
                "fonzipd_reconcile_last_run_timestamp_seconds",
                "When the last reconcile run finished (Unix time); before the first run, "
                "when fonzipd was installed.",
                value=figures.last_run_at.timestamp(),
            )
        yield GaugeMetricFamily(
            "fonzipd_reconcile_open_days",
            "Business days whose counts do not match Fonzip's yet.",
            value=figures.open_days,
        )
        if figures.coverage is not None:
            yield GaugeMetricFamily(
                "fonzipd_webhook_coverage_ratio",
                "Share of recent records first seen through a webhook (the rest came "
                "from the reconcile: webhooks that never arrived).",
                value=figures.coverage,
            )


class MeteredClient(FonzipClient):
    """The Fonzip client, timing each detail fetch and noticing refused credentials.

    ``credentials_error`` holds Fonzip's refusal (401/403) from the last call that
    got one, and is cleared by the next call that succeeds: /readyz reads it.
    """

    def __init__(self, settings: FonzipSettings, *, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.metrics = metrics
        self.credentials_error: str | None = None

    async def fetch_detail(
        self,
        kind: Kind,
        fonzip_id: int,
        *,
        priority: Priority = Priority.LIVE,
        list_row: dict[str, Any] | None = None,
    ) -> Detail:
        started = time.perf_counter()
        try:
            detail = await super().fetch_detail(
                kind, fonzip_id, priority=priority, list_row=list_row
            )
        except FonzipError as exc:
            self._seen(exc)
            self.metrics.observe_fetch(kind, _fetch_outcome(exc), time.perf_counter() - started)
            raise
        self.credentials_error = None
        self.metrics.observe_fetch(kind, "ok", time.perf_counter() - started)
        return detail

    async def me(self) -> dict[str, Any]:
        try:
            body = await super().me()
        except FonzipError as exc:
            self._seen(exc)
            raise
        self.credentials_error = None
        return body

    def _seen(self, exc: FonzipError) -> None:
        if isinstance(exc, FonzipUnauthorized):
            self.credentials_error = str(exc)
        elif not isinstance(exc, FonzipUnavailable | FonzipRateLimited):
            # Fonzip answered with our token (a 404, a bad body): the credentials work.
            self.credentials_error = None


def build_health_app(
    metrics: Metrics,
    readiness: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]],
) -> web.Application:
    """The separate metrics server: /metrics, /healthz and /readyz, and nothing else."""
    from fonzipd.listener import READINESS_KEY, handle_healthz, handle_readyz

    app = web.Application()
    app[READINESS_KEY] = readiness
    app.router.add_get("/metrics", metrics.handle)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    return app
