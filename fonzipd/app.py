"""The daemon: builds and wires the components, starts them in order, drains them on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from typing import Any

import structlog
from aiohttp import web

from fonzipd import __version__
from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import Settings
from fonzipd.dispatcher import Dispatcher, SinkRunner
from fonzipd.fetcher import Fetcher
from fonzipd.fonzip.client import FonzipClient
from fonzipd.fonzip.limiter import RateLimiter
from fonzipd.listener import GroupCommitter, build_app
from fonzipd.reconciler import Reconciler, ReconcileScheduler
from fonzipd.registry import build_sinks
from fonzipd.store import Store, StoreError

log = structlog.get_logger(__name__)


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
    ) -> None:
        # listen=False, schedule=False: the pipeline alone (fetcher + dispatcher), which
        # `fonzipd reconcile` and `backfill` run when no daemon is running.
        self.listen = listen
        self.schedule = schedule
        self.reconciler: Reconciler | None = None
        self.scheduler: ReconcileScheduler | None = None
        self.settings = settings
        self.clock = clock
        self.drain_timeout = drain_timeout
        self.store: Store | None = None
        self.client: FonzipClient | None = None
        self.fetcher: Fetcher | None = None
        self.dispatcher: Dispatcher | None = None
        self.committer: GroupCommitter | None = None
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self.port: int | None = None

    async def start(self) -> None:
        """Bring everything up; when this returns the listener accepts webhooks."""
        s = self.settings
        store = await Store.open(s.state.path, clock=self.clock)
        self.store = store
        if not store.acquire_worker_lock():
            await store.close()
            raise StoreError(
                f"{s.state.path}: another fonzipd daemon is running on this state database"
            )
        released = await store.release_claims()
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

        limiter = RateLimiter(s.fonzip.effective_rate, clock=self.clock)
        self.client = FonzipClient(
            s.fonzip, token_store=store, limiter=limiter, clock=self.clock, form_ids=store
        )
        self.fetcher = Fetcher(
            store,
            self.client,
            s.fetcher,
            sink_ids=lambda: sink_ids,
            tz=s.fonzip.tz,
            on_record=self.dispatcher.wake,
            clock=self.clock,
        )
        self.dispatcher.start()
        self.fetcher.start()
        self.reconciler = Reconciler(
            store,
            self.client,
            tz=s.fonzip.tz,
            settings=s.reconciler,
            wake=self.fetcher.wake,
            clock=self.clock,
        )
        if self.schedule:
            # Heartbeat, catch-up after downtime, the nightly run, `reconcile` requests.
            self.scheduler = ReconcileScheduler(
                self.reconciler, store, tz=s.fonzip.tz, clock=self.clock
            )
            self.scheduler.start()
        if not self.listen:
            return

        self.committer = GroupCommitter(
            store, max_batch=s.listener.commit_max_batch, on_commit=self.fetcher.wake
        )
        app = build_app(s.listener, self.committer, self.readiness)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.listener.host, s.listener.port)
        await site.start()
        self.port = self._bound_port()
        if s.listener.auth_token is None:
            log.warning(
                "listener_unauthenticated",
                hint="anyone who can reach the listener can enqueue events; set auth_token",
            )
        log.info(
            "daemon_started",
            version=__version__,
            listen=f"http://{s.listener.host}:{self.port}{s.listener.path}",
            sinks=list(sink_ids),
            fetchers=s.fetcher.concurrency,
            state=str(s.state.path),
        )

    def _bound_port(self) -> int:
        assert self._runner is not None
        for addr in self._runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                return int(addr[1])
        raise RuntimeError("the listener is not bound")

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the state database takes writes; with the inbox depth."""
        details: dict[str, Any] = {}
        ok = True
        store = self.store
        if store is None:
            return False, {"database": "closed"}
        try:
            await store.check_writable()
            details["database"] = "writable"
        except (sqlite3.Error, StoreError) as exc:
            ok = False
            details["database"] = f"not writable: {exc}"
        depth, age = await store.inbox_depth()
        details["inbox"] = {"pending": depth, "oldest_age_s": age}
        return ok, details

    def request_stop(self) -> None:
        """Ask the daemon to shut down (what SIGTERM and SIGINT do)."""
        self._stop.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self._stop.wait()
            log.info("shutdown_requested")
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def stop(self) -> None:
        """Phase one: stop taking work. Phase two: deliver what is queued, close."""
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
        if self.client is not None:
            await self.client.close()
        if self.store is not None:
            with contextlib.suppress(sqlite3.Error, StoreError):
                await self.store.release_claims()
            await self.store.close()
            self.store = None
        log.info("daemon_stopped")
