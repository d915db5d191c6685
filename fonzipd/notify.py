"""The sd_notify protocol: telling systemd we are ready, how we are, alive, reloading, stopping.

systemd passes a unix datagram socket in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for
the abstract namespace) to a ``Type=notify`` service; each datagram is newline-separated
``KEY=value`` lines. Outside systemd the variable is unset and every call is a no-op.
Sending never raises: a daemon must not die because its supervisor went away.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of '@', no filesystem entry.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other forms are not used by systemd for services here


class Notifier:
    """Sends sd_notify messages to ``socket_path``; a no-op when it is None.

    ``watchdog_interval`` is how often WATCHDOG=1 must be sent (half of systemd's
    ``WatchdogSec``), or None when the watchdog is off.
    """

    def __init__(self, socket_path: str | None, *, watchdog_usec: int | None = None) -> None:
        self.socket_path = socket_path
        self._address = _address(socket_path) if socket_path else None
        if socket_path and self._address is None:
            log.warning("notify_socket_unsupported", socket=socket_path)
        self.watchdog_interval = watchdog_usec / 2_000_000 if watchdog_usec else None
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd set up for this process (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``).

        ``WATCHDOG_USEC`` counts only when ``WATCHDOG_PID`` is unset or names this process.
        """
        env = os.environ if environ is None else environ
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC", "").isdigit() and (pid is None or pid == str(os.getpid())):
            usec = int(env["WATCHDOG_USEC"]) or None
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        """True when running under a supervisor that listens."""
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one message of ``KEY=value`` lines; True when it was handed to the socket."""
        if self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                # Once: a missing supervisor is worth one line, not one per ping.
                log.warning("notify_failed", socket=self.socket_path, error=str(exc))
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: startup (or a reload) finished."""
        return self.send(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        """STATUS=: the one line ``systemctl status`` shows."""
        return self.send(STATUS=text.replace("\n", " "))

    def watchdog(self) -> bool:
        """WATCHDOG=1: the event loop is alive."""
        return self.send(WATCHDOG=1)

    def reloading(self) -> bool:
        """RELOADING=1, with the monotonic time systemd's ``notify-reload`` type asks for."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=usec)

    def stopping(self) -> bool:
        """STOPPING=1: shutdown began (the drain can take a while)."""
        return self.send(STOPPING=1)

    def close(self) -> None:
        """Close the socket (sending again reopens it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
