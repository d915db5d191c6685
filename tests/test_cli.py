"""Tests of the command line: exit codes, messages, and the commands around the pipeline."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fonzipd import __version__
from fonzipd.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from fonzipd.state import Store
from fonzipd.state.migrations import SCHEMA_VERSION
from tests.support import make_record, write_cli_config
from tests.test_state_migrations import make_v2_database

TOKEN = "cli-test-webhook-token-123"


def config(tmp_path: Path, extra: str = "", *, creds: bool = True) -> Path:
    return write_cli_config(tmp_path, TOKEN, extra, creds=creds)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err


def test_check_accepts_a_valid_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(config(tmp_path))]) == EXIT_OK
    out = capsys.readouterr().out
    assert "configuration OK" in out
    assert "archive (sqlite)" in out
    assert not (tmp_path / "state.db").exists(), "check must start nothing"


def test_check_names_the_bad_key_and_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, "colour = 'blue'\n")
    assert main(["check", "--config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert str(path) in err
    assert "colour" in err


UNSAFE = {
    "no-listener-table": ("", "listener.auth_token is not set"),
    "no-token": ("[listener]\nport = 8787\n", "listener.auth_token is not set"),
    "opt-out-on-a-public-host": (
        '[listener]\nhost = "0.0.0.0"\nallow_unauthenticated = true\n',
        "listener.allow_unauthenticated = true is refused",
    ),
    "metrics-on-the-listener-port": (
        f'[listener]\nport = 8787\nauth_token = "{TOKEN}"\n[metrics]\nport = 8787\n',
        "metrics.port = 8787 is also listener.port",
    ),
}


def unsafe_config(tmp_path: Path, listener: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'{listener}\n[fonzip]\nclient_id = "id"\nclient_secret = "secret"\n'
        '[state]\npath = "state.db"\n',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("case", UNSAFE)
def test_check_fails_on_an_insecure_listener(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    listener, message = UNSAFE[case]
    path = unsafe_config(tmp_path, listener)
    assert main(["check", "--config", str(path)]) == EXIT_CONFIG
    out = capsys.readouterr()
    assert "configuration OK" not in out.out
    # One line: the file, the key and the fix.
    assert out.err == f"fonzipd: {path}: {message}" + out.err.split(message, 1)[1]
    assert out.err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no-listener-table", "opt-out-on-a-public-host"])
def test_run_refuses_an_insecure_listener_at_once_with_exit_78(tmp_path: Path, case: str) -> None:
    listener, message = UNSAFE[case]
    path = unsafe_config(tmp_path, listener)
    proc = subprocess.run(
        [sys.executable, "-m", "fonzipd", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr.startswith(f"fonzipd: {path}: {message}")
    assert proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state.db").exists(), "nothing may start"


def test_check_wants_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(config(tmp_path, creds=False))]) == EXIT_CONFIG
    assert "FONZIPD_FONZIP__CLIENT_ID" in capsys.readouterr().err


def test_check_reports_an_unknown_sink_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, '[sinks.crm]\ntype = "salesforce"\n')
    assert main(["check", "--config", str(path)]) == EXIT_CONFIG
    assert "salesforce" in capsys.readouterr().err


def test_missing_config_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FONZIPD_CONFIG", str(tmp_path / "nowhere.toml"))
    assert main(["check"]) == EXIT_CONFIG
    assert "nowhere.toml: cannot read" in capsys.readouterr().err


def test_sinks_lists_types_and_origins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sinks"]) == EXIT_OK
    out = capsys.readouterr().out
    for name in ("sqlite", "csv", "http"):
        assert name in out
    assert "built-in" in out


def test_plugins_folder_shows_in_sinks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugins = Path(__file__).resolve().parent.parent / "plugins"
    path = config(tmp_path)
    # A top-level key goes before the first table.
    path.write_text(f'plugins_dir = "{plugins}"\n' + path.read_text())
    assert main(["sinks", "--config", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "jsonl" in out
    assert "jsonl.py" in out


async def _seed_state(path: Path) -> None:
    store = await Store.open(path)
    try:
        for fid in (1, 2, 3):
            await store.records.apply_record(None, make_record(fid), ["archive"])
        rows = await store.outbox.batch("archive", 10)
        await store.outbox.acknowledge("archive", [rows[0].id])
        await store.outbox.dead_letter("archive", [rows[1].id], "HTTP 400: refused")
    finally:
        await store.close()


def test_status_and_replay_of_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path)
    asyncio.run(_seed_state(tmp_path / "state.db"))
    capsys.readouterr()
    assert main(["status", "--config", str(path), "--json"]) == EXIT_FAILED  # a dead letter
    status = json.loads(capsys.readouterr().out)
    assert status["sinks"]["archive"]["dead"] == 1
    assert status["sinks"]["archive"]["pending"] == 1
    assert main(["replay", "--config", str(path), "--sink", "archive", "--dead", "--dry-run"]) == 0
    assert "would requeue 1 dead letters" in capsys.readouterr().out
    assert main(["replay", "--config", str(path), "--sink", "archive", "--dead"]) == 0
    assert "requeued 1 dead letters" in capsys.readouterr().out
    assert main(["replay", "--config", str(path), "--sink", "archive"]) == 0
    assert "requeued 1 records" in capsys.readouterr().out  # record 1, delivered before
    assert main(["replay", "--config", str(path), "--sink", "nope"]) == EXIT_USAGE
    assert "no sink 'nope'" in capsys.readouterr().err


def test_status_without_a_state_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--config", str(config(tmp_path))]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert f"{tmp_path / 'state.db'}: no fonzipd state database here" in err
    assert not (tmp_path / "state.db").exists()


def fonzipd(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "fonzipd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_with_a_wrong_config_creates_no_database(tmp_path: Path) -> None:
    """Probe: a wrong --config silently created a new, empty state database."""
    (tmp_path / "elsewhere").mkdir()
    path = config(tmp_path / "elsewhere")
    done = fonzipd("status", "--config", str(path))
    assert done.returncode == EXIT_FAILED
    db = tmp_path / "elsewhere" / "state.db"
    assert f"fonzipd: {db}: no fonzipd state database here" in done.stderr
    assert sorted(p.name for p in db.parent.iterdir()) == ["config.toml"]


def test_read_only_commands_change_nothing_and_create_no_file(tmp_path: Path) -> None:
    path = config(tmp_path)
    asyncio.run(_seed_state(tmp_path / "state.db"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    status = fonzipd("status", "--config", str(path), "--json")
    assert status.returncode == EXIT_FAILED, status.stderr  # it has a dead letter
    assert json.loads(status.stdout)["sinks"]["archive"]["dead"] == 1
    dry = fonzipd("replay", "--config", str(path), "--sink", "archive", "--dead", "--dry-run")
    assert (dry.returncode, dry.stdout.strip()) == (
        0,
        "would requeue 1 dead letters for sink archive",
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_status_never_migrates_a_database_an_older_daemon_runs(tmp_path: Path) -> None:
    """Probe: `status` from a newer install migrated the schema under the running daemon."""
    path = config(tmp_path)
    make_v2_database(tmp_path / "state.db")
    done = fonzipd("status", "--config", str(path))
    assert done.returncode == EXIT_FAILED
    assert f"schema version 2 is older than this fonzipd's ({SCHEMA_VERSION})" in done.stderr
    assert str(tmp_path / "state.db") in done.stderr
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "2",
        )
    db.close()


def test_status_refuses_a_file_that_is_not_a_fonzipd_database(tmp_path: Path) -> None:
    path = config(tmp_path)
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("CREATE TABLE contacts (name TEXT)")
    db.close()
    done = fonzipd("status", "--config", str(path))
    assert done.returncode == EXIT_FAILED
    assert f"{tmp_path / 'state.db'}: not a fonzipd state database" in done.stderr
    with sqlite3.connect(tmp_path / "state.db") as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master")]
    db.close()
    assert names == ["contacts"]


def test_sinks_says_which_driver_extras_are_missing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "nats", None)  # as if nats-py were not installed
    assert main(["sinks"]) == EXIT_OK
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "driver missing: pip install 'fonzipd[nats]'" in lines["nats"]
    assert "missing" not in lines["postgresql"]
    assert "missing" not in lines["mysql"]
