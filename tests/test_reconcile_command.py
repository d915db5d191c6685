"""`fonzipd reconcile` as a user runs it: the real command in a subprocess, the simulator
over loopback, alone or handing the run to a real daemon subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from fonzipd.clock import SYSTEM_CLOCK
from fonzipd.days import day_window
from fonzipd.kinds import Kind
from fonzipd.reconcile_command import _through_daemon
from fonzipd.records import Source
from fonzipd.simulator import Simulator
from fonzipd.state import Store
from tests.daemon_process import DaemonProcess, write_config

pytestmark = pytest.mark.slow

RATE = 6000.0
TOKEN = "reconcile-command-token-0123456789"
ISTANBUL = ZoneInfo("Europe/Istanbul")
# fetch_wait is left at its default (1800 s): only --wait may bound these runs.
RECONCILER = """
[fetcher]
retry_initial = 0.05
retry_max = 0.2
[reconciler]
poll_interval = 0.1
kinds = ["donation"]
# Donations' list rows make whole records; these tests need the detail path (a detail
# that fails, Fonzip down while details are fetched), as every form answer takes.
records_from_lists = false
"""


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(seed=41, days=2, per_day=6, rate_per_minute=RATE) as s:
        yield s


def config(tmp_path: Path, sim: Simulator) -> Path:
    assert sim.base_url is not None
    return write_config(
        tmp_path / "config.toml",
        base_url=sim.base_url,
        token=TOKEN,
        rate=RATE,
        fonzip_extra="max_retries = 1",
        extra=RECONCILER,
    )


async def fonzipd(*args: str, cwd: Path, within: float = 120.0) -> tuple[int, str, str, float]:
    """Run ``fonzipd ARGS``; (exit code, stdout, stderr, seconds it took)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fonzipd",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), loop.time() - started


def paid_ids(sim: Simulator, day: dt.date) -> list[int]:
    start, end = day_window(day, ISTANBUL)
    return [
        r["id"]
        for r in sim.rows(Kind.DONATION)
        if r["transaction__payment_status"] == 3
        and start <= dt.datetime.fromisoformat(r["transaction__complete_date"]) < end
    ]


def list_line(table: str, day: dt.date, list_status: str) -> str:
    return next(
        x for x in table.splitlines() if x.split()[:3] == [day.isoformat(), "donation", list_status]
    )


def _detail_fails(sim: Simulator, day: dt.date) -> tuple[str, list[str]]:
    stuck = paid_ids(sim, day)[0]
    sim.faults.failing_details = [f"donation:{stuck}"]
    return "paid", [f"donation {stuck} still retrying", "HTTP 503", "1 not fetched"]


def _fonzip_goes_down(sim: Simulator, day: dt.date) -> tuple[str, list[str]]:
    sim.faults.down_after = 2  # the token and the paid list, then 503 to everything
    return "refund", ["listing failed", "HTTP 503"]


def _count_differs(sim: Simulator, day: dt.date) -> tuple[str, list[str]]:
    sim.faults.list_total_offset = 1
    n = len(paid_ids(sim, day))
    return "paid", [f"local {n} != Fonzip {n + 1}"]


def _list_errors(sim: Simulator, day: dt.date) -> tuple[str, list[str]]:
    sim.faults.failing_lists = ["donation:refund"]
    return "refund", ["listing failed", "HTTP 500"]


