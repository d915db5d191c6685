"""sd_notify against real unix datagram sockets, as systemd would bind them."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fonzipd.notify import Notifier


def _receive(sock: socket.socket) -> dict[str, str]:
    sock.settimeout(5)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield path, sock
    sock.close()


def test_ready_status_watchdog_stopping_reach_a_path_socket(
    path_socket: tuple[str, socket.socket],
) -> None:
    path, sock = path_socket
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("inbox 0, outbox 0")
    assert _receive(sock) == {"READY": "1", "STATUS": "inbox 0, outbox 0"}
    assert n.status("inbox 3\noutbox 1")
    assert _receive(sock) == {"STATUS": "inbox 3 outbox 1"}
    assert n.watchdog()
    assert _receive(sock) == {"WATCHDOG": "1"}
    assert n.reloading()
    msg = _receive(sock)
    assert msg["RELOADING"] == "1"
    assert int(msg["MONOTONIC_USEC"]) > 0
    assert n.stopping()
    assert _receive(sock) == {"STOPPING": "1"}
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"fonzipd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert _receive(sock) == {"READY": "1"}
        n.close()
    finally:
        sock.close()


def test_without_systemd_every_call_is_a_silent_no_op() -> None:
    n = Notifier.from_environ({})
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()
    assert not n.stopping()
    assert n.watchdog_interval is None


def test_a_vanished_socket_never_raises(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "gone.sock"))
    assert n.ready() is False
    assert n.watchdog() is False
    n.close()


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid_only() -> None:
    mine = Notifier.from_environ(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert mine.watchdog_interval == 15.0
    other = Notifier.from_environ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None
