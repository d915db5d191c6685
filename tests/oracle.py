"""Test support: the reliability oracle, a webhook stream, a signing receiver and a lossy proxy.

The oracle knows every event the simulator was asked to send and every answer fonzipd
gave; at the end it checks that every event answered 200 is in every enabled sink,
exactly once where the sink promises it, with the latest status Fonzip holds. It counts
what each sink was actually given (SQLite: triggers count every row the sink is asked
to write; CSV: rows per key; HTTP: deliveries per webhook-id), and takes the expected
statuses from literal tables written from the API reference (tests/support.py), never
from fonzipd's own normalizers.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import csv
import hashlib
import hmac
import json
import random
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

from fonzipd.kinds import Kind
from fonzipd.simulator import Simulator
from fonzipd.sink import SinkContext
from fonzipd.sinks.sqlite import SQLiteOptions, SQLiteSink
from tests.support import expected_status

Event = tuple[Kind, int, int]
"""(kind, Fonzip id, webhook status): one notification as Fonzip sends it."""
SECRET = "whsec_" + base64.b64encode(b"reliability receiver secret 32by").decode()


async def make_events(sim: Simulator, rng: random.Random, count: int) -> list[Event]:
    """New objects (some refunded later, some failed) in the simulator, not yet notified."""
    events: list[Event] = []
    paid: list[tuple[Kind, int]] = []
    while len(events) < count:
        if paid and rng.random() < 0.15:
            kind, fid = paid.pop(rng.randrange(len(paid)))
            await sim.refund(kind, fid, deliver=False)
            events.append((kind, fid, 4))
            continue
        kind = rng.choice(list(Kind))
        status = 0 if kind is Kind.CAMPAIGN else (5 if rng.random() < 0.1 else 3)
        fid, hook_status = await sim.create_event(kind, status=status, deliver=False)
        events.append((kind, fid, hook_status))
        if status == 3 and kind not in (Kind.FORM_ANSWER, Kind.CAMPAIGN):
            paid.append((kind, fid))
    return events


class Oracle:
    """Every event sent, every answer received, and the final check of the sinks."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.answers: collections.Counter[int | str] = collections.Counter()
        self.accepted: set[Event] = set()

    def answered(self, event: Event, status: int | str) -> None:
        self.answers[status] += 1
        if status == 200:
            self.accepted.add(event)

    def expected(self) -> dict[tuple[str, int], str]:
        """(kind, id) -> the status the sinks must show: Fonzip's latest (literal tables)."""
        wanted = {(k, fid) for k, fid, _ in self.accepted}
        objects = {(kind, int(obj["id"])): obj for kind in Kind for obj in self.sim.objects(kind)}
        return {
            (str(kind), fid): expected_status(kind, objects[(kind, fid)]) for kind, fid in wanted
        }

    def missing(self, workdir: Path) -> set[tuple[str, int]]:
        """Accepted (kind, id) not yet in the SQLite sink with their latest status."""
        rows = sqlite_rows(workdir / "fonzip.db")
        return {key for key, status in self.expected().items() if rows.get(key) != status}

    def check(
        self,
        workdir: Path,
        *,
        csv_dir: Path | None = None,
        receiver: Receiver | None = None,
        redeliveries: int = 0,
    ) -> None:
        """Assert the guarantee for every enabled sink; AssertionError says what broke.

        ``redeliveries``: how many versions a sink that is not deduplicated for fonzipd
        (the SQLite sink's input, the HTTP receiver) may have been given twice. A kill
        between a sink's write and its acknowledgement sends that batch again (at least
        once, idempotent by key); a run without kills allows none. The SQLite sink's
        ``records`` table must in any case take each version at most once: taking one
        again means it went back to an older state.
        """
        expected = self.expected()
        assert expected, "no event was accepted: the scenario proved nothing"
        db_path = workdir / "fonzip.db"
        rows = sqlite_rows(db_path)
        wrong = {k: (rows.get(k), v) for k, v in expected.items() if rows.get(k) != v}
        assert not wrong, f"SQLite sink: missing or stale (got, want): {sorted(wrong.items())[:10]}"
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            latest = {
                (k, int(i)): v
                for k, i, v in db.execute("SELECT kind, fonzip_id, version FROM records")
            }
        given, taken = sqlite_counts(db_path)
        latest_keys = {f"{k}:{i}:{latest[(k, i)]}" for k, i in expected}
        assert not latest_keys - set(given), "SQLite sink: the counting triggers saw no write"
        twice = sorted(k for k, n in taken.items() if n > 1)
        assert not twice, f"SQLite sink: records went back to an older version {twice[:5]}"
        again = sorted(k for k, n in given.items() if n > 1)
        assert len(again) <= redeliveries, (
            f"SQLite sink: {len(again)} versions given twice (allowed {redeliveries}): {again[:5]}"
        )
        if csv_dir is not None:
            ids = csv_entry_ids(csv_dir)
            dups = [k for k, n in collections.Counter(ids).items() if n > 1]
            assert not dups, f"CSV sink: duplicate rows {dups[:5]}"
            wanted = {
                entry
                for (kind, fid), status in expected.items()
                for entry in expected_entries(kind, fid, status)
            }
            lost = wanted - set(ids)
            assert not lost, f"CSV sink: entries of the latest states missing {sorted(lost)[:5]}"
        if receiver is not None:
            lost = latest_keys - set(receiver.messages)
            assert not lost, f"HTTP sink: latest versions never received {sorted(lost)[:5]}"
            for key in latest_keys:
                kind, fid = key.split(":")[:2]
                assert receiver.messages[key]["status"] == expected[(kind, int(fid))], key
            assert receiver.bad_signatures == 0
            again = sorted(k for k, n in receiver.counts.items() if n > 1)
            assert len(again) <= redeliveries, (
                f"HTTP sink: {len(again)} ids delivered twice (allowed {redeliveries}): {again[:5]}"
            )