FAULTS: dict[str, Callable[[Simulator, dt.date], tuple[str, list[str]]]] = {
    "detail-fails-all-run": _detail_fails,
    "fonzip-down-mid-run": _fonzip_goes_down,
    "count-differs": _count_differs,
    "list-errors": _list_errors,
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_the_command_reports_a_day_it_cannot_verify_open_by_its_wait(
    tmp_path: Path, sim: Simulator, fault: str
) -> None:
    day = sim.end_date - dt.timedelta(days=1)
    path = config(tmp_path, sim)
    list_status, reasons = FAULTS[fault](sim, day)
    wait = 4.0
    code, out, err, took = await fonzipd(
        "reconcile",
        "--config",
        str(path),
        "--date",
        day.isoformat(),
        "--wait",
        str(wait),
        cwd=tmp_path,
    )
    assert code == 1, out + err
    # Python's start, the daemon's start and stop: well under 20 s; fetch_wait is 1800.
    assert took < wait + 20, took
    line = list_line(out, day, list_status)
    assert line.split()[9] == "open", line
    for reason in reasons:
        assert reason in line, line
    verdict = next(x for x in out.splitlines() if x.startswith(f"{day.isoformat()}: "))
    assert verdict.startswith(f"{day.isoformat()}: OPEN: "), verdict
    assert f"donation/{list_status}: " in verdict
    assert "nightly run checks open days again" in out


DYING_FETCHER = """
import sys
from fonzipd.cli import main
from fonzipd.state.inbox import Inbox

async def claim_many(self, limit):
    raise RuntimeError("injected fault")

Inbox.claim_many = claim_many  # how the fetch workers claim (together)
sys.exit(main(sys.argv[1:]))
"""


async def test_a_fetch_worker_that_dies_fails_the_command_at_once_saying_so(
    tmp_path: Path, sim: Simulator
) -> None:
    day = sim.end_date - dt.timedelta(days=1)
    path = config(tmp_path, sim)
    wait = 120.0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    started = SYSTEM_CLOCK.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        DYING_FETCHER,
        "reconcile",
        "--config",
        str(path),
        "--date",
        day.isoformat(),
        "--wait",
        str(wait),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            out_b, err_b = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    took = SYSTEM_CLOCK.monotonic() - started
    out = out_b.decode()
    assert proc.returncode == 1, out + err_b.decode()
    assert took < 30, took  # not by its --wait (120 s)
    verdict = next(x for x in out.splitlines() if x.startswith(f"{day.isoformat()}: "))
    assert verdict.startswith(f"{day.isoformat()}: OPEN: fonzipd stopped the run: fetcher-")
    assert "died: RuntimeError: injected fault" in verdict


# -- handed to a running daemon ---------------------------------------------------------------


@pytest.fixture
async def daemon(tmp_path: Path, sim: Simulator) -> AsyncIterator[DaemonProcess]:
    proc = DaemonProcess(config(tmp_path, sim), tmp_path)
    try:
        await proc.start()
        yield proc
    finally:
        proc.ensure_stopped()


def request_rows(tmp_path: Path) -> list[dict[str, object]]:
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM reconcile_requests ORDER BY id")]


def refused(sim: Simulator, path: str) -> bool:
    """True once the simulator has answered ``path`` with a 503."""
    return any(r.path == path and r.status == 503 for r in sim.requests)


async def wait_for(check: Callable[[], object], within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.05)


async def logged(daemon: DaemonProcess, event: str) -> list[dict[str, object]]:
    """The live daemon's ``event`` log lines, once it has written one.

    fonzipd writes its log in batches, up to 0.1 s after the line was logged
    (fonzipd/logs.py): a line can trail the database change a test saw first.
    """
    await wait_for(lambda: daemon.find(event) is not None, within=10)
    return [e for e in daemon.events() if e.get("event") == event]


async def test_the_daemon_runs_the_request_and_the_command_reports_the_open_day_by_its_wait(
    tmp_path: Path, sim: Simulator, daemon: DaemonProcess
) -> None:
    day = sim.end_date - dt.timedelta(days=1)
    stuck = paid_ids(sim, day)[0]
    sim.faults.failing_details = [f"donation:{stuck}"]
    wait = 4.0
    code, out, err, took = await fonzipd(
        "reconcile",
        "--config",
        str(daemon.config),
        "--date",
        day.isoformat(),
        "--wait",
        str(wait),
        cwd=tmp_path,
    )
    assert code == 1, out + err
    assert took < wait + 20, took
    line = list_line(out, day, "paid")
    assert line.split()[9] == "open", line
    assert f"donation {stuck} still retrying" in line
    assert "HTTP 503" in line
    (served,) = await logged(daemon, "reconcile_request_served")
    assert served["outcome"] == "open"
    # The verdict is in the books: status and /metrics show the open day.
    code, out, err, _ = await fonzipd("status", "--config", str(daemon.config), cwd=tmp_path)
    assert f"open day: {day.isoformat()}: donation/paid:" in out, out + err
    assert str(stuck) in out
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{daemon.port}/metrics") as resp,
    ):
        metrics = await resp.text()
    assert "fonzipd_reconcile_open_days 1.0" in metrics


