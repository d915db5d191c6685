"""The preflight: what a valid configuration still needs from this machine before it can run.

``fonzipd check`` prints these problems and ``fonzipd run`` refuses to start on them
(exit 78), so that a busy port, an unwritable state directory or an unset
environment variable is one line naming the key and the fix instead of a traceback,
a systemd restart loop, or a sink retried forever. Each check looks without
changing anything: nothing is created, no port is kept.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

from fonzipd.config import Settings

# Sink options naming a file or a folder the sink creates (resolved against the config).
_FILE_OPTIONS = ("path",)
_DIR_OPTIONS = ("directory",)


def problems(settings: Settings) -> list[str]:
    """Every reason this configuration cannot run here, one line each (empty: go)."""
    found = [*_env_problems(settings), *_path_problems(settings), *_tls_problems(settings)]
    if not daemon_running(settings.state.path):
        # The running daemon holds its own ports: they are not a problem for `check`,
        # and `run` stops at the state database's worker lock with its own message.
        found += _port_problems(settings)
    return found


def daemon_running(state_path: Path) -> bool:
    """True when a fonzipd daemon holds this state database's worker lock."""
    lock_path = state_path.with_name(state_path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases our shared lock
    return False


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _env_problems(settings: Settings) -> Iterator[str]:
    for sid, sink in settings.enabled_sinks.items():
        options = sink.options
        headers = options.get("headers")
        if isinstance(headers, dict):
            for name, value in headers.items():
                if isinstance(value, str) and value.startswith("env:"):
                    var = value.removeprefix("env:")
                    if var not in os.environ:
                        yield (
                            f'sinks.{sid}.headers.{name} = "env:{var}": the environment '
                            f"variable {var} is not set: export it, or put {var}=... in the "
                            "service's EnvironmentFile (/etc/fonzipd/fonzipd.env), or give the "
                            f"value itself in the systemd credential sinks.{sid}.headers.{name}"
                        )
        for key in ("password_env",):
            wanted = options.get(key)
            if isinstance(wanted, str) and wanted and wanted not in os.environ:
                var = wanted
                yield (
                    f"sinks.{sid}.{key} = {var!r}: the environment variable {var} is not set: "
                    f"export it or put it in the service's EnvironmentFile, or use "
                    f"sinks.{sid}.password_file (a systemd credential file works: "
                    f"/run/credentials/fonzipd.service/...)"
                )


def _path_problems(settings: Settings) -> Iterator[str]:
    state = settings.state.path
    yield from _unwritable("state.path", state, state_dir=None, is_dir=False)
    state_dir = state.parent
    for sid, sink in settings.enabled_sinks.items():
        for key, value in sink.options.items():
            if not isinstance(value, str):
                continue
            if key in _FILE_OPTIONS:
                yield from _unwritable(
                    f"sinks.{sid}.{key}", Path(value), state_dir=state_dir, is_dir=False
                )
            elif key in _DIR_OPTIONS:
                yield from _unwritable(
                    f"sinks.{sid}.{key}", Path(value), state_dir=state_dir, is_dir=True
                )


def _tls_problems(settings: Settings) -> Iterator[str]:
    """A sink's ``tls_*_file`` that cannot be loaded: missing, unreadable, not PEM, a key
    that others may read or that does not match its certificate."""
    from fonzipd.sink import SinkConfigError
    from fonzipd.sinks.tls import tls_context

    for sid, sink in settings.enabled_sinks.items():
        files = {
            key: Path(value)
            for key in ("tls_ca_file", "tls_cert_file", "tls_key_file")
            if isinstance(value := sink.options.get(key), str) and value
        }
        if not files:
            continue
        try:
            tls_context(
                f"sinks.{sid}",
                ca_file=files.get("tls_ca_file"),
                cert_file=files.get("tls_cert_file"),
                key_file=files.get("tls_key_file"),
            )
        except SinkConfigError as exc:
            yield str(exc)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _unwritable(key: str, path: Path, *, state_dir: Path | None, is_dir: bool) -> Iterator[str]:
    """Why this user cannot create or write ``path``, if it cannot.

    A sink's file or folder must have an existing parent (a typo in a path is
    otherwise a new tree of folders), except under the state directory, which
    fonzipd creates.
    """
    shown = f"{key} = {str(path)!r}"
    if path.exists():
        if is_dir and not path.is_dir():
            yield f"{shown}: exists and is not a directory: choose a folder"
            return
        if not is_dir and path.is_dir():
            yield f"{shown}: is a directory: name a file inside it"
            return
        wanted = os.W_OK | os.X_OK if is_dir else os.R_OK | os.W_OK
        if not os.access(path, wanted):
            yield (
                f"{shown}: not writable by {_user()}: run fonzipd as the user that owns it, "
                f"or chown -R that user {path}"
            )
            return
        if is_dir:
            return
    parent = path.parent
    if state_dir is not None and not parent.exists() and not _inside(path, state_dir):
        yield (
            f"{shown}: its parent folder {parent} does not exist: correct the path, or "
            f"create it (mkdir -p {parent}) and give it to the user fonzipd runs as"
        )
        return
    existing = parent
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        yield f"{shown}: {existing} is not a directory: correct the path"
    elif not os.access(existing, os.W_OK | os.X_OK):
        yield (
            f"{shown}: {user_cannot_write(existing)}: run fonzipd as the user that owns "
            f"{existing}, or give that folder to the user it runs as (chown)"
        )


def user_cannot_write(folder: Path) -> str:
    """``"alice (uid 1000) cannot write in /var/lib/fonzipd (owned by root)"``."""
    try:
        owner_uid = folder.stat().st_uid
        owner = pwd.getpwuid(owner_uid).pw_name
    except (OSError, KeyError):
        owner = "another user"
    return f"{_user()} cannot write in {folder} (owned by {owner})"


def _port_problems(settings: Settings) -> Iterator[str]:
    listeners: list[tuple[str, str, int]] = [
        ("listener.port", settings.listener.host, settings.listener.port)
    ]
    if settings.metrics.port is not None and settings.metrics.port != settings.listener.port:
        listeners.append(("metrics.port", settings.metrics.host, settings.metrics.port))
    for key, host, port in listeners:
        if port == 0:
            continue
        reason = bind_problem(host, port)
        if reason is not None:
            yield f"{key} = {port}: cannot listen on {host}:{port}: {reason}"


def bind_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now, or None when it could."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"the host does not resolve ({exc.strerror}): correct it"
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            # As aiohttp binds: SO_REUSEADDR, so a port in TIME_WAIT is not "in use".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        except OSError as exc:
            return _bind_reason(exc, port)
        finally:
            sock.close()
    return None


def _bind_reason(exc: OSError, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"the port is already in use by another program (ss -ltnp 'sport = :{port}' "
            "shows which): stop it, or choose another port"
        )
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges): choose a port above 1024"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "this machine has no such address: correct the host"
    return f"{exc.strerror}"


