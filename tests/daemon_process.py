"""Test support: the real ``fonzipd`` command in a subprocess, with its log in a file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_config(
    path: Path,
    *,
    base_url: str,
    token: str,
    rate: float = 6000,
    sinks: Mapping[str, Mapping[str, Any]] | None = None,
    extra: str = "",
    fonzip_extra: str = "",
) -> Path:
    """A config file for the simulator's demo account, state next to it."""
    sinks = sinks or {"archive": {"type": "sqlite", "path": "fonzip.db"}}
    lines = [
        "[fonzip]",
        f'base_url = "{base_url}"',
        'client_id = "sim-client"',
        'client_secret = "sim-secret"',
        f"requests_per_minute = {rate}",
        fonzip_extra,
        "[listener]",
        'host = "127.0.0.1"',
        "port = 0",
        f'auth_token = "{token}"',
        "[state]",
        'path = "state.db"',
        "[logging]",
        'format = "json"',
    ]
    for sid, options in sinks.items():
        lines.append(f"[sinks.{sid}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


class DaemonProcess:
    """``fonzipd run`` as a user runs it; each start logs to its own file."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.port: int | None = None
        self.log_path: Path | None = None

    async def start(self, within: float = 30.0, env: Mapping[str, str] | None = None) -> int:
        """Start the daemon and wait until its listener is bound; returns the port.

        ``env`` adds environment variables for this start only (a crash point, say);
        a start that reaches its crash point before the listener is up returns 0.
        """
        self.starts += 1
        self.log_path = self.workdir / f"daemon-{self.starts}.log"
        self.proc = self._spawn(self.log_path, env or {})
        async with asyncio.timeout(within):
            while True:
                event = self.find("daemon_started")
                if event is not None:
                    self.port = int(str(event["listen"]).split(":")[2].split("/")[0])
                    return self.port
                if self.proc.poll() is not None:
                    if env and self.find("crash_point_reached") is not None:
                        return 0  # killed itself at its crash point while starting
                    raise AssertionError(f"fonzipd exited at start:\n{self.log_text()}")
                await asyncio.sleep(0.05)

    def _spawn(self, log_path: Path, extra: Mapping[str, str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
        env.pop("NOTIFY_SOCKET", None)
        if "FONZIPD_CRASH_AT" not in extra:
            env.pop("FONZIPD_CRASH_AT", None)
        with log_path.open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "fonzipd", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
            )

    def log_text(self) -> str:
        return "" if self.log_path is None else self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines of the current start."""
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by kill -9
        return out

    def find(self, event: str) -> dict[str, Any] | None:
        return next((e for e in self.events() if e.get("event") == event), None)

    async def exited(self, within: float) -> int:
        """Wait (without blocking the event loop) until the process ends; its return code."""
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, within)

    def logs_of(self, start: int) -> list[dict[str, Any]]:
        """The JSON log lines of an earlier start (1 is the first)."""
        path = self.workdir / f"daemon-{start}.log"
        out = []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as a crash or the OOM killer would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    async def terminate(self, within: float = 30.0) -> int:
        """SIGTERM, as systemd stops it; returns the exit code.

        Waits without blocking the event loop: the simulator the daemon is draining
        against may run in the test's loop.
        """
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, within)

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
