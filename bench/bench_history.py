"""Benchmark: history from list rows, against the simulator at Fonzip's real 240/minute.

Three measurements, each against its own simulator and state database, each next to
the detail path (``reconciler.records_from_lists = false``, one detail request per
record, as before issue 14) measured in the same run:

1. **Backfill** of ``--days`` days of ``--per-day`` donations (10,000 by default):
   the simulator at 240/minute with 429 above it, fonzipd at ``requests_per_minute =
   240`` (228 with its 5% margin). Requests counted from the simulator's log, wall
   time measured. The detail path is run with both sides at 600,000/minute (its
   10,000 requests would take 45 minutes at the limit) and its time at 228/minute is
   derived from its request count.
2. **Reconcile** of one day of ``--day-records`` donations with ``--missing`` of them
   not stored locally (the rest stored from their details beforehand), at 240/minute;
   the detail path likewise, at 240/minute too.
3. **All six kinds** (``--mix-days`` days of ``--mix-per-day`` of each kind, as
   bench_api_budget.py): requests of a backfill with both paths, at 600,000/minute;
   form answers still cost one detail each (their rows have no currency).

After every run each stored record is compared, field for field on the normalized
fields (status, amount, currency, occurred_at, business_date, person), with what the
detail path makes of the simulator's detail of the same object; a difference fails
the benchmark.

    .venv/bin/python bench/bench_history.py [--days 10] [--per-day 1000] [--skip-mix]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fonzipd import logs
from fonzipd.app import Daemon
from fonzipd.config import ConfigWarning, Settings, settings_from_dict
from fonzipd.fonzip.endpoints import ECARD_FIELDS_FROM_LIST, Detail
from fonzipd.fonzip.list_rows import FIELDS, is_list_shape
from fonzipd.fonzip.normalizer import normalize
from fonzipd.kinds import Kind
from fonzipd.reconciler import all_days
from fonzipd.records import Record, Source
from fonzipd.simulator import Simulator

FAST_RATE = 600_000.0
FONZIP_RATE = 240.0
MARGIN = 0.05
EFFECTIVE = FONZIP_RATE * (1 - MARGIN)


def _settings(base_url: str, tmp: Path, rate: float, from_lists: bool) -> Settings:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
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
                "reconciler": {"records_from_lists": from_lists, "fetch_wait": 3600},
                "sinks": {"archive": {"type": "sqlite", "path": "fonzip.db"}},
                "logging": {"level": "error"},
            },
            base_dir=tmp,
            origin="(bench)",
        )


def _detail_record(
    kind: Kind, obj: dict[str, Any], tz: Any, rows: dict[int, dict[str, Any]] | None = None
) -> Record:
    """What the detail path makes of the simulator's detail of one object (e-cards: with
    the list row's date and ISO currency, as the client completes them)."""
    if kind is Kind.ECARD_SALE:
        assert rows is not None
        obj = {**obj, **{k: rows[obj["id"]][k] for k in ECARD_FIELDS_FROM_LIST}}
    detail = Detail(kind, obj["id"], obj, None, "bench")
    return normalize(detail, tz=tz, source=Source.BACKFILL, fetched_at=dt.datetime.now(dt.UTC))


async def _check_fields(
    sim: Simulator, daemon: Daemon, kinds: Sequence[Kind], settings: Settings
) -> tuple[int, int, int]:
    """(records compared, built from rows, differing): every stored record against the
    detail path's record of the same object."""
    assert daemon.store is not None
    compared = from_rows = differing = 0
    for kind in kinds:
        objects = {o["id"]: o for o in sim.objects(kind)}
        rows = {r["id"]: r for r in sim.rows(kind)}
        stored = await daemon.store.records.get_many(kind, objects)
        for fid, record in stored.items():
            want = _detail_record(kind, objects[fid], settings.fonzip.tz, rows)
            compared += 1
            from_rows += is_list_shape(record)
            names = (*FIELDS, "business_date")
            if any(getattr(record, n) != getattr(want, n) for n in names):
                differing += 1
    return compared, from_rows, differing


def _kinds_of(requests: Sequence[Any]) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in requests:
        path = r.path
        if path.endswith("/token"):
            out["token"] += 1
        elif path.rstrip("/").rsplit("/", 1)[-1].isdigit():
            out["detail"] += 1
        else:
            out["list"] += 1
        if r.status == 429:
            out["429"] += 1
    return out


async def _backfill(
    *,
    days: int,
    per_day: int,
    kinds: Sequence[Kind],
    rate: float,
    from_lists: bool,
    seed: int,
) -> dict[str, Any]:
    async with Simulator(seed=seed, days=days, per_day=per_day, rate_per_minute=rate) as sim:
        base_url = await sim.start()
        first = sim.end_date - dt.timedelta(days=days - 1)
        with tempfile.TemporaryDirectory() as tmp:
            settings = _settings(base_url, Path(tmp), rate, from_lists)
            daemon = Daemon(settings, listen=False, schedule=False)
            await daemon.start()
            try:
                assert daemon.reconciler is not None
                started = time.perf_counter()
                reports = await daemon.reconciler.run(
                    all_days(first, sim.end_date),
                    run_key="bench",
                    kinds=kinds,
                    source=Source.BACKFILL,
                )
                wall = time.perf_counter() - started
                made = list(sim.requests)
                checked = await _check_fields(sim, daemon, kinds, settings)
            finally:
                await daemon.stop()
    return {
        "wall": wall,
        "requests": len(made),
        "by": _kinds_of(made),
        "closed": sum(r.closed for r in reports),
        "days": len(reports),
        "records": sum(r.records for r in reports),
        "checked": checked,
    }


