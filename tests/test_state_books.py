"""Tests of fonzipd.state.books: the reconciler's run rows, day verdicts and CLI requests."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from fonzipd.kinds import Kind
from fonzipd.records import Source
from fonzipd.state import InboxEvent, Store
from tests.support import FakeClock, hook, make_record

D1, D2, D3 = dt.date(2026, 11, 24), dt.date(2026, 11, 25), dt.date(2026, 11, 26)


def run_row(day: dt.date, kind: Kind, list_status: str, **changes: Any) -> dict[str, Any]:
    """A reconcile_runs row as the reconciler saves it (ListRun.to_row)."""
    row: dict[str, Any] = {
        "business_date": day.isoformat(),
        "kind": str(kind),
        "list_status": list_status,
        "run_key": f"{day}:{kind}:{list_status}",
        "source": "reconcile",
        "fonzip_total": 12,
        "window_total": 10,
        "local_before": 9,
        "local_after": 10,
        "missing": 1,
        "changed": 2,
        "extra": 0,
        "fetched": 3,
        "failed": 0,
        "calls": 4,
        "basis": "complete_date",
        "started_at": 1764234000.5,
        "finished_at": 1764234060.25,
        "outcome": "closed",
        "reason": None,
    }
    row.update(changes)
    return row


async def test_a_saved_run_reads_back_whole_and_a_second_save_replaces_it(store: Store) -> None:
    first = run_row(D1, Kind.DONATION, "succeeded", outcome="running", finished_at=None)
    await store.books.save_run(first)
    assert await store.books.runs() == [first]
    done = run_row(D1, Kind.DONATION, "succeeded", outcome="open", reason="count gap: 2")
    await store.books.save_run(done)
    assert await store.books.runs() == [done]


async def test_runs_are_filtered_by_day_newest_first_then_by_kind_and_list(store: Store) -> None:
    rows = [
        run_row(D1, Kind.DONATION, "succeeded"),
        run_row(D3, Kind.TICKET_SALE, "succeeded"),
        run_row(D3, Kind.DONATION, "succeeded"),
        run_row(D3, Kind.DONATION, "refunded"),
        run_row(D2, Kind.DONATION, "succeeded"),
    ]
    for row in rows:
        await store.books.save_run(row)
    order = [(r["business_date"], r["kind"], r["list_status"]) for r in await store.books.runs()]
    assert order == [
        (D3.isoformat(), "donation", "refunded"),
        (D3.isoformat(), "donation", "succeeded"),
        (D3.isoformat(), "ticket_sale", "succeeded"),
        (D2.isoformat(), "donation", "succeeded"),
        (D1.isoformat(), "donation", "succeeded"),
    ]
    picked = await store.books.runs(days=[D1, D2])
    assert [(r["business_date"], r["kind"]) for r in picked] == [
        (D2.isoformat(), "donation"),
        (D1.isoformat(), "donation"),
    ]
    assert await store.books.runs(days=[dt.date(2026, 1, 1)]) == []
    assert len(await store.books.runs(limit=2)) == 2


async def test_runs_shows_the_200_newest_by_default(store: Store) -> None:
    start = dt.date(2026, 1, 1)
    async with store.connection.transaction() as tx:
        for n in range(201):
            row = run_row(start + dt.timedelta(days=n), Kind.DONATION, "succeeded")
            await tx.execute(
                f"INSERT INTO reconcile_runs ({', '.join(row)})"
                f" VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
    runs = await store.books.runs()
    assert len(runs) == 200
    assert runs[0]["business_date"] == (start + dt.timedelta(days=200)).isoformat()
    assert runs[-1]["business_date"] == (start + dt.timedelta(days=1)).isoformat()


async def test_a_day_verdict_is_saved_with_its_coverage_and_time_and_replaced(
    store: Store, clock: FakeClock
) -> None:
    await store.books.save_day(
        D1, closed=False, reason="count gap", records=7, first_by_webhook=5, first_by_reconcile=2
    )
    assert await store.books.days() == [
        {
            "business_date": D1.isoformat(),
            "state": "open",
            "reason": "count gap",
            "records": 7,
            "first_by_webhook": 5,
            "first_by_reconcile": 2,
            "updated_at": clock.now().timestamp(),
        }
    ]
    clock.advance(3600)
    await store.books.save_day(
        D1, closed=True, reason=None, records=8, first_by_webhook=5, first_by_reconcile=3
    )
    assert await store.books.days() == [
        {
            "business_date": D1.isoformat(),
            "state": "closed",
            "reason": None,
            "records": 8,
            "first_by_webhook": 5,
            "first_by_reconcile": 3,
            "updated_at": clock.now().timestamp(),
        }
    ]


async def test_days_filter_by_date_and_by_open_newest_first(store: Store) -> None:
    for day, closed in ((D1, False), (D3, False), (D2, True)):
        await store.books.save_day(
            day, closed=closed, reason=None, records=0, first_by_webhook=0, first_by_reconcile=0
        )

    async def states(**kw: Any) -> list[tuple[str, str]]:
        return [(r["business_date"], r["state"]) for r in await store.books.days(**kw)]

    assert await states() == [
        (D3.isoformat(), "open"),
        (D2.isoformat(), "closed"),
        (D1.isoformat(), "open"),
    ]
    assert await states(open_only=True) == [(D3.isoformat(), "open"), (D1.isoformat(), "open")]
    assert await states(days=[D1, D2]) == [(D2.isoformat(), "closed"), (D1.isoformat(), "open")]
    assert await states(days=[D2, D3], open_only=True) == [(D3.isoformat(), "open")]
    assert await states(days=[dt.date(2026, 1, 1)]) == []


async def test_fetch_states_says_what_became_of_each_queued_event(store: Store) -> None:
    # 1: fetched (done), then queued again (pending): the pending row wins.
    # 2: failed. 3: claimed. 4: done, then failed later: the latest wins.
    # 5: never queued. 6: a membership fee, another kind.
    events = [hook(n) for n in (1, 2, 3, 4)] + [hook(6, kind=Kind.MEMBERSHIP_FEE)]
    await store.inbox.add_events(events)
    rows = {r.fonzip_id: r for r in await store.inbox.claim_many(5)}
    await store.records.apply_record(rows[1].id, make_record(1), ["a"])
    await store.inbox.fail(rows[2].id, "not found at Fonzip")
    await store.records.apply_record(rows[4].id, make_record(4), ["a"])
    await store.inbox.add_events([hook(1), hook(4, status=5)])
    again = await store.inbox.claim_many(2)
    await store.inbox.retry_later(next(r.id for r in again if r.fonzip_id == 1), "busy", 60)
    await store.inbox.fail(next(r.id for r in again if r.fonzip_id == 4), "gone")

    states = await store.books.fetch_states(Kind.DONATION, iter([1, 2, 3, 4, 5, 6]))
    assert states == {
        1: ("pending", "busy"),
        2: ("failed", "not found at Fonzip"),
        3: ("claimed", None),
        4: ("failed", "gone"),
    }
    assert await store.books.fetch_states(Kind.MEMBERSHIP_FEE, [6]) == {6: ("claimed", None)}


async def test_fetch_states_answers_for_more_ids_than_one_query_holds(store: Store) -> None:
    ids = list(range(1, 1202))
    await store.inbox.add_events(
        [InboxEvent(Kind.DONATION, n, None, Source.RECONCILE) for n in ids]
    )
    states = await store.books.fetch_states(Kind.DONATION, ids)
    assert states == {n: ("pending", None) for n in ids}


async def test_a_request_is_claimed_once_oldest_first_and_released_if_unfinished(
    store: Store, clock: FakeClock
) -> None:
    deadline = dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.UTC)
    first = await store.books.add_request(
        [D1, D2], [Kind.DONATION, Kind.TICKET_SALE], Source.CLI, dry_run=True, deadline_at=deadline
    )
    second = await store.books.add_request([D3], [Kind.CAMPAIGN], Source.RECONCILE, dry_run=False)
    assert second > first
    requested = await store.connection.fetchall(
        "SELECT days, kinds, source, dry_run, requested_at, deadline_at FROM reconcile_requests"
        " ORDER BY id"
    )
    assert [tuple(r) for r in requested] == [
        (
            json.dumps([D1.isoformat(), D2.isoformat()]),
            json.dumps(["donation", "ticket_sale"]),
            "cli",
            1,
            clock.now().timestamp(),
            deadline.timestamp(),
        ),
        (
            json.dumps([D3.isoformat()]),
            json.dumps(["campaign"]),
            "reconcile",
            0,
            clock.now().timestamp(),
            None,
        ),
    ]

    clock.advance(5)
    claimed = await store.books.claim_request()
    assert claimed == {
        "id": first,
        "days": [D1, D2],
        "kinds": [Kind.DONATION, Kind.TICKET_SALE],
        "source": Source.CLI,
        "dry_run": True,
        "deadline_at": deadline,
    }
    started = await store.books.request(first)
    assert started == {
        "id": first,
        "started_at": clock.now().timestamp(),
        "finished_at": None,
        "outcome": None,
        "result": None,
    }
    claimed = await store.books.claim_request()
    assert claimed is not None
    assert (claimed["id"], claimed["dry_run"], claimed["deadline_at"]) == (second, False, None)
    assert await store.books.claim_request() is None

    # The daemon died with both started; the first had finished.
    await store.books.finish_request(first, "closed", '{"days": []}')
    assert await store.books.release_requests() == 1
    assert (await store.books.request(second) or {})["started_at"] is None
    assert (await store.books.request(first) or {})["started_at"] == clock.now().timestamp()
    again = await store.books.claim_request()
    assert again is not None
    assert again["id"] == second
    assert await store.books.claim_request() is None


async def test_a_finished_request_keeps_its_outcome_and_result(
    store: Store, clock: FakeClock
) -> None:
    rid = await store.books.add_request([D1], [Kind.DONATION], Source.CLI, dry_run=False)
    await store.books.claim_request()
    clock.advance(42)
    await store.books.finish_request(rid, "open", '[{"day": "2026-11-24"}]')
    finished = await store.books.request(rid)
    assert finished is not None
    assert (finished["finished_at"], finished["outcome"], finished["result"]) == (
        clock.now().timestamp(),
        "open",
        '[{"day": "2026-11-24"}]',
    )
    # Neither a second finish nor a late withdrawal changes it.
    clock.advance(1)
    await store.books.finish_request(rid, "expired")
    assert not await store.books.withdraw_request(rid)
    assert await store.books.request(rid) == finished
    assert await store.books.request(rid + 1) is None


async def test_a_withdrawn_request_is_never_claimed_and_keeps_withdrawn(
    store: Store, clock: FakeClock
) -> None:
    rid = await store.books.add_request([D1], [Kind.DONATION], Source.CLI, dry_run=False)
    clock.advance(7)
    assert await store.books.withdraw_request(rid)
    assert await store.books.claim_request() is None
    await store.books.finish_request(rid, "closed", "{}")
    assert await store.books.request(rid) == {
        "id": rid,
        "started_at": None,
        "finished_at": clock.now().timestamp(),
        "outcome": "withdrawn",
        "result": None,
    }
    assert not await store.books.withdraw_request(rid)
    assert await store.books.release_requests() == 0


async def test_a_dry_run_without_a_time_limit_and_a_real_run_with_one(store: Store) -> None:
    deadline = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
    await store.books.add_request([D1], [Kind.DONATION], Source.CLI, dry_run=True)
    await store.books.add_request(
        [D2], [Kind.DONATION], Source.CLI, dry_run=False, deadline_at=deadline
    )
    dry, real = await store.books.claim_request(), await store.books.claim_request()
    assert dry is not None
    assert real is not None
    assert (dry["dry_run"], dry["deadline_at"]) == (True, None)
    assert (real["dry_run"], real["deadline_at"]) == (False, deadline)


async def test_a_queued_row_wins_over_a_later_row_that_has_ended(store: Store) -> None:
    # Id 1: its first row is claimed when a second notification queues a second row,
    # which is fetched and fails first: the first row is still at work ("claimed"),
    # then given back ("pending"). Id 2 likewise, with the later row done.
    await store.inbox.add_events([hook(1), hook(2)])
    first = {r.fonzip_id: r for r in await store.inbox.claim_many(2)}
    await store.inbox.add_events([hook(1), hook(2)])
    later = {r.fonzip_id: r for r in await store.inbox.claim_many(2)}
    await store.inbox.fail(later[1].id, "not found at Fonzip")
    await store.records.apply_record(later[2].id, make_record(2), ["a"])
    states = await store.books.fetch_states(Kind.DONATION, [1, 2])
    assert states == {1: ("claimed", None), 2: ("claimed", None)}
    await store.inbox.retry_later(first[1].id, "Fonzip unavailable", 30)
    await store.inbox.retry_later(first[2].id, "Fonzip unavailable", 30)
    states = await store.books.fetch_states(Kind.DONATION, [1, 2])
    assert states == {1: ("pending", "Fonzip unavailable"), 2: ("pending", "Fonzip unavailable")}