async def test_a_daemon_killed_mid_request_bounds_the_wait_and_the_next_daemon_runs_it(
    tmp_path: Path, sim: Simulator, daemon: DaemonProcess
) -> None:
    day = sim.end_date - dt.timedelta(days=1)
    stuck = paid_ids(sim, day)[0]
    sim.faults.failing_details = [f"donation:{stuck}"]  # keeps the run going
    wait = 4.0
    command = asyncio.create_task(
        fonzipd(
            "reconcile",
            "--config",
            str(daemon.config),
            "--date",
            day.isoformat(),
            "--wait",
            str(wait),
            cwd=tmp_path,
        )
    )
    # Killed once Fonzip has answered the stuck detail 503: the run is under way, and the
    # daemon has stored its token (it asks for one only when the run starts). A kill
    # between Fonzip issuing the token and fonzipd storing it would lose the key's one
    # live token, and the next daemon would wait out its hour of 409s.
    await wait_for(lambda: refused(sim, f"/api/v2/donation/{stuck}"))
    assert request_rows(tmp_path)[0]["started_at"] is not None
    daemon.kill()  # claimed, not finished
    code, out, err, took = await command
    assert code == 1, out + err
    assert took < wait + 20, took
    assert "the daemon did not finish request 1 within --wait (claimed)" in out
    assert request_rows(tmp_path)[0]["finished_at"] is None

    # The next daemon claims it again and runs it (Fonzip answers by now).
    sim.faults.failing_details = []
    await daemon.start()
    await wait_for(lambda: request_rows(tmp_path)[0]["finished_at"] is not None, within=30)
    assert await logged(daemon, "reconcile_requests_reclaimed")
    assert request_rows(tmp_path)[0]["outcome"] == "closed"


async def test_a_backfill_stops_following_a_daemon_whose_heartbeat_stopped(
    tmp_path: Path, sim: Simulator, daemon: DaemonProcess
) -> None:
    # A backfill has no --wait: the daemon's heartbeat is what tells it is gone.
    day = sim.end_date - dt.timedelta(days=1)
    stuck = paid_ids(sim, day)[0]
    sim.faults.failing_details = [f"donation:{stuck}"]  # keeps the run going
    command = asyncio.create_task(
        fonzipd(
            "backfill",
            "--config",
            str(daemon.config),
            "--from",
            day.isoformat(),
            "--to",
            day.isoformat(),
            cwd=tmp_path,
            within=60,
        )
    )
    await wait_for(lambda: bool(request_rows(tmp_path)) and request_rows(tmp_path)[0]["started_at"])
    daemon.kill()
    # What the dead daemon's heartbeat looks like once its time is up (2 x 60 s + 10 s).
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=131)).isoformat()
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db, db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'heartbeat'", (old,))
    code, out, err, _ = await command
    assert code == 1, out + err
    assert "the daemon stopped (no heartbeat) before finishing request 1 (claimed)" in out


@contextlib.contextmanager
def ctrl_c_reaches_children() -> Iterator[None]:
    """Commands started inside take Ctrl-C's default action, as from a terminal.

    A test run started in the background has SIGINT ignored, and exec passes an
    ignored signal on: the command would shrug off the test's Ctrl-C.
    """
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


