"""Tests of the daemon: start order, readiness, one daemon per database, SIGHUP reload,
supervision of its tasks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog.testing

from fonzipd.app import Daemon
from fonzipd.config import load_config
from fonzipd.kinds import Kind
from fonzipd.notify import Notifier
from fonzipd.scheduler import ReconcileScheduler
from fonzipd.simulator import Simulator
from fonzipd.state import StoreError
from fonzipd.state.inbox import Inbox
from tests.daemon_process import write_config as write_daemon_config
from tests.support import until

TOKEN = "reload-test-token-0123456789"


def write_config(path: Path, base_url: str, sinks: str, *, port: int = 0) -> None:
    path.write_text(
        f"""
[fonzip]
base_url = "{base_url}"
client_id = "sim-client"
client_secret = "sim-secret"
[listener]
host = "127.0.0.1"
port = {port}
auth_token = "{TOKEN}"
[state]
path = "state.db"
[reconciler]
enabled = false
[logging]
level = "warning"
{sinks}
"""
    )


ARCHIVE = '[sinks.archive]\ntype = "sqlite"\npath = "archive.db"\nflush_interval = 0\n'
SHEETS = '[sinks.sheets]\ntype = "csv"\ndirectory = "csv"\nflush_interval = 0\n'


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()


async def next_message(sock: socket.socket) -> dict[str, str]:
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), 10)
    return dict(line.split("=", 1) for line in data.decode().split("\n"))


async def until_delivered(daemon: Daemon, sink: str, count: int) -> None:
    assert daemon.dispatcher is not None
    deadline = time.monotonic() + 15
    while daemon.dispatcher.runners[sink].delivered < count:
        assert time.monotonic() < deadline, f"{sink} did not get {count} record(s)"
        await asyncio.sleep(0.05)


async def test_sighup_adds_and_removes_sinks_applies_log_level_and_names_restart_keys(
    tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    path, sock = notify_socket
    config = tmp_path / "config.toml"
    async with Simulator(seed=1, days=1, per_day=5, rate_per_minute=6000) as sim:
        base = await sim.start()
        write_config(config, base, ARCHIVE)
        daemon = Daemon(
            load_config(config), config_path=config, notifier=Notifier(path), drain_timeout=2
        )
        running = asyncio.create_task(daemon.run())
        try:
            ready = await next_message(sock)
            assert ready["READY"] == "1"
            assert ready["STATUS"] == "inbox 0; outbox archive 0"
            sim.configure_webhook_target(f"http://127.0.0.1:{daemon.port}/fonzip/webhook", TOKEN)
            await sim.create_event(Kind.DONATION)
            await until_delivered(daemon, "archive", 1)

            # Add a sink, change the log level and (needing a restart) the port.
            write_config(config, base, ARCHIVE + SHEETS, port=18787)
            config.write_text(config.read_text().replace('"warning"', '"error"'))
            os.kill(os.getpid(), signal.SIGHUP)
            assert (await next_message(sock))["RELOADING"] == "1"
            assert (await next_message(sock))["READY"] == "1"
            assert daemon.dispatcher is not None
            assert set(daemon.dispatcher.runners) == {"archive", "sheets"}
            assert daemon.settings.logging.level == "error"
            assert daemon.settings.listener.port == 0  # not applied: needs a restart
            await sim.create_event(Kind.TICKET_SALE)
            await until_delivered(daemon, "archive", 2)
            await until_delivered(daemon, "sheets", 1)

            # Remove the first sink: nothing more is queued for it.
            write_config(config, base, SHEETS)
            report = await daemon.reload()
            assert report["sinks_removed"] == ["archive"]
            assert report["restart_required"] == []
            assert set(daemon.dispatcher.runners) == {"sheets"}
            await sim.create_event(Kind.DONATION)
            await until_delivered(daemon, "sheets", 2)
            assert daemon.store is not None
            assert (await daemon.store.outbox.sink_status(["archive"]))["archive"]["pending"] == 0
        finally:
            daemon.request_stop()
            await running
    while "STOPPING" not in (msg := await next_message(sock)):
        assert "READY" in msg or "RELOADING" in msg or "STATUS" in msg


async def test_a_broken_file_keeps_the_running_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    async with Simulator(seed=1, days=1, per_day=5) as sim:
        write_config(config, await sim.start(), ARCHIVE)
        daemon = Daemon(load_config(config), config_path=config, notifier=Notifier(None))
        await daemon.start()
        try:
            config.write_text("[listener\n")
            report = await daemon.reload()
            assert "not valid TOML" in report["error"]
            assert daemon.dispatcher is not None
            assert set(daemon.dispatcher.runners) == {"archive"}
            write_config(config, await sim.start(), ARCHIVE.replace("flush_interval = 0", "x = 1"))
            report = await daemon.reload()
            assert "x" in report["error"]
            assert set(daemon.dispatcher.runners) == {"archive"}
        finally:
            await daemon.stop()


async def test_readiness_reports_database_inbox_and_token_state(tmp_path: Path) -> None:
    async with Simulator(seed=1, days=1, per_day=12) as sim:
        cfg = tmp_path / "config.toml"
        write_config(cfg, await sim.start(), ARCHIVE)
        daemon = Daemon(load_config(cfg), notifier=Notifier(None))
        await daemon.start()
        try:
            ok, details = await daemon.readiness()
            assert ok
            assert details["database"] == "writable"
            assert details["inbox"]["pending"] == 0
            assert details["fonzip_token"] == "not requested yet"
            fid = int(sim.objects(Kind.DONATION)[0]["id"])
            assert daemon.client is not None
            await daemon.client.fetch_detail(Kind.DONATION, fid)
            ok, details = await daemon.readiness()
            assert details["fonzip_token"].startswith("valid until ")
        finally:
            await daemon.stop()


async def test_a_failed_group_commit_turns_readyz_503_at_once_until_a_commit_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Simulator(seed=1, days=1, per_day=5) as sim:
        cfg = tmp_path / "config.toml"
        write_config(cfg, await sim.start(), ARCHIVE)
        daemon = Daemon(load_config(cfg), notifier=Notifier(None))
        await daemon.start()
        try:
            assert daemon.store is not None
            assert daemon.port is not None
            inbox = daemon.store.inbox
            real = inbox.add_events

            async def full(events: Any) -> Any:
                raise sqlite3.OperationalError("database or disk is full")

            async def readyz() -> tuple[int, Any]:
                async with aiohttp.ClientSession() as session:
                    resp = await session.get(f"http://127.0.0.1:{daemon.port}/readyz")
                    return resp.status, (await resp.json())["database"]

            assert await post_webhook(daemon.port, 101) == 200
            assert await readyz() == (200, "writable")  # a commit just vouched for it
            monkeypatch.setattr(inbox, "add_events", full)
            assert await post_webhook(daemon.port, 102) == 503
            # At once: neither the commit before nor the readiness read of a moment ago
            # vouches for a database that just refused a write.
            assert await readyz() == (503, "not writable: database or disk is full")
            monkeypatch.setattr(inbox, "add_events", real)
            assert await post_webhook(daemon.port, 103) == 200
            assert await readyz() == (200, "writable")
        finally:
            await daemon.stop()


async def test_a_second_daemon_on_the_same_state_database_is_refused(tmp_path: Path) -> None:
    async with Simulator(seed=1, days=1, per_day=12) as sim:
        cfg = tmp_path / "config.toml"
        write_config(cfg, await sim.start(), ARCHIVE)
        first = Daemon(load_config(cfg), notifier=Notifier(None))
        await first.start()
        try:
            second = Daemon(load_config(cfg), notifier=Notifier(None))
            with pytest.raises(StoreError, match="another fonzipd daemon is running"):
                await second.start()
        finally:
            await first.stop()


# -- supervision: a component that dies stops the daemon, loudly ----------------------------


class Injected(Exception):
    """The fault a test injects into one component."""


def once(real: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``real``, except that its first call raises :class:`Injected`."""
    calls = 0

    async def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Injected("injected fault")
        return await real(*args, **kwargs)

    return call


