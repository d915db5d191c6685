"""The form-id table: which form each form answer belongs to (op-4 webhooks do not say)."""

from __future__ import annotations

from collections.abc import Iterable

from fonzipd.fonzip.client import FormIdCache
from fonzipd.state.connection import Connection


class FormIdTable(FormIdCache):
    """The ``form_ids`` table, a :class:`~fonzipd.fonzip.client.FormIdCache`."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def get(self, answer_id: int) -> int | None:
        """The form id of ``answer_id``, or None when unknown."""
        row = await self._conn.fetchone(
            "SELECT form_id FROM form_ids WHERE answer_id = ?", (answer_id,)
        )
        return None if row is None else int(row[0])

    async def put_many(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Remember ``(answer_id, form_id)`` pairs."""
        rows = list(pairs)
        if not rows:
            return
        async with self._conn.transaction() as tx:
            await tx.executemany(
                "INSERT OR REPLACE INTO form_ids (answer_id, form_id) VALUES (?, ?)", rows
            )
