"""End to end: the real ``fonzipd run`` delivering to PostgreSQL, MariaDB and NATS JetStream,
killed with SIGKILL while it writes to them, and with all three servers restarted under it.

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
    my = await asyncmy.connect(**servers.mysql_args())
    async with my.cursor() as cur:
        await cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield {"schema": name, "database": name, "stream": name.upper(), "prefix": name}
    finally:
        my.close()
        my = await asyncmy.connect(**servers.mysql_args())
        async with my.cursor() as cur:  # a new connection: the server may have restarted
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

    conn = await asyncmy.connect(**servers.mysql_args(database), autocommit=True)
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


def sink_tables(places: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The daemon's sinks: small batches written at once, so that writes go on all along."""
    small = {"batch_size": 4, "flush_interval": 0, "retry_initial": 0.2, "retry_max": 2}
    return {
        "archive": {"type": "sqlite", "path": "fonzip.db"},
        "pg": {"type": "postgresql", "dsn": servers.PG_DSN, "schema": places["schema"], **small},
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
    }


async def delivered_everywhere(places: dict[str, str], expected: dict[Any, str]) -> bool:
    pg, _ = await pg_rows(places["schema"])
    my, _ = await mysql_rows(places["database"])
    messages = await stream_messages(places["stream"])
    bus = {(m["kind"], m["fonzip_id"]): m["status"] for m in messages}
    return all(pg.get(k) == v and my.get(k) == v and bus.get(k) == v for k, v in expected.items())


async def written_counts(places: dict[str, str]) -> tuple[int, int, int]:
    return (
        len((await pg_rows(places["schema"]))[1]),
        len((await mysql_rows(places["database"]))[1]),
        len(await stream_messages(places["stream"])),
    )


def check_once_each(
    places_rows: tuple[Any, Any, list[dict[str, Any]]], expected: dict[Any, str]
) -> None:
    """Each server holds the latest status of every accepted record, each version once."""
    (pg, pg_history), (my, my_history), messages = places_rows
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


async def final_rows(places: dict[str, str]) -> tuple[Any, Any, list[dict[str, Any]]]:
    return (
        await pg_rows(places["schema"]),
        await mysql_rows(places["database"]),
        await stream_messages(places["stream"]),
    )


async def test_sigkill_while_writing_to_the_servers_loses_and_duplicates_nothing(
    places: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    async with Simulator(seed=SEED, days=2, per_day=12, rate_per_minute=60_000) as sim:
        events = await make_events(sim, rng, 160)
        oracle = Oracle(sim)
        config = write_config(
            tmp_path / "config.toml",
            base_url=await sim.start(),
            token=TOKEN,
            sinks=sink_tables(places),
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
                while min(counts := await written_counts(places)) < 8 and not sending.done():
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
                while not await delivered_everywhere(places, expected):
                    await asyncio.sleep(0.2)
            assert await daemon.terminate() == 0
        finally:
            daemon.ensure_stopped()

    check_once_each(await final_rows(places), expected)


async def test_servers_restarted_while_the_daemon_writes_are_retried_then_delivered(
    places: dict[str, str], tmp_path: Path
) -> None:
    servers.need_restartable()
    rng = random.Random(SEED + 1)
    async with Simulator(seed=SEED + 1, days=2, per_day=12, rate_per_minute=60_000) as sim:
        events = await make_events(sim, rng, 120)
        oracle = Oracle(sim)
        config = write_config(
            tmp_path / "config.toml",
            base_url=await sim.start(),
            token=TOKEN,
            sinks=sink_tables(places),
        )
        daemon = DaemonProcess(config, tmp_path)
        try:
            port = await daemon.start()
            sending = asyncio.create_task(send_events(port, events, oracle, TOKEN, concurrency=4))
            async with asyncio.timeout(90):
                while min(await written_counts(places)) < 8 and not sending.done():
                    await asyncio.sleep(0.02)
            # All three go down together while batches are flowing, and come back.
            try:
                await asyncio.gather(
                    asyncio.to_thread(servers.stop_postgresql),
                    asyncio.to_thread(servers.stop_mariadb),
                    asyncio.to_thread(servers.stop_nats),
                )
            finally:
                await asyncio.gather(
                    asyncio.to_thread(servers.start_postgresql),
                    asyncio.to_thread(servers.start_mariadb),
                    asyncio.to_thread(servers.start_nats),
                )
                for port_ in (5432, 3306, 4222):
                    await servers.wait_port(port_)
            left = await sending
            assert not left, f"{len(left)} webhooks refused"
            expected = oracle.expected()
            async with asyncio.timeout(120):
                while True:
                    with contextlib.suppress(Exception):  # a server still starting
                        if await delivered_everywhere(places, expected):
                            break
                    await asyncio.sleep(0.2)
            # Each sink did lose its connection and retry: the restarts hit live writers.
            logged = daemon.events()
            failed = {e.get("sink") for e in logged if e.get("event") == "batch_failed"}
            assert failed >= {"pg", "my"}
            assert any(e.get("event") == "nats_disconnected" for e in logged)
            assert await daemon.terminate() == 0
        finally:
            daemon.ensure_stopped()
    check_once_each(await final_rows(places), expected)
