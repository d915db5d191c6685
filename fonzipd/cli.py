"""The command line: run | check | status | replay | sinks | simulate | demo.

Exit codes: 0 success; 1 the command ran and found a problem (or failed at run
time); 2 usage error; 78 the configuration is invalid (EX_CONFIG: systemd's
``RestartPreventExitStatus=78`` stops a restart loop on a broken file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from fonzipd import __version__
from fonzipd.config import ConfigError, ConfigWarning, Settings, default_config_path, load_config
from fonzipd.kinds import Kind
from fonzipd.store import Store, StoreError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fonzipd",
        description="Fonzip webhooks and daily reconciliation, delivered exactly once.",
    )
    p.add_argument("--version", action="version", version=f"fonzipd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--config",
            type=Path,
            default=None,
            help="configuration file (default: $FONZIPD_CONFIG, else /etc/fonzipd/config.toml)",
        )
        return sp

    with_config(sub.add_parser("run", help="run the daemon"))
    with_config(sub.add_parser("check", help="validate the configuration and plugins"))
    st = with_config(sub.add_parser("status", help="inbox, sinks and failures"))
    st.add_argument("--json", action="store_true", help="machine-readable output")
    rp = with_config(sub.add_parser("replay", help="queue records for one sink again"))
    rp.add_argument("--sink", required=True, help="sink id ([sinks.<id>])")
    rp.add_argument("--dead", action="store_true", help="the sink's dead letters only")
    rp.add_argument("--since", type=dt.date.fromisoformat, help="business date YYYY-MM-DD")
    rp.add_argument("--kind", type=Kind, choices=list(Kind), help="one kind only")
    rp.add_argument("--dry-run", action="store_true", help="count, change nothing")
    sk = sub.add_parser("sinks", help="list the available sink types and where each comes from")
    sk.add_argument("--config", type=Path, default=None, help="to include its plugins_dir")
    sim = sub.add_parser("simulate", help="run a fake Fonzip to try fonzipd against")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8788)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--webhook-url", help="where the simulator sends webhooks")
    sim.add_argument("--webhook-token", help="X-FZ-Auth-Token it sends")
    demo = sub.add_parser("demo", help="simulator + daemon + a stream of webhooks, then a summary")
    demo.add_argument("--dir", type=Path, default=Path("demo-output"), help="output folder")
    demo.add_argument("--events", type=int, default=40, help="webhooks to send")
    demo.add_argument("--seed", type=int, default=7)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one fonzipd command; the return value is the exit code."""
    args = _parser().parse_args(argv)
    handler = _COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"fonzipd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        print(f"fonzipd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _load(args: argparse.Namespace) -> Settings:
    path = args.config if args.config is not None else default_config_path()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        settings = load_config(path)
    for w in caught:
        print(f"fonzipd: warning: {w.message}", file=sys.stderr)
    return settings