async def raising(*_: Any, **__: Any) -> None:
    raise Injected("injected fault")


async def post_webhook(port: int, fid: int) -> int:
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(10):  # a hanging request fails the test
            resp = await session.post(
                f"http://127.0.0.1:{port}/fonzip/webhook",
                json={"id": fid, "webhook_id": 1, "operation": 1, "status": 3},
                headers={"X-FZ-Auth-Token": TOKEN},
            )
            return resp.status


@pytest.mark.parametrize(
    "component",
    ["fetcher", "sink-archive", "group-committer", "reconciler", "notify-status", "housekeeping"],
)
async def test_a_component_that_dies_is_logged_once_fails_readiness_and_stops_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, component: str
) -> None:
    if component == "reconciler":
        monkeypatch.setattr(ReconcileScheduler, "run", raising)
    if component == "notify-status":
        monkeypatch.setattr(Daemon, "_report_status", raising)
    async with Simulator(seed=1, days=1, per_day=5) as sim:
        cfg = tmp_path / "config.toml"
        write_config(cfg, await sim.start(), ARCHIVE)
        daemon = Daemon(load_config(cfg), notifier=Notifier(None))
        with structlog.testing.capture_logs() as logs:
            if component == "housekeeping":
                monkeypatch.setattr(Inbox, "prune", raising)
            await daemon.start()
            try:
                assert daemon.store is not None
                assert daemon.port is not None
                if component == "fetcher":
                    store = daemon.store.inbox
                    monkeypatch.setattr(store, "claim_many", once(store.claim_many))
                    assert daemon.fetcher is not None
                    daemon.fetcher.wake()
                if component == "sink-archive":
                    outbox = daemon.store.outbox
                    monkeypatch.setattr(outbox, "batch", once(outbox.batch))
                    assert daemon.dispatcher is not None
                    daemon.dispatcher.wake()
                if component == "group-committer":
                    inbox = daemon.store.inbox
                    monkeypatch.setattr(inbox, "add_events", once(inbox.add_events))
                    # The request in the batch that killed the committer, and every
                    # later one, gets 503 at once: none waits forever.
                    assert await post_webhook(daemon.port, 101) == 503
                    assert await post_webhook(daemon.port, 102) == 503

                async def dead() -> bool:
                    return bool(daemon.failed)

                await until(dead)
                failed = dict(daemon.failed)
                if component != "fetcher":
                    assert len(failed) == 1, failed
                # Fetch workers idle together share one claim: each one waiting on the
                # claim that failed dies of it, and each is reported once.
                assert all(name.startswith(component) for name in failed)
                assert set(failed.values()) == {"Injected: injected fault"}
                assert daemon.stopping  # run() drains and exits 70 from here
                async with aiohttp.ClientSession() as session:
                    resp = await session.get(f"http://127.0.0.1:{daemon.port}/readyz")
                    assert resp.status == 503
                    body = await resp.json()
                assert body["components"] == dict.fromkeys(failed, "died: Injected: injected fault")
            finally:
                await daemon.stop()
    died = [e for e in logs if e["event"] == "component_died"]
    assert sorted(e["component"] for e in died) == sorted(daemon.failed), died
    for one in died:
        assert one["log_level"] == "error"
        assert "Injected: injected fault" in one["traceback"]
        assert "Traceback (most recent call last)" in one["traceback"]


