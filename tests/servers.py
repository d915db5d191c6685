"""Test support: the real PostgreSQL, MariaDB and NATS servers on loopback.

CI (``FONZIPD_REQUIRE_SERVICES=1``, set by ``./dev.sh ci``) fails a test whose server or
driver is missing; elsewhere such a test is skipped with a one-line reason. Tests that
restart a server run only under ``FONZIPD_REQUIRE_SERVICES=1`` (a developer's own server
is not ours to restart), and always leave it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import secrets
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PG_DSN = os.environ.get("FONZIPD_TEST_POSTGRESQL_DSN", "postgresql://root@127.0.0.1:5432/test")
MYSQL_DSN = os.environ.get("FONZIPD_TEST_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")
NATS_URL = os.environ.get("FONZIPD_TEST_NATS_URL", "nats://127.0.0.1:4222")
NATS_SERVER = "/usr/sbin/nats-server"


def required() -> bool:
    return os.environ.get("FONZIPD_REQUIRE_SERVICES") == "1"


def _unavailable(reason: str) -> None:
    if required():
        pytest.fail(f"{reason} (FONZIPD_REQUIRE_SERVICES=1: the CI machine must provide it)")
    pytest.skip(reason)


def need(driver: str, extra: str, host: str, port: int, what: str) -> None:
    """Skip (or fail in CI) unless ``driver`` is installed and ``host:port`` answers."""
    if importlib.util.find_spec(driver) is None:
        _unavailable(f"{driver} not installed (pip install -e '.[{extra}]')")
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError as exc:
        _unavailable(f"no {what} at {host}:{port} ({exc.strerror or exc})")


def _address(url: str, default_port: int) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def mysql_args(database: str | None = None) -> dict[str, Any]:
    """asyncmy.connect() keywords for the test server (of MYSQL_DSN, no password)."""
    host, port = _address(MYSQL_DSN, 3306)
    parsed = urllib.parse.urlsplit(MYSQL_DSN)
    if database is None:
        database = parsed.path.strip("/") or None
    user = parsed.username or "root"
    return {"host": host, "port": port, "user": user, "password": "", "database": database}


def need_postgresql() -> None:
    need("asyncpg", "postgresql", *_address(PG_DSN, 5432), "PostgreSQL")


def need_mysql() -> None:
    need("asyncmy", "mysql", *_address(MYSQL_DSN, 3306), "MariaDB/MySQL")


def need_nats() -> None:
    need("nats", "nats", *_address(NATS_URL, 4222), "NATS")


def need_restartable() -> None:
    if not required():
        pytest.skip("restarts a shared server: only with FONZIPD_REQUIRE_SERVICES=1 (CI)")


def unique(prefix: str) -> str:
    """A name no other test (or helper) uses at the same time."""
    return f"{prefix}_{secrets.token_hex(4)}"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


async def wait_port(port: int, within: float = 60.0) -> None:
    async with asyncio.timeout(within):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


def _pg_cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def stop_postgresql() -> None:
    _run(*_pg_cluster(), "stop", "-m", "fast")


def start_postgresql() -> None:
    with contextlib.suppress(subprocess.CalledProcessError):  # already running
        _run(*_pg_cluster(), "start")


def stop_mariadb() -> None:
    _run("start-stop-daemon", "--stop", "--oknodo", "--retry", "30", "--exec", "/usr/sbin/mariadbd")


def start_mariadb() -> None:
    _run("start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd")


def stop_nats() -> None:
    _run("start-stop-daemon", "--stop", "--oknodo", "--retry", "30", "--exec", NATS_SERVER)


def start_nats() -> None:
    _run(
        "start-stop-daemon",
        "--start",
        "--oknodo",
        "--background",
        "--exec",
        NATS_SERVER,
        "--",
        "-a",
        "127.0.0.1",
        "-p",
        "4222",
        "-js",
        "-sd",
        "/var/lib/nats-server",
        "-l",
        "/var/log/nats-server.log",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_nats(
    tmp_path: Path,
    *,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
) -> Iterator[int]:
    """A NATS server of this test's own, with JetStream and a user/password or a token;
    its port."""
    if not Path(NATS_SERVER).exists():
        _unavailable(f"{NATS_SERVER} not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            NATS_SERVER,
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-js",
            "-sd",
            str(tmp_path / "nats"),
            *(["--user", user, "--pass", password or ""] if user is not None else []),
            *(["--auth", token] if token is not None else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
