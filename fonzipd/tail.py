"""``fonzipd tail``: records as they are stored, one line each, filtered by kind and status.

Like ``vector tap`` or ``stripe listen``: it reads the state database (a reader
beside the daemon, never a writer) every ``interval`` seconds and prints each new
version of a record once. Lines carry ids, statuses and amounts, no personal data;
``--json`` prints the whole record (the operator's own data, on their terminal).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fonzipd.state import Store


def _line(record: dict[str, Any]) -> str:
    amount = record.get("amount")
    money = f"{amount} {record.get('currency') or ''}".strip() if amount is not None else "-"
    return (
        f"{record.get('kind')!s:<15} {record.get('fonzip_id')!s:>9}  "
        f"{record.get('status')!s:<17} {money:>14}  {record.get('source')!s:<9} "
        f"{record.get('business_date') or '-'}"
    )


async def follow(
    path: Path,
    *,
    kinds: Sequence[str] = (),
    statuses: Sequence[str] = (),
    last: int = 0,
    as_json: bool = False,
    interval: float = 1.0,
    emit: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
) -> None:
    """Print the ``last`` latest matching records, then each new version until ``stop``.

    The database is opened read-only: nothing is migrated, created or written. With
    no daemon running it is read as a snapshot (see ``Connection.connect``), which
    cannot see later writes: once a daemon starts (its ``-wal`` file appears), the
    database is opened again and followed live.
    """
    stop = stop or asyncio.Event()
    where, params = [], list[Any]()
    if kinds:
        where.append(f"kind IN ({','.join('?' * len(kinds))})")
        params.extend(kinds)
    if statuses:
        where.append(f"status IN ({','.join('?' * len(statuses))})")
        params.extend(statuses)
    match = (" AND " + " AND ".join(where)) if where else ""
    wal = path.with_name(path.name + "-wal")
    store = await Store.open(path, read_only=True)
    try:
        row = await store.connection.fetchone("SELECT max(updated_at) FROM records")
        mark = float(row[0]) if row is not None and row[0] is not None else 0.0
        seen: set[tuple[str, int, str]] = set()
        if last > 0:
            rows = await store.connection.fetchall(
                f"SELECT record, kind, fonzip_id, version, updated_at FROM records WHERE 1{match}"
                " ORDER BY updated_at DESC LIMIT ?",
                (*params, last),
            )
            for r in reversed(rows):
                _show(r, emit, as_json)
                seen.add((r[1], r[2], r[3]))
        while not stop.is_set():
            if store.connection.snapshot and wal.exists():
                await store.close()
                store = await Store.open(path, read_only=True)
            rows = await store.connection.fetchall(
                f"SELECT record, kind, fonzip_id, version, updated_at FROM records"
                f" WHERE updated_at >= ?{match} ORDER BY updated_at",
                (mark, *params),
            )
            for r in rows:
                key = (r[1], r[2], r[3])
                if key in seen:
                    continue
                _show(r, emit, as_json)
                seen.add(key)
            if rows:
                newest = float(rows[-1][4])
                if newest > mark:
                    # Keep only what shares the new mark: the rest cannot come back.
                    seen = {(r[1], r[2], r[3]) for r in rows if float(r[4]) == newest}
                    mark = newest
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        await store.close()


def _show(row: Any, emit: Callable[[str], None], as_json: bool) -> None:
    record = json.loads(row[0])
    if as_json:
        emit(json.dumps(record, ensure_ascii=False))
        return
    when = dt.datetime.fromtimestamp(float(row[4]), dt.UTC).strftime("%H:%M:%S")
    emit(f"{when}  {_line(record)}")
