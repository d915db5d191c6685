"""The reconciler's books: per-list runs, per-day verdicts, and requests from the CLI."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from fonzipd.kinds import Kind
from fonzipd.records import Source
from fonzipd.state.connection import Connection, ts


class ReconcileBooks:
    """The ``reconcile_runs``, ``reconcile_days`` and ``reconcile_requests`` tables."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def save_run(self, run: dict[str, Any]) -> None:
        """Insert or replace the run row of one (business date, kind, list status)."""
        cols = list(run)
        async with self._conn.transaction() as tx:
            await tx.execute(
                f"INSERT OR REPLACE INTO reconcile_runs ({', '.join(cols)})"
                f" VALUES ({', '.join('?' * len(cols))})",
                [run[c] for c in cols],
            )

    async def runs(
        self, *, days: Sequence[dt.date] | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Run rows of these business dates (all, newest first, when None)."""
        sql = "SELECT * FROM reconcile_runs"
        params: list[Any] = []
        if days is not None:
            sql += f" WHERE business_date IN ({','.join('?' * len(days))})"
            params = [d.isoformat() for d in days]
        sql += " ORDER BY business_date DESC, kind, list_status LIMIT ?"
        return await self._conn.fetchdicts(sql, (*params, limit))

    async def save_day(
        self,
        day: dt.date,
        *,
        closed: bool,
        reason: str | None,
        records: int,
        first_by_webhook: int,
        first_by_reconcile: int,
    ) -> None:
        """Record whether a business day is closed (or why it stays open), with coverage."""
        async with self._conn.transaction() as tx:
            await tx.execute(
                "INSERT OR REPLACE INTO reconcile_days (business_date, state, reason, records,"
                " first_by_webhook, first_by_reconcile, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    day.isoformat(),
                    "closed" if closed else "open",
                    reason,
                    records,
                    first_by_webhook,
                    first_by_reconcile,
                    ts(self._conn.clock.now()),
                ),
            )

    async def days(
        self, *, days: Sequence[dt.date] | None = None, open_only: bool = False
    ) -> list[dict[str, Any]]:
        """Day rows (state, reason, coverage), newest first."""
        where: list[str] = []
        params: list[Any] = []
        if days is not None:
            where.append(f"business_date IN ({','.join('?' * len(days))})")
            params.extend(d.isoformat() for d in days)
        if open_only:
            where.append("state = 'open'")
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        return await self._conn.fetchdicts(
            f"SELECT * FROM reconcile_days{clause} ORDER BY business_date DESC", params
        )

    async def fetch_states(
        self, kind: Kind, ids: Iterable[int]
    ) -> dict[int, tuple[str, str | None]]:
        """What became of the inbox events a run queued for these ids of ``kind``.

        Per id: the state of its inbox row (a pending or claimed row wins, else the
        latest) and that row's last error. Ids with no row are absent.
        """
        wanted = list(ids)
        found: dict[int, tuple[str, str | None]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = await self._conn.fetchall(
                "SELECT fonzip_id, state, last_error FROM inbox WHERE kind = ?"
                f" AND fonzip_id IN ({','.join('?' * len(chunk))}) ORDER BY id",
                (str(kind), *chunk),
            )
            for fid, state, error in rows:
                if found.get(int(fid), ("",))[0] not in ("pending", "claimed"):
                    found[int(fid)] = (str(state), error)
        return found

    async def add_request(
        self,
        days: Sequence[dt.date],
        kinds: Sequence[Kind],
        source: Source,
        *,
        dry_run: bool,
        deadline_at: dt.datetime | None = None,
    ) -> int:
        """Ask the running daemon to reconcile these days; returns the request id.

        ``deadline_at``: when the asker stops waiting (the daemon's run stops waiting
        for Fonzip then).
        """
        async with self._conn.transaction() as tx:
            done = await tx.execute(
                "INSERT INTO reconcile_requests (days, kinds, source, dry_run, requested_at,"
                " deadline_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    json.dumps([d.isoformat() for d in days]),
                    json.dumps([str(k) for k in kinds]),
                    str(source),
                    int(dry_run),
                    ts(self._conn.clock.now()),
                    None if deadline_at is None else ts(deadline_at),
                ),
            )
            assert done.lastrowid is not None
            return int(done.lastrowid)

    async def claim_request(self) -> dict[str, Any] | None:
        """The oldest request neither started nor finished, marked started; None if none."""
        async with self._conn.transaction() as tx:
            row = await tx.fetchone(
                "UPDATE reconcile_requests SET started_at = ? WHERE id = (SELECT id FROM"
                " reconcile_requests WHERE started_at IS NULL AND finished_at IS NULL"
                " ORDER BY id LIMIT 1)"
                " RETURNING id, days, kinds, source, dry_run, deadline_at",
                (ts(self._conn.clock.now()),),
            )
        if row is None:
            return None
        return {
            "id": int(row[0]),
            "days": [dt.date.fromisoformat(d) for d in json.loads(row[1])],
            "kinds": [Kind(k) for k in json.loads(row[2])],
            "source": Source(row[3]),
            "dry_run": bool(row[4]),
            "deadline_at": None if row[5] is None else dt.datetime.fromtimestamp(row[5], dt.UTC),
        }

    async def release_requests(self) -> int:
        """Put back requests a dead daemon had claimed and not finished (at the daemon's
        start: one daemon works a state database at a time, so none is in progress)."""
        async with self._conn.transaction() as tx:
            cur = await tx.execute(
                "UPDATE reconcile_requests SET started_at = NULL"
                " WHERE started_at IS NOT NULL AND finished_at IS NULL"
            )
            return cur.rowcount

    async def finish_request(
        self, request_id: int, outcome: str, result: str | None = None
    ) -> None:
        """Mark a request done with its outcome (``closed``, ``open`` or an error) and the
        day reports as JSON; a withdrawn request keeps its ``withdrawn``."""
        async with self._conn.transaction() as tx:
            await tx.execute(
                "UPDATE reconcile_requests SET finished_at = ?, outcome = ?, result = ?"
                " WHERE id = ? AND finished_at IS NULL",
                (ts(self._conn.clock.now()), outcome, result, request_id),
            )

    async def withdraw_request(self, request_id: int) -> bool:
        """The asker gave up (Ctrl-C): a request not claimed yet is never run. False
        when it had finished already."""
        async with self._conn.transaction() as tx:
            cur = await tx.execute(
                "UPDATE reconcile_requests SET finished_at = ?, outcome = 'withdrawn'"
                " WHERE id = ? AND finished_at IS NULL",
                (ts(self._conn.clock.now()), request_id),
            )
            return cur.rowcount > 0

    async def request(self, request_id: int) -> dict[str, Any] | None:
        """One request's row: ``started_at``, ``finished_at``, ``outcome`` and ``result``."""
        row = await self._conn.fetchone(
            "SELECT id, started_at, finished_at, outcome, result FROM reconcile_requests"
            " WHERE id = ?",
            (request_id,),
        )
        if row is None:
            return None
        return {
            "id": row[0],
            "started_at": row[1],
            "finished_at": row[2],
            "outcome": row[3],
            "result": row[4],
        }
