"""The command line: run | check | status | replay | forget | reconcile | backfill | sinks |
simulate | demo.

Exit codes: 0 success; 1 the command ran and found a problem (or failed at run
time; for ``check --online``: Fonzip refused the credentials or could not be
reached, or a sink could not be reached or refused its login); 2 usage error; 78
the configuration is invalid (EX_CONFIG: systemd's ``RestartPreventExitStatus=78``
stops a restart loop on a broken file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import errno
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from fonzipd import __version__
from fonzipd.config import (
    ConfigError,
    ConfigWarning,
    Settings,
    default_config_path,
    listener_problems,
    load_config,
)
from fonzipd.kinds import Kind
from fonzipd.state import Store, StoreError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a component of the daemon died; systemd restarts it
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
    ck = with_config(sub.add_parser("check", help="validate the configuration and plugins"))
    ck.add_argument(
        "--online",
        action="store_true",
        help="also get a token (reusing the stored one), call /me and print the association, "
        "and connect to every enabled sink",
    )
    wh = sub.add_parser("webhooks", help="manage the Fonzip webhook that calls this daemon")
    whs = wh.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    reg = with_config(whs.add_parser("register", help="create (or find) the webhook for a URL"))
    reg.add_argument("--url", required=True, help="the public https URL Fonzip POSTs to")
    reg.add_argument("--name", help="webhook name (default fonzipd-<host>)")
    with_config(whs.add_parser("list", help="the account's webhooks"))
    for action, text in (
        ("test", "ask Fonzip for a test delivery and wait for it to reach the daemon"),
        ("delete", "delete a webhook"),
    ):
        wa = with_config(whs.add_parser(action, help=text))
        which = wa.add_mutually_exclusive_group(required=action == "delete")
        which.add_argument("--id", type=int, dest="webhook_id", help="webhook id")
        which.add_argument("--url", help="webhook URL")
        if action == "test":
            wa.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    st = with_config(sub.add_parser("status", help="inbox, sinks and failures"))
    st.add_argument("--json", action="store_true", help="machine-readable output")
    rp = with_config(sub.add_parser("replay", help="queue records for one sink again"))
    rp.add_argument("--sink", required=True, help="sink id ([sinks.<id>])")
    rp.add_argument("--dead", action="store_true", help="the sink's dead letters only")
    rp.add_argument("--since", type=dt.date.fromisoformat, help="business date YYYY-MM-DD")
    rp.add_argument("--kind", type=Kind, choices=list(Kind), help="one kind only")
    rp.add_argument("--until", type=dt.date.fromisoformat, help="last business date YYYY-MM-DD")
    rp.add_argument(
        "--key",
        action="append",
        default=[],
        help="only this object, kind:fonzip_id (a record key's version is ignored; repeatable)",
    )
    rp.add_argument(
        "--id",
        action="append",
        type=int,
        default=[],
        dest="ids",
        help="only this dead letter (an id from fonzipd dead-letters; implies --dead; repeatable)",
    )
    rp.add_argument("--dry-run", action="store_true", help="count, change nothing")
    tl = with_config(sub.add_parser("tail", help="print records as they are stored (Ctrl-C ends)"))
    tl.add_argument("--kind", action="append", type=Kind, choices=list(Kind), default=[])
    tl.add_argument("--status", action="append", default=[], help="only this status (repeatable)")
    tl.add_argument("--last", type=int, default=0, help="first print the N latest matching records")
    tl.add_argument("--json", action="store_true", help="whole records, one JSON object a line")
    tl.add_argument("--interval", type=_seconds, default=1.0, help="seconds between reads")
    dl = with_config(sub.add_parser("dead-letters", help="list the dead letters, or show one"))
    dl.add_argument("--sink", help="one sink only")
    dl_actions = dl.add_subparsers(dest="dead_command", metavar="ACTION")
    dl_show = dl_actions.add_parser("show", help="one dead letter in full, with its record")
    dl_show.add_argument("which", help="its id, or its record key (kind:fonzip_id[:version])")
    # --config after "show" too; SUPPRESS keeps one given before it.
    dl_show.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    fg = with_config(
        sub.add_parser(
            "forget",
            help="erase a person's data from the state database and every sink (daemon stopped)",
        )
    )
    fg.add_argument("--email", help="the person's e-mail address")
    fg.add_argument("--fonzip-user-id", type=int, help="the person's Fonzip user id")
    fg.add_argument("--dry-run", action="store_true", help="say what would change; change nothing")
    sk = sub.add_parser("sinks", help="list the available sink types and where each comes from")
    sk.add_argument("--config", type=Path, default=None, help="to include its plugins_dir")
    sim = sub.add_parser("simulate", help="run a fake Fonzip to try fonzipd against")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8788)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--webhook-url", help="where the simulator sends webhooks")
    sim.add_argument("--webhook-token", help="X-FZ-Auth-Token it sends")
    sim_actions = sim.add_subparsers(dest="simulate_command", metavar="ACTION")
    trig = sim_actions.add_parser(
        "trigger", help="make an event happen in a running simulator (donation.refunded...)"
    )
    trig.add_argument(
        "event", help="KIND.succeeded | KIND.failed | KIND.refunded | campaign.created"
    )
    trig.add_argument(
        "--url", default=None, help="the simulator (default http://<--host>:<--port>)"
    )
    trig.add_argument("--id", type=int, dest="fonzip_id", help="refund this object (.refunded)")
    demo = sub.add_parser("demo", help="simulator + daemon + a stream of webhooks, then a summary")
    demo.add_argument("--dir", type=Path, default=Path("demo-output"), help="output folder")
    demo.add_argument("--events", type=int, default=40, help="webhooks to send")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--rate",
        type=float,
        default=240.0,
        help="requests per minute of the simulator and the daemon (Fonzip's is 240)",
    )
    rc = with_config(sub.add_parser("reconcile", help="reconcile business days with Fonzip now"))
    when = rc.add_mutually_exclusive_group()
    when.add_argument(
        "--date", type=_date, help="one business date YYYY-MM-DD (default: yesterday)"
    )
    when.add_argument("--from", dest="first", type=_date, help="first business date of a range")
    rc.add_argument("--to", dest="last", type=_date, help="last business date (with --from)")
    rc.add_argument(
        "--kind", action="append", type=Kind, choices=list(Kind), help="only this kind (repeatable)"
    )
    rc.add_argument(
        "--dry-run",
        action="store_true",
        help="list and compare; queue and record nothing (it does store the Fonzip token "
        "it gets in the state database: Fonzip keeps one live token per API key)",
    )
    rc.add_argument(
        "--wait",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="answer within this many seconds (default 600): what Fonzip has not answered "
        "by then leaves its day open (exit 1)",
    )
    bf = with_config(sub.add_parser("backfill", help="import history (resumable)"))
    bf.add_argument("--from", dest="first", type=_date, required=True, help="first date")
    bf.add_argument("--to", dest="last", type=_date, required=True, help="last date")
    bf.add_argument(
        "--kind", action="append", type=Kind, choices=list(Kind), help="only this kind (repeatable)"
    )
    bf.add_argument("--verbose", action="store_true", help="the full table per day, kind and list")
    return p


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {value!r}")
    return seconds


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    """Run one fonzipd command; the return value is the exit code."""
    args = _parser().parse_args(argv)
    handler = _COMMANDS[args.command]
    if args.command != "run":
        # Commands talk to the user on stdout; only warnings and errors go to the log.
        from fonzipd import logs

        logs.configure("warning", "auto")
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"fonzipd: {_in_file(args, exc)}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        print(f"fonzipd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _config_path(args: argparse.Namespace) -> Path:
    config: Path | None = getattr(args, "config", None)
    return config if config is not None else default_config_path()


def _in_file(args: argparse.Namespace, exc: Exception) -> str:
    """The error, naming the configuration file when the message does not yet."""
    path = str(_config_path(args))
    text = str(exc)
    return text if text.startswith(path) else f"{path}: {text}"


def _load(args: argparse.Namespace) -> Settings:
    path = _config_path(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        settings = load_config(path)
    for w in caught:
        print(f"fonzipd: warning: {w.message}", file=sys.stderr)
    return settings


def _unsafe(args: argparse.Namespace, settings: Settings) -> bool:
    """Print each reason this configuration must not run here; True if any.

    The listener's safety (listener_problems) and what the machine must give it
    (preflight: ports, paths, environment variables), one line each.
    """
    from fonzipd import preflight

    problems = listener_problems(settings) + preflight.problems(settings)
    for problem in problems:
        print(f"fonzipd: {_in_file(args, Exception(problem))}", file=sys.stderr)
    return bool(problems)


def _as_root(args: argparse.Namespace, settings: Settings) -> bool:
    """Print why root must not run this command on the service's state; True if so."""
    from fonzipd import preflight

    reason = preflight.root_on_service_state(settings, args.command)
    if reason is not None:
        print(f"fonzipd: {reason}", file=sys.stderr)
    return reason is not None