async def stop_outside_a_write(daemon: DaemonProcess) -> None:
    """SIGSTOP the daemon at a moment it holds no write lock on the state database.

    Its scheduler claims requests in a write transaction every ``poll_interval``;
    stopped inside one (about 1 stop in 17 under load), it would keep every other
    writer, the command's request included, out until SIGCONT.
    """
    assert daemon.proc is not None
    async with asyncio.timeout(20):
        while True:
            daemon.proc.send_signal(signal.SIGSTOP)
            # Returns once every thread has stopped.
            await asyncio.to_thread(os.waitpid, daemon.proc.pid, os.WUNTRACED)
            with contextlib.closing(
                sqlite3.connect(daemon.workdir / "state.db", timeout=0.2, isolation_level=None)
            ) as db:
                try:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("ROLLBACK")
                    return
                except sqlite3.OperationalError:
                    pass  # stopped inside a write: let it finish, then stop it again
            daemon.proc.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.05)


async def test_ctrl_c_withdraws_the_request(
    tmp_path: Path, sim: Simulator, daemon: DaemonProcess
) -> None:
    day = sim.end_date - dt.timedelta(days=1)
    assert daemon.proc is not None
    await stop_outside_a_write(daemon)  # alive, holding its lock, claiming nothing
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with ctrl_c_reaches_children():
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fonzipd",
                "reconcile",
                "--config",
                str(daemon.config),
                "--date",
                day.isoformat(),
                cwd=tmp_path,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        await wait_for(lambda: bool(request_rows(tmp_path)))
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            await proc.communicate()
        assert proc.returncode == 130
        (row,) = request_rows(tmp_path)
        assert row["outcome"] == "withdrawn"
        assert row["started_at"] is None
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    # The daemon takes requests in order: the next one runs, the withdrawn one never.
    code, out, err, _ = await fonzipd(
        "reconcile",
        "--config",
        str(daemon.config),
        "--date",
        day.isoformat(),
        "--dry-run",
        "--wait",
        "20",
        cwd=tmp_path,
    )
    assert code == 1, out + err
    assert "dry run" in out
    served = [e["request"] for e in await logged(daemon, "reconcile_request_served")]
    assert served == [2]
    assert [r["outcome"] for r in request_rows(tmp_path)] == ["withdrawn", "open"]


async def test_ctrl_c_while_the_request_is_being_recorded_withdraws_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C (asyncio.run cancels the command) lands after the request's commit and
    # before the command has its id: the window the test above aims at, held open.
    store = await Store.open(tmp_path / "state.db")
    recorded, resume = asyncio.Event(), asyncio.Event()
    add = store.books.add_request

    async def add_request(*args: Any, **kwargs: Any) -> int:
        request_id = await add(*args, **kwargs)
        recorded.set()
        await resume.wait()
        return request_id

    monkeypatch.setattr(store.books, "add_request", add_request)
    try:
        command = asyncio.create_task(
            _through_daemon(
                store,
                [dt.date(2026, 11, 1)],
                [Kind.DONATION],
                Source.RECONCILE,
                RATE,
                None,
                SYSTEM_CLOCK,
                60.0,
            )
        )
        await asyncio.wait_for(recorded.wait(), 10)
        command.cancel()
        resume.set()
        with pytest.raises(asyncio.CancelledError):
            await command
    finally:
        await store.close()
    (row,) = request_rows(tmp_path)
    assert row["outcome"] == "withdrawn"


async def test_a_dry_run_is_handed_to_the_daemon_and_lists_under_its_rate_limit(
    tmp_path: Path, sim: Simulator, daemon: DaemonProcess
) -> None:
    day = sim.end_date - dt.timedelta(days=1)
    before = len(sim.requests)
    code, out, err, _ = await fonzipd(
        "reconcile",
        "--config",
        str(daemon.config),
        "--date",
        day.isoformat(),
        "--dry-run",
        "--wait",
        "20",
        cwd=tmp_path,
    )
    assert code == 1, out + err  # everything is missing locally
    assert "(dry run: nothing was queued or recorded)" in out
    assert "dry_run_open" in list_line(out, day, "paid")
    (served,) = await logged(daemon, "reconcile_request_served")
    assert served["dry_run"] is True
    # Listed once, by the daemon (its limiter), one page per list; nothing fetched.
    made = [r.path for r in sim.requests[before:] if r.path != "/api/v2/token"]
    assert made == ["/api/v2/donations"] * 3, made
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
        assert db.execute("SELECT count(*) FROM reconcile_runs").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM inbox").fetchone()[0] == 0


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf"])
async def test_a_wait_that_is_not_a_positive_number_is_refused(
    tmp_path: Path, sim: Simulator, value: str
) -> None:
    path = config(tmp_path, sim)
    code, out, err, _ = await fonzipd(
        "reconcile", "--config", str(path), f"--wait={value}", cwd=tmp_path
    )
    assert code == 2, out + err
    assert f"--wait: not a positive number of seconds: {value!r}" in err
    assert not (tmp_path / "state.db").exists()  # refused before anything was opened


