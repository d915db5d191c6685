"""Tests of the fetcher against the simulator: six kinds, failures, retries, and priorities."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import zoneinfo
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fonzipd.config import FetcherSettings
from fonzipd.fetcher import Fetcher
from fonzipd.fonzip.client import FonzipClient
from fonzipd.fonzip.limiter import RateLimiter
from fonzipd.kinds import Kind
from fonzipd.records import Source
from fonzipd.simulator import Simulator
from fonzipd.state import InboxEvent, InboxRow, Store
from tests.support import fonzip_settings

TZ = zoneinfo.ZoneInfo("Europe/Istanbul")
RATE = 6000.0


class Rig:
    def __init__(self, sim: Simulator, store: Store, client: FonzipClient, fetcher: Fetcher):
        self.sim = sim
        self.store = store
        self.client = client
        self.fetcher = fetcher

    async def add(
        self, kind: Kind, fid: int, status: int | None = 3, source: Source = Source.WEBHOOK
    ) -> None:
        await self.store.inbox.add_events([InboxEvent(kind, fid, status, source)])
        self.fetcher.wake()

    async def settled(self, within: float = 15.0) -> dict[str, int]:
        async with asyncio.timeout(within):
            while (await self.store.inbox.depth())[0]:
                await asyncio.sleep(0.02)
        return await self.store.inbox.counts()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with Simulator(seed=3, days=2, per_day=12, rate_per_minute=RATE) as sim:
        base = await sim.start()
        store = await Store.open(tmp_path / "state.db")
        settings = fonzip_settings(base, rate=RATE, max_retries=1)
        client = FonzipClient(
            settings,
            token_store=store.tokens,
            limiter=RateLimiter(RATE),
            form_ids=store.form_ids,
            retry_base=0.01,
            retry_cap=0.05,
        )
        fetcher = Fetcher(
            store,
            client,
            FetcherSettings(concurrency=4, retry_initial=0.05, retry_max=0.2, max_attempts=3),
            sink_ids=lambda: ("a", "b"),
            tz=TZ,
            on_record=lambda: None,
        )
        fetcher.start()
        try:
            yield Rig(sim, store, client, fetcher)
        finally:
            await fetcher.stop(timeout=2)
            await client.close()
            await store.close()


async def test_every_kind_is_fetched_normalized_and_queued_for_every_sink(rig: Rig) -> None:
    expected: dict[Kind, set[int]] = {}
    for kind in Kind:
        ids = [int(o["id"]) for o in rig.sim.objects(kind)][:4]
        expected[kind] = set(ids)
        for fid in ids:
            await rig.add(kind, fid, 0 if kind is Kind.CAMPAIGN else 3)
    counts = await rig.settled()
    assert counts == {"done": sum(len(v) for v in expected.values())}
    for kind, wanted in expected.items():
        for fid in wanted:
            record = await rig.store.records.get(kind, fid)
            assert record is not None, (kind, fid)
            assert record.source is Source.WEBHOOK
            assert record.business_date is not None or kind is Kind.CAMPAIGN
    status = await rig.store.outbox.sink_status(["a", "b"])
    assert status["a"]["pending"] == status["b"]["pending"] == 24


async def test_refund_webhook_gives_a_new_version(rig: Rig) -> None:
    fid, _ = await rig.sim.create_event(Kind.DONATION, status=3, deliver=False)
    await rig.add(Kind.DONATION, fid)
    await rig.settled()
    await rig.sim.refund(Kind.DONATION, fid, deliver=False)
    await rig.add(Kind.DONATION, fid, 4)
    await rig.settled()
    record = await rig.store.records.get(Kind.DONATION, fid)
    assert record is not None
    assert record.status == "refunded"
    assert [r.record.status for r in await rig.store.outbox.batch("a", 10)] == [
        "succeeded",
        "refunded",
    ]


async def test_unknown_id_ends_as_failed_with_its_reason(rig: Rig) -> None:
    await rig.add(Kind.TICKET_SALE, 987654321)
    assert await rig.settled() == {"failed": 1}
    [failed] = await rig.store.inbox.failed_events()
    assert "not found" in failed["last_error"]
    assert failed["attempts"] == 3


async def test_malformed_details_are_retried_then_parked(rig: Rig) -> None:
    rig.sim.faults.malformed_details = 1.0
    fid = int(rig.sim.objects(Kind.DONATION)[0]["id"])
    await rig.add(Kind.DONATION, fid)
    assert await rig.settled() == {"failed": 1}
    [failed] = await rig.store.inbox.failed_events()
    assert failed["attempts"] == 3
    assert "malformed" in failed["last_error"]


async def test_an_outage_is_waited_out(rig: Rig) -> None:
    # Longer than the three attempts a 404 gets: an outage never parks an event.
    rig.sim.faults.outage_until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
    fid = int(rig.sim.objects(Kind.DONATION)[0]["id"])
    await rig.add(Kind.DONATION, fid)
    assert await rig.settled() == {"done": 1}
    assert any(r.status == 503 for r in rig.sim.requests)


async def test_live_work_is_fetched_before_a_reconcile_backlog(rig: Rig) -> None:
    await rig.fetcher.stop(timeout=1)
    ids = [int(o["id"]) for o in rig.sim.objects(Kind.DONATION)]
    for fid in ids[1:]:
        await rig.add(Kind.DONATION, fid, None, Source.RECONCILE)
    await rig.add(Kind.DONATION, ids[0], 3, Source.WEBHOOK)
    first = await rig.store.inbox.claim()
    assert first is not None
    assert (first.fonzip_id, first.source) == (ids[0], Source.WEBHOOK)


async def test_an_object_deleted_at_fonzip_reaches_the_sinks_as_deleted(rig: Rig) -> None:
    fid, _ = await rig.sim.create_event(Kind.DONATION, status=3, deliver=False)
    await rig.add(Kind.DONATION, fid)
    await rig.settled()
    rig.sim.delete(Kind.DONATION, fid)
    await rig.add(Kind.DONATION, fid, None, Source.RECONCILE)
    assert await rig.settled() == {"done": 2}
    record = await rig.store.records.get(Kind.DONATION, fid)
    assert record is not None
    assert record.status == "deleted"
    assert record.amount is not None  # the last known state, marked deleted
    queued = [r.record.status for r in await rig.store.outbox.batch("a", 10)]
    assert queued == ["succeeded", "deleted"]


async def test_a_locked_state_database_is_waited_out_by_every_worker(rig: Rig) -> None:
    # "database is locked" (a CLI replay holding the write lock past the 30-s busy
    # timeout) more times than there are workers: none of them may die of it.
    real_claim, real_apply = rig.store.inbox.claim, rig.store.records.apply_record
    left = {"claim": 10, "apply": 2}

    def locked(name: str) -> None:
        if left[name]:
            left[name] -= 1
            raise sqlite3.OperationalError("database is locked")

    async def claim() -> InboxRow | None:
        locked("claim")
        return await real_claim()

    async def apply_record(*args: Any, **kwargs: Any) -> Any:
        locked("apply")
        return await real_apply(*args, **kwargs)

    rig.store.inbox.claim = claim  # type: ignore[method-assign]
    rig.store.records.apply_record = apply_record  # type: ignore[method-assign]
    ids = [int(o["id"]) for o in rig.sim.objects(Kind.DONATION)][:3]
    for fid in ids:
        await rig.add(Kind.DONATION, fid)
    assert await rig.settled() == {"done": 3}
    assert left == {"claim": 0, "apply": 0}
    for fid in ids:
        assert await rig.store.records.get(Kind.DONATION, fid) is not None
