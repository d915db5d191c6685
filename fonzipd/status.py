"""``fonzipd status``: what the state database and the running daemon say, for a person.

Gathers the figures (``gather``), renders them as text without a Python repr in sight
(``render``), and says in words why the exit code is 1 (``problems``): the same
reasons in both the text and ``--json``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import Settings
from fonzipd.days import NightlySchedule
from fonzipd.scheduler import LAST_NIGHT_KEY
from fonzipd.state import Store
from fonzipd.state.connection import iso
from fonzipd.webhooks import SEEN_META_PREFIX as SEEN_PREFIX

RUNS_SHOWN = 20


async def gather(
    settings: Settings, *, health: dict[str, Any] | None, running: bool, clock: Clock = SYSTEM_CLOCK
) -> dict[str, Any]:
    """Everything status shows, as plain JSON-able values."""
    # Read-only: no migration, no write, no file created; a wrong path is refused.
    store = await Store.open(settings.state.path, read_only=True)
    try:
        depth, age = await store.inbox.depth()
        runs = await store.books.runs(limit=1000)
        # When they ran, newest first: a backfill of last year ran after last night.
        runs.sort(key=lambda r: r.get("finished_at") or r["started_at"], reverse=True)
        for r in runs:
            r["started_at"] = iso(r.get("started_at"))
            r["finished_at"] = iso(r.get("finished_at"))
        out: dict[str, Any] = {
            "state": str(settings.state.path),
            "daemon_running": running,
            "health": health,
            "token_expires_at": await _token_expiry(store, settings),
            "last_webhook_at": await _last_webhook(store),
            "next_reconcile_at": await _next_night(store, settings, clock),
            "inbox": {"pending": depth, "oldest_age_s": age, **await store.inbox.counts()},
            "sinks": await store.outbox.sink_status(settings.sinks),
            "failed_events": await store.inbox.failed_events(),
            "reconcile_runs": runs[:RUNS_SHOWN],
            "open_days": await store.books.days(open_only=True),
        }
    finally:
        await store.close()
    out["problems"] = problems(out)
    return out


async def _token_expiry(store: Store, settings: Settings) -> str | None:
    from fonzipd.fonzip.token import token_key

    client_id = settings.fonzip.client_id
    if client_id is None:
        return None
    token = await store.tokens.load(
        token_key(str(settings.fonzip.base_url), client_id.get_secret_value())
    )
    return None if token is None else token.expires_at.isoformat()


async def _last_webhook(store: Store) -> str | None:
    """When the last webhook reached fonzipd (the inbox, or the delivery log if newer)."""
    row = await store.connection.fetchone(
        "SELECT max(received_at) FROM inbox WHERE source = 'webhook'"
    )
    latest = iso(row[0]) if row is not None and row[0] is not None else None
    seen = await store.connection.fetchall(
        "SELECT value FROM meta WHERE key LIKE ?", (SEEN_PREFIX + "%",)
    )
    for (value,) in seen:
        when = dt.datetime.fromisoformat(str(value)).astimezone(dt.UTC).isoformat()
        if latest is None or when > latest:
            latest = when
    return latest


async def _next_night(store: Store, settings: Settings, clock: Clock) -> str | None:
    if not settings.reconciler.enabled:
        return None
    raw = await store.meta.get(LAST_NIGHT_KEY)
    last = dt.date.fromisoformat(raw) if raw else None
    schedule = NightlySchedule(settings.reconciler.at, settings.fonzip.tz)
    return schedule.next_due(clock.now(), last).isoformat()


def problems(status: dict[str, Any]) -> list[str]:
    """Why status exits 1, one sentence each (empty: exit 0)."""
    found: list[str] = []
    health = status["health"]
    if health is not None and not health["ready"]:
        found.append(f"the daemon is not ready: {_flat(_health_issues(health))}")
    for sid, st in status["sinks"].items():
        if st["dead"]:
            found.append(
                f"sink {sid} has {st['dead']} dead letter(s): fix the cause, then "
                f"fonzipd replay --sink {sid} --dead"
            )
        if st["failing_since"]:
            found.append(
                f"sink {sid} failing since {_when(st['failing_since'])}: {st['last_error']}"
            )
    failed = status["failed_events"]
    if failed:
        found.append(
            f"{len(failed)} event(s) could not be fetched (listed above); the nightly "
            "reconcile looks at them again"
        )
    return found


def _health_issues(health: dict[str, Any]) -> dict[str, Any]:
    keys = ("error", "database", "fonzip", "sinks", "components")
    issues = {k: health[k] for k in keys if k in health}
    if issues.get("database") == "writable":
        del issues["database"]
    return issues


def _flat(value: Any) -> str:
    """A dict or list as ``key: value; key: value``, never a repr."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_flat(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_flat(v) for v in value)
    return "-" if value is None else str(value)


