"""Benchmark: the pipeline from inbox to every sink, with Fonzip answering details in 50 ms.

Two measurements against the simulator (``faults.latency`` = 0.05 s before every API
answer), with a SQLite and a CSV sink, rate limits on both sides set high enough never
to bind (600,000/min), the daemon's pipeline in this process:

1. Throughput, at fetcher.concurrency 1, 4 and 16: N donation events are added to the
   inbox directly (``Store.inbox.add_events``, one commit, as live webhook events), and the
   clock runs until both sinks have acknowledged all N. The ideal is
   ``concurrency / latency`` records per second (fetches in flight / 50 ms). Also the
   steady rate between the 10% and the 90% acknowledgement (no start-up, no tail).
2. End-to-end delay: real webhooks POSTed to the real listener (loopback, in this
   process) at a steady rate, each timed from just before its POST to the moment the
   last sink's ``write()`` returned with the record in it (the record is durable in
   both sinks; the outbox acknowledgement commit follows). Run with each sink's
   default ``flush_interval`` (0.5 s, a batch waits up to that long to fill; the next
   record queued ends the wait early) and with 0, at ``--rate`` webhooks a second, and
   with the default at one webhook a second (the wait is not cut short).

The daemon logs as it does in production (JSON, level info), to /dev/null.

``--simulator-process`` runs the simulator in a process of its own (driven through
its admin API), as Fonzip is remote in production: its CPU no longer counts against
the daemon's event loop (on a machine with a core to spare for it).

    .venv/bin/python bench/bench_pipeline.py [--records 400] [--webhooks 200] [--rate 20]
        [--simulator-process]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from fonzipd import logs
from fonzipd.app import Daemon
from fonzipd.config import ConfigWarning, settings_from_dict
from fonzipd.kinds import Kind
from fonzipd.records import Record, Source
from fonzipd.simulator import Simulator
from fonzipd.state import InboxEvent

LATENCY = 0.05
UNBOUND_RATE = 600_000.0
TOKEN = "bench-pipeline-token-0123456789"
SINKS = ("archive", "spreadsheets")
DEADLINE = 300.0
"""No single run may take longer than this many seconds."""


class Fonzip(Protocol):
    """What the benchmark asks of the simulator, in this process or in its own."""

    async def new_donations(self, count: int) -> list[int]: ...

    async def expire_tokens(self) -> None: ...


class LocalFonzip:
    """The simulator in this process, on this event loop."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def new_donations(self, count: int) -> list[int]:
        return [
            (await self.sim.create_event(Kind.DONATION, deliver=False))[0] for _ in range(count)
        ]

    async def expire_tokens(self) -> None:
        self.sim.expire_tokens()


_CHILD = """
import asyncio, os, sys
from fonzipd.simulator import Simulator

# Only the base URL goes to the pipe, which nobody reads after it: a log line per
# request would fill it and stall the simulator.
pipe, sys.stdout = sys.stdout, open(os.devnull, "w")

async def main():
    seed, rate, latency = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    async with Simulator(seed=seed, days=1, per_day=5, rate_per_minute=rate) as sim:
        base = await sim.start()
        sim.faults.latency = latency
        print("BASE " + base, file=pipe, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


class RemoteFonzip:
    """The simulator in a process of its own, driven through its admin API."""

    def __init__(self, admin: str, http: aiohttp.ClientSession) -> None:
        self.admin = admin
        self.http = http

    async def _one(self) -> int:
        body = {"kind": "donation", "deliver": False}
        async with self.http.post(f"{self.admin}/events", json=body) as resp:
            resp.raise_for_status()
            return int((await resp.json())["id"])

    async def new_donations(self, count: int) -> list[int]:
        ids: list[int] = []
        while len(ids) < count:  # 50 at a time: one request each would take minutes
            ids += await asyncio.gather(*(self._one() for _ in range(min(50, count - len(ids)))))
        return ids

    async def expire_tokens(self) -> None:
        async with self.http.post(f"{self.admin}/expire-tokens", json={}) as resp:
            resp.raise_for_status()


@contextlib.asynccontextmanager
async def simulator(seed: int, *, separate: bool) -> AsyncIterator[tuple[Fonzip, str]]:
    """The simulator (latency set, limits unbound) and its API's base URL."""
    if not separate:
        async with Simulator(seed=seed, days=1, per_day=5, rate_per_minute=UNBOUND_RATE) as sim:
            base_url = await sim.start()
            sim.faults.latency = LATENCY
            yield LocalFonzip(sim), base_url
        return
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        str(seed),
        str(UNBOUND_RATE),
        str(LATENCY),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # its own process group: killed whole at the end
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            while not (line := (await proc.stdout.readline()).decode()).startswith("BASE "):
                if not line:
                    raise RuntimeError("the simulator process exited before it listened")
        base_url = line.removeprefix("BASE ").strip()
        admin = base_url.removesuffix("/api/v2") + "/_sim"
        async with aiohttp.ClientSession() as http:
            yield RemoteFonzip(admin, http), base_url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        await proc.wait()


