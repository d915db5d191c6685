"""Erasure and retention in the state database: forgetting a person, dropping old objects.

``fonzipd forget`` finds the records about a person (by the record's person: e-mail
address or Fonzip user id, and the list rows the reconciler keeps for pending fetches),
then, in one transaction: marks each object forgotten (``forgotten``: kind and id, no
personal data), stores its record anonymized (:func:`fonzipd.privacy.anonymized`),
scrubs every copy waiting in the outbox (keeping its key) and clears the inbox's list
rows. A later fetch of a forgotten object (a refund, a reconcile) is stored and queued
anonymized (``Records.apply_record``). The database always runs with
``secure_delete`` (freed space is zeroed), an erasure ends with a ``VACUUM`` (for copies
freed before that) and its WAL is checkpointed and truncated, so that old values linger
neither in free pages nor in the log.

Retention (``state.keep_data_days``) replaces the ``data`` of records unchanged for
that long by :func:`fonzipd.privacy.thinned`; the normalized fields stay.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from fonzipd.fonzip.endpoints import ECARD_FIELDS_FROM_LIST
from fonzipd.kinds import Kind
from fonzipd.privacy import anonymized, scrubbed, thinned
from fonzipd.records import Record
from fonzipd.state.connection import Connection, Tx, ts

_LIST_ROW_KEEPS = ("id", "custom_form_id", *ECARD_FIELDS_FROM_LIST)
"""What a pending fetch still needs of its list row (the form id, the e-card's date and
currency): the rest of the row is personal data and goes."""
_CHUNK = 500


@dataclasses.dataclass(frozen=True, slots=True)
class ErasureCounts:
    """What an erasure changed (or would change) in the state database."""

    records: int = 0
    outbox_rows: int = 0
    inbox_list_rows: int = 0


Ident = tuple[Kind, int]


class Erasures:
    """The ``forgotten`` table, erasing a person, and dropping old ``data``."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def find(self, *, email: str | None, fonzip_user_id: int | None) -> list[Ident]:
        """``(kind, fonzip_id)`` of every object about this person that the database
        holds: by the e-mail address (compared without case), by the Fonzip user id, or
        by either when both are given."""
        if email is None and fonzip_user_id is None:
            raise ValueError("give an e-mail address, a Fonzip user id, or both")
        emails = set() if email is None else {email.strip().lower()}
        users = set() if fonzip_user_id is None else {fonzip_user_id}
        return sorted(await self._find(emails, users))

    async def other_records(self, idents: Sequence[Ident]) -> dict[int, list[Ident]]:
        """Per Fonzip user id the records ``idents`` carry, that user's records not among
        them (a campaign carries only its fundraiser's user id, her donation both): what
        a search by e-mail leaves to a search by user id. Not added by itself: an
        address may be shared (a family's), a user id is one person."""
        wanted = set(idents)
        users: set[int] = set()
        for kind, fid in idents:
            row = await self._conn.fetchone(
                "SELECT json_extract(record, '$.person.fonzip_user_id') FROM records"
                " WHERE kind = ? AND fonzip_id = ?",
                (str(kind), fid),
            )
            if row is not None and row[0] is not None:
                users.add(int(row[0]))
        out: dict[int, list[Ident]] = {}
        for user in sorted(users):
            more = sorted(await self._find(set(), {user}) - wanted)
            if more:
                out[user] = more
        return out

    async def _find(self, emails: set[str], users: set[int]) -> set[Ident]:
        """Objects whose record (or waiting list row) names any of ``emails`` or ``users``."""
        found: set[Ident] = set()
        for address in sorted(emails):
            rec = "lower(json_extract(record, '$.person.email')) = ?"
            lst = (
                "(lower(json_extract(list_row, '$.email')) = ?"
                " OR lower(json_extract(list_row, '$.user__email')) = ?)"
            )
            await self._collect(found, rec, (address,), lst, (address, address))
        for user in sorted(users):
            rec = "json_extract(record, '$.person.fonzip_user_id') = ?"
            lst = "json_extract(list_row, '$.user_id') = ?"
            await self._collect(found, rec, (user,), lst, (user,))
        return found

    async def _collect(
        self,
        found: set[Ident],
        rec: str,
        rec_args: tuple[Any, ...],
        lst: str,
        lst_args: tuple[Any, ...],
    ) -> None:
        for sql, args in (
            (f"SELECT kind, fonzip_id FROM records WHERE {rec}", rec_args),
            (
                "SELECT DISTINCT kind, json_extract(record, '$.fonzip_id') FROM outbox"
                f" WHERE {rec}",
                rec_args,
            ),
            (
                f"SELECT DISTINCT kind, fonzip_id FROM inbox WHERE list_row IS NOT NULL AND {lst}",
                lst_args,
            ),
        ):
            for kind, fid in await self._conn.fetchall(sql, args):
                found.add((Kind(kind), int(fid)))

    async def erase(self, idents: Sequence[Ident], *, dry_run: bool = False) -> ErasureCounts:
        """Forget these objects' person: see the module's docstring. Idempotent."""
        if not idents:
            return ErasureCounts()
        now = ts(self._conn.clock.now())
        counts = ErasureCounts()
        async with self._conn.transaction() as tx:
            # A dry run writes nothing: the transaction only gives it a consistent read.
            for kind, fid in idents:
                counts = _add(counts, await _erase_one(tx, kind, fid, now, dry_run))
        if not dry_run:
            async with self._conn.autocommit() as db:
                # secure_delete (always on) zeroes what this transaction freed; VACUUM
                # rewrites the file, so that copies freed before (by a database older
                # than secure_delete) go too; the WAL is emptied last.
                await db.execute("VACUUM")
                await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return counts

    async def forgotten(self) -> list[Ident]:
        """Every object marked forgotten."""
        rows = await self._conn.fetchall("SELECT kind, fonzip_id FROM forgotten ORDER BY 1, 2")
        return [(Kind(k), int(i)) for k, i in rows]

    async def drop_old_data(self, older_than: dt.timedelta) -> int:
        """Thin the ``data`` of records not changed for ``older_than``; how many."""
        cutoff = ts(self._conn.clock.now() - older_than)
        now = ts(self._conn.clock.now())
        total = 0
        while True:
            async with self._conn.transaction() as tx:
                rows = await tx.fetchall(
                    "SELECT kind, fonzip_id, record FROM records"
                    " WHERE data_dropped_at IS NULL AND updated_at < ? LIMIT ?",
                    (cutoff, _CHUNK),
                )
                for kind, fid, raw in rows:
                    payload = json.loads(raw)
                    payload["data"] = thinned(payload.get("data") or {})
                    await tx.execute(
                        "UPDATE records SET record = ?, data_dropped_at = ?"
                        " WHERE kind = ? AND fonzip_id = ?",
                        (json.dumps(payload, ensure_ascii=False), now, kind, fid),
                    )
                # List rows of finished fetches (pruned after a week anyway).
                await tx.execute(
                    "UPDATE inbox SET list_row = NULL WHERE list_row IS NOT NULL"
                    " AND state IN ('done', 'failed') AND finished_at < ?",
                    (cutoff,),
                )
            total += len(rows)
            if len(rows) < _CHUNK:
                return total