async def _day(
    *, records: int, missing: float, rate: float, from_lists: bool, seed: int
) -> dict[str, Any]:
    async with Simulator(seed=seed, days=1, per_day=records, rate_per_minute=rate) as sim:
        base_url = await sim.start()
        day = sim.end_date
        with tempfile.TemporaryDirectory() as tmp:
            settings = _settings(base_url, Path(tmp), rate, from_lists)
            daemon = Daemon(settings, listen=False, schedule=False)
            await daemon.start()
            try:
                assert daemon.store is not None
                assert daemon.reconciler is not None
                store = daemon.store
                objects = sim.objects(Kind.DONATION)
                rng = random.Random(seed)
                absent = set(rng.sample([o["id"] for o in objects], k=int(len(objects) * missing)))
                # Set-up, not measured: what fonzipd already has, stored from details.
                await store.db.execute("PRAGMA synchronous=OFF")
                for obj in objects:
                    if obj["id"] not in absent:
                        record = _detail_record(Kind.DONATION, obj, settings.fonzip.tz)
                        await store.records.apply_record(None, record, ())
                await store.db.execute("PRAGMA synchronous=FULL")
                before = len(sim.requests)
                started = time.perf_counter()
                (report,) = await daemon.reconciler.run([day], run_key="b", kinds=[Kind.DONATION])
                wall = time.perf_counter() - started
                made = sim.requests[before:]
                checked = await _check_fields(sim, daemon, [Kind.DONATION], settings)
            finally:
                await daemon.stop()
    return {
        "wall": wall,
        "requests": len(made),
        "by": _kinds_of(made),
        "closed": int(report.closed),
        "days": 1,
        "records": report.records,
        "missing": len(absent),
        "checked": checked,
    }


def _line(name: str, r: dict[str, Any], *, derived: bool = False) -> str:
    by = r["by"]
    minutes = r["requests"] / EFFECTIVE
    timing = (
        f"{r['wall']:.1f} s measured at {FAST_RATE:,.0f}/min; {minutes:.1f} min derived at 228/min"
        if derived
        else f"{r['wall']:.1f} s ({r['wall'] / 60:.2f} min) measured at 240/min"
    )
    compared, rows, differing = r["checked"]
    return (
        f"{name:<24} requests {r['requests']:>6} (list {by['list']}, detail {by['detail']},"
        f" token {by['token']}, 429 {by['429']}); {timing};"
        f" days closed {r['closed']}/{r['days']}; records {r['records']}"
        f" ({rows} from rows); compared with the detail path: {compared}, differing {differing}"
    )


async def bench(args: argparse.Namespace) -> int:
    logs.configure("error", "console")
    load = os.getloadavg()
    print(
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)"
    )
    failures = 0
    total = args.days * args.per_day
    print(f"\n1. backfill of {args.days} days x {args.per_day} donations ({total:,} records)")
    before = await _backfill(
        days=args.days,
        per_day=args.per_day,
        kinds=[Kind.DONATION],
        rate=FAST_RATE,
        from_lists=False,
        seed=args.seed,
    )
    print(_line("detail path (before)", before, derived=True))
    after = await _backfill(
        days=args.days,
        per_day=args.per_day,
        kinds=[Kind.DONATION],
        rate=FONZIP_RATE,
        from_lists=True,
        seed=args.seed,
    )
    print(_line("list rows (after)", after))
    print(
        f"   target: <= 700 requests and <= 3 min: {after['requests']} requests,"
        f" {after['wall'] / 60:.2f} min;"
        f" {after['requests'] / before['requests']:.3f} of the detail path's requests"
    )
    failures += before["checked"][2] + after["checked"][2]

    print(
        f"\n2. reconcile of a day of {args.day_records:,} donations,"
        f" {args.missing:.0%} missing locally, both at 240/min"
    )
    day_before = await _day(
        records=args.day_records,
        missing=args.missing,
        rate=FONZIP_RATE,
        from_lists=False,
        seed=args.seed,
    )
    print(_line("detail path (before)", day_before))
    day_after = await _day(
        records=args.day_records,
        missing=args.missing,
        rate=FONZIP_RATE,
        from_lists=True,
        seed=args.seed,
    )
    print(_line("list rows (after)", day_after))
    print(f"   target: <= 70 requests: {day_after['requests']}")
    failures += day_before["checked"][2] + day_after["checked"][2]

    if not args.skip_mix:
        print(
            f"\n3. all six kinds: {args.mix_days} days x {args.mix_per_day} of each kind,"
            f" at {FAST_RATE:,.0f}/min"
        )
        for name, from_lists in (("detail path (before)", False), ("list rows (after)", True)):
            mixed = await _backfill(
                days=args.mix_days,
                per_day=args.mix_per_day,
                kinds=list(Kind),
                rate=FAST_RATE,
                from_lists=from_lists,
                seed=args.seed,
            )
            print(_line(name, mixed, derived=True))
            failures += mixed["checked"][2]
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if failures:
        print(f"FAILED: {failures} records differ from the detail path")
        return 1
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--per-day", type=int, default=1000)
    p.add_argument("--day-records", type=int, default=5000)
    p.add_argument("--missing", type=float, default=0.1)
    p.add_argument("--mix-days", type=int, default=8)
    p.add_argument("--mix-per-day", type=int, default=240)
    p.add_argument("--skip-mix", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    raise SystemExit(asyncio.run(bench(p.parse_args())))


if __name__ == "__main__":
    main()
