"""End to end: the real ``fonzipd run`` delivering to PostgreSQL, MariaDB and NATS JetStream,
killed with SIGKILL while it writes to them.

Every webhook answered 200 must reach each server with Fonzip's latest status, each
version once: one row per version in both history tables, one message per version in
the stream (JetStream drops the re-sends of what the dead daemon had published but not
yet acknowledged in its outbox).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fonzipd.simulator import Simulator
from tests import servers
from tests.daemon_process import DaemonProcess, write_config
from tests.oracle import Oracle, make_events, send_events

pytestmark = pytest.mark.slow

TOKEN = "sink-servers-webhook-token"
SEED = 20261130


@pytest.fixture
async def places() -> AsyncIterator[dict[str, str]]:
    """A PostgreSQL schema, a MariaDB database and a JetStream stream of this test's own."""
    servers.need_postgresql()
    servers.need_mysql()
    servers.need_nats()
    import asyncmy
    import asyncpg
    import nats

    name = servers.unique("fz_e2e")
    my = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="")
    async with my.cursor() as cur:
        await cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield {"schema": name, "database": name, "stream": name.upper(), "prefix": name}
    finally:
        async with my.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        my.close()
        pg = await asyncpg.connect(servers.PG_DSN)
        await pg.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await pg.close()
        nc = await nats.connect(servers.NATS_URL)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(name.upper())
        await nc.close()


async def pg_rows(schema: str) -> tuple[dict[tuple[str, int], str], list[str]]:
    import asyncpg

    conn = await asyncpg.connect(servers.PG_DSN)
    try:
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{schema}".records'):
            return {}, []
        rows = await conn.fetch(f'SELECT kind, fonzip_id, status FROM "{schema}".records')
        history = await conn.fetch(
            f"SELECT kind || ':' || fonzip_id || ':' || version FROM \"{schema}\".record_history"
        )
    finally:
        await conn.close()
    return {(r[0], int(r[1])): r[2] for r in rows}, [r[0] for r in history]


async def mysql_rows(database: str) -> tuple[dict[tuple[str, int], str], list[str]]:
    import asyncmy
    from asyncmy.errors import ProgrammingError

    conn = await asyncmy.connect(
        host="127.0.0.1", port=3306, user="root", password="", database=database
    )
    try:
        async with conn.cursor() as cur:
            try:
                await cur.execute("SELECT kind, fonzip_id, status FROM records")
            except ProgrammingError:
                return {}, []  # the sink has not created its table yet
            rows = await cur.fetchall()
            await cur.execute(
                "SELECT CONCAT(kind, ':', fonzip_id, ':', version) FROM record_history"
            )
            history = await cur.fetchall()
    finally:
        conn.close()
    return {(str(r[0]), int(r[1])): str(r[2]) for r in rows}, [str(r[0]) for r in history]


async def stream_messages(stream: str) -> list[dict[str, Any]]:
    """Every message body in the stream, with its Nats-Msg-Id, in stream order."""
    import nats
    import nats.js.errors

    nc = await nats.connect(servers.NATS_URL)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        out = []
        if info.state.messages:
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                body = json.loads(msg.data or b"{}")
                body["msg_id"] = (msg.headers or {}).get("Nats-Msg-Id")
                out.append(body)
        return out
    finally:
        await nc.close()


async def test_sigkill_while_writing_to_the_servers_loses_and_duplicates_nothing(
    places: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    async with Simulator(seed=SEED, days=2, per_day=12, rate_per_minute=60_000) as sim:
        events = await make_events(sim, rng, 160)
        oracle = Oracle(sim)
        small = {"batch_size": 4, "flush_interval": 0}
        config = write_config(
            tmp_path / "config.toml",
            base_url=await sim.start(),
            token=TOKEN,
            sinks={
                "archive": {"type": "sqlite", "path": "fonzip.db"},
                "pg": {
                    "type": "postgresql",
                    "dsn": servers.PG_DSN,
                    "schema": places["schema"],
                    **small,
                },
                "my": {
                    "type": "mysql",
                    "dsn": servers.MYSQL_DSN.rsplit("/", 1)[0] + "/" + places["database"],
                    **small,
                },
                "bus": {
                    "type": "nats",
                    "servers": [servers.NATS_URL],
                    "stream": places["stream"],
                    "subject": places["prefix"] + ".{kind}.{status}",
                    "create_stream": True,
                    **small,
                },
            },
        )
        daemon = DaemonProcess(config, tmp_path)
        try:
            port = await daemon.start()
            stop = asyncio.Event()
            sending = asyncio.create_task(
                send_events(port, events, oracle, TOKEN, concurrency=8, stop=stop)
            )
            # Kill once all three servers are being written to, webhooks still flowing.
            async with asyncio.timeout(90):
                while True:
                    counts = (
                        len((await pg_rows(places["schema"]))[1]),
                        len((await mysql_rows(places["database"]))[1]),
                        len(await stream_messages(places["stream"])),
                    )
                    if min(counts) >= 8 or sending.done():
                        break
                    await asyncio.sleep(0.02)
            daemon.kill()
            stop.set()
            left = await sending
            assert min(counts) >= 8, (
                f"the servers were not all written to before the kill: {counts}"
            )
            assert len(oracle.accepted) > min(counts), "the kill came after delivery ended"
            port = await daemon.start()
            left = await send_events(port, left, oracle, TOKEN)
            assert not left, f"{len(left)} webhooks still refused after the restart"

            expected = oracle.expected()
            async with asyncio.timeout(120):
                while True:
                    pg, _ = await pg_rows(places["schema"])
                    my, _ = await mysql_rows(places["database"])
                    bus = {
                        (m["kind"], m["fonzip_id"]): m["status"]
                        for m in await stream_messages(places["stream"])
                    }
                    if all(
                        pg.get(k) == v and my.get(k) == v and bus.get(k) == v
                        for k, v in expected.items()
                    ):
                        break
                    await asyncio.sleep(0.2)
            assert await daemon.terminate() == 0
        finally:
            daemon.ensure_stopped()

    pg, pg_history = await pg_rows(places["schema"])
    my, my_history = await mysql_rows(places["database"])
    messages = await stream_messages(places["stream"])
    bus_keys = [m["key"] for m in messages]
    duplicated = [k for k, n in collections.Counter(bus_keys).items() if n > 1]
    assert not duplicated, f"NATS: versions published twice: {duplicated[:5]}"
    assert all(m["msg_id"] == m["key"] for m in messages)
    # The same versions reached each server: none lost by one and kept by another.
    assert set(pg_history) == set(my_history) == set(bus_keys)
    assert {k: pg[k] for k in expected} == expected
    assert {k: my[k] for k in expected} == expected
    latest: dict[tuple[str, int], str] = {}
    for m in messages:  # stream order: a record's last message is its latest state
        latest[(m["kind"], m["fonzip_id"])] = m["status"]
    assert {k: latest[k] for k in expected} == expected