async def prepare_sqlite_sink(path: Path) -> None:
    """Create the SQLite sink's file through the sink itself, plus triggers that count.

    ``sink_given`` gets a row for every history row the sink is asked to write (a BEFORE
    trigger fires even when INSERT OR IGNORE then ignores it): what the sink received.
    ``sink_taken`` gets a row each time ``records`` takes a version: what it applied.
    """
    context = SinkContext("oracle", path.parent, ZoneInfo("Europe/Istanbul"))
    sink = SQLiteSink(SQLiteOptions(path=path), context)
    await sink.open()
    await sink.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(
            """
            CREATE TABLE sink_given (key TEXT NOT NULL);
            CREATE TABLE sink_taken (key TEXT NOT NULL);
            CREATE TRIGGER count_given BEFORE INSERT ON record_history BEGIN
                INSERT INTO sink_given VALUES (new.kind||':'||new.fonzip_id||':'||new.version);
            END;
            CREATE TRIGGER count_taken_new AFTER INSERT ON records BEGIN
                INSERT INTO sink_taken VALUES (new.kind||':'||new.fonzip_id||':'||new.version);
            END;
            CREATE TRIGGER count_taken_changed AFTER UPDATE ON records BEGIN
                INSERT INTO sink_taken VALUES (new.kind||':'||new.fonzip_id||':'||new.version);
            END;
            """
        )


def sqlite_counts(path: Path) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Per record key: how often the SQLite sink was given it, and how often it took it."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        given = collections.Counter(k for (k,) in db.execute("SELECT key FROM sink_given"))
        taken = collections.Counter(k for (k,) in db.execute("SELECT key FROM sink_taken"))
    return given, taken


def sqlite_rows(path: Path) -> dict[tuple[str, int], str]:
    if not path.exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return {
                (k, int(i)): s
                for k, i, s in db.execute("SELECT kind, fonzip_id, status FROM records")
            }
    except sqlite3.OperationalError:
        return {}  # the sink has not created its table yet


