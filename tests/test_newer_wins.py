"""End to end: a stale fetch never overwrites a newer state, whatever the race.

The daemon runs in-process against the simulator over loopback, with a SQLite, a CSV
and an HTTP sink. For each scenario the simulator holds the detail answer of one
object (the state is read when the request arrives), the object changes at Fonzip, a
second fetch reads the newer state and lands, and only then is the held, older
answer released. Every sink must end with the newer state and never receive the
older one after it. Expected states are written out literally here, from the API
reference, not computed by fonzipd's normalizers.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import sqlite3
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from fonzipd.app import Daemon
from fonzipd.config import ConfigWarning, load_config
from fonzipd.kinds import Kind
from fonzipd.notify import Notifier
from fonzipd.records import Source
from fonzipd.simulator import Simulator
from fonzipd.state import InboxEvent
from tests.daemon_process import write_config
from tests.oracle import SECRET, Receiver
from tests.support import until

TOKEN = "newer-wins-webhook-token-0123"
MONEY = (Kind.DONATION, Kind.MEMBERSHIP_FEE, Kind.TICKET_SALE, Kind.ECARD_SALE)


@dataclasses.dataclass(frozen=True)
class Race:
    """One staged race: the held (older) state, the change, and the newer state."""

    name: str
    kind: Kind
    created: int  # payment status the object is created with (campaigns: 0)
    change: str  # "refund", "rename", "paid" (failed -> succeeded), "approve" (campaign)
    older: str  # the normalized status the held fetch reads
    newer: str  # the normalized status the later fetch reads


RACES = [
    # A later status (higher in the object's life) against an earlier one.
    *(Race(f"refund-{k}", k, 3, "refund", "succeeded", "refunded") for k in MONEY),
    Race("refund-form_answer", Kind.FORM_ANSWER, 3, "refund", "succeeded", "refunded"),
    Race("approve-campaign", Kind.CAMPAIGN, 0, "approve", "waiting_approval", "approved"),
    # Equal rank: a name correction (no webhook at Fonzip; a reconcile finds it) ...
    *(Race(f"rename-{k}", k, 3, "rename", "succeeded", "succeeded") for k in MONEY),
    Race("rename-form_answer", Kind.FORM_ANSWER, 3, "rename", "succeeded", "succeeded"),
    Race("rename-campaign", Kind.CAMPAIGN, 0, "rename", "waiting_approval", "waiting_approval"),
    # ... and a failed payment that went through on a retry: failed and succeeded rank
    # alike, so only the order of the reads can tell which is newer.
    *(Race(f"paid-{k}", k, 5, "paid", "failed", "succeeded") for k in MONEY),
]
NEW_NAME = "Düzeltilmiş"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    await rec.start()
    yield rec
    await rec.stop()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(seed=16, days=1, per_day=4, rate_per_minute=60_000) as s:
        yield s


@pytest.fixture
async def daemon(sim: Simulator, receiver: Receiver, tmp_path: Path) -> AsyncIterator[Daemon]:
    retry = {"flush_interval": 0, "retry_initial": 0.2, "retry_max": 1}
    config = write_config(
        tmp_path / "config.toml",
        base_url=await sim.start(),
        token=TOKEN,
        sinks={
            "archive": {"type": "sqlite", "path": "fonzip.db", **retry},
            # One row per version: the layout that shows every state a sink was given.
            "sheets": {"type": "csv", "directory": "csv", "layout": "snapshots", **retry},
            "forward": {"type": "http", "url": receiver.url, "secret": SECRET, **retry},
        },
        extra="[reconciler]\nenabled = false\n[fetcher]\nconcurrency = 4\n",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # 6000 requests/minute: a simulator
        settings = load_config(config)
    d = Daemon(settings, notifier=Notifier(None), drain_timeout=2)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


async def create(sim: Simulator, race: Race) -> int:
    """A new object for the race, not yet notified (form answers: of a paid form)."""
    while True:
        fid, _ = await sim.create_event(race.kind, status=race.created, deliver=False)
        entry = sim.account.get(race.kind, fid)
        assert entry is not None
        if race.kind is Kind.MEMBERSHIP_FEE:
            entry.extra["is_debt"] = False  # a payment: refundable, /subscription answers
        if race.kind is Kind.CAMPAIGN:
            entry.extra["campaign_status"] = 0  # created, waiting approval
        if race.kind is not Kind.FORM_ANSWER or entry.transaction_id is not None:
            if race.kind is Kind.FORM_ANSWER:
                entry.extra["approval_status"] = 1  # approved (the simulator's legend)
            return fid


async def post_webhook(daemon: Daemon, kind: Kind, fid: int, status: int) -> None:
    payload = {"id": fid, "webhook_id": 1, "operation": kind.operation, "status": status}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{daemon.port}/fonzip/webhook",
            json=payload,
            headers={"X-FZ-Auth-Token": TOKEN},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def inbox_outcomes(daemon: Daemon, kind: Kind, fid: int) -> list[str | None]:
    assert daemon.store is not None
    async with daemon.store.db.execute(
        "SELECT outcome FROM inbox WHERE kind = ? AND fonzip_id = ? ORDER BY id",
        (str(kind), fid),
    ) as cur:
        return [r[0] for r in await cur.fetchall()]


def sqlite_state(path: Path, kind: Kind, fid: int) -> tuple[str, str] | None:
    """(status, person name) of one record in the SQLite sink."""
    if not path.exists():
        return None
    with sqlite3.connect(path) as db:
        try:
            row = db.execute(
                "SELECT status, person_name FROM records WHERE kind = ? AND fonzip_id = ?",
                (str(kind), fid),
            ).fetchone()
        except sqlite3.OperationalError:
            return None
    return None if row is None else (str(row[0]), str(row[1]))


def csv_states(directory: Path, kind: Kind, fid: int) -> list[tuple[str, str]]:
    """(status, person name) of every CSV row of one record, in file order."""
    out: list[tuple[str, str]] = []
    for f in sorted((directory / str(kind)).glob("*.csv")):
        with f.open(encoding="utf-8-sig", newline="") as fh:
            for row in csv.DictReader(fh):
                if row["fonzip_id"] == str(fid):
                    out.append((row["status"], row["person_name"]))
    return out


def http_states(receiver: Receiver, kind: Kind, fid: int) -> list[tuple[str, str]]:
    return [
        (body["status"], body["person"]["name"])
        for body in receiver.arrivals
        if body["kind"] == str(kind) and body["fonzip_id"] == fid
    ]


async def pending(daemon: Daemon) -> int:
    assert daemon.store is not None
    async with daemon.store.db.execute("SELECT count(*) FROM outbox WHERE state = 'pending'") as c:
        row = await c.fetchone()
    assert row is not None
    return int(row[0])


def change(sim: Simulator, race: Race, fid: int) -> Callable[[], Awaitable[None]]:
    """Apply the race's change at Fonzip; return how the daemon learns of it."""
    if race.change == "refund":

        async def refund() -> None:
            await sim.refund(race.kind, fid, deliver=False)

        return refund
    if race.change == "rename":
        return _sync(lambda: sim.amend(race.kind, fid, first_name=NEW_NAME))
    if race.change == "paid":
        return _sync(lambda: sim.amend(race.kind, fid, payment_status=3))
    return _sync(lambda: sim.amend(race.kind, fid, campaign_status=1))


