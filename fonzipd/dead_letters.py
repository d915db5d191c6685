"""``fonzipd dead-letters``: what each sink refused for good, listed, and one shown in full.

A dead letter is an outbox row a sink refused (a 4xx, a value it cannot store) or
that failed ``max_attempts`` times. Listing reads the state database only; the ids it
prints are what ``fonzipd replay --sink ID --id N`` takes once the cause is fixed.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from fonzipd.state import Store

LISTED = 200


async def listing(
    store: Store, sink: str | None = None, limit: int = LISTED
) -> list[dict[str, Any]]:
    """The dead letters, newest first: id, sink, key, kind, business date, when, error."""
    where, params = "state = 'dead'", list[Any]()
    if sink is not None:
        where += " AND sink_id = ?"
        params.append(sink)
    rows = await store.connection.fetchdicts(
        "SELECT id, sink_id, record_key, kind, business_date, attempts, last_error, dead_at"
        f" FROM outbox WHERE {where} ORDER BY dead_at DESC, id DESC LIMIT ?",
        (*params, limit),
    )
    for row in rows:
        row["dead_at"] = _iso(row["dead_at"])
    return rows


async def one(store: Store, wanted: str) -> dict[str, Any] | None:
    """One dead letter by its id or record key (``kind:fonzip_id[:version]``), with its record."""
    params: list[Any]
    if wanted.isdigit():
        sql, params = "id = ?", [int(wanted)]
    else:
        prefix = wanted if wanted.count(":") >= 2 else wanted + ":"
        sql, params = "substr(record_key, 1, ?) = ?", [len(prefix), prefix]
    rows = await store.connection.fetchdicts(
        "SELECT id, sink_id, record_key, kind, business_date, attempts, last_error, dead_at,"
        f" created_at, record FROM outbox WHERE state = 'dead' AND {sql}"
        " ORDER BY dead_at DESC LIMIT 1",
        params,
    )
    if not rows:
        return None
    row = rows[0]
    row["dead_at"] = _iso(row["dead_at"])
    row["created_at"] = _iso(row["created_at"])
    row["record"] = json.loads(row["record"])
    return row


def _iso(value: float | None) -> str | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC).isoformat()


def render_listing(rows: list[dict[str, Any]]) -> str:
    """The list as a table, with the command that queues them again."""
    if not rows:
        return "no dead letters"
    lines = [f"{'id':>8}  {'sink':<14} {'key':<40} {'dead since':<20} error"]
    for r in rows:
        when = (r["dead_at"] or "-")[:19].replace("T", " ")
        error = (r["last_error"] or "").replace("\n", " ")
        if len(error) > 100:
            error = error[:99] + "…"
        lines.append(f"{r['id']:>8}  {r['sink_id']:<14} {r['record_key']:<40} {when:<20} {error}")
    lines.append(
        "show one: fonzipd dead-letters show ID; once fixed: fonzipd replay --sink SINK --dead "
        "(all) or --id ID"
    )
    return "\n".join(lines)


def render_one(row: dict[str, Any]) -> str:
    """One dead letter in full: where, when, why, and the record as the sink got it."""
    return "\n".join(
        [
            f"dead letter {row['id']} of sink {row['sink_id']}",
            f"key:        {row['record_key']}",
            f"queued:     {row['created_at']}",
            f"dead since: {row['dead_at']} after {row['attempts']} attempt(s)",
            f"error:      {row['last_error']}",
            "record:",
            json.dumps(row["record"], indent=2, ensure_ascii=False),
            f"queue it again: fonzipd replay --sink {row['sink_id']} --id {row['id']}",
        ]
    )