def expected_entries(kind: str, fid: int, status: str) -> list[str]:
    """The CSV entries (``entry_id``) a record's latest status implies (issue 12): a
    payment, a payment and its refund, or one row for a state that moved no money."""
    if status == "succeeded":
        return [f"{kind}:{fid}:payment"]
    if status == "refunded":
        return [f"{kind}:{fid}:payment", f"{kind}:{fid}:refund"]
    return [f"{kind}:{fid}:{status}"]


def csv_entry_ids(directory: Path) -> list[str]:
    """Every row's ``entry_id`` in an entries-layout CSV folder, files in order."""
    ids: list[str] = []
    for f in sorted(directory.rglob("*.csv")):
        with f.open(encoding="utf-8", newline="") as fh:
            ids += [row["entry_id"] for row in csv.DictReader(fh)]
    return ids


def csv_keys(directory: Path) -> list[str]:
    keys: list[str] = []
    for f in sorted(directory.rglob("*.csv")):
        with f.open(encoding="utf-8", newline="") as fh:
            keys += [row["key"] for row in csv.DictReader(fh)]
    return keys


async def send_events(
    port: int,
    events: Iterable[Event],
    oracle: Oracle,
    token: str,
    *,
    concurrency: int = 16,
    stop: asyncio.Event | None = None,
) -> list[Event]:
    """POST each event once (``concurrency`` in flight) until done or ``stop``; return the
    events not answered 200, which Fonzip would send again."""
    queue = collections.deque(events)
    left: list[Event] = []
    url = f"http://127.0.0.1:{port}/fonzip/webhook"

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue and not (stop is not None and stop.is_set()):
            event = queue.popleft()
            kind, fid, status = event
            payload = {"id": fid, "webhook_id": 1, "operation": kind.operation, "status": status}
            try:
                async with session.post(
                    url, json=payload, headers={"X-FZ-Auth-Token": token}
                ) as resp:
                    answer: int | str = resp.status
                    await resp.read()
            except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
                answer = type(exc).__name__
            oracle.answered(event, answer)
            if answer != 200:
                left.append(event)

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return left + list(queue)


class Receiver:
    """A Standard Webhooks receiver on 127.0.0.1 that verifies every signature.

    ``messages`` keeps the first body per webhook-id; ``counts`` every delivery, so
    at-least-once shows as counts above one and exactly-once after deduplication as
    one message per id. ``stop()`` and ``start()`` take it off and back on its port.
    """

    def __init__(self) -> None:
        self.messages: dict[str, dict[str, Any]] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.arrivals: list[dict[str, Any]] = []
        """Every verified delivery's record (its payload's ``data``), in arrival order."""
        self.types: list[str] = []
        """Every verified delivery's payload ``type``, in arrival order."""
        self.bad_signatures = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        msg_id = request.headers["webhook-id"]
        ts = request.headers["webhook-timestamp"]
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        if f"v1,{base64.b64encode(mac).decode()}" not in request.headers["webhook-signature"]:
            self.bad_signatures += 1
            return web.Response(status=401)
        self.counts[msg_id] += 1
        payload = json.loads(body)  # Standard Webhooks: type, timestamp, data (the record)
        self.types.append(payload["type"])
        self.arrivals.append(payload["data"])
        self.messages.setdefault(msg_id, self.arrivals[-1])
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class LossyProxy:
    """A TCP proxy on 127.0.0.1 that drops the connection under a share of requests."""

    def __init__(self, target_port: int, drop_rate: float, seed: int) -> None:
        self.target_port = target_port
        self.drop_rate = drop_rate
        self.dropped = 0
        self.port = 0
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    if up and self._rng.random() < self.drop_rate:
                        self.dropped += 1
                        break  # the request never arrives; the client sees a reset
                    dst.write(chunk)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                for w in (writer, up_writer):
                    w.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
