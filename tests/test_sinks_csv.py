"""The CSV sink: conformance, files per kind and day, round trips, crashes, bad directories."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from fonzipd.records import Record
from fonzipd.sink import PermanentSinkError, SinkConfigError, TransientSinkError
from fonzipd.sinks.csv import COLUMNS, LEDGER_NAME, CSVOptions, CSVSink, relative_path
from fonzipd.testing import check_sink, context_for_tests, sample_records


def _sink(tmp_path: Path, out: Path, **options: object) -> CSVSink:
    return CSVSink(CSVOptions(directory=out, **options), context_for_tests(tmp_path))


def _rows(out: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(out.glob("*/*.csv")):
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows.extend(csv.DictReader(f))
    return rows


async def _write_all(sink: CSVSink, *batches: list[Record]) -> None:
    await sink.open()
    try:
        for batch in batches:
            await sink.write(batch)
    finally:
        await sink.close()


async def test_passes_the_conformance_suite(tmp_path: Path) -> None:
    out = tmp_path / "csv"

    async def read_back() -> list[str]:
        return [row["key"] for row in _rows(out)]

    await check_sink(lambda: _sink(tmp_path, out, include_data=True), read_back)


async def test_one_file_per_kind_and_business_date_with_a_header(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    recs = sample_records(12)
    await _write_all(_sink(tmp_path, out), recs)
    expected = {relative_path(r) for r in recs}
    assert {str(p.relative_to(out)) for p in out.glob("*/*.csv")} == expected
    assert any(r.business_date is None for r in recs)
    assert any(p.endswith("undated.csv") for p in expected)
    # Business dates are local (Istanbul): 21:00 UTC on March 9 is March 10 there.
    assert "donation/2025-03-10.csv" in expected
    for path in out.glob("*/*.csv"):
        raw = path.read_bytes()
        assert raw.startswith(b"key,kind,fonzip_id,")  # no BOM by default
        assert raw.count(b"key,kind,fonzip_id,") == 1


async def test_nasty_text_survives_a_round_trip_through_csv_reader(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    recs = sample_records(10)
    await _write_all(_sink(tmp_path, out, include_data=True), recs)
    rows = {row["key"]: row for row in _rows(out)}
    assert len(rows) == len(recs)
    for record in recs:
        row = rows[record.key]
        assert list(row) == [*COLUMNS, "data"]
        assert row["person_name"] == (record.person.name or "")
        assert row["status"] == record.status
        assert row["amount"] == ("" if record.amount is None else str(record.amount))
        assert json.loads(row["data"]) == record.data
    names = {row["person_name"] for row in rows.values()}
    assert 'İlkay "Işık" Ağaoğlu' in names
    assert "Gülşen Ünal\nYılmaz" in names
    assert "Şükrü Güneş, Jr." in names


async def test_excel_bom_starts_new_files_with_one(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    recs = sample_records(3)
    await _write_all(_sink(tmp_path, out, excel_bom=True), recs[:1], recs[1:])
    for path in out.glob("*/*.csv"):
        raw = path.read_bytes()
        assert raw.startswith(b"\xef\xbb\xbfkey,kind,")
        assert raw.count(b"\xef\xbb\xbf") == 1


async def test_a_refund_is_a_new_row_with_the_new_status(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    recs = sample_records(6)
    await _write_all(_sink(tmp_path, out), recs)
    first = recs[0]
    statuses = [r["status"] for r in _rows(out) if r["fonzip_id"] == str(first.fonzip_id)]
    assert statuses == ["paid", "refund"]


async def test_rewrite_after_a_crash_before_the_acknowledgement_adds_no_row(
    tmp_path: Path,
) -> None:
    out = tmp_path / "csv"
    recs = sample_records(8)
    await _write_all(_sink(tmp_path, out), recs)
    before = {p: p.read_bytes() for p in out.glob("*/*.csv")}
    # fonzipd died before recording the acknowledgement: a new instance gets it all again.
    await _write_all(_sink(tmp_path, out), recs)
    assert {p: p.read_bytes() for p in out.glob("*/*.csv")} == before


async def test_rows_written_before_a_crash_in_the_ledger_commit_are_not_duplicated(
    tmp_path: Path,
) -> None:
    out = tmp_path / "csv"
    recs = sample_records(10)
    first, second = recs[:5], recs[5:]
    await _write_all(_sink(tmp_path, out), first)
    saved = tmp_path / "ledger-before"
    saved.mkdir()
    for f in out.glob(LEDGER_NAME + "*"):
        shutil.copy2(f, saved / f.name)
    await _write_all(_sink(tmp_path, out), second)
    # The state a kill -9 after the CSV fsync and before the ledger commit leaves:
    # the rows of `second` are in the files, the ledger knows only `first`.
    for f in out.glob(LEDGER_NAME + "*"):
        f.unlink()
    for f in saved.iterdir():
        shutil.copy2(f, out / f.name)
    torn = _rows(out)
    assert len(torn) == len(recs)

    await _write_all(_sink(tmp_path, out), second)
    keys = [row["key"] for row in _rows(out)]
    assert sorted(keys) == sorted(r.key for r in recs)


async def test_a_half_written_row_is_cut_away(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    recs = sample_records(6)
    await _write_all(_sink(tmp_path, out), recs[:1])
    target = out / relative_path(recs[0])
    good = target.read_bytes()
    with target.open("ab") as f:  # a crash in the middle of a row
        f.write(b'donation:1:x,donation,1,paid,"half a quoted\r\nfield')
    await _write_all(_sink(tmp_path, out))
    assert target.read_bytes() == good
    with target.open("ab") as f:
        f.write(b"donation:9:y,dona")
    same_day = [r for r in recs[1:] if relative_path(r) == relative_path(recs[0])]
    await _write_all(_sink(tmp_path, out), same_day or recs[1:])
    keys = [row["key"] for row in _rows(out)]
    assert len(keys) == len(set(keys))
    assert all(k.count(":") == 2 and not k.endswith(("x", "y")) for k in keys)


async def test_an_unwritable_directory_is_transient_and_recovers(tmp_path: Path) -> None:
    # Tests run as root, and chmod does not stop root: a file where the kind's
    # directory should be makes the path unwritable for anyone.
    out = tmp_path / "csv"
    recs = sample_records(3)
    sink = _sink(tmp_path, out)
    await sink.open()
    blocker = out / str(recs[0].kind)
    blocker.write_text("in the way")
    with pytest.raises(TransientSinkError, match=str(blocker)):
        await sink.write(recs[:1])
    blocker.unlink()
    await sink.write(recs)
    await sink.close()
    assert sorted(row["key"] for row in _rows(out)) == sorted(r.key for r in recs)


async def test_a_directory_under_a_file_is_transient_at_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TransientSinkError, match="file/csv"):
        await _sink(tmp_path, blocker / "csv").open()


async def test_changed_columns_are_a_permanent_error_for_that_file_only(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    recs = sample_records(12)
    await _write_all(_sink(tmp_path, out), recs[:1])
    same = [r for r in recs[1:] if relative_path(r) == relative_path(recs[0])]
    other = [r for r in recs[1:] if relative_path(r) != relative_path(recs[0])]
    sink = _sink(tmp_path, out, include_data=True)
    await sink.open()
    with pytest.raises(PermanentSinkError, match="other columns") as caught:
        await sink.write(same + other)
    await sink.close()
    assert caught.value.failed_keys == frozenset(r.key for r in same)
    written = {row["key"] for row in _rows(out)}
    assert {r.key for r in other} <= written


async def test_two_sinks_on_one_directory_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    first = _sink(tmp_path, out)
    await first.open()
    try:
        with pytest.raises(SinkConfigError, match="another CSV sink"):
            await _sink(tmp_path, out).open()
    finally:
        await first.close()