WRAPPER = """
import sys
from fonzipd.cli import main
from fonzipd.state.inbox import Inbox

async def claim_many(self, limit):
    raise RuntimeError("injected fault")

Inbox.claim_many = claim_many  # how the fetch workers claim (together)
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


async def test_the_real_daemon_exits_70_when_a_component_dies(tmp_path: Path) -> None:
    async with Simulator(seed=1, days=1, per_day=5) as sim:
        cfg = write_daemon_config(tmp_path / "config.toml", base_url=await sim.start(), token=TOKEN)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRAPPER,
            str(cfg),
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    assert proc.returncode == 70, (out, err)
    # The log goes to stderr, one JSON object a line, as journald receives it.
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    died = [e for e in events if e["event"] == "component_died"]
    # Every fetch worker claims at once: each dies of it and is reported once.
    assert sorted(e["component"] for e in died) == [f"fetcher-{n}" for n in range(4)]
    assert all("RuntimeError: injected fault" in e["traceback"] for e in died)
    stop = next(e for e in events if e["event"] == "shutdown_requested")
    assert stop["reason"] == "component died"
    assert events[-1]["event"] == "daemon_stopped"
    assert "fonzipd: died: fetcher-0, fetcher-1, fetcher-2, fetcher-3" in err.decode()


# -- retention: the housekeeping drops old Fonzip objects ----------------------------------


async def test_housekeeping_drops_the_data_of_records_older_than_keep_data_days(
    tmp_path: Path,
) -> None:
    from tests.support import FakeClock, make_record

    clock = FakeClock()
    cfg = tmp_path / "config.toml"
    write_config(cfg, "http://127.0.0.1:9/api/v2", ARCHIVE)
    cfg.write_text(
        cfg.read_text().replace('path = "state.db"', 'path = "state.db"\nkeep_data_days = 30')
    )
    daemon = Daemon(
        load_config(cfg), clock=clock, listen=False, schedule=False, notifier=Notifier(None)
    )
    await daemon.start()
    try:
        store = daemon.store
        assert store is not None
        await store.records.apply_record(None, make_record(1), [])
        clock.advance(29 * 86400)
        await store.records.apply_record(None, make_record(2), [])
        await daemon.housekeep()
        first = await store.records.get(Kind.DONATION, 1)
        assert first is not None
        assert first.data["name"] == "Ayşe Yılmaz"  # 29 days: kept
        clock.advance(2 * 86400)
        await daemon.housekeep()
        first = await store.records.get(Kind.DONATION, 1)
        second = await store.records.get(Kind.DONATION, 2)
        assert first is not None
        assert second is not None
        assert first.data == {}  # 31 days: the Fonzip object is gone
        assert (first.status, first.person.email) == ("succeeded", "ayse@example.com")
        assert second.data["name"] == "Ayşe Yılmaz"  # 2 days
    finally:
        await daemon.stop()


async def test_a_sink_only_the_operator_can_fix_is_said_once_fails_readiness_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOOK_TOKEN_APP_TEST", raising=False)
    hook = (
        '[sinks.hook]\ntype = "http"\nurl = "http://127.0.0.1:9/hook"\n'
        'secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="\nretry_initial = 0.01\nretry_max = 0.02\n'
        'headers = { Authorization = "env:HOOK_TOKEN_APP_TEST" }\n'
    )
    async with Simulator(seed=1, days=1, per_day=5) as sim:
        cfg = tmp_path / "config.toml"
        write_config(cfg, await sim.start(), ARCHIVE + hook)
        daemon = Daemon(load_config(cfg), notifier=Notifier(None))
        with structlog.testing.capture_logs() as logs:
            await daemon.start()
            try:
                assert daemon.dispatcher is not None
                assert daemon.store is not None
                runner = daemon.dispatcher.runners["hook"]

                async def retried_often() -> bool:
                    return runner._failures >= 5

                await until(retried_often)
                ok, details = await daemon.readiness()
                assert not ok
                assert details["sinks"]["hook"].startswith(
                    "needs the operator: open: sinks.hook.headers.Authorization: the "
                    "environment variable HOOK_TOKEN_APP_TEST is not set"
                )
                assert "credential sinks.hook.headers.Authorization" in details["sinks"]["hook"]
                status = await daemon.store.outbox.sink_status(["hook"])
                assert status["hook"]["last_error"].startswith("needs the operator: open: ")

                monkeypatch.setenv("HOOK_TOKEN_APP_TEST", "Bearer fixed")

                async def recovered() -> bool:
                    return runner.needs_operator is None

                await until(recovered)
                daemon._health_read = None  # the next call reads afresh
                ok, details = await daemon.readiness()
                assert ok, details
            finally:
                await daemon.stop()
    said = [e for e in logs if e["event"] == "sink_needs_operator"]
    assert len(said) == 1, said
    assert said[0]["log_level"] == "error"
    assert [e["event"] for e in logs].count("sink_recovered") == 1
    assert not [e for e in logs if e["event"] == "sink_open_failed"]
