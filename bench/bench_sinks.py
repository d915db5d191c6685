"""Benchmark of the built-in sinks: records per second, and the CSV ledger across kill -9.

Run: ``.venv/bin/python bench/bench_sinks.py [--records 20000]``. Each sink writes the
same records in batches of its default size into a temporary directory; a no-op sink
measured in the same run is the baseline. The HTTP forwarder posts to a no-op aiohttp
receiver on 127.0.0.1 in the same process (so the figure includes the receiver's work).
Then a child process writes CSV batches in a loop and is killed with SIGKILL, half of
the rounds inside a write (the ``csv_torn_line`` crash point of fonzipd/crashpoints.py
kills it with half a batch's bytes on disk, the rest just after a batch was
acknowledged); a new sink re-writes everything, and the script reports torn bytes cut
and duplicate rows.

Then the database and bus sinks (PostgreSQL, MySQL/MariaDB, NATS JetStream on
127.0.0.1, each skipped with its reason when its server or driver is missing) write the
same records at batch sizes 1 and 500, beside the SQLite sink in the same run, each
into a fresh table or stream (dropped afterwards); the ratio is against SQLite at the
same batch size, medians of ``--rounds`` interleaved rounds. ``--server-records`` and
``--single-records`` set the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import datetime as dt
import importlib.util
import logging
import os
import secrets
import signal
import socket
import statistics
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


PG_DSN = "postgresql://root@127.0.0.1:5432/test"
MYSQL_DSN = "mysql://root@127.0.0.1:3306"
NATS_URL = "nats://127.0.0.1:4222"


def _unavailable(driver: str, port: int) -> str | None:
    """Why a server sink cannot be measured here, or None."""
    if importlib.util.find_spec(driver) is None:
        return f"{driver} not installed"
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError as exc:
        return f"nothing on 127.0.0.1:{port} ({exc.strerror})"
    return None


async def server_sinks(many: int, single: int, rounds: int) -> None:
    """PostgreSQL, MySQL and NATS beside SQLite: records/s at batch sizes 1 and 500."""
    recs = records(max(many, single))
    name = f"fz_bench_{secrets.token_hex(3)}"
    why = {
        "postgresql": _unavailable("asyncpg", 5432),
        "mysql": _unavailable("asyncmy", 3306),
        "nats": _unavailable("nats", 4222),
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ctx = context_for_tests(tmp)
        if why["mysql"] is None:
            await _mysql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")

        def make(label: str, tag: str) -> Sink:
            if label == "sqlite":
                return SQLiteSink(SQLiteOptions(path=tmp / f"{tag}.db"), ctx)
            if label == "postgresql":
                from fonzipd.sinks.postgresql import PostgreSQLOptions, PostgreSQLSink

                opts = PostgreSQLOptions.model_validate(
                    {"dsn": PG_DSN, "schema": name, "table": tag}
                )
                return PostgreSQLSink(opts, ctx)
            if label == "mysql":
                from fonzipd.sinks.mysql import MySQLOptions, MySQLSink

                return MySQLSink(MySQLOptions(dsn=f"{MYSQL_DSN}/{name}", table=tag), ctx)
            from fonzipd.sinks.nats import NATSOptions, NATSSink

            opts_n = NATSOptions(
                servers=[NATS_URL],
                stream=f"{name}_{tag}".upper(),
                subject=f"{name}{tag}.{{kind}}.{{status}}",
                create_stream=True,
            )
            return NATSSink(opts_n, ctx)

        rates: dict[tuple[str, int], list[float]] = {}
        streams: list[str] = []
        try:
            # Rounds interleave the sinks, so that the machine's load falls on all alike.
            for round_ in range(rounds):
                for size, count in ((1, single), (500, many)):
                    for label in ("sqlite", "postgresql", "mysql", "nats"):
                        if why.get(label):
                            continue
                        tag = f"b{size}r{round_}"
                        streams.append(f"{name}_{tag}".upper())
                        rate = await measure(make(label, tag), recs[:count], size)
                        rates.setdefault((label, size), []).append(rate)
        finally:
            await _clean_servers(name, why, streams)
        print(
            f"\n{'sink':12} {'batch':>6} {'records':>8} {'records/s':>12} {'min-max':>17}"
            f" {'vs sqlite':>10}   (median of {rounds} rounds)"
        )
        for size, count in ((1, single), (500, many)):
            baseline = statistics.median(rates[("sqlite", size)])
            for label in ("sqlite", "postgresql", "mysql", "nats"):
                if why.get(label):
                    print(f"{label:12} {size:>6}   skipped: {why[label]}")
                    continue
                got = rates[(label, size)]
                mid = statistics.median(got)
                spread = f"{min(got):,.0f}-{max(got):,.0f}"
                print(
                    f"{label:12} {size:>6} {count:>8} {mid:>12,.0f} {spread:>17}"
                    f" {mid / baseline:>9.2f}x"
                )


async def _mysql(sql: str) -> None:
    import asyncmy

    conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="")
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        conn.close()


async def _clean_servers(name: str, why: dict[str, str | None], streams: list[str]) -> None:
    if why["mysql"] is None:
        await _mysql(f"DROP DATABASE IF EXISTS `{name}`")
    if why["postgresql"] is None:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()
    if why["nats"] is None:
        import nats

        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        for stream in streams:
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
        await nc.close()


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


def _write_and_kill(out: Path, n: int, after: int, *, mid_write: bool) -> int:
    """Run a child writing to ``out``; SIGKILL it once ``after`` records are acknowledged,
    or (``mid_write``) let it kill itself halfway through the write of the next batch."""
    code = CHILD.format(bench=str(Path(__file__).parent), out=str(out), n=n)
    env = {k: v for k, v in os.environ.items() if k != "FONZIPD_CRASH_AT"}
    if mid_write:
        # One CSV file per kind and date: each batch appends to one or two files.
        env["FONZIPD_CRASH_AT"] = f"csv_torn_line:{after // 50 + 1}"
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    acknowledged = 0
    for line in child.stdout:
        acknowledged = int(line)
        if acknowledged >= after and not mid_write:
            break
    if not mid_write:
        os.kill(child.pid, signal.SIGKILL)
    code_ = child.wait()
    child.stdout.close()
    if code_ != -signal.SIGKILL:
        raise SystemExit(f"the CSV child was not killed (exit {code_}): raise --records?")
    return acknowledged


async def crash(n: int, rounds: int) -> None:
    """Kill a writing child ``rounds`` times at different points; recover and count."""
    totals = {"beyond_ack": 0, "torn": 0, "dups": 0, "missing": 0, "torn_kills": 0}
    for round_ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp_name:
            out = Path(tmp_name) / "csv"
            mid_write = round_ % 2 == 0
            acknowledged = _write_and_kill(
                out, n, n * (round_ + 1) // (rounds + 2), mid_write=mid_write
            )
            before = sum(p.stat().st_size for p in out.glob("*/*.csv"))
            on_disk = len(_rows(out, strict=False))
            sink = CSVSink(CSVOptions(directory=out), context_for_tests(out.parent))
            await sink.open()
            cut = before - sum(p.stat().st_size for p in out.glob("*/*.csv"))
            totals["torn"] += cut
            totals["torn_kills"] += mid_write and cut > 0
            totals["beyond_ack"] += on_disk - acknowledged
            recs = records(n)  # the dispatcher re-sends all that was not acknowledged
            for i in range(0, len(recs), 500):
                await sink.write(recs[i : i + 500])
            await sink.close()
            keys = _rows(out)
            totals["dups"] += len(keys) - len(set(keys))
            totals["missing"] += len({r.key for r in recs} - set(keys))
    print(
        f"\nCSV across kill -9 ({rounds} kills while writing {n} records in batches of 50, "
        f"{(rounds + 1) // 2} of them inside a write: {totals['torn_kills']} left a torn "
        f"tail): {totals['beyond_ack']} rows were on disk beyond what was acknowledged, "
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
    parser.add_argument("--server-records", type=int, default=20_000, help="batch size 500")
    parser.add_argument("--single-records", type=int, default=2_000, help="batch size 1")
    parser.add_argument("--rounds", type=int, default=3, help="server sink rounds")
    parser.add_argument("--only-servers", action="store_true", help="the server sinks only")
    parser.add_argument("--only-csv-crash", action="store_true", help="the CSV kill -9 part only")
    args = parser.parse_args()
    if args.only_csv_crash:
        asyncio.run(crash(5_000, rounds=8))
        return
    if not args.only_servers:
        asyncio.run(bench(args.records, args.http_records))
        asyncio.run(crash(5_000, rounds=8))
    asyncio.run(server_sinks(args.server_records, args.single_records, args.rounds))


if __name__ == "__main__":
    main()
