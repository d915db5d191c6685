"""End to end: a payment, then its refund on a later day, through the simulator and the
real ``fonzipd run``, into the Excel profile's CSV files and a Standard Webhooks receiver.

What an accountant opening the folder relies on: the payment is a row of its own day's
file, the refund a negative row of the refund day's file pointing at the payment, the
payment's file untouched by the refund, amounts with two decimals and a decimal comma,
``;`` between fields, a BOM, local times. What a receiver relies on: it can route on
``type`` (``donation.succeeded``, then ``donation.refunded``).
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from fonzipd.kinds import Kind
from fonzipd.simulator import Simulator
from tests.daemon_process import DaemonProcess, write_config
from tests.oracle import SECRET, Receiver
from tests.support import until

TOKEN = "accounting-webhook-token"
ISTANBUL = ZoneInfo("Europe/Istanbul")


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(seed=12, days=1, per_day=1, rate_per_minute=60_000) as s:
        yield s


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    await rec.start()
    yield rec
    await rec.stop()


async def post_webhook(port: int, kind: Kind, fid: int, status: int) -> None:
    payload = {"id": fid, "webhook_id": 1, "operation": kind.operation, "status": status}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/fonzip/webhook",
            json=payload,
            headers={"X-FZ-Auth-Token": TOKEN},
        ) as response,
    ):
        assert response.status == 200


def excel_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f, delimiter=";"))


async def test_a_refund_days_later_is_its_own_negative_row_in_its_own_days_file(
    sim: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    paid_at = (now - dt.timedelta(days=3)).replace(microsecond=0)
    fid, _ = await sim.create_event(Kind.DONATION, status=3, deliver=False, when=paid_at)
    payment_day = paid_at.astimezone(ISTANBUL).date()
    config = write_config(
        tmp_path / "config.toml",
        base_url=await sim.start(),
        token=TOKEN,
        sinks={
            "books": {
                "type": "csv",
                "directory": "csv",
                "profile": "excel-tr",
                "flush_interval": 0,
            },
            "forward": {"type": "http", "url": receiver.url, "secret": SECRET},
        },
        extra="[reconciler]\nenabled = false\n",
    )
    daemon = DaemonProcess(config, tmp_path)
    folder = tmp_path / "csv" / "donation"
    payment_file = folder / f"{payment_day.isoformat()}.csv"
    try:
        port = await daemon.start()
        await post_webhook(port, Kind.DONATION, fid, 3)

        async def paid() -> bool:
            return payment_file.exists() and len(excel_rows(payment_file)) == 1

        await until(paid, within=30)
        closed = payment_file.read_bytes()

        await sim.refund(Kind.DONATION, fid, deliver=False)
        refund_day = dt.datetime.now(dt.UTC).astimezone(ISTANBUL).date()
        refund_file = folder / f"{refund_day.isoformat()}.csv"
        await post_webhook(port, Kind.DONATION, fid, 4)

        async def refunded() -> bool:
            return refund_file.exists() and len(receiver.arrivals) == 2

        await until(refunded, within=30)
        assert await daemon.terminate() == 0
    finally:
        if daemon.proc is not None and daemon.proc.returncode is None:
            daemon.proc.kill()
            await daemon.exited(10)

    # The payment's day is closed: the refund did not touch its file.
    assert payment_file.read_bytes() == closed
    assert closed.startswith(b"\xef\xbb\xbfentry_id;entry;refund_of;date;time;kind;")
    assert sorted(p.name for p in folder.iterdir()) == sorted({payment_file.name, refund_file.name})
    (payment,) = excel_rows(payment_file)
    (refund,) = excel_rows(refund_file)
    entry = sim.account.get(Kind.DONATION, fid)
    assert entry is not None
    amount = Decimal(str(entry.amount))
    assert payment["entry"] == "payment"
    assert payment["amount"] == f"{amount:.2f}".replace(".", ",")
    assert payment["time"] == paid_at.astimezone(ISTANBUL).strftime("%Y-%m-%d %H:%M:%S")
    assert payment["date"] == payment_day.isoformat()
    assert refund["entry"] == "refund"
    assert refund["amount"] == "-" + payment["amount"]
    assert refund["refund_of"] == payment["entry_id"] == f"donation:{fid}:payment"
    assert refund["date"] == refund_day.isoformat()
    assert refund["currency"] == payment["currency"] != ""
    assert payment["payment_method"] == "Card"

    assert [body["status"] for body in receiver.arrivals] == ["succeeded", "refunded"]
    assert receiver.types == ["donation.succeeded", "donation.refunded"]
    assert receiver.bad_signatures == 0
    # Shown with -s: the sample of the report.
    print(payment_file.read_text(encoding="utf-8-sig"))
    print(refund_file.read_text(encoding="utf-8-sig"))