def _add(a: ErasureCounts, b: ErasureCounts) -> ErasureCounts:
    return ErasureCounts(
        a.records + b.records, a.outbox_rows + b.outbox_rows, a.inbox_list_rows + b.inbox_list_rows
    )


async def _erase_one(tx: Tx, kind: Kind, fid: int, now: float, dry_run: bool) -> ErasureCounts:
    records = outbox = inbox = 0
    if not dry_run:
        await tx.execute(
            "INSERT OR IGNORE INTO forgotten (kind, fonzip_id, forgotten_at) VALUES (?, ?, ?)",
            (str(kind), fid, now),
        )
    row = await tx.fetchone(
        "SELECT record FROM records WHERE kind = ? AND fonzip_id = ?", (str(kind), fid)
    )
    if row is not None:
        stored = Record.from_json_dict(json.loads(row[0]))
        erased = anonymized(stored)
        if erased.person != stored.person or erased.data != stored.data:
            records += 1
            if not dry_run:
                await tx.execute(
                    "UPDATE records SET record = ?, version = ? WHERE kind = ? AND fonzip_id = ?",
                    (_dump(erased), erased.version, str(kind), fid),
                )
    queued = await tx.fetchall(
        "SELECT id, record FROM outbox WHERE kind = ? AND json_extract(record, '$.fonzip_id') = ?",
        (str(kind), fid),
    )
    for oid, raw in queued:
        copy = Record.from_json_dict(json.loads(raw))
        clean = scrubbed(copy)
        if clean != copy:
            outbox += 1
            if not dry_run:
                await tx.execute("UPDATE outbox SET record = ? WHERE id = ?", (_dump(clean), oid))
    listed = await tx.fetchall(
        "SELECT id, state, list_row FROM inbox WHERE kind = ? AND fonzip_id = ?"
        " AND list_row IS NOT NULL",
        (str(kind), fid),
    )
    for iid, state, raw in listed:
        kept = _kept_list_row(raw) if state in ("pending", "claimed") else None
        if kept == raw:
            continue
        inbox += 1
        if not dry_run:
            await tx.execute("UPDATE inbox SET list_row = ? WHERE id = ?", (kept, iid))
    return ErasureCounts(records, outbox, inbox)


def _kept_list_row(raw: str) -> str | None:
    try:
        row = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    kept = {k: row[k] for k in _LIST_ROW_KEEPS if k in row}
    return json.dumps(kept, ensure_ascii=False) if kept else None


def _dump(record: Record) -> str:
    return json.dumps(record.to_json_dict(), ensure_ascii=False)
