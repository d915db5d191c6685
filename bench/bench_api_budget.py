"""Benchmark: the API budget of a backfill of ~10,000 records under Fonzip's 240/minute.

The simulated account has all six kinds: ``--days`` business days of ``--per-day``
donations, membership fees, ticket sales, form answers and e-card sales and
``per_day // 5`` campaigns each day (with the simulator's refunds and failures), about
10,000 records by default. Two runs, each against its own simulator and state database:

1. The whole backfill with both sides at 600,000 requests/minute (never binding): every
   API request is counted from the simulator's request log (token, list pages,
   details) against the lower bound taken from the simulator's truth (not fonzipd's own
   counts, which would make under-queuing look efficient): the pages the day's lists
   need (one per 100 rows, at least one per list) plus one detail per distinct record
   the lists hold. Then every one of those records must be stored, with the status its
   list gives, and have reached the sink.
2. A bounded slice of the same backfill at the real limit (simulator 240/minute with
   429 above it, fonzipd ``requests_per_minute = 240``, i.e. 228 with its 5% margin):
   ``--slice`` seconds from the first request, then stopped. Measured from the
   simulator's log: requests per minute achieved, the most in any 60-s window, 429s.

What the whole backfill would take at 240/minute is derived (not measured): the
requests of run 1 at the achieved rate of run 2.

    .venv/bin/python bench/bench_api_budget.py [--days 8] [--per-day 240] [--slice 180]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import os
import sqlite3
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fonzipd import logs
from fonzipd.app import Daemon
from fonzipd.config import ConfigWarning, settings_from_dict
from fonzipd.days import day_window
from fonzipd.kinds import Kind
from fonzipd.reconciler import DayReport, all_days
from fonzipd.records import Source
from fonzipd.simulator import RequestLog, Simulator

FAST_RATE = 600_000.0
FONZIP_RATE = 240.0
MARGIN = 0.05
FULL_DEADLINE = 1800.0
"""The fast run gives up after this many seconds."""
LIST_STATUS: dict[str, str | None] = {
    "paid": "succeeded",
    "refund": "refunded",
    "failed": "failed",
    "answer": "answered",
    "waiting_approval": "waiting_approval",
    "rejected": "rejected",
    "created": None,  # campaigns: any status
}
"""The status a record in each list has once fonzipd stores it (README, API reference)."""


def _settings(base_url: str, tmp: Path, rate: float) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # 600,000/min: a simulator only
        return settings_from_dict(
            {
                "fonzip": {
                    "base_url": base_url,
                    "client_id": "sim-client",
                    "client_secret": "sim-secret",
                    "requests_per_minute": rate,
                    "rate_margin": MARGIN,
                },
                "state": {"path": "state.db"},
                "fetcher": {"concurrency": 8},
                "logging": {"level": "info", "format": "json"},
                "sinks": {"archive": {"type": "sqlite", "path": "archive.db"}},
            },
            base_dir=tmp,
            origin="(bench)",
        )


def _category(r: RequestLog) -> str:
    if r.path.endswith("/token"):
        return "token"
    tail = r.path.rstrip("/").rsplit("/", 1)[-1]
    return "detail" if tail.isdigit() else "list"


def _days(sim: Simulator, days: int) -> list[dt.date]:
    return all_days(sim.end_date - dt.timedelta(days=days - 1), sim.end_date)


async def full(days: int, per_day: int, seed: int) -> dict[str, Any]:
    async with Simulator(seed=seed, days=days, per_day=per_day, rate_per_minute=FAST_RATE) as sim:
        base_url = await sim.start()
        records = sum(len(sim.objects(k)) for k in Kind)
        with tempfile.TemporaryDirectory() as tmp:
            daemon = Daemon(_settings(base_url, Path(tmp), FAST_RATE), listen=False, schedule=False)
            await daemon.start()
            try:
                assert daemon.reconciler is not None
                started = time.perf_counter()
                reports: list[DayReport] = await asyncio.wait_for(
                    daemon.reconciler.run(
                        _days(sim, days),
                        run_key="bench-backfill",
                        source=Source.BACKFILL,
                        fetch_wait=FULL_DEADLINE,
                    ),
                    FULL_DEADLINE,
                )
                wall = time.perf_counter() - started
                pages, expected = _truth(sim, _days(sim, days), daemon.settings.fonzip.tz)
                assert daemon.store is not None
                wrong = 0
                for kind in Kind:
                    mine = {i: st for (k, i), st in expected.items() if k is kind}
                    have = await daemon.store.records.statuses(kind, mine)
                    wrong += sum(
                        1 for i, st in mine.items() if i not in have or st not in (None, have[i])
                    )
            finally:
                await daemon.stop()
            with contextlib.closing(sqlite3.connect(Path(tmp) / "archive.db")) as db:
                in_sink = {
                    (Kind(k), int(i)) for k, i in db.execute("SELECT kind, fonzip_id FROM records")
                }
        made = list(sim.requests)
    runs = [r for d in reports for r in d.runs]
    queued = sum(r.missing + r.changed + r.extra for r in runs)
    return {
        "records": records,
        "days": len(reports),
        "closed": sum(d.closed for d in reports),
        "lists": len(runs),
        "by": Counter(_category(r) for r in made),
        "statuses": Counter(r.status for r in made),
        "refused": Counter(
            f"{r.status} {r.path.rsplit('/', 2)[-2]}" for r in made if r.status >= 400
        ),
        "made": len(made),
        "pages": pages,
        "queued": queued,
        "expected": len(expected),
        "wrong": wrong,
        "not_in_sink": len(set(expected) - in_sink),
        "wall": wall,
    }


def _truth(
    sim: Simulator, days: Sequence[dt.date], tz: Any
) -> tuple[int, dict[tuple[Kind, int], str | None]]:
    """From the simulator: the list pages the days need, and every record the days'
    lists hold with the status fonzipd must store (None: any)."""
    pages = 0
    expected: dict[tuple[Kind, int], str | None] = {}
    for day in days:
        start, end = day_window(day, tz)
        for kind in Kind:
            for status in kind.list_statuses:
                dates = sim.list_dates(kind, status)
                # Fonzip's end bound is inclusive: the next midnight's rows come back.
                shown = sum(start <= w <= end for w in dates.values())
                pages += max(1, math.ceil(shown / 100))
                for i, w in dates.items():
                    if start <= w < end:
                        expected[(kind, i)] = LIST_STATUS[status]
    return pages, expected


async def bounded(days: int, per_day: int, seed: int, seconds: float) -> dict[str, Any]:
    async with Simulator(seed=seed, days=days, per_day=per_day, rate_per_minute=FONZIP_RATE) as sim:
        base_url = await sim.start()
        with tempfile.TemporaryDirectory() as tmp:
            daemon = Daemon(
                _settings(base_url, Path(tmp), FONZIP_RATE), listen=False, schedule=False
            )
            await daemon.start()
            try:
                assert daemon.reconciler is not None
                task = asyncio.create_task(
                    daemon.reconciler.run(
                        _days(sim, days), run_key="bench-slice", source=Source.BACKFILL
                    )
                )
                # The simulator's request log has no event to wait on: poll it.
                while not sim.requests:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                first = sim.requests[0].at
                # Run a little past the slice, so the slice's end is not the shutdown.
                await asyncio.sleep(seconds + 2)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            finally:
                await daemon.stop()
        made = list(sim.requests)
    end = first + dt.timedelta(seconds=seconds)
    inside = [r for r in made if r.at < end]
    times = [(r.at - first).total_seconds() for r in inside]
    return {
        "seconds": seconds,
        "count": len(inside),
        "by": Counter(_category(r) for r in inside),
        "too_many": sum(r.status == 429 for r in made),
        "errors": sum(r.status >= 400 for r in made),
        "max_window": _max_window(times),
        "per_minute": [
            sum(1 for t in times if m * 60 <= t < (m + 1) * 60)
            for m in range(math.ceil(seconds / 60))
        ],
    }


def _max_window(times: Sequence[float]) -> int:
    """The most requests in any 60-s window (sliding, starting at each request)."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + 60:
            j += 1
        best = max(best, j - i)
    return best


