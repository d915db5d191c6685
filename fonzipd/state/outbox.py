"""The outbox and sink state: record versions waiting for each sink, and how each sink fares."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from fonzipd.kinds import Kind
from fonzipd.privacy import NO_POLICY, SinkPolicy
from fonzipd.records import Record
from fonzipd.state.connection import Connection, Tx, iso, ts


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxRow:
    """A record version waiting for one sink."""

    id: int
    record_key: str
    record: Record
    attempts: int


class Outbox:
    """The ``outbox`` and ``sink_state`` tables."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def batch(self, sink_id: str, limit: int) -> list[OutboxRow]:
        """The oldest pending record versions for one sink, in the order they were queued."""
        rows = await self._conn.fetchall(
            "SELECT id, record_key, record, attempts FROM outbox"
            " WHERE sink_id = ? AND state = 'pending' ORDER BY id LIMIT ?",
            (sink_id, limit),
        )
        return [
            OutboxRow(
                id=r[0],
                record_key=r[1],
                record=Record.from_json_dict(json.loads(r[2])),
                attempts=r[3],
            )
            for r in rows
        ]

    async def oldest_pending_age(self, sink_id: str) -> float | None:
        """Seconds since the oldest pending row of a sink was queued."""
        row = await self._conn.fetchone(
            "SELECT min(created_at) FROM outbox WHERE sink_id = ? AND state = 'pending'",
            (sink_id,),
        )
        if row is None or row[0] is None:
            return None
        return max(0.0, ts(self._conn.clock.now()) - float(row[0]))

    async def acknowledge(self, sink_id: str, row_ids: Sequence[int]) -> None:
        """The sink holds these durably: forget them.

        Rows are named by (sink, id), and ids are never reused (AUTOINCREMENT), so an
        acknowledgement can only ever delete the rows this sink's runner was given.
        """
        now = ts(self._conn.clock.now())
        async with self._conn.transaction() as tx:
            await tx.executemany(
                "DELETE FROM outbox WHERE sink_id = ? AND id = ?", [(sink_id, i) for i in row_ids]
            )
            await tx.execute(
                "INSERT INTO sink_state (sink_id, delivered, last_success_at) VALUES (?, ?, ?)"
                " ON CONFLICT (sink_id) DO UPDATE SET delivered = delivered + excluded.delivered,"
                " last_success_at = excluded.last_success_at, failing_since = NULL",
                (sink_id, len(row_ids), now),
            )

    async def record_failure(
        self, sink_id: str, row_ids: Sequence[int], error: str, *, dead_after: int
    ) -> int:
        """Count a failed attempt on these rows; rows past ``dead_after`` attempts go dead.

        ``dead_after`` 0 means never. Returns how many rows went dead.
        """
        now = ts(self._conn.clock.now())
        dead = 0
        async with self._conn.transaction() as tx:
            await tx.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?"
                " WHERE sink_id = ? AND id = ?",
                [(error, sink_id, i) for i in row_ids],
            )
            if dead_after > 0 and row_ids:
                marks = ",".join("?" * len(row_ids))
                done = await tx.execute(
                    "UPDATE outbox SET state = 'dead', dead_at = ? WHERE sink_id = ?"
                    f" AND state = 'pending' AND id IN ({marks}) AND attempts >= ?",
                    (now, sink_id, *row_ids, dead_after),
                )
                dead = done.rowcount
            await tx.execute(
                "INSERT INTO sink_state (sink_id, last_error, last_error_at, failing_since)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (sink_id) DO UPDATE SET"
                " last_error = excluded.last_error, last_error_at = excluded.last_error_at,"
                " failing_since = coalesce(sink_state.failing_since, excluded.failing_since)",
                (sink_id, error, now, now),
            )
        return dead

    async def dead_letter(self, sink_id: str, row_ids: Sequence[int], reason: str) -> None:
        """Park rows the sink refused for good; ``replay --dead`` requeues them."""
        now = ts(self._conn.clock.now())
        async with self._conn.transaction() as tx:
            await tx.executemany(
                "UPDATE outbox SET state = 'dead', dead_at = ?, last_error = ?,"
                " attempts = attempts + 1 WHERE sink_id = ? AND id = ?",
                [(now, reason, sink_id, i) for i in row_ids],
            )
            await tx.execute(
                "INSERT INTO sink_state (sink_id, last_error, last_error_at) VALUES (?, ?, ?)"
                " ON CONFLICT (sink_id) DO UPDATE SET last_error = excluded.last_error,"
                " last_error_at = excluded.last_error_at",
                (sink_id, reason, now),
            )

    async def requeue(
        self,
        sink_id: str,
        *,
        dead: bool,
        since: dt.date | None = None,
        kind: Kind | None = None,
        dry_run: bool = False,
        policy: SinkPolicy = NO_POLICY,
        until: dt.date | None = None,
        keys: Sequence[str] = (),
        ids: Sequence[int] = (),
    ) -> int:
        """Queue records for one sink again; returns how many.

        ``dead``: the sink's dead letters (queued redacted already). Otherwise: the
        latest version of every stored record (optionally since and until a business
        date, of one kind) that the sink's ``policy`` admits, redacted by it, through
        the same idempotent path as any delivery. ``keys`` (``kind:fonzip_id``, a
        version suffix ignored) limits either to those objects; ``ids`` to those dead
        letters (the ids ``fonzipd dead-letters`` lists).

        A sink must never get an older version of a record after a newer one. So a
        dead letter is requeued only if it is the record's latest stored version;
        dead letters of older versions are dropped and the latest version is queued
        instead, once, behind every version queued before it.
        """
        now = ts(self._conn.clock.now())
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("business_date >= ?")
            params.append(since.isoformat())
        if until is not None:
            where.append("business_date <= ?")
            params.append(until.isoformat())
        if kind is not None:
            where.append("kind = ?")
            params.append(str(kind))
        if keys:
            objects = [":".join(k.split(":")[:2]) for k in keys]
            if dead:
                where.append(
                    "(" + " OR ".join("substr(record_key, 1, ?) = ?" for _ in objects) + ")"
                )
                for prefix in (o + ":" for o in objects):
                    params += [len(prefix), prefix]
            else:
                where.append(f"(kind || ':' || fonzip_id) IN ({','.join('?' * len(objects))})")
                params.extend(objects)
        if ids:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        if dry_run:
            # Reads only: a dry run works on a database opened read-only.
            reads = self._conn.reads()
            if dead:
                return await _requeue_dead(reads, sink_id, where, params, now, True, policy)
            if policy != NO_POLICY:
                return await self._requeue_with(reads, sink_id, policy, clause, params, now, True)
            row = await reads.fetchone(f"SELECT count(*) FROM records{clause}", params)
            return 0 if row is None else int(row[0])
        async with self._conn.transaction() as tx:
            if dead:
                return await _requeue_dead(tx, sink_id, where, params, now, False, policy)
            if policy != NO_POLICY:
                return await self._requeue_with(tx, sink_id, policy, clause, params, now, False)
            done = await tx.execute(
                "INSERT OR IGNORE INTO outbox (sink_id, record_key, kind, business_date,"
                " record, state, created_at)"
                " SELECT ?, kind || ':' || fonzip_id || ':' || version, kind, business_date,"
                f" record, 'pending', ? FROM records{clause} ORDER BY updated_at",
                (sink_id, now, *params),
            )
            return done.rowcount

    @staticmethod
    async def _requeue_with(
        tx: Tx,
        sink_id: str,
        policy: SinkPolicy,
        clause: str,
        params: list[Any],
        now: float,
        dry_run: bool,
    ) -> int:
        """``requeue`` of stored records through a sink's filters and redaction."""
        count = 0
        rows = await tx.fetchall(f"SELECT record FROM records{clause} ORDER BY updated_at", params)
        for (raw,) in rows:
            record = Record.from_json_dict(json.loads(raw))
            if not policy.admits(record):
                continue
            if dry_run:
                count += 1
                continue
            bdate = None if record.business_date is None else record.business_date.isoformat()
            payload = json.dumps(policy.apply(record).to_json_dict(), ensure_ascii=False)
            done = await tx.execute(
                "INSERT OR IGNORE INTO outbox (sink_id, record_key, kind, business_date,"
                " record, state, created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                (sink_id, record.key, str(record.kind), bdate, payload, now),
            )
            count += done.rowcount
        return count

    async def sink_status(self, sink_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Per sink: pending, dead, delivered, last error, last success, failing since."""
        out: dict[str, dict[str, Any]] = {}
        for sink_id in sink_ids:
            counts = await self._conn.fetchone(
                "SELECT sum(state = 'pending'), sum(state = 'dead') FROM outbox WHERE sink_id = ?",
                (sink_id,),
            )
            state = await self._conn.fetchone(
                "SELECT delivered, last_success_at, last_error, last_error_at, failing_since"
                " FROM sink_state WHERE sink_id = ?",
                (sink_id,),
            )
            out[sink_id] = {
                "pending": int((counts or (0, 0))[0] or 0),
                "dead": int((counts or (0, 0))[1] or 0),
                "delivered": int(state[0]) if state else 0,
                "last_success_at": iso(state[1]) if state else None,
                "last_error": state[2] if state else None,
                "last_error_at": iso(state[3]) if state else None,
                "failing_since": iso(state[4]) if state else None,
            }
        return out


async def _requeue_dead(
    tx: Tx,
    sink_id: str,
    where: list[str],
    params: list[Any],
    now: float,
    dry_run: bool,
    policy: SinkPolicy,
) -> int:
    """``requeue(dead=True)``: each record's latest version, never an older one."""
    clause = "".join(f" AND {w}" for w in where)
    rows = await tx.fetchall(
        "SELECT o.id, o.record_key, r.kind, r.fonzip_id, r.version, r.record FROM"
        f" (SELECT * FROM outbox WHERE sink_id = ? AND state = 'dead'{clause}) AS o"
        " LEFT JOIN records AS r ON r.kind = o.kind"
        " AND r.fonzip_id = json_extract(o.record, '$.fonzip_id') ORDER BY o.id",
        (sink_id, *params),
    )
    revive: list[int] = []  # dead letters that are their record's latest version
    drop: list[int] = []  # dead letters of older versions
    latest: dict[str, str] = {}  # what to queue in their place: key -> stored record
    for row_id, key, r_kind, r_id, r_version, r_record in rows:
        latest_key = None if r_kind is None else f"{r_kind}:{r_id}:{r_version}"
        if latest_key is None or key == latest_key:
            revive.append(int(row_id))
        else:
            drop.append(int(row_id))
            latest[latest_key] = str(r_record)
    for _, key, *_rest in rows:
        latest.pop(str(key), None)  # the latest version is itself a dead letter: revived
    if latest:
        marks = ",".join("?" * len(latest))
        queued_already = await tx.fetchall(
            f"SELECT record_key FROM outbox WHERE sink_id = ? AND record_key IN ({marks})",
            (sink_id, *latest),
        )
        for (key,) in queued_already:
            latest.pop(str(key), None)
    # The latest versions go through the sink's filters and redaction, like any other.
    replacements = [Record.from_json_dict(json.loads(raw)) for raw in latest.values()]
    replacements = [r for r in replacements if policy.admits(r)]
    if dry_run:
        return len(revive) + len(replacements)
    if drop:
        await tx.executemany(
            "DELETE FROM outbox WHERE sink_id = ? AND id = ?", [(sink_id, i) for i in drop]
        )
    if revive:
        await tx.executemany(
            "UPDATE outbox SET state = 'pending', attempts = 0, dead_at = NULL"
            " WHERE sink_id = ? AND id = ?",
            [(sink_id, i) for i in revive],
        )
    for record in replacements:
        bdate = None if record.business_date is None else record.business_date.isoformat()
        payload = json.dumps(policy.apply(record).to_json_dict(), ensure_ascii=False)
        await tx.execute(
            "INSERT INTO outbox (sink_id, record_key, kind, business_date, record, state,"
            " created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            (sink_id, record.key, str(record.kind), bdate, payload, now),
        )
    return len(revive) + len(replacements)
