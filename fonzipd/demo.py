"""The demo: the real pipeline against the built-in simulator, writing to SQLite and CSV."""

from __future__ import annotations

import asyncio
import csv
import random
import secrets
import shutil
import sqlite3
import warnings
from pathlib import Path

from fonzipd.app import Daemon
from fonzipd.clock import SYSTEM_CLOCK
from fonzipd.config import ConfigWarning, Settings, settings_from_dict
from fonzipd.kinds import Kind
from fonzipd.reconcile_command import render_table
from fonzipd.reconciler import DayReport
from fonzipd.simulator import Simulator

DEMO_RATE = 240.0
DROPPED = 0.2


def demo_settings(
    workdir: Path, base_url: str, auth_token: str, *, rate: float = DEMO_RATE
) -> Settings:
    """The embedded default configuration the demo runs with."""
    with warnings.catch_warnings():
        # A faster-than-Fonzip rate is fine against the simulator.
        warnings.simplefilter("ignore", ConfigWarning)
        return _demo_settings(workdir, base_url, auth_token, rate)


def _demo_settings(workdir: Path, base_url: str, auth_token: str, rate: float) -> Settings:
    return settings_from_dict(
        {
            "fonzip": {
                "base_url": base_url,
                "client_id": "sim-client",
                "client_secret": "sim-secret",
                "requests_per_minute": rate,
            },
            "listener": {"host": "127.0.0.1", "port": 0, "auth_token": auth_token},
            "state": {"path": "state.db"},
            "fetcher": {"concurrency": 4},
            "sinks": {
                "archive": {"type": "sqlite", "path": "fonzip.db"},
                "spreadsheets": {"type": "csv", "directory": "csv"},
            },
            "logging": {"level": "warning"},
        },
        base_dir=workdir,
        origin="(demo defaults)",
    )


async def _wait_delivered(daemon: Daemon, within: float) -> bool:
    assert daemon.store is not None
    deadline = SYSTEM_CLOCK.monotonic() + within
    while SYSTEM_CLOCK.monotonic() < deadline:
        depth, _ = await daemon.store.inbox.depth()
        status = await daemon.store.outbox.sink_status(daemon.settings.sinks)
        if depth == 0 and all(s["pending"] == 0 for s in status.values()):
            return True
        await asyncio.sleep(0.2)
    return False


def prepare_workdir(workdir: Path) -> Path:
    """Empty (or create) the demo's output folder; returns its absolute path."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    return workdir.resolve()


async def run_demo(
    workdir: Path, *, events: int = 40, seed: int = 7, rate: float = DEMO_RATE
) -> int:
    """Run the demo in ``workdir``, an empty folder; returns an exit code."""
    from fonzipd import logs

    logs.configure("warning", "console")
    rng = random.Random(seed)
    token = secrets.token_urlsafe(24)
    async with Simulator(seed=seed, days=1, per_day=4, rate_per_minute=rate) as sim:
        base_url = await sim.start()
        settings = demo_settings(workdir, base_url, token, rate=rate)
        daemon = Daemon(settings)
        await daemon.start()
        try:
            url = f"http://127.0.0.1:{daemon.port}{settings.listener.path}"
            sim.configure_webhook_target(url, token)
            # Fonzip gives up after three tries: lose a share of webhooks for good, as a
            # firewall or an outage would, so that the reconcile has something to find.
            sim.faults.drop_webhooks = DROPPED
            # The account's records of the day from before fonzipd listened: no webhook
            # will ever come for them, as on a real first install.
            earlier = sum(len(sim.objects(k)) for k in Kind)
            print(f"simulator (a fake Fonzip) at {base_url}")
            print(f"fonzipd listening at {url}; sending {events} webhooks...")
            refundable: list[tuple[Kind, int]] = []
            kinds = list(Kind)
            for _ in range(events):
                if refundable and rng.random() < 0.15:
                    # A refund of an earlier payment: the same id, a new state.
                    kind, fid = refundable.pop(rng.randrange(len(refundable)))
                    await sim.refund(kind, fid)
                    continue
                kind = rng.choice(kinds)
                status = 0 if kind is Kind.CAMPAIGN else (5 if rng.random() < 0.1 else 3)
                fid, _ = await sim.create_event(kind, status=status)
                if status == 3 and kind is not Kind.FORM_ANSWER:
                    refundable.append((kind, fid))
            await sim.wait_deliveries_idle()
            delivered = await _wait_delivered(daemon, within=120)
            dropped = sum(1 for d in sim.deliveries if d.dropped)
            print(
                f"{dropped} webhooks were lost on the way; reconciling today "
                f"({sim.end_date}) as the nightly run would..."
            )
            assert daemon.reconciler is not None
            reports = await daemon.reconciler.run([sim.end_date], run_key="demo")
            delivered = delivered and await _wait_delivered(daemon, within=120)
            print(render_table(reports))
            print(_explain(reports, dropped=dropped, earlier=earlier))
        finally:
            await daemon.stop()
    accepted = sum(1 for d in sim.deliveries if d.ok)
    print(f"\nwebhooks answered 200: {accepted}; lost: {dropped}, found by the reconcile")
    print(_summary(workdir))
    if not delivered:
        print("not everything was delivered within the time limit; see `fonzipd status`")
        return 1
    return 0


def _explain(reports: list[DayReport], *, dropped: int, earlier: int) -> str:
    """Why the reconcile first saw more records than webhooks were lost, and the warning."""
    first = sum(r.first_by_reconcile for r in reports)
    records = sum(r.records for r in reports)
    share = first / records if records else 0.0
    return (
        f"\nWhy {first} first seen by the reconcile and not {dropped}: besides the objects "
        f"of the {dropped} lost webhooks, the account already had {earlier} records from "
        "earlier today, before fonzipd was listening (Fonzip sends no webhook for the past: "
        "a first install finds the same); a lost refund of an object already seen is not a "
        f"first sight. On a later day, {share:.0%} first seen by the reconcile would log "
        "webhook_coverage_low (the webhook is not reaching fonzipd: firewall, TLS, URL or "
        "token); the day fonzipd is installed is not judged, so the demo does not warn."
    )


def _summary(workdir: Path) -> str:
    lines = ["what landed:"]
    db = workdir / "fonzip.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT kind, status, count(*) FROM records GROUP BY kind, status ORDER BY kind, status"
        ).fetchall()
        total = sum(r[2] for r in rows)
    lines.append(f"  SQLite sink 'archive': {total} records in {db} (table records)")
    for kind, status, count in rows:
        lines.append(f"      {kind:<15} {status:<12} {count}")
    csv_dir = workdir / "csv"
    files = sorted(csv_dir.rglob("*.csv"))
    rows_written = 0
    for f in files:
        with f.open(encoding="utf-8", newline="") as fh:
            rows_written += max(0, sum(1 for _ in csv.reader(fh)) - 1)
    lines.append(
        f"  CSV sink 'spreadsheets': {rows_written} rows in {len(files)} files under {csv_dir}"
        " (one file per kind and business date; a refund is a new row)"
    )
    lines.append(f"  state database: {workdir / 'state.db'}")
    return "\n".join(lines)
