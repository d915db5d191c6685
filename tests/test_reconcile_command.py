"""`fonzipd reconcile` as a user runs it: the real command in a subprocess, the simulator
over loopback, alone or handing the run to a real daemon subprocess."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from fonzipd.days import day_window
from fonzipd.kinds import Kind
from fonzipd.simulator import Simulator
from tests.daemon_process import write_config

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
