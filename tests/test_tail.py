"""`fonzipd tail` through the real CLI: new versions as stored, filtered; Ctrl-C ends it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from fonzipd.cli import EXIT_FAILED
from fonzipd.kinds import Kind
from fonzipd.state import Store
from fonzipd.state.migrations import SCHEMA_VERSION
from tests.support import make_record
from tests.test_state_migrations import make_v2_database

TOKEN = "tail-test-webhook-token-1234"


async def readline(stream: asyncio.StreamReader) -> str:
    return (await asyncio.wait_for(stream.readline(), 30)).decode()


async def test_tail_prints_each_matching_version_once_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[listener]\nauth_token = "{TOKEN}"\n[state]\npath = "state.db"\n', encoding="utf-8"
    )
    store = await Store.open(tmp_path / "state.db")
    try:
        await store.records.apply_record(None, make_record(1, status="refunded"), [])
        env = {k: v for k, v in os.environ.items() if not k.startswith("FONZIPD_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fonzipd", "tail", "--config", str(config),
            "--status", "refunded", "--last", "1", "--interval", "0.1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            first = await readline(proc.stdout)
            assert first.split()[1:4] == ["donation", "1", "refunded"], first
            # Stored while it follows: a succeeded one (filtered out), then a refund.
            await store.records.apply_record(None, make_record(2), [])
            await store.records.apply_record(
                None, make_record(3, kind=Kind.TICKET_SALE, status="refunded", amount="-12.50"), []
            )
            line = await readline(proc.stdout)
            assert line.split()[1:6] == ["ticket_sale", "3", "refunded", "-12.50", "TRY"], line
            assert "Ayşe" not in line, "no personal data in a line"
            proc.send_signal(signal.SIGINT)
            rest, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        await store.close()
    assert proc.returncode == 0, err
    assert rest == b"", "each version once; the succeeded record never"
    assert b"Traceback" not in err


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


async def test_tail_writes_nothing_and_follows_a_daemon_that_starts_after_it(
    tmp_path: Path,
) -> None:
    """Probe: `tail` opened the database read-write (migrating it, creating -wal and
    -shm files as whoever ran it); read-only, it read a snapshot that never changed."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[listener]\nauth_token = "{TOKEN}"\n[state]\npath = "state.db"\n', encoding="utf-8"
    )
    store = await Store.open(tmp_path / "state.db")
    await store.records.apply_record(None, make_record(1, status="refunded"), [])
    await store.close()  # no daemon: the last connection removed the -wal file
    before = _files(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FONZIPD_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fonzipd", "tail", "--config", str(config),
        "--last", "1", "--interval", "0.05",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        first = await readline(proc.stdout)
        assert first.split()[1:4] == ["donation", "1", "refunded"], first
        assert _files(tmp_path) == before, "tail created or changed a file"
        # A daemon starts and stores a record: tail must see it, not its snapshot.
        daemon = await Store.open(tmp_path / "state.db")
        try:
            await daemon.records.apply_record(
                None, make_record(2, kind=Kind.TICKET_SALE, status="refunded"), []
            )
            line = await readline(proc.stdout)
            assert line.split()[1:4] == ["ticket_sale", "2", "refunded"], line
        finally:
            await daemon.close()
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err


def test_tail_never_migrates_a_database_an_older_daemon_runs(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[listener]\nauth_token = "{TOKEN}"\n[state]\npath = "state.db"\n', encoding="utf-8"
    )
    make_v2_database(tmp_path / "state.db")
    before = _files(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FONZIPD_")}
    done = subprocess.run(
        [sys.executable, "-m", "fonzipd", "tail", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == EXIT_FAILED
    assert f"schema version 2 is older than this fonzipd's ({SCHEMA_VERSION})" in done.stderr
    assert str(tmp_path / "state.db") in done.stderr
    assert _files(tmp_path) == before
