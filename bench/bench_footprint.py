"""Footprint of `fonzipd run`: start-to-ready time (exec to READY=1), idle RSS, and RSS
with 100,000 pending inbox rows.

Runs the simulator in this process, the daemon as a real subprocess with a notify
socket bound here, as systemd would. Three runs on an empty state database give the
start-to-ready time and the idle RSS. Then one run on a state database filled
beforehand with ``--pending`` (100,000) pending inbox rows (``Store.inbox.add_events`` in
batches, before the daemon starts), against a simulator in an outage (every API
request answered 503), so that the rows stay pending while RSS is read: once ready,
and after ``--settle`` (10) seconds of running. Compared with the idle RSS of the
same run of this script. Usage: .venv/bin/python bench/bench_footprint.py
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fonzipd.kinds import Kind
from fonzipd.records import Source
from fonzipd.simulator import Simulator
from fonzipd.state import InboxEvent, Store

TOKEN = "bench-footprint-token-0123456789"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def once(base_url: str, workdir: Path, settle: float = 3.0) -> tuple[float, int, int, int]:
    """Start ``fonzipd run`` in ``workdir``; (start-to-ready s, RSS at ready, after
    ``settle`` s, inbox rows still pending then) in KiB."""
    config = workdir / "config.toml"
    config.write_text(
        f"""
[fonzip]
base_url = "{base_url}"
client_id = "sim-client"
client_secret = "sim-secret"
[listener]
port = 0
auth_token = "{TOKEN}"
[state]
path = "state.db"
[logging]
level = "warning"
[sinks.archive]
type = "sqlite"
path = "archive.db"
"""
    )
    sock_path = str(workdir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.setblocking(False)
    env = {**os.environ, "NOTIFY_SOCKET": sock_path}
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fonzipd", "run", "--config", str(config), env=env
    )
    try:
        while True:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 60)
            if b"READY=1" in data:
                break
        ready = time.perf_counter() - started
        at_ready = rss_kib(proc.pid)
        await asyncio.sleep(settle)  # let start-up garbage settle, the workers run
        rss = rss_kib(proc.pid)
        pending = await _pending(workdir / "state.db")
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        sock.close()
        os.unlink(sock_path)
    return ready, at_ready, rss, pending


async def _pending(path: Path) -> int:
    store = await Store.open(path)
    try:
        depth, _ = await store.inbox.depth()
    finally:
        await store.close()
    return depth


async def fill(path: Path, rows: int, batch: int = 5000) -> None:
    """Add ``rows`` pending donation events to a new state database, ``batch`` a commit."""
    store = await Store.open(path)
    try:
        for start in range(0, rows, batch):
            await store.inbox.add_events(
                [
                    InboxEvent(Kind.DONATION, 10_000_000 + i, 3, Source.WEBHOOK)
                    for i in range(start, min(rows, start + batch))
                ]
            )
    finally:
        await store.close()


async def main(pending: int, settle: float) -> None:
    async with Simulator(seed=1, days=1, per_day=5) as sim:
        base = await sim.start()
        readies, rsses = [], []
        for n in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                ready, _, rss, _ = await once(base, Path(tmp))
            readies.append(ready)
            rsses.append(rss)
            print(
                f"run {n + 1}: start-to-ready {ready * 1000:.0f} ms, idle RSS {rss / 1024:.1f} MiB"
            )
        idle = statistics.median(rsses)
        print(
            f"median: start-to-ready {statistics.median(readies) * 1000:.0f} ms, "
            f"idle RSS {idle / 1024:.1f} MiB (Python {sys.version.split()[0]})"
        )
        if pending <= 0:
            return
        # Fonzip down for the whole run: every fetch fails with 503 and is retried
        # later, so the rows stay pending.
        sim.faults.outage_until = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            await fill(Path(tmp) / "state.db", pending)
            filled = time.perf_counter() - t0
            size = (Path(tmp) / "state.db").stat().st_size
            ready, at_ready, rss, left = await once(base, Path(tmp), settle)
    print(
        f"{pending:,} pending inbox rows (filled in {filled:.1f} s,"
        f" state.db {size / 2**20:.1f} MiB, simulator in an outage):"
        f" start-to-ready {ready * 1000:.0f} ms,"
        f" RSS at ready {at_ready / 1024:.1f} MiB, after {settle:.0f} s {rss / 1024:.1f} MiB"
        f" ({rss / idle:.2f} x the idle median), {left:,} rows still pending"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pending", type=int, default=100_000, help="0 skips the measurement")
    p.add_argument("--settle", type=float, default=10.0, help="seconds before the second read")
    args = p.parse_args()
    asyncio.run(main(args.pending, args.settle))