def _settings(base_url: str, tmp: Path, concurrency: int, flush: float | None) -> Any:
    shared: dict[str, Any] = {} if flush is None else {"flush_interval": flush}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # 600,000/min: a simulator only
        return settings_from_dict(
            {
                "fonzip": {
                    "base_url": base_url,
                    "client_id": "sim-client",
                    "client_secret": "sim-secret",
                    "requests_per_minute": UNBOUND_RATE,
                },
                "listener": {"port": 0, "auth_token": TOKEN},
                "state": {"path": "state.db"},
                "fetcher": {"concurrency": concurrency},
                "logging": {"level": "info", "format": "json"},
                "sinks": {
                    "archive": {"type": "sqlite", "path": "archive.db", **shared},
                    "spreadsheets": {"type": "csv", "directory": "csv", **shared},
                },
            },
            base_dir=tmp,
            origin="(bench)",
        )


class Arrivals:
    """When each record (by fonzip_id) was written by each sink; wraps the sinks' write()."""

    def __init__(self, daemon: Daemon) -> None:
        assert daemon.dispatcher is not None
        self.at: dict[str, dict[int, float]] = {sid: {} for sid in SINKS}
        self.changed = asyncio.Event()
        for sid, runner in daemon.dispatcher.runners.items():
            self._wrap(sid, runner.sink)

    def _wrap(self, sid: str, sink: Any) -> None:
        write = sink.write
        seen = self.at[sid]

        async def timed(batch: Sequence[Record]) -> None:
            await write(batch)
            now = time.perf_counter()
            for record in batch:
                seen.setdefault(record.fonzip_id, now)
            self.changed.set()

        sink.write = timed

    def in_all(self, fonzip_id: int) -> float | None:
        """When the last sink got it, or None while one has not."""
        times = [self.at[sid].get(fonzip_id) for sid in SINKS]
        return None if None in times else max(t for t in times if t is not None)

    async def wait_for(self, ids: Sequence[int], deadline: float) -> None:
        while not all(self.in_all(i) is not None for i in ids):
            self.changed.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"records not in every sink within {DEADLINE:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


async def _daemon(settings: Any, *, listen: bool) -> Daemon:
    daemon = Daemon(settings, listen=listen, schedule=False)
    await daemon.start()
    return daemon


