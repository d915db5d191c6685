"""Benchmark: reconciling one simulated day of N donations with a share missing locally.

Prints the API requests the reconcile made (list pages, detail fetches, token), the
wall time against a fast simulator, and the wall time those requests take at Fonzip's
240 requests/minute (derived: requests / 4 per second), next to the lower bound taken
from the simulator's truth, not from fonzipd's own counts: the pages Fonzip's lists
need for the day plus one detail per record of the day the set-up left out. Then it
checks that every record of the day (per the simulator) is stored with the status its
list gives: a reconcile that under-queues fails here instead of looking efficient.

    .venv/bin/python bench/bench_reconcile.py [--records 5000] [--missing 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import random
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

from fonzipd import logs
from fonzipd.app import Daemon
from fonzipd.config import ConfigWarning, settings_from_dict
from fonzipd.days import day_window
from fonzipd.fonzip.endpoints import Detail
from fonzipd.fonzip.normalizer import normalize
from fonzipd.kinds import Kind
from fonzipd.records import Source
from fonzipd.simulator import Simulator

FAST_RATE = 120_000.0
FONZIP_RATE = 240.0
LIST_STATUS = {"paid": "succeeded", "refund": "refunded", "failed": "failed"}
"""The status each donation list shows, as fonzipd stores it (from the API reference)."""


async def bench(records: int, missing: float, seed: int, rate: float = FAST_RATE) -> None:
    logs.configure("error", "console")
    async with Simulator(seed=seed, days=1, per_day=records, rate_per_minute=rate) as sim:
        base_url = await sim.start()
        day = sim.end_date
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigWarning)
            settings = settings_from_dict(
                {
                    "fonzip": {
                        "base_url": base_url,
                        "client_id": "sim-client",
                        "client_secret": "sim-secret",
                        "requests_per_minute": rate,
                    },
                    "state": {"path": "state.db"},
                    "fetcher": {"concurrency": 8},
                    "logging": {"level": "error"},
                },
                base_dir=Path(tmp),
                origin="(bench)",
            )
            daemon = Daemon(settings, listen=False, schedule=False)
            await daemon.start()
            try:
                assert daemon.store is not None
                assert daemon.reconciler is not None
                store = daemon.store
                objects = sim.objects(Kind.DONATION)
                rng = random.Random(seed)
                absent = set(rng.sample([o["id"] for o in objects], k=int(len(objects) * missing)))
                # Set-up, not measured: the records fonzipd already has, stored fast.
                await store.db.execute("PRAGMA synchronous=OFF")
                now = dt.datetime.now(dt.UTC)
                for obj in objects:
                    if obj["id"] in absent:
                        continue
                    detail = Detail(Kind.DONATION, obj["id"], obj, None, "bench")
                    record = normalize(
                        detail, tz=settings.fonzip.tz, source=Source.WEBHOOK, fetched_at=now
                    )
                    await store.records.apply_record(None, record, ())
                await store.db.execute("PRAGMA synchronous=FULL")
                # The simulated day is the whole account: reconcile it (and the refunds
                # that fall on it).
                before = len(sim.requests)
                started = time.perf_counter()
                (report,) = await daemon.reconciler.run(
                    [day], run_key="bench", kinds=[Kind.DONATION], fetch_wait=600
                )
                wall = time.perf_counter() - started
                made = sim.requests[before:]
                # The truth: what Fonzip's lists hold for the day, from the simulator.
                start, end = day_window(day, settings.fonzip.tz)
                pages = 0
                expected: dict[int, str] = {}
                for status in Kind.DONATION.list_statuses:
                    dates = sim.list_dates(Kind.DONATION, status)
                    # Fonzip's end bound is inclusive: the next midnight's rows come back.
                    pages += max(1, math.ceil(sum(start <= w <= end for w in dates.values()) / 100))
                    expected.update(
                        (i, LIST_STATUS[status]) for i, w in dates.items() if start <= w < end
                    )
                stored = await store.records.statuses(Kind.DONATION, expected)
            finally:
                await daemon.stop()
    by_kind = Counter(
        "list"
        if r.path.endswith("/donations")
        else "token"
        if r.path.endswith("/token")
        else "detail"
        for r in made
    )
    to_fetch = len(absent & set(expected))
    bound = pages + to_fetch
    queued = sum(r.missing + r.changed + r.extra for r in report.runs)
    wrong = sorted(i for i, want in expected.items() if stored.get(i) != want)
    print(f"simulated day {day}: {len(objects)} donations, {len(absent)} missing locally")
    for r in report.runs:
        print(
            f"  {r.list_status:<7} Fonzip {r.window_total:>5}  local before {r.local_before:>5}"
            f"  after {r.local_after:>5}  queued {r.missing + r.changed + r.extra:>4}  {r.outcome}"
        )
    print(f"day closed: {report.closed}")
    print(
        f"records of the day (simulator): {len(expected)}; stored with their list's status:"
        f" {len(expected) - len(wrong)}; missing or wrong: {len(wrong)} {wrong[:10]}"
    )
    print(
        f"requests made: {len(made)} (list pages {by_kind['list']}, details {by_kind['detail']},"
        f" token {by_kind['token']})"
    )
    print(
        f"lower bound (simulator's truth): {bound} (list pages {pages} + {to_fetch} details);"
        f" fonzipd queued {queued}; made / bound = {len(made) / bound:.3f}"
    )
    print(f"measured wall time, simulator and fonzipd at {rate:.0f}/min: {wall:.2f} s")
    at_limit = len(made) / (FONZIP_RATE / 60)
    print(
        f"derived wall time at {FONZIP_RATE:.0f}/min: {at_limit:.0f} s for the requests made,"
        f" {bound / (FONZIP_RATE / 60):.0f} s lower bound"
        f" (fonzipd's limiter keeps a 5% margin: {len(made) / (FONZIP_RATE * 0.95 / 60):.0f} s)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--missing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--rate", type=float, default=FAST_RATE, help="requests/minute of both (240: measure)"
    )
    args = p.parse_args()
    asyncio.run(bench(args.records, args.missing, args.seed, args.rate))


if __name__ == "__main__":
    main()
