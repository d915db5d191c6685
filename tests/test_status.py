"""`fonzipd status` through the real CLI: the order of runs, what comes next, why it exits 1."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from fonzipd.kinds import Kind
from fonzipd.records import Source
from fonzipd.scheduler import LAST_NIGHT_KEY
from fonzipd.state import InboxEvent, Store
from tests.support import make_record, write_cli_config

TOKEN = "status-test-webhook-token-123"


def config(tmp_path: Path) -> Path:
    return write_cli_config(tmp_path, TOKEN, '[reconciler]\nat = "03:30"')


def run(day: str, kind: str, started: float) -> dict[str, object]:
    return {
        "business_date": day,
        "kind": kind,
        "list_status": "paid",
        "run_key": f"k{started}",
        "source": "reconcile",
        "fonzip_total": 3,
        "window_total": 3,
        "local_before": 3,
        "local_after": 3,
        "started_at": started,
        "finished_at": started + 5,
        "outcome": "closed",
    }


async def seed(path: Path) -> float:
    store = await Store.open(path)
    try:
        for fid in (1, 2):
            await store.records.apply_record(None, make_record(fid), ["archive"])
        rows = await store.outbox.batch("archive", 10)
        await store.outbox.dead_letter("archive", [rows[0].id], "HTTP 400: refused")
        now = time.time()
        # Last night's run, then a backfill of an older day an hour later.
        await store.books.save_run(run("2026-11-29", "donation", now - 7200))
        await store.books.save_run(run("2025-03-01", "ticket_sale", now - 3600))
        await store.inbox.add_events([InboxEvent(Kind.DONATION, 77, 3, Source.WEBHOOK)])
        # Tonight's run is done (as the scheduler writes it): the next is tomorrow's.
        today = dt.datetime.now(ZoneInfo("Europe/Istanbul")).date()
        await store.meta.set(LAST_NIGHT_KEY, today.isoformat())
        return now
    finally:
        await store.close()


def status(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FONZIPD_")}
    return subprocess.run(
        [sys.executable, "-m", "fonzipd", "status", "--config", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_status_reads_as_sentences_in_the_order_things_happened(tmp_path: Path) -> None:
    path = config(tmp_path)
    asyncio.run(seed(tmp_path / "state.db"))
    proc = status(path)
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "daemon: not running" in out
    assert re.search(
        r"last webhook received: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ s ago\)", out
    )
    assert re.search(
        r"next nightly reconcile: \d{4}-\d\d-\d\d 03:30:00 Europe/Istanbul \(in [\d.]+ (h|min)\)",
        out,
    )
    ran = [line for line in out.splitlines() if line.startswith("  ran ")]
    assert [line.split()[4] for line in ran] == ["2025-03-01", "2026-11-29"], out
    assert out.rstrip().endswith(
        "needs attention (exit 1):\n"
        "  - sink archive has 1 dead letter(s): fix the cause, then "
        "fonzipd replay --sink archive --dead"
    )
    for repr_sign in ("{'", "'}", "None", "datetime."):
        assert repr_sign not in out, out

    as_json = json.loads(status(path, "--json").stdout)
    assert as_json["problems"] == [
        "sink archive has 1 dead letter(s): fix the cause, then "
        "fonzipd replay --sink archive --dead"
    ]
    assert as_json["next_reconcile_at"].endswith("+00:00")
    assert as_json["last_webhook_at"] is not None