def _cmd_run(args: argparse.Namespace) -> int:
    from fonzipd import logs
    from fonzipd.app import Daemon
    from fonzipd.registry import SinkConfigError

    settings = _load(args)
    logs.configure(settings.logging.level, settings.logging.format)
    try:
        asyncio.run(Daemon(settings).run())
    except SinkConfigError as exc:
        print(f"fonzipd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from fonzipd.registry import SinkConfigError, build_sinks

    settings = _load(args)
    try:
        # Builds (imports, validates) every enabled sink without opening any.
        build_sinks(settings, state_dir=settings.state.path.parent)
    except SinkConfigError as exc:
        print(f"fonzipd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    missing = [
        name
        for name, value in (
            ("fonzip.client_id", settings.fonzip.client_id),
            ("fonzip.client_secret", settings.fonzip.client_secret),
        )
        if value is None and settings.fonzip.access_token is None
    ]
    if missing:
        print(
            "fonzipd: the configuration lacks "
            + ", ".join(missing)
            + " (set FONZIPD_FONZIP__CLIENT_ID and FONZIPD_FONZIP__CLIENT_SECRET)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    sinks = ", ".join(f"{sid} ({s.type})" for sid, s in settings.enabled_sinks.items())
    print(
        f"configuration OK: listener {settings.listener.host}:{settings.listener.port}"
        f"{settings.listener.path}, state {settings.state.path}, sinks: {sinks or 'none'}"
    )
    return EXIT_OK


async def _status(settings: Settings) -> dict[str, Any]:
    if not settings.state.path.exists():
        raise StoreError(f"{settings.state.path}: no state database yet (has fonzipd run?)")
    store = await Store.open(settings.state.path)
    try:
        depth, age = await store.inbox_depth()
        return {
            "state": str(settings.state.path),
            "daemon_running": not store.acquire_worker_lock(),
            "inbox": {"pending": depth, "oldest_age_s": age, **await store.inbox_counts()},
            "sinks": await store.sink_status(settings.sinks),
            "failed_events": await store.failed_events(),
        }
    finally:
        await store.close()


def _cmd_status(args: argparse.Namespace) -> int:
    settings = _load(args)
    status = asyncio.run(_status(settings))
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(f"state database: {status['state']}")
        print(f"daemon running: {'yes' if status['daemon_running'] else 'no'}")
        inbox = status["inbox"]
        print(
            f"inbox: {inbox['pending']} pending, {inbox.get('done', 0)} done, "
            f"{inbox.get('failed', 0)} failed"
        )
        print(f"{'sink':<16} {'pending':>8} {'dead':>6} {'delivered':>10}  last success / error")
        for sid, st in status["sinks"].items():
            err = f"  error: {st['last_error']}" if st["failing_since"] else ""
            print(
                f"{sid:<16} {st['pending']:>8} {st['dead']:>6} {st['delivered']:>10}  "
                f"{st['last_success_at'] or '-'}{err}"
            )
        for ev in status["failed_events"]:
            print(f"failed: {ev['kind']} {ev['fonzip_id']}: {ev['last_error']}")
    unhealthy = status["failed_events"] or any(
        st["dead"] or st["failing_since"] for st in status["sinks"].values()
    )
    return EXIT_FAILED if unhealthy else EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    settings = _load(args)
    if args.sink not in settings.sinks:
        known = ", ".join(settings.sinks) or "none"
        print(
            f"fonzipd: no sink {args.sink!r} in the configuration (known: {known})", file=sys.stderr
        )
        return EXIT_USAGE

    async def replay() -> int:
        store = await Store.open(settings.state.path)
        try:
            return await store.requeue(
                args.sink, dead=args.dead, since=args.since, kind=args.kind, dry_run=args.dry_run
            )
        finally:
            await store.close()

    count = asyncio.run(replay())
    what = "dead letters" if args.dead else "records"
    verb = "would requeue" if args.dry_run else "requeued"
    print(f"{verb} {count} {what} for sink {args.sink}")
    return EXIT_OK


def _cmd_sinks(args: argparse.Namespace) -> int:
    from fonzipd.registry import SinkConfigError, describe

    plugins_dir = None
    if args.config is not None:
        plugins_dir = _load(args).plugins_dir
    try:
        types = describe(plugins_dir)
    except SinkConfigError as exc:
        print(f"fonzipd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for t in types:
        print(f"{t.name:<16} {t.origin}")
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    from fonzipd.simulator import serve

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(
                host=args.host,
                port=args.port,
                seed=args.seed,
                webhook_url=args.webhook_url,
                webhook_token=args.webhook_token,
            )
        )
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from fonzipd.demo import prepare_workdir, run_demo

    workdir = prepare_workdir(args.dir)
    return asyncio.run(run_demo(workdir, events=args.events, seed=args.seed))


_COMMANDS = {
    "run": _cmd_run,
    "check": _cmd_check,
    "status": _cmd_status,
    "replay": _cmd_replay,
    "sinks": _cmd_sinks,
    "simulate": _cmd_simulate,
    "demo": _cmd_demo,
}