async def test_a_backfill_through_the_daemon_shows_the_bar_and_a_line_per_day(
    tmp_path: Path, sim: Simulator, daemon: DaemonProcess
) -> None:
    # The progress line is drawn only on a terminal: give the command one.
    main_fd, term_fd = os.openpty()
    drawn = bytearray()
    loop = asyncio.get_running_loop()

    def read() -> None:
        with contextlib.suppress(OSError):
            drawn.extend(os.read(main_fd, 65536))

    loop.add_reader(main_fd, read)
    first, last = sim.end_date - dt.timedelta(days=1), sim.end_date
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fonzipd", "backfill", "--config", str(daemon.config),
        "--from", first.isoformat(), "--to", last.isoformat(),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=term_fd,
    )  # fmt: skip
    os.close(term_fd)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        await wait_for(lambda: b"\x1b[2K" in drawn)
    finally:
        loop.remove_reader(main_fd)
        os.close(main_fd)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    shown = drawn.decode(errors="replace")
    assert proc.returncode == 0, out.decode() + shown
    assert "the daemon is running: it runs this (request 1); Ctrl-C withdraws it" in shown
    assert "[....................] 0/2 days, " in shown
    assert "req/min" in shown
    # One line per day and the totals: no table unless --verbose.
    lines = out.decode().splitlines()
    assert [line.split()[0] for line in lines[:2]] == [first.isoformat(), last.isoformat()]
    assert all(line.endswith("closed") for line in lines[:2]), lines
    assert lines[2].startswith("2 day(s): 2 closed, 0 open; ")
    assert "outcome" not in out.decode()


async def test_ctrl_c_stops_a_backfill_at_once_and_the_same_command_resumes(
    tmp_path: Path, sim: Simulator
) -> None:
    assert sim.base_url is not None
    # Slow enough (5 requests a second) to be interrupted after its first day.
    path = write_config(
        tmp_path / "config.toml", base_url=sim.base_url, token=TOKEN, rate=300, extra=RECONCILER
    )
    first, last = sim.end_date - dt.timedelta(days=1), sim.end_date
    args = (
        "backfill",
        "--config",
        str(path),
        "--from",
        first.isoformat(),
        "--to",
        last.isoformat(),
    )
    with ctrl_c_reaches_children():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fonzipd", *args, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    try:

        def one_day_done() -> bool:
            try:
                with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
                    return bool(db.execute("SELECT count(*) FROM reconcile_days").fetchone()[0])
            except sqlite3.Error:
                return False

        await wait_for(one_day_done, within=60)
        proc.send_signal(signal.SIGINT)  # one Ctrl-C
        stopped = asyncio.get_running_loop().time()
        await asyncio.wait_for(proc.wait(), 20)
        took = asyncio.get_running_loop().time() - stopped
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130
    assert took < 10, f"Ctrl-C took {took:.1f} s"
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
        done_before = db.execute("SELECT count(*) FROM reconcile_days").fetchone()[0]
    assert done_before < 2, "interrupted before the end"
    code, out, err, _ = await fonzipd(*args, cwd=tmp_path)
    assert code == 0, out + err
    assert out.splitlines()[2].startswith("2 day(s): 2 closed, 0 open; ")
    with contextlib.closing(sqlite3.connect(tmp_path / "fonzip.db")) as db:
        rows = db.execute("SELECT count(*), count(DISTINCT fonzip_id) FROM records").fetchone()
        history = db.execute("SELECT count(*) FROM record_history").fetchone()[0]
    assert rows[0] == rows[1] == history > 0, "each record delivered once"
