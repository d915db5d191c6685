"""Footprint of `fonzipd run`: start-to-ready time (exec to READY=1) and idle RSS.

Runs the simulator in this process, the daemon as a real subprocess with a notify
socket bound here, as systemd would. Usage: .venv/bin/python bench/bench_footprint.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fonzipd.simulator import Simulator

TOKEN = "bench-footprint-token-0123456789"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def once(base_url: str, workdir: Path) -> tuple[float, int]:
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
        await asyncio.sleep(3)  # idle: let start-up garbage settle
        rss = rss_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        sock.close()
        os.unlink(sock_path)
    return ready, rss


async def main() -> None:
    async with Simulator(seed=1, days=1, per_day=5) as sim:
        base = await sim.start()
        readies, rsses = [], []
        for n in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                ready, rss = await once(base, Path(tmp))
            readies.append(ready)
            rsses.append(rss)
            print(
                f"run {n + 1}: start-to-ready {ready * 1000:.0f} ms, idle RSS {rss / 1024:.1f} MiB"
            )
    print(
        f"median: start-to-ready {statistics.median(readies) * 1000:.0f} ms, "
        f"idle RSS {statistics.median(rsses) / 1024:.1f} MiB (Python {sys.version.split()[0]})"
    )


if __name__ == "__main__":
    asyncio.run(main())
