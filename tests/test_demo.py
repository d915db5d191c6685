"""The demo, as the README's first command runs it (faster: the simulator's rate is raised)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_reports_what_landed(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fonzipd",
            "demo",
            "--dir",
            str(out),
            "--events",
            "30",
            "--rate",
            "6000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "closed" in proc.stdout
    assert "SQLite sink 'archive'" in proc.stdout
    # The reconcile's count is explained, and no warning looks like the demo failing.
    assert "first seen by the reconcile and not" in proc.stdout
    assert re.search(r"the account already had \d+ records from earlier today", proc.stdout)
    assert "[warning" not in proc.stdout + proc.stderr
    with sqlite3.connect(out / "fonzip.db") as db:
        (count,) = db.execute("SELECT count(*) FROM records").fetchone()
    assert count > 30
    assert list((out / "csv").rglob("*.csv"))
