"""Benchmark of the built-in sinks: records per second, and the CSV ledger across kill -9.

Run: ``.venv/bin/python bench/bench_sinks.py [--records 20000]``. Each sink writes the
same records in batches of its default size into a temporary directory; a no-op sink
measured in the same run is the baseline. The HTTP forwarder posts to a no-op aiohttp
receiver on 127.0.0.1 in the same process (so the figure includes the receiver's work).
Then a child process writes CSV batches in a loop and is killed with SIGKILL; a new
sink re-writes everything, and the script reports torn bytes cut and duplicate rows.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import structlog
from aiohttp import web
from pydantic import SecretStr

from fonzipd.records import Record
from fonzipd.sink import Sink, SinkOptions
from fonzipd.sinks.csv import CSVOptions, CSVSink
from fonzipd.sinks.http import HTTPOptions, HTTPSink
from fonzipd.sinks.sqlite import SQLiteOptions, SQLiteSink
from fonzipd.testing import context_for_tests, sample_records


class NoopSink(Sink):
    name: ClassVar[str] = "noop"
    batch_size: ClassVar[int] = 500

    async def write(self, batch: Sequence[Record]) -> None:
        pass


def records(n: int) -> list[Record]:
    """``n`` distinct records over 14 business days (as a busy fortnight would give)."""
    base = sample_records(25)[:24]
    start = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    out = []
    for i in range(n):
        proto = base[i % len(base)]
        occurred = start + dt.timedelta(seconds=i * 14 * 86400 // max(n, 1))
        out.append(
            dataclasses.replace(
                proto,
                fonzip_id=100_000 + i,
                occurred_at=occurred,
                business_date=occurred.date(),
            )
        )
    return out


async def measure(sink: Sink, recs: list[Record], batch_size: int) -> float:
    await sink.open()
    began = time.perf_counter()
    for i in range(0, len(recs), batch_size):
        await sink.write(recs[i : i + batch_size])
    elapsed = time.perf_counter() - began
    await sink.close()
    return len(recs) / elapsed


async def bench(n: int, http_n: int) -> None:
    recs = records(n)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ctx = context_for_tests(tmp)

        async def noop(_: web.Request) -> web.Response:
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/", noop)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/"

        def http(**kw: object) -> Sink:
            return HTTPSink(HTTPOptions(url=url, secret=SecretStr("whsec_" + "c" * 44), **kw), ctx)

        cases: list[tuple[str, Callable[[], Sink], int]] = [
            ("noop (baseline)", lambda: NoopSink(SinkOptions(), ctx), n),
            ("sqlite", lambda: SQLiteSink(SQLiteOptions(path=tmp / "out.db"), ctx), n),
            ("csv", lambda: CSVSink(CSVOptions(directory=tmp / "csv"), ctx), n),
            (
                "csv include_data",
                lambda: CSVSink(CSVOptions(directory=tmp / "csvd", include_data=True), ctx),
                n,
            ),
            ("http single, concurrency 1", lambda: http(), http_n),
            ("http single, concurrency 8", lambda: http(concurrency=8), http_n),
            ("http batch_mode", lambda: http(batch_mode=True), n),
        ]
        print(f"{'sink':32} {'batch':>6} {'records':>8} {'records/s':>12}")
        for label, make, count in cases:
            sink = make()
            size = sink.preferred_batch_size()
            rate = await measure(sink, recs[:count], size)
            print(f"{label:32} {size:>6} {count:>8} {rate:>12,.0f}")
        await runner.cleanup()


CHILD = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {bench!r})
from bench_sinks import quiet, records
from fonzipd.sinks.csv import CSVOptions, CSVSink
from fonzipd.testing import context_for_tests

async def main() -> None:
    quiet()
    out = Path({out!r})
    sink = CSVSink(CSVOptions(directory=out), context_for_tests(out.parent))
    await sink.open()
    recs = records({n})
    for i in range(0, len(recs), 50):
        await sink.write(recs[i : i + 50])
        print(i + 50, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _write_and_kill(out: Path, n: int, after: int) -> int:
    """Run a child writing to ``out``; SIGKILL it once ``after`` records are acknowledged."""
    code = CHILD.format(bench=str(Path(__file__).parent), out=str(out), n=n)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    acknowledged = 0
    for line in child.stdout:
        acknowledged = int(line)
        if acknowledged >= after:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    return acknowledged


async def crash(n: int, rounds: int) -> None:
    """Kill a writing child ``rounds`` times at different points; recover and count."""
    totals = {"beyond_ack": 0, "torn": 0, "dups": 0, "missing": 0}
    for round_ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp_name:
            out = Path(tmp_name) / "csv"
            acknowledged = _write_and_kill(out, n, n * (round_ + 1) // (rounds + 2))
            before = sum(p.stat().st_size for p in out.glob("*/*.csv"))
            on_disk = len(_rows(out, strict=False))
            sink = CSVSink(CSVOptions(directory=out), context_for_tests(out.parent))
            await sink.open()
            totals["torn"] += before - sum(p.stat().st_size for p in out.glob("*/*.csv"))
            totals["beyond_ack"] += on_disk - acknowledged
            recs = records(n)  # the dispatcher re-sends all that was not acknowledged
            for i in range(0, len(recs), 500):
                await sink.write(recs[i : i + 500])
            await sink.close()
            keys = _rows(out)
            totals["dups"] += len(keys) - len(set(keys))
            totals["missing"] += len({r.key for r in recs} - set(keys))
    print(
        f"\nCSV across kill -9 ({rounds} kills while writing {n} records in batches of 50): "
        f"{totals['beyond_ack']} rows were on disk beyond what was acknowledged, "
        f"{totals['torn']} bytes cut back at open; after re-sending everything: "
        f"{totals['dups']} duplicate rows, {totals['missing']} missing"
    )


def _rows(out: Path, *, strict: bool = True) -> list[str]:
    keys: list[str] = []
    for path in sorted(out.glob("*/*.csv")):
        with path.open(newline="", encoding="utf-8", errors="replace") as f:
            for row in csv.DictReader(f):
                if strict or (row.get("version") and len(row) == 15):
                    keys.append(row["key"])
    return keys


def quiet() -> None:
    """Log warnings only (the sinks log every batch at debug level)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def main() -> None:
    quiet()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--http-records", type=int, default=3_000)
    args = parser.parse_args()
    asyncio.run(bench(args.records, args.http_records))
    asyncio.run(crash(5_000, rounds=8))


if __name__ == "__main__":
    main()
