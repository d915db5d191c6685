"""What the database-server sinks share: connection options, credentials and identifiers.

The PostgreSQL and MySQL sinks take the same keys: a ``dsn`` (or ``host``, ``port``,
``database``, ``user``), a ``table`` and timeouts. The password never sits in the
configuration file: it is read at ``open`` from the environment variable named by
``password_env`` or from the file named by ``password_file`` (a systemd credential,
say), and a ``dsn`` holding a password is refused.

Records hold donors' personal data, so they cross the network only inside TLS: to any
host but a loopback address or a Unix socket the connection is encrypted and the
server's certificate checked (``tls = "verify"``) unless ``tls = "off"`` says otherwise.
A server that does not start TLS, or shows a certificate that does not check out, gets
neither the login nor a record.
"""

from __future__ import annotations

import os
import ssl
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import pydantic
from pydantic import Field

from fonzipd.config import is_loopback
from fonzipd.sink import SinkConfigError
from fonzipd.sinks.tls import ClientTLSOptions

__all__ = [
    "DatabaseOptions",
    "Endpoint",
    "SecretSource",
    "check_identifier",
    "client_tls",
    "opened",
    "read_password",
    "tls_mode",
]


class DatabaseOptions(ClientTLSOptions):
    """The keys the ``postgresql`` and ``mysql`` sinks share."""

    dsn: str | None = None
    """``<scheme>://user@host:port/database``; no password in it. Or the four keys below."""
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    database: str | None = None
    user: str | None = None
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of the environment variable holding the password (read at ``open``)."""
    password_file: Path | None = None
    """Absolute path of a file holding the password (a systemd credential); mode 0600 or
    stricter."""
    table: str = "records"
    """The latest state of each record; ``record_history`` (or ``<table>_history``) keeps
    every version."""
    connect_timeout: float = Field(default=10, gt=0, le=300)
    """Seconds to connect and log in."""
    timeout: float = Field(default=60, gt=0, le=3600)
    """Seconds one batch may take, its transaction included, before it is retried."""
    tls: Literal["verify", "off"] | None = None
    """``verify``: encrypt the connection, check the server's certificate against the
    system's CAs (or ``tls_ca_file``) and its name against the host. ``off``: cleartext.
    Unset: ``off`` to a loopback address or a Unix socket, ``verify`` to any other host
    (or when a ``tls_*_file`` is set)."""

    @pydantic.field_validator("dsn")
    @classmethod
    def _no_password_in_dsn(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urllib.parse.urlsplit(value)
        if parsed.password is not None:
            raise ValueError(
                "holds a password: remove it and set password_env or password_file instead"
            )
        # A driver reads these from the query and could undo what ``tls`` asks for.
        tls_keys = sorted(
            k for k, _ in urllib.parse.parse_qsl(parsed.query) if k.lower().startswith("ssl")
        )
        if tls_keys:
            raise ValueError(
                f"holds {', '.join(tls_keys)}: remove it and set tls and tls_ca_file instead"
            )
        if not parsed.hostname and not parsed.path.strip("/"):
            raise ValueError("expected <scheme>://user@host:port/database")
        return value

    @pydantic.field_validator("password_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value

    @pydantic.model_validator(mode="after")
    def _one_way_to_connect(self) -> DatabaseOptions:
        if self.dsn is not None and any(
            v is not None for v in (self.host, self.port, self.database, self.user)
        ):
            raise ValueError("set either dsn or host/port/database/user, not both")
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("set password_env or password_file, not both")
        if self.tls == "off" and self.tls_files():
            raise ValueError(
                f'{", ".join(self.tls_files())}: for tls = "verify"; tls = "off" sends cleartext'
            )
        return self

    def history_table(self) -> str:
        """``record_history`` beside ``records``, else ``<table>_history``."""
        return "record_history" if self.table == "records" else f"{self.table}_history"


class SecretSource(Protocol):
    """Where a sink's password comes from: an environment variable or a file."""

    @property
    def password_env(self) -> str | None: ...
    @property
    def password_file(self) -> Path | None: ...