def _sync(action: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        action()

    return run


@pytest.mark.parametrize("race", RACES, ids=[r.name for r in RACES])
async def test_a_stale_fetch_landing_last_never_overwrites_the_newer_state(
    race: Race, sim: Simulator, daemon: Daemon, receiver: Receiver, tmp_path: Path
) -> None:
    fid = await create(sim, race)
    entry = sim.account.get(race.kind, fid)
    assert entry is not None
    old_name = entry.person.name
    hold = sim.hold_detail(race.kind, fid)

    # 1. The first webhook: its fetch reads the older state, and its answer is held.
    webhook_status = 0 if race.kind is Kind.CAMPAIGN else race.created
    await post_webhook(daemon, race.kind, fid, webhook_status)
    await asyncio.wait_for(hold.arrived.wait(), 15)

    # 2. The object changes at Fonzip; a second fetch reads the newer state and lands.
    await change(sim, race, fid)()
    if race.change == "refund":
        await post_webhook(daemon, race.kind, fid, 4)
    elif race.change == "paid":
        await post_webhook(daemon, race.kind, fid, 3)
    else:
        # No webhook for these at Fonzip: the nightly reconcile queues the object.
        assert daemon.store is not None
        assert daemon.fetcher is not None
        await daemon.store.inbox.add_events([InboxEvent(race.kind, fid, None, Source.RECONCILE)])
        daemon.fetcher.wake()
    new_name = old_name if race.change != "rename" else f"{NEW_NAME} {entry.person.last_name}"
    newer = (race.newer, new_name)
    older = (race.older, old_name)
    assert newer != older
    db = tmp_path / "fonzip.db"

    async def newer_everywhere() -> bool:
        return (
            sqlite_state(db, race.kind, fid) == newer
            and newer in csv_states(tmp_path / "csv", race.kind, fid)
            and newer in http_states(receiver, race.kind, fid)
        )

    await until(newer_everywhere, within=20)

    # 3. Only now does the older answer arrive.
    hold.release()

    async def held_fetch_applied() -> bool:
        outcomes = await inbox_outcomes(daemon, race.kind, fid)
        return len(outcomes) == 2 and None not in outcomes

    await until(held_fetch_applied, within=20)

    async def drained() -> bool:
        return await pending(daemon) == 0

    await until(drained, within=20)
    # The held fetch was judged stale by the daemon itself, not overwritten by luck.
    assert (await inbox_outcomes(daemon, race.kind, fid))[0] == "stale"
    assert sqlite_state(db, race.kind, fid) == newer
    for sink, states in (
        ("CSV", csv_states(tmp_path / "csv", race.kind, fid)),
        ("HTTP", http_states(receiver, race.kind, fid)),
    ):
        assert states[-1] == newer, (sink, states)
        after = states[states.index(newer) :]
        assert older not in after, f"{sink} received the older state after the newer: {states}"
    assert daemon.store is not None
    stored = await daemon.store.records.get(race.kind, fid)
    assert stored is not None
    assert (stored.status, stored.person.name) == newer
