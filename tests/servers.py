"""Test support: the real PostgreSQL, MariaDB and NATS servers on loopback, test
certificates, and TLS fronts that put TLS before the database servers (which have none).

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


IMPOSTORS = [
    ("another CA", "unable to get local issuer certificate"),
    ("another name", "mismatch"),
]
"""Who answers in the server's place, and what the refusal of its certificate says."""


def impostor(folder: Path, who: str) -> tuple[Certificates, Path]:
    """The certificates an impostor (one of IMPOSTORS) shows, and the CA file the client
    trusts: another CA's, or the same CA's certificate made out to another host."""
    trusted = certificates(folder / "trusted")
    if who == "another CA":
        return certificates(folder / "impostor"), trusted.ca
    shown = certificates(folder / "impostor", "db.example.org")
    return shown, shown.ca


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


_CLIENT_SSL = 0x0800


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _read_packet(sock: socket.socket) -> tuple[int, bytes]:
    """One MySQL packet, and not a byte more (what follows may be a TLS handshake)."""
    header = _read_exactly(sock, 4)
    return header[3], _read_exactly(sock, int.from_bytes(header[:3], "little"))


def _packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload


def _with_caps(payload: bytes, at: int, *, add: int = 0, remove: int = 0) -> bytes:
    caps = (int.from_bytes(payload[at : at + 2], "little") | add) & ~remove
    return payload[:at] + caps.to_bytes(2, "little") + payload[at + 2 :]


def _mysql_front_connection(client: socket.socket, server: ssl.SSLContext, front: TLSFront) -> None:
    """Serve one client of :func:`mysql_tls_front`, in a thread of its own."""
    with contextlib.ExitStack() as stack:
        stack.callback(client.close)
        upstream = socket.create_connection(_address(MYSQL_DSN, 3306), timeout=30)
        stack.callback(upstream.close)
        seq, greeting = _read_packet(upstream)
        # Protocol 10 greeting: version, NUL, thread id (4), scramble (8), filler, caps.
        caps_at = greeting.index(0, 1) + 1 + 4 + 8 + 1
        client.sendall(_packet(seq, _with_caps(greeting, caps_at, add=_CLIENT_SSL)))
        seq, answer = _read_packet(client)
        peer: socket.socket = client
        if int.from_bytes(answer[:4], "little") & _CLIENT_SSL and len(answer) == 32:
            try:
                peer = server.wrap_socket(client, server_side=True)
            except (OSError, ssl.SSLError):
                front.refused += 1
                return
            stack.callback(peer.close)
            front.encrypted += 1
            # The client numbers its packets one on from the TLS request, which the server
            # never sees: one less towards the server, one more back, until logged in.
            seq, answer = _read_packet(peer)
            upstream.sendall(_packet(seq - 1, _with_caps(answer, 0, remove=_CLIENT_SSL)))
            while True:
                seq, reply = _read_packet(upstream)
                peer.sendall(_packet(seq + 1, reply))
                if reply[:1] in (b"\x00", b"\xff"):  # logged in, or refused
                    break
                seq, answer = _read_packet(peer)
                upstream.sendall(_packet(seq - 1, answer))
        else:
            front.cleartext += 1
            upstream.sendall(_packet(seq, answer))
        _relay(peer, upstream)


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        while True:
            for key, _ in selector.select(timeout=60):
                source = key.fileobj
                assert isinstance(source, socket.socket)
                while True:
                    try:
                        data = source.recv(65536)
                    except (OSError, ssl.SSLError):
                        return
                    if not data:
                        return
                    key.data.sendall(data)
                    # Bytes TLS already decrypted wait in the socket, not in the kernel.
                    if not (isinstance(source, ssl.SSLSocket) and source.pending()):
                        break


@contextlib.contextmanager
def mysql_tls_front(server: ssl.SSLContext) -> Iterator[TLSFront]:
    """A MySQL server with TLS, on loopback: it offers TLS in the test server's greeting,
    runs the handshake with ``server`` when the client asks, and passes the login and
    everything after on to the test server (MYSQL_DSN), which itself has no TLS."""
    import threading

    front = TLSFront()
    listening = socket.create_server(("127.0.0.1", 0))
    listening.settimeout(0.2)
    front.port = listening.getsockname()[1]
    stop = threading.Event()
    threads: list[threading.Thread] = []
    clients: list[socket.socket] = []

    def serve(client: socket.socket) -> None:
        # A client or server that hangs up mid-way ends its connection, not the test.
        with contextlib.suppress(OSError, ValueError, IndexError):
            _mysql_front_connection(client, server, front)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listening.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(30)
            clients.append(client)
            thread = threading.Thread(target=serve, args=(client,), daemon=True)
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield front
    finally:
        stop.set()
        acceptor.join(timeout=5)
        listening.close()
        for client in clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=35)


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
