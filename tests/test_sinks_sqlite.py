"""The SQLite sink: conformance, upsert order, history, and failures as transient errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from fonzipd.sink import TransientSinkError
from fonzipd.sinks.sqlite import SQLiteOptions, SQLiteSink
from fonzipd.testing import check_sink, context_for_tests, sample_records


def _sink(tmp_path: Path, db: Path) -> SQLiteSink:
    return SQLiteSink(SQLiteOptions(path=db), context_for_tests(tmp_path))


def _query(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


async def test_passes_the_conformance_suite(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "dir" / "out.db"

    async def read_back() -> list[str]:
        if not db.exists():
            return []
        rows = _query(
            db,
            "SELECT kind || ':' || fonzip_id || ':' || version FROM record_history ORDER BY rowid",
        )
        return [str(r[0]) for r in rows]

    async def contains(text: str) -> bool:
        # The raw bytes of the file and its WAL: a value left in a free page or the log
        # is still there for anyone who reads the file.
        found = b""
        for path in (db, db.with_name(db.name + "-wal")):
            if path.exists():
                found += path.read_bytes()
        return text.encode() in found

    await check_sink(lambda: _sink(tmp_path, db), read_back, contains=contains)


async def test_records_holds_the_latest_state_and_history_every_version(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    recs = sample_records(6)
    paid, refund = recs[0], recs[-1]
    sink = _sink(tmp_path, db)
    await sink.open()
    await sink.write(recs)
    # The older fetch of the paid version arrives again (a late reconcile): it must not win.
    await sink.write([dataclasses.replace(paid, fetched_at=paid.fetched_at + dt.timedelta(1))])
    await sink.close()

    rows = _query(
        db, f"SELECT status, version, amount, data FROM records WHERE fonzip_id = {paid.fonzip_id}"
    )
    assert rows == [("refund", refund.version, str(refund.amount), rows[0][3])]
    assert '"refund_date"' in str(rows[0][3])
    history = _query(
        db, f"SELECT status FROM record_history WHERE fonzip_id = {paid.fonzip_id} ORDER BY rowid"
    )
    assert history == [("paid",), ("refund",)]
    assert _query(db, "SELECT count(*) FROM records") == [(5,)]
    assert _query(db, "PRAGMA journal_mode") == [("wal",)]


async def test_an_older_fetch_of_a_new_version_does_not_overwrite(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    recs = sample_records(6)
    paid, refund = recs[0], recs[-1]
    stale = dataclasses.replace(paid, fetched_at=refund.fetched_at - dt.timedelta(hours=1))
    sink = _sink(tmp_path, db)
    await sink.open()
    await sink.write([refund])
    await sink.write([stale])
    await sink.close()
    assert _query(db, f"SELECT status FROM records WHERE fonzip_id = {paid.fonzip_id}") == [
        ("refund",)
    ]


async def test_an_unusable_path_is_a_transient_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    sink = _sink(tmp_path, blocker / "out.db")
    with pytest.raises(TransientSinkError, match="a-file"):
        await sink.open()


async def test_a_locked_database_is_transient(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    sink = _sink(tmp_path, db)
    await sink.open()
    locker = sqlite3.connect(db, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        await sink._db.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]
        with pytest.raises(TransientSinkError, match="locked"):
            await sink.write(sample_records(2))
    finally:
        locker.rollback()
        locker.close()
    await sink.write(sample_records(2))
    await sink.close()
    assert _query(db, "SELECT count(*) FROM record_history") == [(2,)]


@pytest.mark.parametrize("umask", [0o022, 0o000])
async def test_the_file_its_wal_and_shm_are_0600_and_new_dirs_0700_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    db = tmp_path / "new" / "dir" / "fonzip.db"
    old = os.umask(umask)
    try:
        sink = _sink(tmp_path, db)
        await sink.open()
        await sink.write(sample_records(5))
        # While it is open, in WAL mode, SQLite keeps its -wal and -shm beside the file.
        files = [db, db.with_name("fonzip.db-wal"), db.with_name("fonzip.db-shm")]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        await sink.close()
    finally:
        os.umask(old)
    assert modes == dict.fromkeys(modes, 0o600)
    for directory in (db.parent, db.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


async def test_forget_empties_the_person_and_data_and_keeps_the_accounting(
    tmp_path: Path,
) -> None:
    from fonzipd.privacy import Erasure

    db = tmp_path / "out.db"
    recs = sample_records(8)
    gone = recs[0]
    sink = _sink(tmp_path, db)
    await sink.open()
    await sink.write(recs)
    changed = await sink.forget(Erasure(((gone.kind, gone.fonzip_id),), email="x@example.org"))
    await sink.close()
    # The latest row (person and data) and both versions in the history.
    assert changed == 3
    rows = _query(
        db,
        "SELECT status, amount, person_name, person_email, person_phone, fonzip_user_id, data"
        f" FROM records WHERE fonzip_id = {gone.fonzip_id}",
    )
    assert rows == [("refund", str(gone.amount), None, None, None, None, "{}")]
    history = _query(db, f"SELECT data FROM record_history WHERE fonzip_id = {gone.fonzip_id}")
    assert history == [("{}",), ("{}",)]
    others = _query(db, "SELECT count(*) FROM records WHERE person_email IS NOT NULL")
    assert others == [(sum(1 for r in recs[1:-1] if r.person.email),)]


async def test_approval_is_a_column_and_an_older_file_gains_it(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    # A file made by an earlier fonzipd: the tables without the approval column.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE records (kind TEXT NOT NULL, fonzip_id INTEGER NOT NULL,"
            " status TEXT NOT NULL, amount TEXT, currency TEXT, occurred_at TEXT,"
            " business_date TEXT, person_name TEXT, person_email TEXT, person_phone TEXT,"
            " fonzip_user_id INTEGER, version TEXT NOT NULL, source TEXT NOT NULL,"
            " data TEXT NOT NULL, fetched_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
            " PRIMARY KEY (kind, fonzip_id))"
        )
    answer = next(r for r in sample_records(6) if r.approval is not None)
    sink = _sink(tmp_path, db)
    await sink.open()
    await sink.write([answer])
    await sink.close()
    assert _query(db, "SELECT kind, approval FROM records") == [("form_answer", "approved")]
    assert _query(db, "SELECT approval FROM record_history") == [("approved",)]
