"""The inbox: events waiting for their detail fetch, claimed by the fetcher's workers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from fonzipd.kinds import Kind
from fonzipd.records import Source
from fonzipd.state.connection import Connection, StoreError, Tx, ts


@dataclasses.dataclass(frozen=True, slots=True)
class InboxEvent:
    """One event to record in the inbox."""

    kind: Kind
    fonzip_id: int
    event_status: int | None
    source: Source
    list_row: dict[str, Any] | None = None
    enrich: bool = False
    """The detail of a record already stored from its list row: done last."""

    @property
    def priority(self) -> int:
        """0 for live webhook work, 1 for reconcile, backfill and CLI work, 2 for
        enrichments (reconciler.enrich), which use only what the others leave."""
        if self.source is Source.WEBHOOK:
            return 0
        return 2 if self.enrich else 1


@dataclasses.dataclass(frozen=True, slots=True)
class InboxRow:
    """A claimed inbox row, handed to a fetcher worker."""

    id: int
    kind: Kind
    fonzip_id: int
    event_status: int | None
    source: Source
    priority: int
    attempts: int
    list_row: dict[str, Any] | None


# An event is deduplicated only against rows still pending, never against a claimed
# one: its fetch may already have read the object's older state, so a notification
# that arrives meanwhile needs a fetch of its own. A claimed row given back while
# such a twin is pending is finished as superseded (the twin's fetch covers it).
_HAS_PENDING_TWIN = (
    "EXISTS (SELECT 1 FROM inbox AS twin WHERE twin.state = 'pending'"
    " AND twin.kind = inbox.kind AND twin.fonzip_id = inbox.fonzip_id"
    " AND coalesce(twin.event_status, -1) = coalesce(inbox.event_status, -1))"
)
_SUPERSEDE = "UPDATE inbox SET state = 'done', finished_at = ?, outcome = 'superseded'"


async def _supersede(tx: Tx, row_id: int, now: float) -> None:
    await tx.execute(
        _SUPERSEDE + " WHERE id = ? AND state = 'claimed' AND " + _HAS_PENDING_TWIN, (now, row_id)
    )


async def claim_in(tx: Tx, limit: int, now: float) -> list[InboxRow]:
    """Claim up to ``limit`` ready rows inside ``tx`` (:meth:`Inbox.claim`'s order)."""
    if limit <= 0:
        return []
    rows = await tx.fetchall(
        "UPDATE inbox SET state = 'claimed', attempts = attempts + 1"
        " WHERE id IN (SELECT id FROM inbox WHERE state = 'pending'"
        "   AND (next_attempt_at <= ? OR attempts = 0)"
        "   ORDER BY priority, next_attempt_at, id LIMIT ?)"
        " RETURNING id, kind, fonzip_id, event_status, source, priority, attempts,"
        " list_row, next_attempt_at",
        (now, limit),
    )
    # RETURNING follows no ORDER BY: put live work first again.
    rows.sort(key=lambda r: (r[5], r[8], r[0]))
    return [
        InboxRow(
            id=row[0],
            kind=Kind(row[1]),
            fonzip_id=row[2],
            event_status=row[3],
            source=Source(row[4]),
            priority=row[5],
            attempts=row[6],
            list_row=None if row[7] is None else json.loads(row[7]),
        )
        for row in rows
    ]


class Inbox:
    """The ``inbox`` table: add, claim, give back, finish, prune, count."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def add_events(self, events: Sequence[InboxEvent]) -> list[bool]:
        """Commit events to the inbox in one transaction; True where a row was added.

        When this returns, the rows are durable.

        An event equal to one still pending is not stored again (False).
        """
        now = ts(self._conn.clock.now())
        values = [
            [
                ev.kind.value,
                ev.fonzip_id,
                ev.event_status,
                ev.source.value,
                ev.priority,
                None if ev.list_row is None else json.dumps(ev.list_row),
            ]
            for ev in events
        ]
        # One statement for the whole group, in one round trip to aiosqlite's thread:
        # per-event statements held group-commit ingest to ~22% of a no-op handler
        # (bench/bench_ingest.py). A lone statement outside BEGIN is its own
        # transaction, committed (and, with synchronous=FULL, fsynced) when it completes,
        # so no BEGIN/COMMIT round trips are needed; the lock keeps it out of another
        # task's open transaction, and keeps other writers of this process out until
        # the duplicates are known.
        async with self._conn.autocommit() as tx:
            done = await tx.execute(
                "INSERT OR IGNORE INTO inbox (kind, fonzip_id, event_status, source,"
                " priority, state, next_attempt_at, list_row, received_at)"
                " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
                " json_extract(value, '$[2]'), json_extract(value, '$[3]'),"
                " json_extract(value, '$[4]'), 'pending', ?, json_extract(value, '$[5]'), ?"
                " FROM json_each(?) ORDER BY key",
                (now, now, json.dumps(values)),
            )
            if self._conn.db.in_transaction:
                # Never expected; a statement left open would hold the commit back.
                raise StoreError("the inbox insert did not complete its transaction")
            if done.rowcount == len(events):
                # The usual case: no duplicate. Not RETURNING: its rows come back one
                # sqlite3 step each, every step taking the GIL back from the event loop.
                return [True] * len(events)
            if done.rowcount == 0:
                return [False] * len(events)
            # Some were duplicates of pending rows: the rows this statement inserted
            # have the consecutive ids that end at its last one (SQLite gives a new row
            # the largest id plus one, and the statement inserts its rows in turn).
            assert done.lastrowid is not None
            rows = await tx.fetchall(
                "SELECT kind, fonzip_id, coalesce(event_status, -1) FROM inbox"
                " WHERE id > ? AND id <= ?",
                (done.lastrowid - done.rowcount, done.lastrowid),
            )
        if len(rows) != done.rowcount:
            # Committed, but not knowing which rows are new: an error answer (Fonzip
            # retries, and finds them pending) rather than a wrong one.
            raise StoreError(
                f"the inbox insert added {done.rowcount} rows, {len(rows)} found by id"
            )
        inserted = {(str(k), int(i), int(st)) for k, i, st in rows}
        added: list[bool] = []
        for ev in events:
            key = (str(ev.kind), ev.fonzip_id, -1 if ev.event_status is None else ev.event_status)
            added.append(key in inserted)
            inserted.discard(key)
        return added

    async def release_claims(self) -> int:
        """Put every claimed row back to pending (at start, and at shutdown)."""
        now = ts(self._conn.clock.now())
        async with self._conn.transaction() as tx:
            # Of claimed twins (the same event claimed again after it came back), the
            # newest returns to pending; the others are superseded by it.
            await tx.execute(
                _SUPERSEDE + " WHERE state = 'claimed' AND (" + _HAS_PENDING_TWIN + " OR "
                "EXISTS (SELECT 1 FROM inbox AS twin WHERE twin.state = 'claimed'"
                " AND twin.id > inbox.id AND twin.kind = inbox.kind"
                " AND twin.fonzip_id = inbox.fonzip_id"
                " AND coalesce(twin.event_status, -1) = coalesce(inbox.event_status, -1)))",
                (now,),
            )
            done = await tx.execute("UPDATE inbox SET state = 'pending' WHERE state = 'claimed'")
            return done.rowcount

    async def claim(self) -> InboxRow | None:
        """Claim the next ready inbox row: live work first, then oldest first.

        A row never tried is ready whatever the clock says: after the wall clock steps
        back, its ``next_attempt_at`` (the time it was received) lies in the future,
        and waiting for it would hold every event queued before the step for as long
        as the step. Only retries wait for their (wall-clock) backoff.
        """
        rows = await self.claim_many(1)
        return rows[0] if rows else None

    async def claim_many(self, limit: int) -> list[InboxRow]:
        """Claim up to ``limit`` ready rows in one transaction, in :meth:`claim`'s order
        (the fetcher's idle workers, served by one commit).

        Not durable (no fsync): a claim a power cut loses leaves its row pending, to
        be claimed and fetched again, as start-up does with the claims of a daemon
        that died. Whatever the worker then commits durably (its record, a retry)
        makes the claim durable with it.
        """
        now = ts(self._conn.clock.now())
        async with self._conn.transaction(durable=False) as tx:
            return await claim_in(tx, limit, now)

    async def next_due(self) -> dt.datetime | None:
        """When the earliest pending row becomes ready, or None when none is pending."""
        now = ts(self._conn.clock.now())
        row = await self._conn.fetchone(
            # A row never tried is ready now (see claim), even if received "later".
            "SELECT min(iif(attempts = 0, min(next_attempt_at, ?), next_attempt_at))"
            " FROM inbox WHERE state = 'pending'",
            (now,),
        )
        if row is None or row[0] is None:
            return None
        return dt.datetime.fromtimestamp(row[0], dt.UTC)

    async def retry_later(self, row_id: int, error: str, delay: float) -> None:
        """Give a claimed row back, to be tried again after ``delay`` seconds."""
        now = ts(self._conn.clock.now())
        async with self._conn.transaction() as tx:
            await _supersede(tx, row_id, now)
            await tx.execute(
                "UPDATE inbox SET state = 'pending', next_attempt_at = ?, last_error = ?"
                " WHERE id = ? AND state = 'claimed'",
                (now + delay, error, row_id),
            )

    async def unclaim(self, row_id: int) -> None:
        """Give a claimed row back untouched (shutdown): the attempt does not count."""
        now = ts(self._conn.clock.now())
        async with self._conn.transaction() as tx:
            await _supersede(tx, row_id, now)
            await tx.execute(
                "UPDATE inbox SET state = 'pending', attempts = max(attempts - 1, 0)"
                " WHERE id = ? AND state = 'claimed'",
                (row_id,),
            )

    async def fail(self, row_id: int, error: str) -> None:
        """End a row that can never succeed; it stays visible in ``status``."""
        now = ts(self._conn.clock.now())
        async with self._conn.transaction() as tx:
            await tx.execute(
                "UPDATE inbox SET state = 'failed', last_error = ?, finished_at = ?,"
                " outcome = 'failed' WHERE id = ? AND state = 'claimed'",
                (error, now, row_id),
            )

    async def prune(self, older_than: dt.timedelta) -> int:
        """Delete finished (done) inbox rows older than ``older_than``; failed rows stay."""
        cutoff = ts(self._conn.clock.now() - older_than)
        async with self._conn.transaction() as tx:
            done = await tx.execute(
                "DELETE FROM inbox WHERE state = 'done' AND finished_at < ?", (cutoff,)
            )
            return done.rowcount

    async def depth(self) -> tuple[int, float | None]:
        """Pending and claimed rows, and the age in seconds of the oldest."""
        row = await self._conn.fetchone(
            "SELECT count(*), min(received_at) FROM inbox WHERE state IN ('pending', 'claimed')"
        )
        assert row is not None
        age = None if row[1] is None else max(0.0, ts(self._conn.clock.now()) - float(row[1]))
        return int(row[0]), age

    async def counts(self) -> dict[str, int]:
        """Inbox rows by state."""
        rows = await self._conn.fetchall("SELECT state, count(*) FROM inbox GROUP BY state")
        return {str(s): int(n) for s, n in rows}

    async def failed_events(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent inbox rows that ended as failed, with their reason."""
        return await self._conn.fetchdicts(
            "SELECT kind, fonzip_id, event_status, source, attempts, last_error, finished_at"
            " FROM inbox WHERE state = 'failed' ORDER BY finished_at DESC LIMIT ?",
            (limit,),
        )

    async def unfinished(self, kind: Kind, ids: Iterable[int]) -> int:
        """How many inbox rows for these ids of ``kind`` are still pending or claimed."""
        wanted = list(ids)
        count = 0
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            row = await self._conn.fetchone(
                "SELECT count(*) FROM inbox WHERE kind = ? AND state IN ('pending', 'claimed')"
                f" AND fonzip_id IN ({','.join('?' * len(chunk))})",
                (str(kind), *chunk),
            )
            count += int(row[0]) if row else 0
        return count
