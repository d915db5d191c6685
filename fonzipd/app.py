"""The daemon: builds and wires the components, starts them in order, drains them on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import sqlite3
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel

from fonzipd import __version__, logs
from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import ConfigError, Settings, listener_problems, load_config
from fonzipd.dispatcher import Dispatcher, SinkRunner
from fonzipd.fetcher import Fetcher
from fonzipd.fonzip.client import FonzipClient
from fonzipd.fonzip.limiter import RateLimiter
from fonzipd.listener import GUARD_KEY, GroupCommitter, build_app, start_listener
from fonzipd.metrics import MeteredClient, Metrics, build_health_app, store_reconcile_figures
from fonzipd.notify import Notifier
from fonzipd.privacy import SinkPolicy, policies
from fonzipd.reconciler import INSTALLED_KEY, Reconciler
from fonzipd.registry import SinkConfigError, build_sinks
from fonzipd.scheduler import ReconcileScheduler
from fonzipd.state import Store, StoreError
from fonzipd.supervisor import Supervisor
from fonzipd.webhooks import DeliveryLog

log = structlog.get_logger(__name__)

INBOX_RETENTION = dt.timedelta(days=7)
READINESS_PROBE_INTERVAL = 10.0
"""Seconds a successful group commit (or write probe) vouches for the database."""
READINESS_READ_INTERVAL = 1.0
"""Seconds /readyz reuses its database reads (inbox depth, sinks) across calls."""


class Daemon:
    """One fonzipd process: listener, fetcher, dispatcher, over one state database.

    Start order: state database (and the worker lock), sinks, Fonzip client,
    dispatcher, fetcher, and last the listener, so that nothing is acknowledged
    before the parts that deliver it run. Shutdown is in two phases, as arq does:
    first stop taking work (listener closed, in-flight requests answered, fetchers
    finish or put their rows back), then deliver what is queued for a bounded time
    and close everything.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        drain_timeout: float = 15.0,
        listen: bool = True,
        schedule: bool = True,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        # config_path: what SIGHUP re-reads (None: reload is refused with a log line).
        self.config_path = config_path
        self.notifier = notifier if notifier is not None else Notifier.from_environ()
        self.metrics = Metrics()
        # Every long-lived task is watched: one that dies stops the daemon (exit 70).
        self.supervisor = Supervisor(self._component_died)
        self.metrics_port: int | None = None
        self._health_runner: web.AppRunner | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._housekeeping_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[Any]] = set()
        # listen=False, schedule=False: the pipeline alone (fetcher + dispatcher), which
        # `fonzipd reconcile` and `backfill` run when no daemon is running.
        self.listen = listen
        self.schedule = schedule
        self.reconciler: Reconciler | None = None
        self.scheduler: ReconcileScheduler | None = None
        self.settings = settings
        self._policies: tuple[Settings | None, dict[str, SinkPolicy]] = (None, {})
        self.clock = clock
        self.drain_timeout = drain_timeout
        self.store: Store | None = None
        self.client: FonzipClient | None = None
        self.fetcher: Fetcher | None = None
        self.dispatcher: Dispatcher | None = None
        self.committer: GroupCommitter | None = None
        self._runner: web.AppRunner | None = None
        self.readiness_probe_interval = READINESS_PROBE_INTERVAL
        self._last_commit: float | None = None
        self._probed_at: float | None = None
        self._probe_error: str | None = None
        self._health_read: tuple[float, dict[str, Any]] | None = None
        self._readiness_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self.port: int | None = None

    async def start(self) -> None:
        """Bring everything up; when this returns the listener accepts webhooks."""
        s = self.settings
        if self.listen and (problems := listener_problems(s)):
            # `fonzipd run` refuses these before it gets here; this guards other callers.
            raise ConfigError("; ".join(problems))
        store = await Store.open(s.state.path, clock=self.clock)
        self.store = store
        if not store.acquire_worker_lock():
            await store.close()
            raise StoreError(
                f"{s.state.path}: another fonzipd daemon is running on this state database"
            )
        if self.listen and await store.meta.get(INSTALLED_KEY) is None:
            # The webhook's first chance to arrive: coverage is judged from here on.
            await store.meta.set(INSTALLED_KEY, self.clock.now().isoformat())
        released = await store.inbox.release_claims()
        if released:
            log.info("claims_released", rows=released)

        built = build_sinks(s, state_dir=s.state.path.parent, clock=self.clock)
        runners = {
            sid: SinkRunner(
                sid, b.sink, b.settings, store, batch_size=b.batch_size, clock=self.clock
            )
            for sid, b in built.items()
        }
        self.dispatcher = Dispatcher(runners)
        sink_ids = tuple(runners)
        # Records a state migration corrected reach each sink once, through its policy.
        redelivered = await store.records.redeliver(self._sink_policies())
        if redelivered:
            log.info("migrated_records_queued", records=redelivered, sinks=len(runners))

        limiter = RateLimiter(s.fonzip.effective_rate, clock=self.clock)
        self.client = MeteredClient(
            s.fonzip,
            metrics=self.metrics,
            token_store=store.tokens,
            limiter=limiter,
            clock=self.clock,
            form_ids=store.form_ids,
        )
        dispatcher = self.dispatcher
        self.metrics.bind(
            store=store,
            client=self.client,
            runners=lambda: dispatcher.runners,
            sink_ids=lambda: self.settings.sinks,
            reconcile=store_reconcile_figures(store, s.fonzip.tz),
        )
        self.fetcher = Fetcher(
            store,
            self.client,
            s.fetcher,
            # Read on every record, from the settings rather than the running tasks: a
            # sink being swapped by a reload keeps getting its records queued, through
            # its filters and redaction (`privacy.SinkPolicy`).
            sink_ids=self._sink_policies,
            tz=s.fonzip.tz,
            on_record=self.dispatcher.wake,
            clock=self.clock,
        )
        for task in [*self.dispatcher.start(), *self.fetcher.start()]:
            self.supervisor.watch(task)
        self.reconciler = Reconciler(
            store,
            self.client,
            tz=s.fonzip.tz,
            settings=s.reconciler,
            wake=self.fetcher.wake,
            clock=self.clock,
            sink_ids=self._sink_policies,
            on_record=self.dispatcher.wake,
        )
        if self.schedule:
            # Heartbeat, catch-up after downtime, the nightly run, `reconcile` requests.
            self.scheduler = ReconcileScheduler(
                self.reconciler, store, tz=s.fonzip.tz, clock=self.clock
            )
            self.supervisor.watch(self.scheduler.start())
        if not self.listen:
            return

        fetcher = self.fetcher

        def committed() -> None:
            # A group commit is a write that reached the disk: /readyz trusts it.
            self._last_commit = self.clock.monotonic()
            if self._probe_error is not None:
                self._probe_error = None
                self._health_read = None  # ready again at once, not a second later
            fetcher.wake()

        def commit_failed(error: str) -> None:
            # As a failed write probe: not writable at once (an earlier commit or probe
            # no longer vouches), until a commit or the next probe succeeds.
            self._last_commit = None
            self._probe_error = error
            self._probed_at = self.clock.monotonic()
            self._health_read = None

        self.committer = GroupCommitter(
            store,
            max_batch=s.listener.commit_max_batch,
            on_commit=committed,
            on_failure=commit_failed,
            watch=self.supervisor.watch,
        )
        separate = s.metrics.port is not None
        app = build_app(
            s.listener,
            self.committer,
            self.readiness,
            extra_routes=None if separate else [web.get("/metrics", self.metrics.handle)],
            observer=self.metrics.observe_webhook,
            seen=DeliveryLog(store, clock=self.clock).seen,
            clock=self.clock,
        )
        self.metrics.bind_listener(app[GUARD_KEY])
        if separate:
            health = web.AppRunner(build_health_app(self.metrics, self.readiness), access_log=None)
            await health.setup()
            await web.TCPSite(health, s.metrics.host, s.metrics.port).start()
            self._health_runner = health
            self.metrics_port = _bound_port(health)
        self._runner = await start_listener(app, s.listener.host, s.listener.port)
        self.port = self._bound_port()
        if not separate:
            self.metrics_port = self.port
        # Listener bound, state database open: tell systemd (Type=notify).
        self.notifier.ready(await self._status_line())
        self._status_task = self.supervisor.watch(
            asyncio.create_task(self._report_status(), name="notify-status")
        )
        self._housekeeping_task = self.supervisor.watch(
            asyncio.create_task(self._housekeeping(), name="housekeeping")
        )
        if s.listener.auth_token is None:
            log.warning(
                "listener_unauthenticated",
                hint="allow_unauthenticated: anyone on this machine can enqueue events",
            )
        log.info(
            "daemon_started",
            version=__version__,
            listen=f"http://{s.listener.host}:{self.port}{s.listener.path}",
            sinks=list(sink_ids),
            fetchers=s.fetcher.concurrency,
            state=str(s.state.path),
        )

    def _sink_policies(self) -> dict[str, SinkPolicy]:
        """Each enabled sink's filters and redaction, rebuilt when a reload changes them."""
        if self._policies[0] is not self.settings:
            self._policies = (self.settings, policies(self.settings))
        return self._policies[1]

    def _bound_port(self) -> int:
        assert self._runner is not None
        return _bound_port(self._runner)

    async def _status_line(self) -> str:
        store = self.store
        if store is None:
            return "stopped"
        depth, _ = await store.inbox.depth()
        sinks = await store.outbox.sink_status(self.settings.enabled_sinks)
        outbox = ", ".join(f"{sid} {st['pending']}" for sid, st in sinks.items()) or "no sinks"
        dead = sum(st["dead"] for st in sinks.values())
        return f"inbox {depth}; outbox {outbox}" + (f"; {dead} dead letters" if dead else "")

    async def _report_status(self) -> None:
        """STATUS= every status_interval, WATCHDOG=1 every half WatchdogSec (if set)."""
        status_every = self.settings.health.status_interval
        watchdog_every = self.notifier.watchdog_interval
        tick = min(status_every, watchdog_every) if watchdog_every else status_every
        next_status = self.clock.monotonic() + status_every
        while True:
            await asyncio.sleep(tick)
            # The ping proves the event loop runs; a hung loop never gets here.
            self.notifier.watchdog()
            if self.clock.monotonic() >= next_status:
                next_status = self.clock.monotonic() + status_every
                try:
                    self.notifier.status(await self._status_line())
                except (sqlite3.Error, StoreError) as exc:
                    self.notifier.status(f"state database error: {exc}")

    async def _housekeeping(self) -> None:
        """Every hour: :meth:`housekeep`."""
        while True:
            await self.housekeep()
            await asyncio.sleep(3600)

    async def housekeep(self) -> None:
        """Forget finished inbox rows after a week (failed ones stay for ``status``), and
        drop the Fonzip object of records older than ``state.keep_data_days``."""
        store = self.store
        if store is None:
            return
        try:
            pruned = await store.inbox.prune(INBOX_RETENTION)
        except (sqlite3.Error, StoreError) as exc:
            log.warning("inbox_prune_failed", error=str(exc))
        else:
            if pruned:
                log.info("inbox_pruned", rows=pruned)
        days = self.settings.state.keep_data_days
        if days is None:
            return
        try:
            dropped = await store.erasures.drop_old_data(dt.timedelta(days=days))
        except (sqlite3.Error, StoreError) as exc:
            log.warning("record_data_drop_failed", error=str(exc))
        else:
            if dropped:
                log.info("record_data_dropped", records=dropped, keep_data_days=days)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the state database takes writes; with the inbox depth.

        Cheap enough to be called in a loop: the database's writability comes from the
        last group commit, or a write probe at most every ``readiness_probe_interval``
        seconds when no webhook arrived (a failed group commit counts as a failed probe,
        at once); the inbox and sink figures are read at most
        once a second, and concurrent calls share that read.
        """
        store = self.store
        if store is None:
            return False, {"database": "closed"}
        async with self._readiness_lock:
            now = self.clock.monotonic()
            if self._health_read is None or now - self._health_read[0] >= READINESS_READ_INTERVAL:
                self._health_read = (now, await self._read_health(store, now))
            details = dict(self._health_read[1])
        ok = details.pop("ok")
        if self.supervisor.failed:
            ok = False
            details["components"] = {
                name: f"died: {error}" for name, error in self.supervisor.failed.items()
            }
        if self.client is not None:
            # A 409 lock delays fetching, not accepting: it does not fail readiness.
            details["fonzip_token"] = self.client.tokens.describe()
        if isinstance(self.client, MeteredClient) and self.client.credentials_error:
            ok = False
            details["fonzip"] = f"credentials rejected: {self.client.credentials_error}"
        return ok, details

    async def _database_error(self, store: Store, now: float) -> str | None:
        """Why the state database cannot be written (None: it can), probing rarely."""
        interval = self.readiness_probe_interval
        if self._last_commit is not None and now - self._last_commit < interval:
            return None
        if self._probed_at is None or now - self._probed_at >= interval:
            self._probed_at = now
            try:
                await store.meta.check_writable()
                self._probe_error = None
            except (sqlite3.Error, StoreError) as exc:
                self._probe_error = str(exc)
        return self._probe_error

    async def _read_health(self, store: Store, now: float) -> dict[str, Any]:
        error = await self._database_error(store, now)
        details: dict[str, Any] = {
            "ok": error is None,
            "database": "writable" if error is None else f"not writable: {error}",
        }
        depth, age = await store.inbox.depth()
        details["inbox"] = {"pending": depth, "oldest_age_s": age}
        limit = self.settings.health.sink_failing_after
        sinks = await store.outbox.sink_status(self.settings.enabled_sinks)
        wall = self.clock.now()
        for sid, st in sinks.items():
            since = st["failing_since"]
            failing_for = (
                0.0 if since is None else (wall - dt.datetime.fromisoformat(since)).total_seconds()
            )
            runner = self.dispatcher.runners.get(sid) if self.dispatcher else None
            if runner is not None and runner.needs_operator is not None:
                # No wait for sink_failing_after: time will not fix it.
                details["ok"] = False
                details.setdefault("sinks", {})[sid] = (
                    f"needs the operator: {runner.needs_operator}"
                )
            elif limit > 0 and failing_for > limit:
                details["ok"] = False
                details.setdefault("sinks", {})[sid] = (
                    f"failing for {failing_for:.0f} s: {st['last_error']}"
                )
        return details

    def request_stop(self) -> None:
        """Ask the daemon to shut down (what SIGTERM and SIGINT do)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """A stop was asked for (a signal, or a component that died)."""
        return self._stop.is_set()

    async def stop_requested(self) -> None:
        """Return once a stop is asked for (a signal, or a component that died)."""
        await self._stop.wait()

    @property
    def failed(self) -> dict[str, str]:
        """The components that died (name -> error): the daemon then exits non-zero."""
        return self.supervisor.failed

    def _component_died(self, name: str) -> None:
        self.notifier.status(f"{name} died; stopping")
        self.request_stop()

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self.start()
            await self._stop.wait()
            if self.failed:
                log.error("shutdown_requested", reason="component died", died=sorted(self.failed))
            else:
                log.info("shutdown_requested")
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def request_reload(self) -> None:
        """Re-read the configuration soon (what SIGHUP does)."""
        task = asyncio.create_task(self.reload(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration file; apply the log level and sink changes.

        Changed, added and removed sinks are swapped with a drain: nothing is lost or
        sent twice, because each sink's outbox lives in the state database under its
        id. Other changes need a restart; their keys are logged as
        ``restart_required``. Returns what changed (for tests and the log).
        """
        async with self._reload_lock:
            if self.config_path is None or self.dispatcher is None or self.store is None:
                log.warning("config_reload_skipped", reason="no configuration file or not running")
                return {}
            self.notifier.reloading()
            try:
                return await self._reload(self.config_path, self.dispatcher, self.store)
            finally:
                self.notifier.ready(await self._status_line())

    async def _reload(self, path: Path, dispatcher: Dispatcher, store: Store) -> dict[str, Any]:
        old = self.settings
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc), kept="the running configuration")
            return {"error": str(exc)}
        restart = restart_required(old, new)
        before, after = old.enabled_sinks, new.enabled_sinks
        changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        if changed or added:
            try:
                built = build_sinks(new, state_dir=new.state.path.parent, clock=self.clock)
            except SinkConfigError as exc:
                log.error("config_reload_failed", error=str(exc), kept="the running configuration")
                return {"error": str(exc)}
        else:
            built = {}
        # Removed and changed runners first: drained, their rows stay in the outbox.
        for sid in removed + changed:
            runner = dispatcher.runners.pop(sid)
            await runner.stop(timeout=self.drain_timeout / 2)
        for sid in changed + added:
            b = built[sid]
            runner = SinkRunner(
                sid, b.sink, b.settings, store, batch_size=b.batch_size, clock=self.clock
            )
            dispatcher.runners[sid] = runner
            self.supervisor.watch(runner.start())
        logging_changed = old.logging != new.logging
        if logging_changed:
            logs.configure(new.logging.level, new.logging.format)
        self.settings = old.model_copy(
            update={"sinks": new.sinks, "logging": new.logging, "health": new.health}
        )
        report = {
            "sinks_changed": changed,
            "sinks_added": added,
            "sinks_removed": removed,
            "logging": new.logging.level if logging_changed else None,
            "restart_required": restart,
        }
        log.info("config_reloaded", **{k: v for k, v in report.items() if k != "restart_required"})
        if added:
            log.info(
                "sinks_added",
                sinks=added,
                hint="records stored before now are not queued for them: `fonzipd replay`",
            )
        if restart:
            log.warning("restart_required", keys=restart)
        return report

    async def stop(self) -> None:
        """Phase one: stop taking work. Phase two: deliver what is queued, close."""
        self.notifier.stopping()
        for task in (self._status_task, self._housekeeping_task):
            if task is not None:
                task.cancel()
                # One that died has been reported by the supervisor already.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._status_task = self._housekeeping_task = None
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None
        if self._runner is not None:
            # Closes the socket, answers in-flight webhooks, then commits what is queued.
            await self._runner.cleanup()
            self._runner = None
        if self.fetcher is not None:
            await self.fetcher.stop(timeout=self.drain_timeout / 2)
        if self.dispatcher is not None:
            await self.dispatcher.stop(timeout=self.drain_timeout / 2)
        if self._health_runner is not None:
            await self._health_runner.cleanup()
            self._health_runner = None
        if self.client is not None:
            await self.client.close()
        if self.store is not None:
            with contextlib.suppress(sqlite3.Error, StoreError):
                await self.store.inbox.release_claims()
            await self.store.close()
            self.store = None
        self.notifier.close()
        log.info("daemon_stopped")
        logs.flush()


_RELOADABLE = frozenset({"sinks", "logging", "health"})


def restart_required(old: Settings, new: Settings) -> list[str]:
    """Dotted keys that differ between ``old`` and ``new`` and only apply at a restart.

    Only key names are returned, never values: some are secrets.
    """
    keys: list[str] = []
    for name in type(old).model_fields:
        if name in _RELOADABLE:
            continue
        a, b = getattr(old, name), getattr(new, name)
        if a == b:
            continue
        if isinstance(a, BaseModel) and isinstance(b, BaseModel):
            keys += [f"{name}.{k}" for k in type(a).model_fields if getattr(a, k) != getattr(b, k)]
        else:
            keys.append(name)
    return keys


def _bound_port(runner: web.AppRunner) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    raise RuntimeError("the server is not bound")
