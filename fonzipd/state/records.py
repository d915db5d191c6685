"""The records table: the latest state of every object, and storing a fetched one."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fonzipd.fonzip.fields import parse_fonzip_datetime
from fonzipd.fonzip.list_rows import is_list_shape, same_fields
from fonzipd.fonzip.statuses import list_state
from fonzipd.kinds import Kind
from fonzipd.privacy import NO_POLICY, SinkPolicy, anonymized
from fonzipd.records import Record
from fonzipd.state.connection import Connection, Tx, ts
from fonzipd.state.inbox import InboxRow, claim_in

_UTC = zoneinfo.ZoneInfo("UTC")

# Higher ranks are later in an object's life: a fetch whose state ranks lower than
# the stored one is stale (it raced a newer fetch) and never overwrites it.
_STATUS_RANK: dict[str, int] = {
    "pending": 0,
    "waiting_approval": 0,
    "waiting_extra_approval": 1,
    "approved": 1,
    "answered": 1,
    "succeeded": 1,
    "failed": 1,
    "rejected": 2,
    "finalized": 2,
    "refunded": 2,
    "archived": 3,
    "removed": 4,
    "deleted": 4,
}


_APPROVAL_RANK: dict[str | None, int] = {"waiting_approval": 0, "approved": 1, "rejected": 1}


def status_rank(status: str) -> int:
    """How far along its life a status is; unknown statuses rank with the settled ones."""
    return _STATUS_RANK.get(status, 1)


def _last_update(record: Record) -> dt.datetime | None:
    """Fonzip's own ``last_update_date`` of the object, where its kind has one."""
    try:
        # Naive values are read alike on both sides of a comparison, so any zone will do.
        return parse_fonzip_datetime(record.data.get("last_update_date"), _UTC)
    except ValueError:
        return None  # unreadable: the next rule decides


def is_newer(candidate: Record, stored: Record) -> bool:
    """Whether ``candidate`` is a later state of its object than ``stored``.

    Two states of one object are ordered by, in turn:
    1. status rank: a state later in the object's life wins (refunded after succeeded);
       then, for form answers of equal status, the approval: a decision (approved,
       rejected) is later than waiting_approval;
    2. Fonzip's ``last_update_date``, when both states carry one and they differ
       (donations and e-card sales have it);
    3. at equal normalized fields, a detail over a list row (fonzip.list_rows);
    4. when each was read from Fonzip (``fetched_at``: when the request went out): a
       read sent later saw Fonzip's state at a later moment. Equal times keep the
       newcomer, as before.
    The transaction's dates are not used: they say when money moved, not when the
    object changed (a name correction moves none of them). Nor is the webhooks'
    order: Fonzip sends them out of order and a fetch reads the current state anyway.
    """
    ranks = status_rank(candidate.status), status_rank(stored.status)
    if ranks[0] != ranks[1]:
        return ranks[0] > ranks[1]
    decided = _APPROVAL_RANK.get(candidate.approval), _APPROVAL_RANK.get(stored.approval)
    if decided[0] is not None and decided[1] is not None and decided[0] != decided[1]:
        return decided[0] > decided[1]
    if same_fields(candidate, stored) and is_list_shape(candidate) != is_list_shape(stored):
        # One state seen twice, through a list row and through the detail: the detail
        # (richer data) wins whichever was read first, so the two never alternate.
        return not is_list_shape(candidate)
    updates = _last_update(candidate), _last_update(stored)
    if updates[0] is not None and updates[1] is not None and updates[0] != updates[1]:
        return updates[0] > updates[1]
    return candidate.fetched_at >= stored.fetched_at


def _policies(sink_ids: Mapping[str, SinkPolicy] | Iterable[str]) -> dict[str, SinkPolicy]:
    """Each sink's policy (a plain list of ids: every record, unchanged)."""
    if isinstance(sink_ids, Mapping):
        return dict(sink_ids)
    return dict.fromkeys(sink_ids, NO_POLICY)


_OutboxRow = tuple[str, str, str, str | None, str, float]
"""An outbox row to insert: (sink_id, record_key, kind, business_date, record, created_at)."""