def _cmd_run(args: argparse.Namespace) -> int:
    from fonzipd import logs
    from fonzipd.app import Daemon
    from fonzipd.registry import SinkConfigError

    settings = _load(args)
    if _unsafe(args, settings):
        return EXIT_CONFIG
    if _as_root(args, settings):
        return EXIT_FAILED
    logs.configure(settings.logging.level, settings.logging.format)
    daemon = Daemon(settings, config_path=_config_path(args))
    try:
        asyncio.run(daemon.run())
    except SinkConfigError as exc:
        print(f"fonzipd: {_in_file(args, exc)}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        # Taken between the preflight and the bind: the same one line, no traceback.
        print(f"fonzipd: {_in_file(args, Exception(f'cannot listen: {exc}'))}", file=sys.stderr)
        return EXIT_CONFIG
    if daemon.failed:
        print(f"fonzipd: died: {', '.join(sorted(daemon.failed))}", file=sys.stderr)
        return EXIT_SOFTWARE
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from fonzipd.registry import SinkConfigError, build_sinks

    settings = _load(args)
    if _unsafe(args, settings):
        return EXIT_CONFIG
    try:
        # Builds (imports, validates) every enabled sink without opening any.
        build_sinks(settings, state_dir=settings.state.path.parent)
    except SinkConfigError as exc:
        print(f"fonzipd: {_in_file(args, exc)}", file=sys.stderr)
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
            + " (set the environment variables FONZIPD_FONZIP__CLIENT_ID and "
            "FONZIPD_FONZIP__CLIENT_SECRET, or the systemd credentials fonzip.client_id "
            "and fonzip.client_secret)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    sinks = ", ".join(f"{sid} ({s.type})" for sid, s in settings.enabled_sinks.items())
    print(
        f"configuration OK: listener {settings.listener.host}:{settings.listener.port}"
        f"{settings.listener.path}, state {settings.state.path}, sinks: {sinks or 'none'}"
    )
    if args.online:
        if _as_root(args, settings):
            return EXIT_FAILED
        fonzip_code = asyncio.run(_check_online(settings))
        sinks_code = asyncio.run(_check_sinks_online(settings))
        return max(fonzip_code, sinks_code)
    return EXIT_OK


async def _check_online(settings: Settings) -> int:
    from fonzipd.fonzip.errors import FonzipError
    from fonzipd.webhooks import connected

    try:
        async with connected(settings) as (store, client):
            me = await client.me()
            token = None if client.tokens.fixed else await store.tokens.load(client.tokens.key)
    except FonzipError as exc:
        print(f"fonzipd: Fonzip: {exc}", file=sys.stderr)
        return EXIT_FAILED
    name = me.get("display_name") or me.get("name") or "(no name)"
    print(f"Fonzip OK: association {name!r} (id {me.get('id')})")
    if token is not None:
        print(f"access token valid until {token.expires_at.isoformat()}")
    return EXIT_OK


async def _check_sinks_online(settings: Settings) -> int:
    """Open and close every enabled sink once: a connection and a login, no delivery."""
    from fonzipd.preflight import reach
    from fonzipd.registry import build_sinks
    from fonzipd.sinks.tls import ClientTLSOptions

    failed = EXIT_OK
    for sid, built in build_sinks(settings, state_dir=settings.state.path.parent).items():
        try:
            async with asyncio.timeout(60):
                await built.sink.open()
                await built.sink.close()
                url = built.settings.options.get("url")
                if isinstance(url, str):
                    # A forwarder opens without connecting: reach its host, send nothing.
                    opts = built.sink.options
                    tls = (
                        opts.tls_context(f"sinks.{sid}")
                        if isinstance(opts, ClientTLSOptions) and opts.tls_files()
                        else None
                    )
                    await reach(url, tls=tls)
        except Exception as exc:
            reason = "no answer within 60 s" if isinstance(exc, TimeoutError) else str(exc)
            print(f"fonzipd: sink {sid} ({built.type.name}): {reason}", file=sys.stderr)
            failed = EXIT_FAILED
        else:
            print(f"sink {sid} ({built.type.name}) OK")
    return failed


def _cmd_webhooks(args: argparse.Namespace) -> int:
    from fonzipd.fonzip.errors import FonzipError
    from fonzipd.webhooks import WebhookError

    settings = _load(args)
    if _as_root(args, settings):
        return EXIT_FAILED
    try:
        return asyncio.run(_webhooks(args, settings))
    except (FonzipError, WebhookError) as exc:
        print(f"fonzipd: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _webhooks(args: argparse.Namespace, settings: Settings) -> int:
    from fonzipd import webhooks

    action = args.webhooks_command
    async with webhooks.connected(settings) as (store, client):
        if action == "list":
            for h in await client.list_webhooks():
                print(f"{h.get('id'):>6}  {h.get('name')}  {h.get('url')}")
            return EXIT_OK
        if action == "register":
            token = settings.listener.auth_token
            if token is None:
                print(
                    "fonzipd: listener.auth_token is not set: Fonzip would send no "
                    "X-FZ-Auth-Token header (set FONZIPD_LISTENER__AUTH_TOKEN)",
                    file=sys.stderr,
                )
                return EXIT_CONFIG
            reg = await webhooks.register(
                client, args.url, token.get_secret_value(), name=args.name
            )
            verb = "created" if reg.created else "already registered"
            h = reg.webhook
            print(f"webhook {h.get('id')} {h.get('name')!r} {verb} for {h.get('url')}")
            return EXIT_OK
        hook = await webhooks.find(client, webhook_id=args.webhook_id, url=args.url)
        if action == "delete":
            await client.delete_webhook(int(hook["id"]))
            print(f"webhook {hook['id']} {hook.get('name')!r} deleted")
            return EXIT_OK
        if store.acquire_worker_lock():
            print(
                "fonzipd: no daemon is running on this state database: start it first "
                "(systemctl start fonzipd)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        took = await webhooks.send_test(client, store, int(hook["id"]), timeout=args.timeout)
        print(
            f"test delivery of webhook {hook['id']} reached the daemon "
            f"({took.total_seconds():.1f} s after the request)"
        )
        return EXIT_OK


async def _status(settings: Settings) -> dict[str, Any]:
    from fonzipd import preflight, status

    running = preflight.daemon_running(settings.state.path)
    health = await _daemon_health(settings) if running else None
    return await status.gather(settings, health=health, running=running)


async def _daemon_health(settings: Settings) -> dict[str, Any]:
    """The running daemon's /readyz answer (on the metrics port when it has its own)."""
    import aiohttp

    host, port = settings.listener.host, settings.listener.port
    if settings.metrics.port is not None:
        host, port = settings.metrics.host, settings.metrics.port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/readyz"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
            session.get(url) as resp,
        ):
            body: dict[str, Any] = await resp.json()
            return {"ready": resp.status == 200, "url": url, **body}
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"ready": False, "url": url, "error": f"no answer: {exc}"}


def _cmd_status(args: argparse.Namespace) -> int:
    from fonzipd.status import render

    settings = _load(args)
    status = asyncio.run(_status(settings))
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(render(status, settings))
    return EXIT_FAILED if status["problems"] else EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    from fonzipd.privacy import SinkPolicy

    settings = _load(args)
    if args.sink not in settings.sinks:
        known = ", ".join(settings.sinks) or "none"
        print(
            f"fonzipd: no sink {args.sink!r} in the configuration (known: {known})", file=sys.stderr
        )
        return EXIT_USAGE
    if _as_root(args, settings):
        return EXIT_FAILED

    async def replay() -> int:
        store = await Store.open(settings.state.path, read_only=args.dry_run)
        try:
            return await store.outbox.requeue(
                args.sink,
                dead=args.dead or bool(args.ids),
                since=args.since,
                until=args.until,
                keys=args.key,
                ids=args.ids,
                kind=args.kind,
                dry_run=args.dry_run,
                policy=SinkPolicy.from_settings(settings.sinks[args.sink]),
            )
        finally:
            await store.close()

    bad = [k for k in args.key if len(k.split(":")) < 2 or not k.split(":")[1].isdigit()]
    if bad:
        print(
            f"fonzipd: --key wants kind:fonzip_id (donation:10042), got {bad[0]!r}", file=sys.stderr
        )
        return EXIT_USAGE
    count = asyncio.run(replay())
    what = "dead letters" if args.dead or args.ids else "records"
    verb = "would requeue" if args.dry_run else "requeued"
    print(f"{verb} {count} {what} for sink {args.sink}")
    return EXIT_OK


def _cmd_tail(args: argparse.Namespace) -> int:
    from fonzipd.tail import follow

    settings = _load(args)
    if not settings.state.path.exists():
        raise StoreError(f"{settings.state.path}: no state database yet (has fonzipd run?)")

    async def tail() -> None:
        await follow(
            settings.state.path,
            kinds=[str(k) for k in args.kind],
            statuses=args.status,
            last=args.last,
            as_json=args.json,
            interval=args.interval,
            emit=lambda line: print(line, flush=True),
        )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(tail())
    return EXIT_OK


def _cmd_dead_letters(args: argparse.Namespace) -> int:
    from fonzipd import dead_letters

    settings = _load(args)

    async def read() -> tuple[int, str]:
        store = await Store.open(settings.state.path, read_only=True)
        try:
            if args.dead_command == "show":
                row = await dead_letters.one(store, args.which)
                if row is None:
                    return EXIT_FAILED, f"fonzipd: no dead letter {args.which!r}"
                return EXIT_OK, dead_letters.render_one(row)
            return EXIT_OK, dead_letters.render_listing(
                await dead_letters.listing(store, args.sink)
            )
        finally:
            await store.close()

    code, text = asyncio.run(read())
    print(text, file=sys.stderr if code else sys.stdout)
    return code


def _cmd_forget(args: argparse.Namespace) -> int:
    from fonzipd.forget_command import forget_now
    from fonzipd.registry import SinkConfigError

    if args.email is None and args.fonzip_user_id is None:
        print("fonzipd forget: give --email, --fonzip-user-id, or both", file=sys.stderr)
        return EXIT_USAGE
    settings = _load(args)
    try:
        return asyncio.run(
            forget_now(
                settings,
                email=args.email,
                fonzip_user_id=args.fonzip_user_id,
                dry_run=args.dry_run,
            )
        )
    except SinkConfigError as exc:
        print(f"fonzipd: {_in_file(args, exc)}", file=sys.stderr)
        return EXIT_CONFIG


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
    from fonzipd.sinks import missing_extra

    for t in types:
        extra = missing_extra(t.name) if t.origin == "built-in" else None
        print(f"{t.name:<16} {t.origin}" + (f" (driver missing: {extra})" if extra else ""))
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    from fonzipd.simulator import serve

    if args.simulate_command == "trigger":
        from fonzipd.simulator.trigger import TriggerError, trigger

        base = (args.url or f"http://{args.host}:{args.port}").rstrip("/")
        try:
            done = asyncio.run(trigger(f"{base}/_sim", args.event, fonzip_id=args.fonzip_id))
        except TriggerError as exc:
            print(f"fonzipd: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"triggered {args.event}: {done}")
        return EXIT_OK

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
    return asyncio.run(run_demo(workdir, events=args.events, seed=args.seed, rate=args.rate))


def _reconcile_days(args: argparse.Namespace, settings: Settings) -> list[dt.date] | None:
    from fonzipd.reconciler import all_days

    if args.first is not None or args.last is not None:
        if args.first is None or args.last is None:
            print("fonzipd: --from and --to go together", file=sys.stderr)
            return None
        try:
            return all_days(args.first, args.last)
        except ValueError as exc:
            print(f"fonzipd: {exc}", file=sys.stderr)
            return None
    if getattr(args, "date", None) is not None:
        return [args.date]
    today = dt.datetime.now(dt.UTC).astimezone(settings.fonzip.tz).date()
    return [today - dt.timedelta(days=1)]


def _cmd_reconcile(args: argparse.Namespace, *, backfill: bool = False) -> int:
    from fonzipd.reconcile_command import DEFAULT_WAIT, reconcile_now
    from fonzipd.records import Source

    settings = _load(args)
    days = _reconcile_days(args, settings)
    if days is None:
        return EXIT_USAGE
    if _as_root(args, settings):
        return EXIT_FAILED
    source = Source.BACKFILL if backfill else Source.RECONCILE
    return asyncio.run(
        reconcile_now(
            settings,
            days,
            kinds=args.kind or [],
            source=source,
            dry_run=getattr(args, "dry_run", False),
            wait=None if backfill else (args.wait or DEFAULT_WAIT),
            verbose=not backfill or args.verbose,
        )
    )


def _cmd_backfill(args: argparse.Namespace) -> int:
    return _cmd_reconcile(args, backfill=True)


_COMMANDS = {
    "run": _cmd_run,
    "check": _cmd_check,
    "status": _cmd_status,
    "replay": _cmd_replay,
    "dead-letters": _cmd_dead_letters,
    "tail": _cmd_tail,
    "forget": _cmd_forget,
    "sinks": _cmd_sinks,
    "simulate": _cmd_simulate,
    "demo": _cmd_demo,
    "webhooks": _cmd_webhooks,
    "reconcile": _cmd_reconcile,
    "backfill": _cmd_backfill,
}
