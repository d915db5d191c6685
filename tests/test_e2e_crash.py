"""End to end: the real ``fonzipd run`` under webhooks, killed with SIGKILL mid-stream.

Every webhook answered 200 must reach the SQLite sink exactly once, and the CSV sink
must hold no duplicate row, whatever moment the kill hits.
"""

from __future__ import annotations

import asyncio
import csv
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from fonzipd.kinds import Kind
from fonzipd.simulator import Simulator
from tests.daemon_process import DaemonProcess, write_config
from tests.oracle import Event, make_events

pytestmark = pytest.mark.slow

TOKEN = "crash-test-webhook-token"
SEED = 20261127


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(seed=SEED, days=2, per_day=12, rate_per_minute=60_000) as s:
        yield s


async def post(session: aiohttp.ClientSession, port: int, event: Event) -> bool:
    kind, fid, status = event
    payload = {"id": fid, "webhook_id": 1, "operation": kind.operation, "status": status}
    try:
        async with session.post(
            f"http://127.0.0.1:{port}/fonzip/webhook",
            json=payload,
            headers={"X-FZ-Auth-Token": TOKEN},
        ) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, ConnectionError):
        return False


async def send_all(
    port: int, events: list[Event], *, kill_after: int | None, daemon: DaemonProcess
) -> set[Event]:
    """Send with 16 in flight; SIGKILL the daemon once ``kill_after`` were answered 200."""
    accepted: set[Event] = set()
    queue: asyncio.Queue[Event] = asyncio.Queue()
    for e in events:
        queue.put_nowait(e)
    killed = asyncio.Event()

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty() and not killed.is_set():
            event = queue.get_nowait()
            if await post(session, port, event):
                accepted.add(event)
                if kill_after is not None and len(accepted) >= kill_after and not killed.is_set():
                    killed.set()
                    daemon.kill()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(16)))
    return accepted


def sink_rows(workdir: Path) -> dict[tuple[str, int], str]:
    with sqlite3.connect(workdir / "fonzip.db") as db:
        return {
            (k, int(i)): s for k, i, s in db.execute("SELECT kind, fonzip_id, status FROM records")
        }


def csv_keys(workdir: Path) -> list[str]:
    keys: list[str] = []
    for f in sorted((workdir / "csv").rglob("*.csv")):
        with f.open(encoding="utf-8", newline="") as fh:
            keys += [row["key"] for row in csv.DictReader(fh)]
    return keys


async def wait_delivered(workdir: Path, wanted: set[tuple[str, int]], within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            if (workdir / "fonzip.db").exists() and wanted <= set(sink_rows(workdir)):
                return
            await asyncio.sleep(0.1)


async def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    sim: Simulator, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    events = await make_events(sim, rng, 300)
    config = write_config(
        tmp_path / "config.toml",
        base_url=await sim.start(),
        token=TOKEN,
        sinks={
            "archive": {"type": "sqlite", "path": "fonzip.db"},
            "sheets": {"type": "csv", "directory": "csv"},
        },
    )
    daemon = DaemonProcess(config, tmp_path)
    try:
        port = await daemon.start()
        kill_after = rng.randrange(60, 200)
        accepted = await send_all(port, events, kill_after=kill_after, daemon=daemon)
        assert daemon.proc is not None
        assert daemon.proc.returncode == -9
        assert len(accepted) >= kill_after
        # Fonzip retries what was not answered 200; the daemon comes back.
        port = await daemon.start()
        rest = [e for e in events if e not in accepted]
        accepted |= await send_all(port, rest, kill_after=None, daemon=daemon)
        assert accepted == set(events)
        wanted = {(str(k), fid) for k, fid, _ in accepted}
        await wait_delivered(tmp_path, wanted, within=90)
        assert await daemon.terminate() == 0
    finally:
        daemon.ensure_stopped()

    rows = sink_rows(tmp_path)
    expected = {(str(kind), int(obj["id"])) for kind in Kind for obj in sim.objects(kind)} & wanted
    assert expected == wanted
    # Latest state everywhere: every refund that was answered 200 shows as refunded.
    for kind, fid, status in accepted:
        if status == 4:
            assert rows[(str(kind), fid)] == "refunded", (kind, fid)
    with sqlite3.connect(tmp_path / "fonzip.db") as db:
        dup = db.execute(
            "SELECT count(*) FROM (SELECT kind, fonzip_id, version FROM record_history"
            " GROUP BY 1, 2, 3 HAVING count(*) > 1)"
        ).fetchone()
    assert dup == (0,)
    keys = csv_keys(tmp_path)
    assert len(keys) == len(set(keys)), "duplicate CSV rows after kill -9"
    assert {tuple(k.split(":")[:2]) for k in keys} == {(k, str(i)) for k, i in wanted}


async def test_sigterm_drains_and_the_next_start_delivers_the_rest(
    sim: Simulator, tmp_path: Path
) -> None:
    events = await make_events(sim, random.Random(1), 40)
    config = write_config(tmp_path / "config.toml", base_url=await sim.start(), token=TOKEN)
    daemon = DaemonProcess(config, tmp_path)
    try:
        port = await daemon.start()
        accepted = await send_all(port, events, kill_after=None, daemon=daemon)
        assert accepted == set(events)
        assert await daemon.terminate() == 0
        stopped = daemon.find("daemon_stopped")
        assert stopped is not None
        await daemon.start()
        await wait_delivered(tmp_path, {(str(k), i) for k, i, _ in events}, within=60)
        assert await daemon.terminate() == 0
    finally:
        daemon.ensure_stopped()