def _outbox_rows(
    record: Record,
    payload: str,
    sinks: Mapping[str, SinkPolicy],
    now: float,
    *,
    enrichment: bool = False,
) -> list[_OutboxRow]:
    """A stored record's outbox row for each sink its filters admit, redacted first.
    An ``enrichment`` goes only to the sinks whose policy takes enrichments."""
    bdate = None if record.business_date is None else record.business_date.isoformat()
    rows: list[_OutboxRow] = []
    # Sinks sharing a policy share its redacted copy: redacted once per policy.
    copies: dict[SinkPolicy, str] = {}
    for sink_id, policy in sinks.items():
        if not policy.admits(record) or (enrichment and not policy.enrichments):
            continue
        queued = payload
        if policy.redacts:
            queued = copies.get(policy) or json.dumps(
                policy.apply(record).to_json_dict(), ensure_ascii=False
            )
            copies[policy] = queued
        rows.append((sink_id, record.key, str(record.kind), bdate, queued, now))
    return rows


async def _queue(tx: Tx, rows: Sequence[_OutboxRow]) -> None:
    """Queue outbox rows, in their order, with one statement for all the deletes and
    one for all the inserts.

    The content may have changed back to a version still queued (or dead) for a sink:
    it is queued again behind the versions queued since (the old row deleted), so that
    the sink ends with the latest state. Of two rows of one version for one sink in
    ``rows``, the later one is kept, as a delete before each insert would leave it.
    """
    last = {(row[0], row[1]): n for n, row in enumerate(rows)}
    kept = [row for n, row in enumerate(rows) if last[(row[0], row[1])] == n]
    if not kept:
        return
    await tx.executemany(
        "DELETE FROM outbox WHERE sink_id = ? AND record_key = ?", [row[:2] for row in kept]
    )
    await tx.executemany(
        "INSERT INTO outbox (sink_id, record_key, kind, business_date, record, state,"
        " created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
        kept,
    )


_KEYS = (
    "SELECT json_extract(value, '$[0]') AS kind, json_extract(value, '$[1]') AS fonzip_id"
    " FROM json_each(?)"
)
"""The (kind, fonzip_id) pairs of a JSON list, for a join."""


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    """What storing a fetched record did."""

    outcome: str  # "new", "changed", "unchanged" or "stale"
    enqueued: int


