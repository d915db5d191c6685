"""The NATS sink: publishes each record to JetStream, deduplicated by its key (nats-py).

Each record is one message: the JSON of ``Record.to_json_dict()`` on a subject built
from a template (default ``fonzip.{kind}.{status}``), with the header ``Nats-Msg-Id``
set to the record's key. JetStream drops a message whose id it has seen within the
stream's duplicate window, so a batch sent again after a crash or a lost
acknowledgement is stored once. ``write`` returns only when JetStream has acknowledged
every message of the batch (stored it, or recognised it as a duplicate).

The messages of a batch are published back to back and their acknowledgements awaited
together; versions of one record go one after the other, each once the previous one
is acknowledged, so a consumer sees a refund after the payment it refunds.

The client reconnects by itself when the server restarts; a batch whose
acknowledgements do not all arrive within ``timeout`` raises
:class:`TransientSinkError` and is published again, whole, on the next attempt.

Records cross the network only inside TLS: a ``nats://`` URL (cleartext) is accepted
for a loopback address, and for another host only with ``tls = "off"``. A ``tls://``
server's certificate is checked (the system's CAs or ``tls_ca_file``); a server whose
greeting does not require TLS is refused before the login, and a connection that did
not start TLS is closed before anything is published on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import string
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
import structlog
from pydantic import Field

from fonzipd.config import is_loopback
from fonzipd.sink import (
    PermanentSinkError,
    Record,
    Sink,
    SinkConfigError,
    SinkContext,
    SinkOptions,
    TransientSinkError,
)
from fonzipd.sinks import require_driver
from fonzipd.sinks.database import read_password
from fonzipd.sinks.tls import ClientTLSOptions, tls_problem

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

log = structlog.get_logger(__name__)

FIELDS = ("kind", "status", "fonzip_id", "business_date", "source")
"""What a subject template may name: ``{kind}``, ``{status}``, ``{fonzip_id}``,
``{business_date}``, ``{source}``."""
_LITERAL_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class NATSOptions(ClientTLSOptions):
    """``[sinks.<id>] type = "nats"``."""

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1)
    """Server URLs (``nats://`` or ``tls://``), without credentials in them."""
    subject: str = "fonzip.{kind}.{status}"
    """Subject template: dot-separated tokens, each a literal or one field of FIELDS."""
    stream: str = Field(default="FONZIP", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """The JetStream stream that must capture the subjects (checked on every publish)."""
    create_stream: bool = False
    """Create the stream at start if it does not exist (file storage, the subjects of the
    template with each field as ``*``, ``duplicate_window``)."""
    duplicate_window: float = Field(default=86400, gt=0)
    """Seconds JetStream remembers message ids, when this sink creates the stream. A
    re-send after a longer outage is stored again: consumers should deduplicate on
    ``Nats-Msg-Id`` too."""
    user: str | None = None
    """User name; its password comes from ``password_env`` or ``password_file``."""
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Environment variable holding the password (or, without ``user``, the token)."""
    password_file: Path | None = None
    """Absolute path of a file (mode 0600) holding the password or token."""
    creds_file: Path | None = None
    """A ``.creds`` file (JWT and NKey seed) instead of a user and password."""
    connect_timeout: float = Field(default=10, gt=0, le=300)
    """Seconds to connect."""
    timeout: float = Field(default=30, gt=0, le=3600)
    """Seconds to wait for the acknowledgements of one batch before it is retried."""
    tls: Literal["verify", "off"] | None = None
    """``verify``: every server must be ``tls://``. ``off``: allows ``nats://`` (cleartext)
    to a host that is not loopback. Unset: ``nats://`` to loopback only."""
    tls_handshake_first: bool = False
    """Start TLS before the server says anything (the server's ``tls { handshake_first:
    true }``, NATS 2.10.4 and later). Without it the server's greeting comes in
    cleartext (fonzipd refuses a ``tls://`` server whose greeting does not require TLS,
    before logging in)."""

    @pydantic.field_validator("servers")
    @classmethod
    def _plain_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            parsed = urllib.parse.urlsplit(url)
            if parsed.scheme not in ("nats", "tls") or not parsed.hostname:
                raise ValueError(f"{url!r}: expected nats://host:port or tls://host:port")
            if parsed.username or parsed.password:
                raise ValueError(
                    "a server URL holds credentials: set user and password_env or "
                    "password_file instead"
                )
        return value

    @pydantic.field_validator("subject")
    @classmethod
    def _template(cls, value: str) -> str:
        subject_tokens(value)
        return value

    @pydantic.field_validator("password_file", "creds_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value

    @pydantic.model_validator(mode="after")
    def _one_secret(self) -> NATSOptions:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("set password_env or password_file, not both")
        if self.creds_file is not None and (self.user or self.password_env or self.password_file):
            raise ValueError("set creds_file, or user and a password, not both")
        for url in self.servers:
            parsed = urllib.parse.urlsplit(url)
            if parsed.scheme == "tls" and self.tls == "off":
                raise ValueError(f'{url!r} is tls:// but tls = "off"')
            if parsed.scheme == "nats" and self.tls == "verify":
                raise ValueError(f'{url!r}: tls = "verify" needs tls:// server URLs')
            if parsed.scheme == "nats" and self.tls is None and not is_loopback(parsed.hostname):
                raise ValueError(
                    f"{url!r}: nats:// carries records in cleartext; use tls://, or set "
                    'tls = "off" if the network to it is trusted'
                )
        if self.tls == "off" and (self.tls_files() or self.tls_handshake_first):
            raise ValueError("tls_*_file and tls_handshake_first are for tls:// servers")
        return self


def subject_tokens(template: str) -> list[str | None]:
    """Per dot-separated token of ``template``: the field it names, or None for a literal.

    Raises ValueError naming the first token that is neither.
    """
    tokens: list[str | None] = []
    for token in template.split("."):
        parsed = list(string.Formatter().parse(token))
        if len(parsed) == 1 and parsed[0][1] is None and _LITERAL_TOKEN.match(token):
            tokens.append(None)
            continue
        if len(parsed) == 1 and parsed[0][0] == "" and parsed[0][1] in FIELDS:
            if parsed[0][2] or parsed[0][3]:
                raise ValueError(f"subject token {token!r}: no format specs or conversions")
            tokens.append(parsed[0][1])
            continue
        raise ValueError(
            f"subject token {token!r}: each dot-separated token is letters, digits, '_' "
            f"and '-', or exactly one of {', '.join('{' + f + '}' for f in FIELDS)}"
        )
    return tokens


def _value(record: Record, field: str) -> str:
    raw: object = getattr(record, field)
    text = "none" if raw is None else str(raw)
    return _UNSAFE.sub("_", text) or "none"


class NATSSink(Sink):
    """Publishes records to a JetStream stream, once per key within the duplicate window."""

    name: ClassVar[str] = "nats"
    Options: ClassVar[type[SinkOptions]] = NATSOptions
    batch_size: ClassVar[int] = 500

    def __init__(self, options: SinkOptions, context: SinkContext) -> None:
        super().__init__(options, context)
        assert isinstance(options, NATSOptions)
        require_driver(self.name)
        self._opts = options
        self._where = f"sinks.{context.sink_id}"
        parts = options.subject.split(".")
        self._parts = list(zip(parts, subject_tokens(options.subject), strict=True))
        self._wildcard = ".".join("*" if f else p for p, f in self._parts)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._lost = asyncio.Event()
        self._closing = False
        """True while this sink closes a connection itself (not a disconnect to report)."""
        self._closed = False
        self._log = log.bind(
            sink_id=context.sink_id,
            servers=[urllib.parse.urlsplit(u).netloc for u in options.servers],
            stream=options.stream,
        )

    def subject(self, record: Record) -> str:
        """The subject ``record`` is published on."""
        return ".".join(p if f is None else _value(record, f) for p, f in self._parts)

    async def open(self) -> None:
        self._closed = False
        await self._connect(at_open=True)
        self._log.info("sink_opened", subjects=self._wildcard)

    async def close(self) -> None:
        self._closed = True
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            try:
                await self._close_client(nc, within=5)
            except Exception as exc:
                self._log.warning("sink_close_failed", error=f"{type(exc).__name__}: {exc}")
            self._log.info("sink_closed")

    async def write(self, batch: Sequence[Record]) -> None:
        if self._closed:
            raise RuntimeError(f"NATS sink {self.context.sink_id!r} is closed")
        if not batch:
            return
        import nats.errors
        import nats.js.errors

        failed: dict[str, str] = {}
        pending: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self._opts.timeout):
                if self._nc is None or self._nc.is_closed or self._js is None:
                    await self._connect(at_open=False)
                nc, js = self._nc, self._js
                assert nc is not None
                assert js is not None
                for wave in _waves(batch):
                    pending = []
                    for record in wave:
                        try:
                            body = json.dumps(
                                record.to_json_dict(), ensure_ascii=False, separators=(",", ":")
                            ).encode()
                        except UnicodeEncodeError as exc:  # a lone surrogate from a JSON escape
                            failed[record.key] = f"not valid UTF-8 text: {exc.reason}"
                            continue
                        if len(body) > nc.max_payload - 512:
                            failed[record.key] = (
                                f"{len(body)} bytes, over the server's max_payload {nc.max_payload}"
                            )
                            continue
                        # No wait_stall: a timed wait would yield to the loop after each
                        # message and its flusher would send them one write at a time.
                        pending.append(
                            await js.publish_async(
                                self.subject(record),
                                body,
                                stream=self._opts.stream,
                                headers={"Nats-Msg-Id": record.key},
                            )
                        )
                    acks: asyncio.Future[list[Any]] = asyncio.gather(*pending)
                    acks.add_done_callback(_retrieve)
                    lost: asyncio.Future[Any] = asyncio.ensure_future(self._lost.wait())
                    try:
                        await asyncio.wait([acks, lost], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        lost.cancel()
                    if not acks.done():
                        acks.cancel()
                        raise TransientSinkError(
                            f"NATS sink {self._where}: the connection was lost mid-batch"
                        )
                    for ack in acks.result():
                        if ack.stream != self._opts.stream:
                            raise TransientSinkError(
                                f"NATS sink {self._where}: stored in stream {ack.stream!r}, "
                                f"expected {self._opts.stream!r}"
                            )
                    pending = []
        except TransientSinkError:
            await self._drop(pending)
            raise
        except (TimeoutError, OSError, nats.errors.Error, nats.js.errors.Error) as exc:
            await self._drop(pending)
            reason = (
                f"not all of {len(batch)} acknowledgement(s) within {self._opts.timeout:g} s"
                if isinstance(exc, TimeoutError)
                else f"{type(exc).__name__}: {exc}"
            )
            raise TransientSinkError(f"NATS sink {self._where}: {reason}") from exc
        if failed:
            first = next(iter(failed.values()))
            self._log.warning("records_refused", refused=len(failed), error=first)
            raise PermanentSinkError(
                f"NATS refused {len(failed)} of {len(batch)} record(s): {first}",
                failed_keys=failed,
            )
        self._log.debug("batch_written", records=len(batch))

    async def _drop(self, pending: list[asyncio.Future[Any]]) -> None:
        """After a failed batch: cancel its waits and start the next one connected anew."""
        for future in pending:
            future.cancel()  # gives back their slots among JetStream's pending acks
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await self._close_client(nc, within=2)

    async def _close_client(self, nc: Client, *, within: float) -> None:
        if nc.is_closed:
            return
        self._closing = True
        try:
            async with asyncio.timeout(within):
                await nc.close()
        finally:
            self._closing = False

    async def _connect(self, *, at_open: bool) -> None:
        """Connect to the first server that answers, log in, and check the stream.

        The client does not reconnect by itself: a lost connection fails the batch in
        flight at once (no wait for the timeout), and the next ``write`` connects again.
        A refused login is :class:`SinkConfigError` at ``open`` (what ``fonzipd check
        --online`` reports) and transient afterwards.
        """
        import nats.errors

        secret = read_password(self._opts, self._where)
        kwargs: dict[str, Any] = {}
        if self._opts.creds_file is not None:
            kwargs["user_credentials"] = str(self._opts.creds_file)
        elif self._opts.user is not None:
            kwargs.update(user=self._opts.user, password=secret or "")
        elif secret is not None:
            kwargs["token"] = secret
        tls = None
        if any(urllib.parse.urlsplit(u).scheme == "tls" for u in self._opts.servers):
            tls = self._opts.tls_context(self._where)
        log_ = self._log
        lost = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            log_.warning("nats_error", error=f"{type(exc).__name__}: {exc}")

        async def on_disconnect() -> None:
            lost.set()
            if not self._closing:
                log_.warning("nats_disconnected")

        old, self._nc, self._js = self._nc, None, None
        if old is not None:
            with contextlib.suppress(Exception):
                await self._close_client(old, within=2)
        errors: list[str] = []
        tls_refused = 0
        for server in self._opts.servers:
            nc = _client_class()()
            with_tls = urllib.parse.urlsplit(server).scheme == "tls"
            extra: dict[str, Any] = {}
            if with_tls:
                extra.update(tls=tls, tls_handshake_first=self._opts.tls_handshake_first)
            try:
                async with asyncio.timeout(self._opts.connect_timeout + 1):
                    await nc.connect(
                        server,
                        name=f"fonzipd:{self.context.sink_id}",
                        connect_timeout=max(1, round(self._opts.connect_timeout)),
                        allow_reconnect=False,
                        error_cb=on_error,
                        disconnected_cb=on_disconnect,
                        **kwargs,
                        **extra,
                    )
                if with_tls and not _encrypted(nc):
                    raise _Cleartext("the server did not require TLS")
            except (TimeoutError, OSError, nats.errors.Error) as exc:
                with contextlib.suppress(Exception):
                    await self._close_client(nc, within=2)
                text = f"{type(exc).__name__}: {exc}".rstrip(": ")
                if _is_auth_error(exc):
                    message = f"{self._where}: NATS refused the login: {text}"
                    if at_open:
                        raise SinkConfigError(message) from None
                    raise TransientSinkError(message) from None
                refused = tls_problem(exc, tls) if with_tls else None
                if isinstance(exc, _Cleartext):
                    refused = (
                        f"TLS: the server did not start TLS ({exc}); nothing was published; "
                        "require TLS in the server (tls { ... }) or use nats:// with "
                        'tls = "off" if the network to it is trusted'
                    )
                tls_refused += refused is not None
                errors.append(f"{urllib.parse.urlsplit(server).netloc}: {refused or text}")
                continue
            break
        else:
            message = f"{self._where}: cannot connect to NATS: {'; '.join(errors)}"
            if at_open and tls_refused == len(self._opts.servers):
                raise SinkConfigError(message)
            raise TransientSinkError(message)
        try:
            async with asyncio.timeout(self._opts.timeout):
                js = nc.jetstream(timeout=self._opts.timeout)
                await self._ensure_stream(js)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._close_client(nc, within=2)
            raise
        self._nc, self._js, self._lost = nc, js, lost

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        import nats.errors
        import nats.js.errors
        from nats.js.api import StorageType, StreamConfig

        name = self._opts.stream
        try:
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                if not self._opts.create_stream:
                    raise SinkConfigError(
                        f"{self._where}: JetStream has no stream {name!r}: create it (subjects "
                        f"{self._wildcard!r}) or set create_stream = true"
                    ) from None
                info = await js.add_stream(
                    StreamConfig(
                        name=name,
                        subjects=[self._wildcard],
                        storage=StorageType.FILE,
                        duplicate_window=self._opts.duplicate_window,
                    )
                )
                self._log.info("stream_created", subjects=self._wildcard)
            probe = ".".join("x" if f else p for p, f in self._parts)
            owner = await js.find_stream_name_by_subject(probe)
        except nats.js.errors.NotFoundError:
            owner = None
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransientSinkError(
                f"{self._where}: JetStream: {type(exc).__name__}: {exc}"
            ) from exc
        if owner != name:
            raise SinkConfigError(
                f"{self._where}: stream {name!r} does not capture the subjects "
                f"{self._wildcard!r} (they go to {owner!r}): fix its subjects or `subject`"
            )
        window = info.config.duplicate_window
        self._log.info("stream_checked", duplicate_window_s=window)


class _Cleartext(OSError):
    """A ``tls://`` connection that the server let run without TLS."""


@functools.cache
def _client_class() -> type[Client]:
    """nats-py's client, refusing a ``tls://`` server whose greeting does not require TLS.

    nats-py would send the login in cleartext to such a server; the refusal comes before
    it. The greeting is read in a method nats-py keeps to itself (no public hook sees it
    before the login): should a new nats-py stop calling it, :func:`_encrypted` still
    refuses the connection before anything is published, and the test that plays such
    a server fails.
    """
    from nats.aio.client import Client

    class TLSRequiringClient(Client):
        async def _process_info(
            self, info: dict[str, Any], initial_connection: bool = False
        ) -> None:
            server = self._current_server
            if (
                initial_connection
                and server is not None
                and server.uri.scheme == "tls"
                and not self.options["tls_handshake_first"]
                and not info.get("tls_required")
            ):
                raise _Cleartext("the server did not require TLS")
            await super()._process_info(info, initial_connection)

    return TLSRequiringClient


def _encrypted(nc: Client) -> bool:
    """True when the client's connection runs inside TLS.

    nats-py starts TLS on a ``tls://`` URL only when the server's greeting asks for it,
    and has no public way to tell; this reads its transport, and answers False (the
    connection is refused) should a new nats-py move it.
    """
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    get_extra_info = getattr(writer, "get_extra_info", None)
    return get_extra_info is not None and get_extra_info("ssl_object") is not None


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failed wait as seen: a batch abandoned mid-way is reported once, not twice."""
    if not future.cancelled():
        future.exception()


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "authorization" in text or "authentication" in text


def _waves(batch: Sequence[Record]) -> list[list[Record]]:
    """The batch in rounds holding at most one version of each record, in order."""
    seen: dict[tuple[str, int], int] = {}
    waves: list[list[Record]] = []
    for record in batch:
        ident = (str(record.kind), record.fonzip_id)
        index = seen.get(ident, 0)
        seen[ident] = index + 1
        if index == len(waves):
            waves.append([])
        waves[index].append(record)
    return waves