def _when(value: str | None, *, tz: Any = None) -> str:
    """An ISO instant as ``2026-11-30 13:55:01 UTC``."""
    if value is None:
        return "never"
    when = dt.datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    when = when.astimezone(tz or dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S ") + (getattr(tz, "key", None) or "UTC")


def _ago(value: str | None, now: dt.datetime) -> str:
    if value is None:
        return ""
    seconds = (now - dt.datetime.fromisoformat(value)).total_seconds()
    if seconds < 0:
        return f" (in {_span(-seconds)})"
    return f" ({_span(seconds)} ago)"


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def render(status: dict[str, Any], settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> str:
    """The status as text, most important first."""
    now = clock.now()
    tz = settings.fonzip.tz
    lines = [f"state database: {status['state']}"]
    health = status["health"]
    if not status["daemon_running"]:
        lines.append("daemon: not running")
    elif health is None or health["ready"]:
        lines.append("daemon: running, ready")
    else:
        lines.append(f"daemon: running, NOT READY: {_flat(_health_issues(health))}")
    last = status["last_webhook_at"]
    lines.append(f"last webhook received: {_when(last)}{_ago(last, now)}")
    night = status["next_reconcile_at"]
    if night is None:
        when_next = "disabled ([reconciler] enabled = false)"
    elif dt.datetime.fromisoformat(night) <= now:
        when_next = "due now (the daemon runs it as soon as it is up)"
    else:
        when_next = f"{_when(night, tz=tz)}{_ago(night, now)}"
    lines.append(f"next nightly reconcile: {when_next}")
    token = status["token_expires_at"]
    lines.append(f"fonzip token expires: {_when(token) if token else 'no stored token'}")
    inbox = status["inbox"]
    lines.append(
        f"inbox: {inbox['pending']} pending, {inbox.get('done', 0)} done, "
        f"{inbox.get('failed', 0)} failed"
    )
    lines.append(f"{'sink':<16} {'pending':>8} {'dead':>6} {'delivered':>10}  last success / error")
    for sid, st in status["sinks"].items():
        err = f"  error: {st['last_error']}" if st["failing_since"] else ""
        success = _when(st["last_success_at"]) if st["last_success_at"] else "-"
        lines.append(
            f"{sid:<16} {st['pending']:>8} {st['dead']:>6} {st['delivered']:>10}  {success}{err}"
        )
    for ev in status["failed_events"]:
        lines.append(f"failed: {ev['kind']} {ev['fonzip_id']}: {ev['last_error']}")
    runs = status["reconcile_runs"]
    if runs:
        lines.append(f"last reconcile runs, most recent first ({len(runs)}):")
        for r in runs:
            ran = _when(r["finished_at"] or r["started_at"])
            lines.append(
                f"  ran {ran}  {r['business_date']} {r['kind']:<14} {r['list_status']:<16} "
                f"fonzip {_flat(r['window_total'])} local {_flat(r['local_after'])} "
                f"missing {r['missing']} fetched {r['fetched']} {r['outcome']}"
            )
    for d in status["open_days"]:
        lines.append(f"open day: {d['business_date']}: {d['reason']}")
    found = status["problems"]
    if found:
        lines.append("needs attention (exit 1):")
        lines.extend(f"  - {p}" for p in found)
    return "\n".join(lines)