class Records:
    """The ``records`` table: one row per object, its latest stored state."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def apply_record(
        self,
        row_id: int | None,
        record: Record,
        sink_ids: Mapping[str, SinkPolicy] | Iterable[str],
    ) -> Applied:
        """Store a fetched record and queue it for every sink, in one transaction.

        The record is stored and queued only when its version is new and it is a
        later state than the stored one (:func:`is_newer`); otherwise the outcome is
        "stale" and nothing changes. The inbox row (if any) is finished in the same
        transaction, so a crash leaves either all of it or none.

        ``sink_ids`` maps each sink to its :class:`~fonzipd.privacy.SinkPolicy` (a
        plain list of ids: every record, unchanged): a sink gets the records its
        filters admit, redacted before they are queued. An object whose person was
        erased (``fonzipd forget``) is stored and queued anonymized.
        """
        async with self._conn.transaction() as tx:
            (applied,) = await self._apply(tx, [(row_id, record, _policies(sink_ids))])
            return applied

    async def apply_records(
        self, records: Sequence[Record], sink_ids: Mapping[str, SinkPolicy] | Iterable[str]
    ) -> list[Applied]:
        """:meth:`apply_record` for several records without inbox rows (records built
        from list rows), in one transaction: all are stored and queued, or none."""
        sinks = _policies(sink_ids)
        async with self._conn.transaction() as tx:
            return await self._apply(tx, [(None, record, sinks) for record in records])

    async def apply_many(
        self,
        items: Sequence[tuple[int | None, Record, Mapping[str, SinkPolicy] | Iterable[str]]],
    ) -> list[Applied]:
        """:meth:`apply_record` for several ``(inbox row id, record, sinks)`` in one
        transaction (the fetcher's group of workers): each record's store, queueing and
        inbox row together, all of them or none; one commit, one fsync."""
        async with self._conn.transaction() as tx:
            return await self._apply(
                tx, [(row_id, record, _policies(sinks)) for row_id, record, sinks in items]
            )

    async def apply_and_claim(
        self,
        items: Sequence[tuple[int | None, Record, Mapping[str, SinkPolicy] | Iterable[str]]],
        claim: int,
    ) -> tuple[list[Applied], list[InboxRow]]:
        """:meth:`apply_many`, and in the same transaction claim up to ``claim`` ready
        inbox rows (:meth:`Inbox.claim_many`'s order) for the workers that stored
        them: one commit per record and worker instead of two. The commit is durable
        (the records need it), so the claims are too."""
        async with self._conn.transaction() as tx:
            applied = await self._apply(
                tx, [(row_id, record, _policies(sinks)) for row_id, record, sinks in items]
            )
            rows = await claim_in(tx, claim, ts(self._conn.clock.now()))
        return applied, rows

    async def _apply(
        self,
        tx: Tx,
        items: Sequence[tuple[int | None, Record, dict[str, SinkPolicy]]],
    ) -> list[Applied]:
        """Store records in order, each as if alone (a later one of the same object is
        compared with the earlier one), with a constant number of statements: the stored
        states read in one, each table written in one. A statement is a round trip to
        SQLite's thread, and one per row was most of a group commit's time."""
        now = ts(self._conn.clock.now())
        keys = json.dumps(sorted({(str(r.kind), r.fonzip_id) for _, r, _ in items}))
        forgotten = {
            (str(kind), int(fid))
            for kind, fid in await tx.fetchall(
                f"SELECT f.kind, f.fonzip_id FROM ({_KEYS}) AS k JOIN forgotten AS f"
                " ON f.kind = k.kind AND f.fonzip_id = k.fonzip_id",
                (keys,),
            )
        }
        current = {
            (str(kind), int(fid)): (str(version), str(raw))
            for kind, fid, version, raw in await tx.fetchall(
                f"SELECT r.kind, r.fonzip_id, r.version, r.record FROM ({_KEYS}) AS k"
                " JOIN records AS r ON r.kind = k.kind AND r.fonzip_id = k.fonzip_id",
                (keys,),
            )
        }
        results: list[Applied] = []
        stored_rows: list[tuple[Any, ...]] = []
        queued: list[_OutboxRow] = []
        finished: list[tuple[float, str, int]] = []
        for row_id, fetched, sinks in items:
            key = (str(fetched.kind), fetched.fonzip_id)
            record = anonymized(fetched) if key in forgotten else fetched
            # Decided inside the transaction: no other fetch can land in between.
            enrichment = False
            held = current.get(key)
            if held is None:
                outcome = "new"
            elif held[0] == record.version:
                outcome = "unchanged"
            else:
                stored = Record.from_json_dict(json.loads(held[1]))
                outcome = "changed" if is_newer(record, stored) else "stale"
                # The detail of a state stored from its list row: the same normalized
                # fields, richer data. Sinks that gain nothing from it are spared it.
                enrichment = (
                    is_list_shape(stored)
                    and not is_list_shape(record)
                    and same_fields(record, stored)
                )
            enqueued = 0
            if outcome in ("new", "changed"):
                payload = json.dumps(record.to_json_dict(), ensure_ascii=False)
                bdate = None if record.business_date is None else record.business_date.isoformat()
                stored_rows.append(
                    (
                        str(record.kind),
                        record.fonzip_id,
                        record.status,
                        status_rank(record.status),
                        record.version,
                        bdate,
                        payload,
                        str(record.source),
                        now,
                        now,
                    )
                )
                current[key] = (record.version, payload)
                rows = _outbox_rows(record, payload, sinks, now, enrichment=enrichment)
                queued += rows
                enqueued = len(rows)
            if row_id is not None:
                finished.append((now, outcome, row_id))
            results.append(Applied(outcome=outcome, enqueued=enqueued))
        if stored_rows:
            await tx.executemany(
                "INSERT INTO records (kind, fonzip_id, status, status_rank, version,"
                " business_date, record, first_source, first_seen_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (kind, fonzip_id) DO UPDATE SET status = excluded.status,"
                " status_rank = excluded.status_rank, version = excluded.version,"
                " business_date = excluded.business_date, record = excluded.record,"
                " updated_at = excluded.updated_at, data_dropped_at = NULL",
                stored_rows,
            )
        await _queue(tx, queued)
        if finished:
            await tx.executemany(
                "UPDATE inbox SET state = 'done', finished_at = ?, outcome = ?,"
                " last_error = NULL WHERE id = ? AND state = 'claimed'",
                finished,
            )
        return results

    async def redeliver(self, sink_ids: Mapping[str, SinkPolicy] | Iterable[str]) -> int:
        """Queue the records a migration corrected (table ``redeliver``) for every sink,
        through each sink's filters and redaction, once; how many records.

        Called by the daemon at start, when the configuration says which sinks there are.
        One transaction: a crash leaves them all noted or all queued.
        """
        sinks = _policies(sink_ids)
        now = ts(self._conn.clock.now())
        async with self._conn.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT r.record FROM redeliver d JOIN records r"
                " ON r.kind = d.kind AND r.fonzip_id = d.fonzip_id ORDER BY r.kind, r.fonzip_id"
            )
            payloads = [str(row[0]) for row in rows]
            queued: list[_OutboxRow] = []
            for payload in payloads:
                record = Record.from_json_dict(json.loads(payload))
                queued += _outbox_rows(record, payload, sinks, now)
            await _queue(tx, queued)
            await tx.execute("DELETE FROM redeliver")
        return len(payloads)

    async def get_many(self, kind: Kind, ids: Iterable[int]) -> dict[int, Record]:
        """The stored state of each of ``ids`` that is known."""
        wanted = list(ids)
        out: dict[int, Record] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._conn.fetchall(
                f"SELECT fonzip_id, record FROM records WHERE kind = ? AND fonzip_id IN ({marks})",
                (str(kind), *chunk),
            )
            for fid, raw in rows:
                out[int(fid)] = Record.from_json_dict(json.loads(raw))
        return out

    async def get(self, kind: Kind, fonzip_id: int) -> Record | None:
        """The latest stored state of one object."""
        row = await self._conn.fetchone(
            "SELECT record FROM records WHERE kind = ? AND fonzip_id = ?",
            (str(kind), fonzip_id),
        )
        return None if row is None else Record.from_json_dict(json.loads(row[0]))

    async def statuses(self, kind: Kind, ids: Iterable[int]) -> dict[int, str]:
        """The stored list state (:func:`~fonzipd.fonzip.statuses.list_state`: the status,
        but for form answers) of each of ``ids`` that is known."""
        wanted = list(ids)
        out: dict[int, str] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._conn.fetchall(
                "SELECT fonzip_id, status, json_extract(record, '$.approval') FROM records"
                f" WHERE kind = ? AND fonzip_id IN ({marks})",
                (str(kind), *chunk),
            )
            for fid, status, approval in rows:
                out[int(fid)] = list_state(kind, str(status), approval)
        return out

    async def local_ids(self, kind: Kind, day: dt.date, states: Iterable[str]) -> dict[int, str]:
        """Stored records of ``kind`` on business date ``day`` in one of the list ``states``."""
        wanted = set(states)
        rows = await self._conn.fetchall(
            "SELECT fonzip_id, status, json_extract(record, '$.approval') FROM records"
            " WHERE kind = ? AND business_date = ?",
            (str(kind), day.isoformat()),
        )
        out: dict[int, str] = {}
        for fid, status, approval in rows:
            state = list_state(kind, str(status), approval)
            if state in wanted:
                out[int(fid)] = state
        return out

    async def refund_dates(self, kind: Kind, status: str = "refunded") -> list[tuple[int, Any]]:
        """(id, refund date as Fonzip wrote it) of every stored record of ``kind`` in ``status``."""
        rows = await self._conn.fetchall(
            "SELECT fonzip_id, coalesce(json_extract(record, '$.data.transaction.refund_date'),"
            " json_extract(record, '$.data.transaction__refund_date'),"
            " json_extract(record, '$.data.refund_date')) FROM records"
            " WHERE kind = ? AND status = ?",
            (str(kind), status),
        )
        return [(int(i), when) for i, when in rows]

    async def first_sources(self, day: dt.date) -> dict[str, int]:
        """Records of business date ``day`` by the source they were first seen through."""
        rows = await self._conn.fetchall(
            "SELECT first_source, count(*) FROM records WHERE business_date = ?"
            " GROUP BY first_source",
            (day.isoformat(),),
        )
        return {str(s): int(n) for s, n in rows}
