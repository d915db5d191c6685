"""/metrics and /readyz of a real daemon against the simulator, scraped and parsed."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fonzipd.app import Daemon
from fonzipd.config import Settings, settings_from_dict
from fonzipd.kinds import Kind
from fonzipd.metrics import Metrics
from fonzipd.simulator import Simulator

TOKEN = "metrics-test-token-0123456789"


def make_settings(tmp_path: Path, base_url: str, **extra: Any) -> Settings:
    data: dict[str, Any] = {
        "fonzip": {"base_url": base_url, "client_id": "sim-client", "client_secret": "sim-secret"},
        "listener": {"host": "127.0.0.1", "port": 0, "auth_token": TOKEN},
        "state": {"path": "state.db"},
        "sinks": {"archive": {"type": "sqlite", "path": "fonzip.db", "flush_interval": 0}},
        "reconciler": {"enabled": False},
        "logging": {"level": "warning"},
    }
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    return settings_from_dict(data, base_dir=tmp_path, origin="(test)")


async def until(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(seed=3, days=1, per_day=5, rate_per_minute=6000) as s:
        yield s


async def started(settings: Settings) -> Daemon:
    daemon = Daemon(settings, drain_timeout=2)
    await daemon.start()
    return daemon


async def test_a_webhook_shows_up_in_every_stage_of_the_metrics(
    tmp_path: Path, sim: Simulator
) -> None:
    daemon = await started(make_settings(tmp_path, await sim.start(), fonzip={}))
    try:
        hook = f"http://127.0.0.1:{daemon.port}/fonzip/webhook"
        sim.configure_webhook_target(hook, TOKEN)
        await sim.create_event(Kind.DONATION, status=3)
        await sim.wait_deliveries_idle()
        assert daemon.dispatcher is not None
        runner = daemon.dispatcher.runners["archive"]

        async def delivered() -> bool:
            return runner.delivered == 1

        await until(delivered)
        async with aiohttp.ClientSession() as s, s.post(hook, data=b"{}") as resp:
            assert resp.status == 401  # no token: counted as unauthorized
        m = await scrape(f"http://127.0.0.1:{daemon.port}/metrics")
    finally:
        await daemon.stop()

    def get(name: str, **labels: str) -> float:
        return m[(name, tuple(sorted(labels.items())))]

    assert (
        get("fonzipd_webhooks_received_total", operation="donation", status="3", outcome="accepted")
        == 1
    )
    assert (
        get(
            "fonzipd_webhooks_received_total",
            operation="unknown",
            status="unknown",
            outcome="unauthorized",
        )
        == 1
    )
    assert get("fonzipd_fetch_duration_seconds_count", kind="donation", outcome="ok") == 1
    assert get("fonzipd_fonzip_api_calls_total", endpoint="GET /donation/{id}", status="200") == 1
    assert get("fonzipd_fonzip_api_calls_total", endpoint="POST /token", status="200") == 1
    assert get("fonzipd_fonzip_rate_limit_used") >= 2
    assert get("fonzipd_fonzip_rate_limit_per_minute") == pytest.approx(240 * 0.95)
    assert get("fonzipd_fonzip_token_expiry_timestamp_seconds") > time.time()
    assert get("fonzipd_fonzip_credentials_rejected") == 0
    assert get("fonzipd_inbox_depth") == 0
    assert get("fonzipd_inbox_oldest_age_seconds") == 0
    assert get("fonzipd_sink_records_delivered_total", sink="archive") == 1
    assert get("fonzipd_sink_records_dead_total", sink="archive") == 0
    assert get("fonzipd_outbox_depth", sink="archive") == 0
    assert get("fonzipd_outbox_dead_letters", sink="archive") == 0
    assert get("fonzipd_sink_failing_seconds", sink="archive") == 0
    assert get("fonzipd_reconcile_open_days") == 0
    # The listener's own count of what it turned away, for floods the log only sums up.
    assert get("fonzipd_listener_rejected_total", outcome="unauthorized") == 1
    assert get("fonzipd_listener_connections_open") >= 1  # the scrape's own


async def test_separate_metrics_port_serves_health_and_the_listener_does_not_serve_metrics(
    tmp_path: Path, sim: Simulator
) -> None:
    daemon = await started(make_settings(tmp_path, await sim.start(), metrics={"port": 0}))
    try:
        assert daemon.metrics_port not in (None, daemon.port)
        m = await scrape(f"http://127.0.0.1:{daemon.metrics_port}/metrics")
        assert m[("fonzipd_inbox_depth", ())] == 0
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{daemon.metrics_port}/readyz") as resp:
                assert resp.status == 200
            async with s.get(f"http://127.0.0.1:{daemon.port}/metrics") as resp:
                assert resp.status == 404
    finally:
        await daemon.stop()


async def readyz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{daemon.port}/readyz") as resp,
    ):
        return resp.status, await resp.json()


async def probe_row(daemon: Daemon) -> str | None:
    assert daemon.store is not None
    async with daemon.store.db.execute(
        "SELECT value FROM meta WHERE key = 'readiness_probe'"
    ) as cur:
        row = await cur.fetchone()
    return None if row is None else str(row[0])


async def test_a_readyz_flood_does_not_write_to_the_database(
    tmp_path: Path, sim: Simulator
) -> None:
    # Before: every /readyz committed (fsynced) a row; 731 calls/s slowed webhooks 5x.
    daemon = await started(make_settings(tmp_path, await sim.start()))
    try:
        assert (await readyz(daemon))[0] == 200
        first = await probe_row(daemon)
        url = f"http://127.0.0.1:{daemon.port}/readyz"

        async def caller(s: aiohttp.ClientSession) -> None:
            for _ in range(50):
                async with s.get(url) as resp:
                    assert resp.status == 200

        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*(caller(s) for _ in range(10)))
        assert await probe_row(daemon) == first, "a /readyz call wrote to the database"
    finally:
        await daemon.stop()


async def test_readyz_still_notices_a_database_that_refuses_writes(
    tmp_path: Path, sim: Simulator
) -> None:
    daemon = await started(make_settings(tmp_path, await sim.start()))
    try:
        daemon.readiness_probe_interval = 0.2
        assert daemon.store is not None
        await daemon.store.db.execute("PRAGMA query_only = ON")

        async def refused() -> bool:
            status, body = await readyz(daemon)
            return status == 503 and body["database"].startswith("not writable")

        await until(refused)
        await daemon.store.db.execute("PRAGMA query_only = OFF")

        async def back() -> bool:
            return (await readyz(daemon))[0] == 200

        await until(back)
    finally:
        await daemon.stop()


async def test_readyz_fails_while_fonzip_rejects_the_credentials(
    tmp_path: Path, sim: Simulator
) -> None:
    settings = make_settings(tmp_path, await sim.start(), fonzip={"client_secret": "wrong"})
    daemon = await started(settings)
    try:
        assert (await readyz(daemon))[0] == 200
        sim.configure_webhook_target(f"http://127.0.0.1:{daemon.port}/fonzip/webhook", TOKEN)
        await sim.create_event(Kind.DONATION, status=3)

        async def rejected() -> bool:
            return (await readyz(daemon))[0] == 503

        await until(rejected)
        status, body = await readyz(daemon)
        assert status == 503
        assert "credentials rejected" in body["fonzip"]
        assert body["database"] == "writable"
    finally:
        await daemon.stop()


async def test_readyz_fails_once_a_sink_has_failed_longer_than_allowed(
    tmp_path: Path, sim: Simulator
) -> None:
    settings = make_settings(
        tmp_path,
        await sim.start(),
        sinks={
            "crm": {
                "type": "http",
                "url": "http://127.0.0.1:9/unreachable",
                "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "flush_interval": 0,
                "retry_initial": 30,
            }
        },
        health={"sink_failing_after": 0.05},
    )
    daemon = await started(settings)
    try:
        sim.configure_webhook_target(f"http://127.0.0.1:{daemon.port}/fonzip/webhook", TOKEN)
        await sim.create_event(Kind.DONATION, status=3)

        async def sink_not_ready() -> bool:
            status, body = await readyz(daemon)
            return status == 503 and "crm" in body.get("sinks", {})

        await until(sink_not_ready)
        m = await scrape(f"http://127.0.0.1:{daemon.port}/metrics")
        assert m[("fonzipd_sink_failing_seconds", (("sink", "crm"),))] > 0
        assert m[("fonzipd_outbox_depth", (("sink", "crm"),))] == 1
    finally:
        await daemon.stop()


ROOT = Path(__file__).resolve().parent.parent
EXPORTED = set(re.findall(r'"(fonzipd_[a-z_]+)"', (ROOT / "fonzipd" / "metrics.py").read_text()))


def _known(name: str) -> bool:
    for suffix in ("", "_total", "_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name.removesuffix(suffix) in EXPORTED:
            return True
    return False


def test_alert_rules_parse_and_use_only_exported_metrics() -> None:
    # No YAML parser among the dependencies: check the structure this file uses.
    text = (ROOT / "contrib" / "prometheus-alerts.yml").read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "groups:"
    for ln in lines:
        assert "\t" not in ln
        assert (len(ln) - len(ln.lstrip())) % 2 == 0, ln
        assert re.fullmatch(r"\s*(- )?[a-z_]+:( .*)?", ln), f"not a YAML mapping line: {ln!r}"
    alerts = re.findall(r"- alert: (\w+)", text)
    exprs = re.findall(r"expr: (.+)", text)
    assert len(alerts) == len(exprs) >= 4
    assert {"FonzipdInboxStuck", "FonzipdSinkDeadLetters", "FonzipdDayNotClosed"} <= set(alerts)
    assert "FonzipdWebhookCoverageLow" in alerts
    used = {n for e in exprs for n in re.findall(r"fonzipd_[a-z_]+", e)}
    assert used
    assert {n for n in used if not _known(n)} == set()


def test_grafana_dashboard_parses_and_uses_only_exported_metrics() -> None:
    dash = json.loads((ROOT / "contrib" / "grafana-dashboard.json").read_text())
    assert dash["title"] == "fonzipd"
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"fonzipd_[a-z_]+", e)}
    assert len(used) >= 10
    assert {n for n in used if not _known(n)} == set()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


async def test_a_new_install_exports_the_alert_gauges_and_judges_coverage_after_it(
    tmp_path: Path, sim: Simulator
) -> None:
    import datetime as dt

    from fonzipd.reconciler import INSTALLED_KEY

    daemon = await started(make_settings(tmp_path, await sim.start()))
    try:
        assert daemon.store is not None
        url = f"http://127.0.0.1:{daemon.port}/metrics"
        samples = await scrape(url)
        # Never reconciled: the clock of "no run in 36 hours" starts at the install.
        installed = dt.datetime.fromisoformat(str(await daemon.store.meta.get(INSTALLED_KEY)))
        assert samples[("fonzipd_reconcile_last_run_timestamp_seconds", ())] == pytest.approx(
            installed.timestamp()
        )
        assert abs(installed.timestamp() - time.time()) < 60
        assert samples[("fonzipd_reconcile_open_days", ())] == 0
        # A year's backfill before the install: every record first seen by the backfill.
        local_today = installed.astimezone(daemon.settings.fonzip.tz).date()
        for back in range(1, 4):
            await daemon.store.books.save_day(
                local_today - dt.timedelta(days=back),
                closed=True,
                reason=None,
                records=50,
                first_by_webhook=0,
                first_by_reconcile=0,
            )
        await daemon.store.books.save_day(
            local_today,
            closed=True,
            reason=None,
            records=40,
            first_by_webhook=0,
            first_by_reconcile=0,
        )
        samples = await scrape(url)
        assert ("fonzipd_webhook_coverage_ratio", ()) not in samples, "no day after the install"
        # The day after the install is judged: 9 of 10 by webhook.
        await daemon.store.books.save_day(
            local_today + dt.timedelta(days=1),
            closed=True,
            reason=None,
            records=10,
            first_by_webhook=9,
            first_by_reconcile=1,
        )
        samples = await scrape(url)
        assert samples[("fonzipd_webhook_coverage_ratio", ())] == pytest.approx(0.9)
    finally:
        await daemon.stop()


def test_webhook_counts_stay_exact_per_label_set_past_the_cap() -> None:
    # observe_webhook counts by the raw values, up to a cap; every label set still
    # counts on its own, unreadable ones as "unknown", and past the cap nothing is lost.
    metrics = Metrics()
    for _ in range(3):
        metrics.observe_webhook(1, 3, "accepted")
    metrics.observe_webhook(2, 3, "accepted")
    metrics.observe_webhook(None, None, "unauthorized")
    metrics.observe_webhook(99, 0, "invalid")
    for op in range(1000, 1700):  # more label sets than are kept
        metrics.observe_webhook(op, op, "invalid")
    metrics.observe_webhook(1, 3, "accepted")

    def count(**labels: str) -> float | None:
        return metrics.registry.get_sample_value("fonzipd_webhooks_received_total", labels)

    assert count(operation="donation", status="3", outcome="accepted") == 4
    assert count(operation=str(Kind.from_operation(2)), status="3", outcome="accepted") == 1
    assert count(operation="unknown", status="unknown", outcome="unauthorized") == 1
    assert count(operation="unknown", status="0", outcome="invalid") == 1
    assert count(operation="unknown", status="1699", outcome="invalid") == 1