async def throughput(sim: Fonzip, base_url: str, concurrency: int, records: int) -> str:
    ids = await sim.new_donations(records)
    await sim.expire_tokens()  # one live token per key: the previous run's daemon held it
    with tempfile.TemporaryDirectory() as tmp:
        daemon = await _daemon(_settings(base_url, Path(tmp), concurrency, None), listen=False)
        try:
            assert daemon.store is not None
            arrivals = Arrivals(daemon)
            # Fetch the token first, so it is not counted as part of the pipeline.
            assert daemon.client is not None
            await daemon.client.tokens.get()
            events = [InboxEvent(Kind.DONATION, i, 3, Source.WEBHOOK) for i in ids]
            started = time.perf_counter()
            await daemon.store.inbox.add_events(events)
            assert daemon.fetcher is not None
            daemon.fetcher.wake()
            await arrivals.wait_for(ids, started + DEADLINE)
            wall = time.perf_counter() - started
        finally:
            await daemon.stop()
    done = sorted(t for i in ids if (t := arrivals.in_all(i)) is not None)
    lo, hi = done[len(done) // 10], done[(len(done) * 9) // 10]
    steady = (len(done) * 8 // 10) / (hi - lo) if hi > lo else float("nan")
    ideal = concurrency / LATENCY
    rate = records / wall
    return (
        f"| {concurrency:>11} | {records:>7} | {wall:>6.2f} | {rate:>9.1f} | {steady:>11.1f}"
        f" | {ideal:>7.0f} | {rate / ideal:>6.0%} | {steady / ideal:>7.0%} |"
    )


async def end_to_end(
    sim: Fonzip, base_url: str, flush: float | None, webhooks: int, rate: float
) -> str:
    ids = await sim.new_donations(webhooks)
    await sim.expire_tokens()
    with tempfile.TemporaryDirectory() as tmp:
        daemon = await _daemon(_settings(base_url, Path(tmp), 4, flush), listen=True)
        try:
            arrivals = Arrivals(daemon)
            assert daemon.client is not None
            await daemon.client.tokens.get()
            url = f"http://127.0.0.1:{daemon.port}/fonzip/webhook"
            posted: dict[int, float] = {}
            async with aiohttp.ClientSession(headers={"X-FZ-Auth-Token": TOKEN}) as http:
                step = 1 / rate
                first = time.perf_counter()
                for n, fid in enumerate(ids):
                    # A steady schedule, not "sleep after each": the POST's own time
                    # does not slow the rate down.
                    await asyncio.sleep(max(0.0, first + n * step - time.perf_counter()))
                    posted[fid] = time.perf_counter()
                    body = {"id": fid, "webhook_id": 1, "operation": 1, "status": 3}
                    async with http.post(url, json=body) as resp:
                        if resp.status != 200:
                            raise RuntimeError(f"webhook {fid}: HTTP {resp.status}")
            await arrivals.wait_for(ids, time.perf_counter() + DEADLINE)
        finally:
            await daemon.stop()
    delays = sorted((t - posted[i]) * 1000 for i in ids if (t := arrivals.in_all(i)) is not None)
    p50 = statistics.median(delays)
    p99 = delays[min(len(delays) - 1, round(0.99 * len(delays)) - 1)]
    label = "default (0.5 s)" if flush is None else f"{flush:g} s"
    floor = LATENCY * 1000
    return (
        f"| {label:<15} | {webhooks:>8} | {rate:>5.0f}/s | {p50:>6.0f} | {p99:>6.0f}"
        f" | {max(delays):>6.0f} | {floor:>5.0f} |"
    )


async def only_throughput(
    concurrency: int, records: int, rounds: int, seed: int, *, separate: bool
) -> None:
    """Only the throughput row at one concurrency, ``rounds`` times (for before/after
    runs taking turns with another checkout)."""
    async with simulator(seed, separate=separate) as (sim, base_url):
        logs.configure("info", "json")
        for _ in range(rounds):
            row = await throughput(sim, base_url, concurrency, records)
            print(row, file=sys.__stdout__, flush=True)


async def bench(records: int, webhooks: int, rate: float, seed: int, *, separate: bool) -> None:
    async with simulator(seed, separate=separate) as (sim, base_url):
        logs.configure("info", "json")
        rows = []
        for concurrency in (1, 4, 16):
            # More records at higher concurrency, so each run lasts long enough.
            n = max(records, records * concurrency // 4)
            rows.append(await throughput(sim, base_url, concurrency, n))
        e2e = [await end_to_end(sim, base_url, f, webhooks, rate) for f in (None, 0.0)]
        # One webhook a second: no next record comes to end a batch's fill wait early.
        e2e.append(await end_to_end(sim, base_url, None, min(webhooks, 20), 1.0))
    where = "its own process" if separate else "this process"
    print(f"simulator ({where}) detail latency {LATENCY * 1000:.0f} ms; sinks: sqlite + csv")
    print("throughput (inbox rows added directly, one commit; clock stops at the last")
    print("acknowledgement by both sinks; ideal = concurrency / latency):")
    print(
        "| concurrency | records | wall s | records/s | steady rec/s | ideal/s"
        " | share | steady share |"
    )
    print(
        "|------------:|--------:|-------:|----------:|-------------:|--------:|------:|--------:|"
    )
    print("\n".join(rows))
    print("end-to-end delay (POST to the listener -> written by both sinks), ms,")
    print("fetcher.concurrency 4; floor = the detail latency alone:")
    print("| flush_interval  | webhooks |   rate |    p50 |    p99 |    max | floor |")
    print("|-----------------|---------:|-------:|-------:|-------:|-------:|------:|")
    print("\n".join(e2e))
    print(f"(Python {sys.version.split()[0]}, nproc {os.cpu_count()})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=400, help="records per throughput run (c<=4)")
    p.add_argument("--webhooks", type=int, default=200, help="webhooks per end-to-end run")
    p.add_argument("--rate", type=float, default=20.0, help="webhooks per second (end to end)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--only-concurrency",
        type=int,
        help="only the throughput row at this concurrency (records: --records x c / 4)",
    )
    p.add_argument("--rounds", type=int, default=1, help="with --only-concurrency")
    p.add_argument(
        "--simulator-process",
        action="store_true",
        help="run the simulator in a process of its own (Fonzip is remote in production)",
    )
    args = p.parse_args()
    # The daemon logs as in production (JSON, info) to stderr: into /dev/null here.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        if args.only_concurrency:
            c = args.only_concurrency
            n = max(args.records, args.records * c // 4)
            asyncio.run(
                only_throughput(c, n, args.rounds, args.seed, separate=args.simulator_process)
            )
        else:
            asyncio.run(
                bench(
                    args.records,
                    args.webhooks,
                    args.rate,
                    args.seed,
                    separate=args.simulator_process,
                )
            )


if __name__ == "__main__":
    main()