async def bench(days: int, per_day: int, seed: int, seconds: float) -> None:
    logs.configure("info", "json")
    f = await full(days, per_day, seed)
    s = await bounded(days, per_day, seed, seconds)
    by = f["by"]
    bound = f["pages"] + f["expected"]
    print(
        f"account: {days} days x (5 kinds x {per_day} + {per_day // 5} campaigns)"
        f" = {f['records']} records (all six kinds, with refunds and failures)"
    )
    print(
        f"1. whole backfill, both sides at {FAST_RATE:,.0f}/min: {f['wall']:.1f} s,"
        f" {f['closed']}/{f['days']} days closed, {f['lists']} lists"
    )
    print(
        f"   requests made: {f['made']} (list pages {by['list']}, details {by['detail']},"
        f" token {by['token']}); statuses {dict(sorted(f['statuses'].items()))}"
    )
    print(f"   refused, by status and endpoint: {dict(f['refused'])}")
    print(
        f"   lower bound (simulator's truth): {bound} (list pages {f['pages']} +"
        f" {f['expected']} records the lists hold; fonzipd queued {f['queued']};"
        f" records in the account {f['records']}); made / bound = {f['made'] / bound:.3f}"
    )
    print(
        f"   arrived: {f['expected'] - f['wrong']}/{f['expected']} stored with their list's"
        f" status; {f['expected'] - f['not_in_sink']}/{f['expected']} in the sink"
    )
    effective = FONZIP_RATE * (1 - MARGIN)
    rate = s["count"] / (s["seconds"] / 60)
    sb = s["by"]
    print(
        f"2. slice at the limit (simulator {FONZIP_RATE:.0f}/min, fonzipd"
        f" requests_per_minute {FONZIP_RATE:.0f} = {effective:.0f} effective):"
        f" {s['count']} requests in the first {s['seconds']:.0f} s (list {sb['list']},"
        f" detail {sb['detail']}, token {sb['token']})"
    )
    print(
        f"   achieved {rate:.1f}/min = {rate / FONZIP_RATE:.1%} of {FONZIP_RATE:.0f}"
        f" ({rate / effective:.1%} of {effective:.0f}); per minute {s['per_minute']};"
        f" most in any 60-s window {s['max_window']}"
    )
    print(f"   429s from the simulator: {s['too_many']}; any status >= 400: {s['errors']}")
    print(
        f"derived (not measured): the whole backfill at 240/min would take"
        f" {f['made'] / rate:.1f} min at the achieved rate ({f['made']} requests),"
        f" lower bound {bound / (FONZIP_RATE):.1f} min at a full 240/min"
    )
    print(f"(Python {sys.version.split()[0]}, nproc {os.cpu_count()})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=8)
    p.add_argument("--per-day", type=int, default=240)
    p.add_argument("--slice", type=float, default=180.0, help="seconds at the real limit")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    # The daemon logs as in production (JSON, info) to stderr: into /dev/null here.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        asyncio.run(bench(args.days, args.per_day, args.seed, args.slice))


if __name__ == "__main__":
    main()