@dataclass(frozen=True)
class Endpoint:
    """Where to connect, from ``dsn`` or the separate keys; ``None`` means the default."""

    host: str | None
    port: int | None
    database: str | None
    user: str | None
    query: dict[str, str]

    @classmethod
    def of(cls, options: DatabaseOptions, schemes: tuple[str, ...]) -> Endpoint:
        if options.dsn is None:
            return cls(options.host, options.port, options.database, options.user, {})
        parsed = urllib.parse.urlsplit(options.dsn)
        if parsed.scheme not in schemes:
            raise SinkConfigError(
                f"dsn: the scheme must be {' or '.join(schemes)}, not {parsed.scheme!r}"
            )
        try:
            port = parsed.port
        except ValueError as exc:
            raise SinkConfigError(f"dsn: {exc}") from None
        return cls(
            host=parsed.hostname or None,
            port=port,
            database=urllib.parse.unquote(parsed.path.lstrip("/")) or None,
            user=urllib.parse.unquote(parsed.username) if parsed.username else None,
            query=dict(urllib.parse.parse_qsl(parsed.query)),
        )

    @property
    def is_local(self) -> bool:
        """True when the connection never leaves the machine: a loopback address, a Unix
        socket (a path), or no host at all (the driver's local default)."""
        host = self.host or self.query.get("host")
        return not host or host.startswith("/") or is_loopback(host)

    def describe(self, default_port: int) -> str:
        """``user@host:port/database``: what a log line or an error may name."""
        return (
            f"{self.user or '(default user)'}@{self.host or 'localhost'}:"
            f"{self.port or default_port}/{self.database or '(default database)'}"
        )


def tls_mode(options: DatabaseOptions, endpoint: Endpoint) -> Literal["verify", "off"]:
    """``tls`` as set, or as its default decides for this endpoint."""
    if options.tls is not None:
        return options.tls
    return "verify" if options.tls_files() or not endpoint.is_local else "off"


def opened(sink_log: Any, options: DatabaseOptions, endpoint: Endpoint) -> None:
    """Log ``sink_opened`` with the TLS mode, warning first when records go in cleartext
    across a network because ``tls = "off"`` says so."""
    mode = tls_mode(options, endpoint)
    if mode == "off" and not endpoint.is_local:
        sink_log.warning("tls_turned_off", reason='tls = "off" to a host that is not loopback')
    sink_log.info("sink_opened", tls=mode)


def client_tls(options: DatabaseOptions, endpoint: Endpoint, where: str) -> ssl.SSLContext | None:
    """The TLS context to connect with, or None for cleartext (see ``tls``).

    See :func:`fonzipd.sinks.tls.tls_context`.
    """
    if tls_mode(options, endpoint) == "off":
        return None
    return options.tls_context(where)


def read_password(
    options: DatabaseOptions | SecretSource, where: str, *, key: str = "password"
) -> str | None:
    """The password from ``password_env`` or ``password_file``; None when neither is set.

    Raises :class:`SinkConfigError` naming the variable or file (never the value) when it
    cannot be read, or when the file is readable by group or others.
    """
    if options.password_env is not None:
        value = os.environ.get(options.password_env)
        if value is None:
            raise SinkConfigError(
                f"{where}.{key}_env: the environment variable {options.password_env} is not set"
            )
        return value
    if options.password_file is not None:
        path = options.password_file
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise SinkConfigError(
                    f"{where}.{key}_file: {path} is readable by others "
                    f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
                )
            return path.read_text(encoding="utf-8").removesuffix("\n")
        except OSError as exc:
            raise SinkConfigError(
                f"{where}.{key}_file: cannot read {path}: {exc.strerror}"
            ) from None
    return None


def check_identifier(value: str, what: str, *, max_bytes: int) -> str:
    """``value`` if it can be a quoted SQL identifier of at most ``max_bytes`` bytes."""
    if not value or "\x00" in value or value != value.strip():
        raise ValueError(f"{what} {value!r}: empty, NUL or leading/trailing spaces")
    if len(value.encode()) > max_bytes:
        # Servers cut longer names silently; two tables could become one.
        raise ValueError(f"{what} {value!r}: longer than {max_bytes} bytes")
    return value
