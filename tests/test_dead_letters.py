"""`fonzipd dead-letters` and `replay` by key, id and date range, through the real CLI."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import os
import subprocess
import sys
from pathlib import Path

from fonzipd.cli import main
from fonzipd.state import Store
from tests.support import make_record, write_cli_config

TOKEN = "dead-letters-test-token-123"


def config(tmp_path: Path) -> Path:
    return write_cli_config(tmp_path, TOKEN)


def fonzipd(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, as the operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FONZIPD_")}
    return subprocess.run(
        [sys.executable, "-m", "fonzipd", *args, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def quick(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command in this process (main() as __main__ calls it), to keep the suite fast."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--config", str(path)])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


async def seed(path: Path) -> list[int]:
    """Records 1-4 (business dates 1..4 Nov); 2 and 3 refused by the sink."""
    store = await Store.open(path)
    try:
        for fid in (1, 2, 3, 4):
            record = make_record(fid, day=dt.date(2026, 11, fid))
            await store.records.apply_record(None, record, ["archive"])
        rows = await store.outbox.batch("archive", 10)
        await store.outbox.acknowledge("archive", [rows[0].id, rows[3].id])
        await store.outbox.dead_letter("archive", [rows[1].id], "HTTP 400: refused amount")
        await store.outbox.dead_letter("archive", [rows[2].id], "HTTP 422: bad email")
        return [r.id for r in rows]
    finally:
        await store.close()


async def pending(path: Path) -> int:
    store = await Store.open(path)
    try:
        return int((await store.outbox.sink_status(["archive"]))["archive"]["pending"])
    finally:
        await store.close()


def test_dead_letters_are_listed_shown_and_replayed_one_by_one(tmp_path: Path) -> None:
    path = config(tmp_path)
    ids = asyncio.run(seed(tmp_path / "state.db"))
    listed = fonzipd(path, "dead-letters")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["id", "sink", "key", "dead", "since", "error"]
    body = lines[1:3]
    assert {line.split()[0] for line in body} == {str(ids[1]), str(ids[2])}
    assert any("HTTP 422: bad email" in line for line in body)
    assert "fonzipd replay --sink SINK --dead" in lines[-1]

    shown = fonzipd(path, "dead-letters", "show", str(ids[1]))
    assert shown.returncode == 0, shown.stderr
    assert f"dead letter {ids[1]} of sink archive" in shown.stdout
    assert "error:      HTTP 400: refused amount" in shown.stdout
    assert '"fonzip_id": 2' in shown.stdout
    assert f"fonzipd replay --sink archive --id {ids[1]}" in shown.stdout
    by_key = quick(path, "dead-letters", "show", "donation:3")
    assert f"dead letter {ids[2]} of sink archive" in by_key.stdout
    missing = quick(path, "dead-letters", "show", "999")
    assert missing.returncode == 1
    assert "no dead letter '999'" in missing.stderr

    one = quick(path, "replay", "--sink", "archive", "--id", str(ids[1]))
    assert one.stdout == "requeued 1 dead letters for sink archive\n", one.stderr
    assert asyncio.run(pending(tmp_path / "state.db")) == 1
    after = quick(path, "dead-letters", "--sink", "archive")
    assert str(ids[1]) not in [line.split()[0] for line in after.stdout.splitlines()[1:-1]]

    # Delivered records again, by key and by a date range.
    by_key = quick(path, "replay", "--sink", "archive", "--key", "donation:4:abc", "--dry-run")
    assert by_key.stdout == "would requeue 1 records for sink archive\n", by_key.stderr
    ranged = fonzipd(
        path,
        "replay",
        "--sink",
        "archive",
        "--since",
        "2026-11-01",
        "--until",
        "2026-11-02",
        "--dry-run",
    )
    assert ranged.stdout == "would requeue 2 records for sink archive\n", ranged.stderr
    bad = quick(path, "replay", "--sink", "archive", "--key", "donation")
    assert bad.returncode == 2
    assert "--key wants kind:fonzip_id" in bad.stderr
