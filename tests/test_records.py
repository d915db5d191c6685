"""Tests of fonzipd.records: the Record every sink receives, its versions and its JSON form."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

from fonzipd.kinds import Kind
from fonzipd.records import DELETED, Record, Source, with_status
from tests.fonzip_objects import campaign, detail, donation, ecard_detail_completed, norm
from tests.support import make_record


def test_record_round_trips_through_json() -> None:
    for d in (
        detail(Kind.DONATION, donation()),
        detail(Kind.ECARD_SALE, ecard_detail_completed()),
        detail(Kind.CAMPAIGN, campaign()),
    ):
        record = norm(d)
        assert Record.from_json_dict(record.to_json_dict()) == record


def test_the_module_does_no_io_and_needs_no_aiohttp() -> None:
    probe = "import sys, fonzipd.records; print(any(m.startswith('aiohttp') for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_with_status_marks_a_record_deleted_with_a_new_version() -> None:
    record = make_record(7)
    now = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    gone = with_status(record, DELETED, source=Source.RECONCILE, fetched_at=now)
    assert (gone.status, gone.source, gone.fetched_at) == (DELETED, Source.RECONCILE, now)
    assert gone.version != record.version
    assert gone.key != record.key
    assert (gone.amount, gone.person, gone.data) == (record.amount, record.person, record.data)