def root_on_service_state(settings: Settings, command: str) -> str | None:
    """Why root must not run ``command`` on this state directory, or None.

    Files root creates there (``state.db-wal``, the lock, a CSV ledger, a sink's file)
    would be root's, and the service, running as the directory's owner, could then not
    write them. The command is refused with the way to run it as that owner instead.
    """
    if os.geteuid() != 0:
        return None
    folder = settings.state.path.parent
    try:
        info = folder.stat()
    except OSError:
        return None
    if info.st_uid == 0:
        return None
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = f"uid {info.st_uid}"
    return (
        f"running as root on {folder}, which belongs to {owner}: the files this command "
        "creates there would be root's and the service could not write them. Run it as "
        f"that user: sudo -u '#{info.st_uid}' fonzipd {command} ... (or setpriv "
        f"--reuid={info.st_uid} --regid={info.st_gid} --clear-groups fonzipd {command} ...)"
    )


async def reach(url: str, *, tls: ssl.SSLContext | None = None, timeout: float = 10.0) -> None:
    """Connect to ``url``'s host (with its TLS handshake for https, with ``tls`` or the
    system's CAs) and hang up.

    For ``check --online``: a sink that opens without connecting (the HTTP forwarder)
    is reached this way, without a delivery. Raises OSError (or TimeoutError).
    """
    import asyncio
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    context = (tls or ssl.create_default_context()) if secure else None
    async with asyncio.timeout(timeout):
        _, writer = await asyncio.open_connection(parts.hostname, port, ssl=context)
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()  # a peer that hangs up first is no less reachable
