"""Test support: the real PostgreSQL, MariaDB and NATS servers on loopback.

CI (``FONZIPD_REQUIRE_SERVICES=1``, set by ``./dev.sh ci``) fails a test whose server or
driver is missing; elsewhere such a test is skipped with a one-line reason. Tests that
restart a server run only under ``FONZIPD_REQUIRE_SERVICES=1`` (a developer's own server
is not ours to restart), and always leave it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import secrets
import socket
import ssl
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Iterator
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


@dataclasses.dataclass(frozen=True)
class Certificates:
    """A CA's certificate (what a client trusts), a server's chain and key, and a client
    certificate's chain and key (mode 0600), all signed by that CA, in files."""

    ca: Path
    chain: Path
    key: Path
    client_chain: Path
    client_key: Path

    def server_context(self, *, client_ca: Path | None = None) -> ssl.SSLContext:
        """The server's context; with ``client_ca``, it requires a client certificate
        signed by that CA."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.chain, self.key)
        if client_ca is not None:
            context.load_verify_locations(cafile=client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def certificates(folder: Path, *names: str) -> Certificates:
    """A new CA, and a server certificate it signs for ``names`` (default: loopback)."""
    import trustme

    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    made = Certificates(
        *(folder / name for name in ("ca.pem", "server.pem", "server.key")),
        *(folder / name for name in ("client.pem", "client.key")),
    )
    ca.cert_pem.write_to_path(str(made.ca))
    for issued, chain, key in (
        (ca.issue_cert(*(names or ("127.0.0.1", "localhost"))), made.chain, made.key),
        (ca.issue_cert("fonzipd@example.org"), made.client_chain, made.client_key),
    ):
        key.touch(mode=0o600)
        issued.private_key_pem.write_to_path(str(key))
        chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return made


@dataclasses.dataclass
class TLSFront:
    """What a :func:`postgresql_tls_front` saw: its port and its connections."""

    port: int = 0
    encrypted: int = 0
    """Connections that completed the TLS handshake and were passed to the server."""
    refused: int = 0
    """Connections that asked for TLS and failed the handshake (nothing passed on)."""
    cleartext: int = 0
    """Connections that did not ask for TLS (passed on, as a server with TLS optional)."""


_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


class _Relay(asyncio.Protocol):
    """One side of a relayed connection: what it receives goes to ``peer``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Relay | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.send_on(data)

    def send_on(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending += data

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _FrontSide(_Relay):
    """The client's side of a :func:`postgresql_tls_front`."""

    def __init__(self, front: TLSFront, server: ssl.SSLContext, tasks: set[Any]) -> None:
        super().__init__()
        self.front, self.server, self.tasks = front, server, tasks
        self.started = False

    def data_received(self, data: bytes) -> None:
        if self.started:
            self.send_on(data)
            return
        self.pending += data
        if len(self.pending) < 8:
            return
        self.started = True
        first, self.pending = self.pending[:8], self.pending[8:]
        task = asyncio.ensure_future(self._start(first == _SSL_REQUEST, first))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _start(self, with_tls: bool, first: bytes) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        if with_tls:
            self.transport.write(b"S")
            try:
                upgraded = await loop.start_tls(self.transport, self, self.server, server_side=True)
            except (OSError, ssl.SSLError, ConnectionError):
                upgraded = None
            if upgraded is None:
                self.front.refused += 1
                self.transport.close()  # not abort: the TLS alert goes out first
                return
            self.transport = upgraded
            self.front.encrypted += 1
            first = b""
        else:
            self.front.cleartext += 1
        upstream = _Relay()
        await loop.create_connection(lambda: upstream, *_address(PG_DSN, 5432))
        upstream.peer, self.peer = self, upstream
        assert upstream.transport is not None
        upstream.transport.write(first + self.pending)
        self.pending = b""


@contextlib.asynccontextmanager
async def postgresql_tls_front(server: ssl.SSLContext) -> AsyncIterator[TLSFront]:
    """A PostgreSQL server with TLS, on loopback: it answers the client's TLS request,
    runs the handshake with ``server``, and only then passes the connection on to the test
    server (PG_DSN) in cleartext; the test server itself has no TLS."""
    front = TLSFront()
    tasks: set[Any] = set()
    sides: list[_FrontSide] = []

    def accept() -> _FrontSide:
        sides.append(_FrontSide(front, server, tasks))
        return sides[-1]

    listening = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
    front.port = listening.sockets[0].getsockname()[1]
    try:
        yield front
    finally:
        listening.close()
        for task in list(tasks):
            task.cancel()
        for side in sides:
            for relay in (side, side.peer):
                if relay is not None and relay.transport is not None:
                    relay.transport.abort()
        await listening.wait_closed()


@contextlib.contextmanager
def private_nats(
    tmp_path: Path,
    *,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    tls: Certificates | None = None,
    client_ca: Path | None = None,
) -> Iterator[int]:
    """A NATS server of this test's own, with JetStream and a user/password or a token,
    requiring TLS with ``tls``'s chain and key if given, and a client certificate signed
    by ``client_ca`` if given; its port."""
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
            *(
                ["--tls", "--tlscert", str(tls.chain), "--tlskey", str(tls.key)]
                if tls is not None
                else []
            ),
            *(["--tlsverify", "--tlscacert", str(client_ca)] if client_ca is not None else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
