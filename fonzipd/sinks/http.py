"""The HTTP forwarder: POSTs records as JSON, signed the Standard Webhooks way.

Each record is one POST of a Standard Webhooks payload (https://www.standardwebhooks.com),
:func:`envelope`::

    {"type": "donation.refunded", "timestamp": "2026-11-30T07:30:00.123456+00:00",
     "data": {...Record.to_json_dict()...}}

``type`` is ``<kind>.<status>`` so that receivers route without reading the record;
``timestamp`` is when fonzipd read that state from Fonzip (``fetched_at``): the same on
every retry, so that a re-sent body is byte for byte the same. With ``batch_mode``, one
POST per batch of ``{"type": "batch", "timestamp": <the latest>, "data": [<payloads>]}``.
The headers follow the same convention:

* ``webhook-id``: the record's key (batch mode: ``batch_`` + a hash of the keys), the
  same on every retry, so that the receiver can drop duplicates: delivery is at least
  once, the id makes it once in effect;
* ``webhook-timestamp``: Unix seconds of this attempt;
* ``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256 over ``id.timestamp.body``
  with the secret's bytes: the secret is ``whsec_`` + base64 of at least 16 random
  bytes, as the Standard Webhooks libraries expect (anything else is refused).

The URL must be ``https://`` (plain ``http://`` only to a loopback address); the
receiver's certificate is checked against the system's CAs, or those of
``tls_ca_file`` (an internal receiver's own CA), and its name against the URL's. Of the
receiver's answer at most 800 bytes are read (an excerpt for the error message, with
the secret and header values redacted); the rest is never read.

Answers: 2xx delivers. 408, 409, 429 (``Retry-After`` honoured), 5xx, network errors
and timeouts are transient. 409 is treated as transient, as the issue specifies, even
though some receivers answer it for a duplicate they already hold: such a receiver
should answer 2xx for a duplicate instead, or the record retries until dead. Any other
status (other 4xx, 3xx: redirects are not followed) is permanent. ``Retry-After`` is
read by :func:`fonzipd.retry_after.parse_retry_after`: a malformed one is ignored.

Erasure (``fonzipd forget``): one POST, signed like every delivery, with
``webhook-id`` = the erasure's stable id (the same person and records, the same id, so
a repeated command is dropped as a duplicate) and the body::

    {"type": "person.erased", "timestamp": "<ISO-8601 UTC>",
     "data": {"erasure_id": "erasure_...", "email": "<as asked>" | null,
              "fonzip_user_id": <as asked> | null,
              "records": [{"kind": "donation", "fonzip_id": 123}, ...]}}

The receiver removes the person's data from those records (and any copy it made);
a 2xx answer is taken as done.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import os
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import aiohttp
import pydantic
import structlog
from pydantic import Field, SecretStr

import fonzipd
from fonzipd import logs
from fonzipd.config import require_https
from fonzipd.retry_after import parse_retry_after
from fonzipd.sink import (
    Erasure,
    PermanentSinkError,
    Record,
    Sink,
    SinkConfigError,
    SinkContext,
    SinkOptions,
    TransientSinkError,
)
from fonzipd.sinks.tls import ClientTLSOptions

log = structlog.get_logger(__name__)

_TRANSIENT_STATUSES = frozenset({408, 409, 429})
_SIGNED_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature"})
_EXCERPT = 200
_RETRY_AFTER_CAP = 3600.0
"""Longest Retry-After taken from a receiver (the sink's retry_max caps it further)."""
_MIN_SECRET_BYTES = 16
_SECRET_HEADER = re.compile(r"auth|token|key|secret|cookie", re.IGNORECASE)


class HTTPOptions(ClientTLSOptions):
    """``[sinks.<id>] type = "http"``."""

    url: pydantic.AnyHttpUrl
    """Where to POST: ``https://``, or ``http://`` to a loopback address only."""
    secret: SecretStr
    """Standard Webhooks signing secret: ``whsec_`` + base64 of 16 or more random bytes
    (``echo "whsec_$(openssl rand -base64 32)"``). Prefer the environment."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers (``Authorization``...); a value ``env:NAME`` is read from $NAME at open."""
    batch_mode: bool = False
    """One POST per batch (``type`` ``batch``, ``data`` the records' payloads) instead of
    one POST per record."""
    timeout: float = Field(default=10, gt=0)
    """Seconds for one request, connection included."""
    concurrency: int = Field(default=1, ge=1, le=64)
    """Records of a batch in flight at once (single mode; versions of one record stay in order)."""

    @pydantic.field_validator("url")
    @classmethod
    def _https_unless_loopback(cls, value: pydantic.AnyHttpUrl) -> pydantic.AnyHttpUrl:
        require_https(value.scheme, value.host)
        return value

    @pydantic.model_validator(mode="after")
    def _tls_for_https(self) -> HTTPOptions:
        if self.tls_files() and self.url.scheme != "https":
            raise ValueError(f"{', '.join(self.tls_files())}: for an https:// url")
        return self

    @pydantic.field_validator("secret")
    @classmethod
    def _decodable(cls, value: SecretStr) -> SecretStr:
        secret_bytes(value)
        return value

    @pydantic.field_validator("headers")
    @classmethod
    def _not_signature_headers(cls, value: dict[str, str]) -> dict[str, str]:
        clash = sorted(k for k in value if k.lower() in _SIGNED_HEADERS)
        if clash:
            raise ValueError(f"{', '.join(clash)} is set by the signature; remove it")
        return value


def secret_bytes(secret: SecretStr) -> bytes:
    """The HMAC key: the base64 after ``whsec_``, decoded (ValueError if it is not that).

    The messages never quote the value.
    """
    raw = secret.get_secret_value().strip()
    how = 'make one with: echo "whsec_$(openssl rand -base64 32)"'
    if not raw.startswith("whsec_"):
        raise ValueError(f"must be a Standard Webhooks secret, 'whsec_' followed by base64 ({how})")
    try:
        key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the part after 'whsec_' is not valid base64 ({how})") from None
    if len(key) < _MIN_SECRET_BYTES:
        raise ValueError(
            f"decodes to {len(key)} bytes; use at least {_MIN_SECRET_BYTES} random bytes ({how})"
        )
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of one message."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def event_type(record: Record) -> str:
    """The payload's ``type``: ``<kind>.<status>`` (``donation.refunded``)."""
    return f"{record.kind}.{record.status}"


def envelope(record: Record) -> dict[str, Any]:
    """The Standard Webhooks payload of one record: ``type``, ``timestamp``, ``data``."""
    return {
        "type": event_type(record),
        "timestamp": record.fetched_at.isoformat(),
        "data": record.to_json_dict(),
    }


def batch_envelope(batch: Sequence[Record]) -> dict[str, Any]:
    """The payload of a batch (``batch_mode``): ``type`` ``batch``, ``data`` the payloads."""
    return {
        "type": "batch",
        "timestamp": max(r.fetched_at for r in batch).isoformat(),
        "data": [envelope(r) for r in batch],
    }


def batch_id(keys: Sequence[str]) -> str:
    """The stable ``webhook-id`` of a batch: the same keys in the same order, the same id."""
    return "batch_" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]


class HTTPSink(Sink):
    """Forwards records to an HTTP endpoint, signed, with a stable idempotency id."""

    name: ClassVar[str] = "http"
    Options: ClassVar[type[SinkOptions]] = HTTPOptions
    batch_size: ClassVar[int] = 1

    def __init__(self, options: SinkOptions, context: SinkContext) -> None:
        super().__init__(options, context)
        assert isinstance(options, HTTPOptions)
        self._opts = options
        self._key = secret_bytes(options.secret)
        raw_secret = options.secret.get_secret_value().strip()
        for value in (raw_secret, raw_secret.removeprefix("whsec_")):
            logs.never_log(value)
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}
        # The URL may hold credentials in its query: log only scheme, host and path.
        url = options.url
        self._log = log.bind(
            sink_id=context.sink_id, url=f"{url.scheme}://{url.host}:{url.port}{url.path or ''}"
        )

    def preferred_batch_size(self) -> int:
        if self._opts.batch_mode:
            return 100
        return self._opts.concurrency

    async def open(self) -> None:
        headers = {"User-Agent": f"fonzipd/{fonzipd.__version__}"}
        for name, value in self._opts.headers.items():
            if _SECRET_HEADER.search(name):
                logs.never_log(value)
            if value.startswith("env:"):
                var = value.removeprefix("env:")
                found = os.environ.get(var)
                if found is None:
                    raise SinkConfigError(
                        f"sinks.{self.context.sink_id}.headers.{name}: the environment "
                        f"variable {var} is not set (set it in the service's environment, "
                        "e.g. its EnvironmentFile, or put the value in the systemd credential "
                        f"sinks.{self.context.sink_id}.headers.{name})"
                    )
                value = found
            logs.never_log(value)  # an Authorization header is as secret as the key
            headers[name] = value
        self._headers = headers
        # True is aiohttp's own default: the system's CAs, no client certificate.
        tls = (
            self._opts.tls_context(f"sinks.{self.context.sink_id}")
            if self._opts.tls_files()
            else True
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls),
            timeout=aiohttp.ClientTimeout(total=self._opts.timeout),
        )
        self._log.info("sink_opened", batch_mode=self._opts.batch_mode)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            self._log.info("sink_closed")

    async def forget(self, erasure: Erasure) -> int:
        """POST the erasure event (see the module docstring); 1 once the receiver took it."""
        if self._session is None:
            raise RuntimeError(f"HTTP sink {self.context.sink_id!r} is not open")
        payload = {
            "type": "person.erased",
            "timestamp": self.context.clock.now().astimezone(dt.UTC).isoformat(),
            "data": {
                "erasure_id": erasure.id,
                "email": erasure.email,
                "fonzip_user_id": erasure.fonzip_user_id,
                "records": [{"kind": str(k), "fonzip_id": i} for k, i in erasure.records],
            },
        }
        await self._post(self._session, erasure.id, payload, failed_keys=None)
        self._log.info("person_forgotten", webhook_id=erasure.id, records=len(erasure.records))
        return 1

    async def write(self, batch: Sequence[Record]) -> None:
        if self._session is None:
            raise RuntimeError(f"HTTP sink {self.context.sink_id!r} is not open")
        if not batch:
            return
        if self._opts.batch_mode:
            keys = [r.key for r in batch]
            await self._post(self._session, batch_id(keys), batch_envelope(batch), failed_keys=None)
        else:
            await self._write_each(self._session, batch)
        self._log.debug("batch_written", records=len(batch))

    async def _write_each(self, session: aiohttp.ClientSession, batch: Sequence[Record]) -> None:
        # Versions of one record go one after the other, in order; distinct records
        # go up to `concurrency` at once.
        chains: dict[tuple[str, int], list[Record]] = {}
        for record in batch:
            chains.setdefault((str(record.kind), record.fonzip_id), []).append(record)
        slots = asyncio.Semaphore(self._opts.concurrency)
        transient: list[TransientSinkError] = []
        permanent: list[PermanentSinkError] = []

        async def send_chain(records: list[Record]) -> None:
            for record in records:
                async with slots:
                    if transient:
                        # The receiver is down or throttling: the whole batch is retried
                        # after the backoff, so the rest would only add to its load.
                        return
                    try:
                        await self._post(
                            session, record.key, envelope(record), failed_keys=[record.key]
                        )
                    except TransientSinkError as exc:
                        transient.append(exc)
                        return  # a later version must not overtake this one
                    except PermanentSinkError as exc:
                        permanent.append(exc)  # dead anyway: later versions may go

        async with asyncio.TaskGroup() as group:
            for records in chains.values():
                group.create_task(send_chain(records))
        if transient:
            # The whole batch is retried; the receiver drops what it has by webhook-id.
            waits = [e.retry_after for e in transient if e.retry_after is not None]
            raise TransientSinkError(
                f"batch of {len(batch)} record(s) to retry: {transient[0]}",
                retry_after=max(waits) if waits else None,
            )
        if permanent:
            failed = frozenset().union(*(e.failed_keys or () for e in permanent))
            raise PermanentSinkError(
                f"{len(failed)} of {len(batch)} record(s) rejected: {permanent[0]}",
                failed_keys=failed,
            )

    async def _post(
        self,
        session: aiohttp.ClientSession,
        msg_id: str,
        payload: dict[str, Any],
        *,
        failed_keys: list[str] | None,
    ) -> None:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = int(self.context.clock.now().timestamp())
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, msg_id, timestamp, body),
        }
        url = str(self._opts.url)
        try:
            async with session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    return
                # Bounded: one read of at most 800 bytes; the rest is never read (the
                # connection is closed instead of drained). Redacted before it is cut,
                # so that no part of a secret the receiver echoes survives.
                raw = await response.content.read(4 * _EXCERPT)
                excerpt = logs.redact(raw.decode("utf-8", errors="replace"))[:_EXCERPT]
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"),
                    self.context.clock.now(),
                    cap=_RETRY_AFTER_CAP,
                )
        except TimeoutError as exc:
            raise TransientSinkError(
                f"HTTP sink: no answer within {self._opts.timeout:g} s for {msg_id}"
            ) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TransientSinkError(
                f"HTTP sink: TLS: the receiver's certificate did not check out for {msg_id} "
                f"({exc.certificate_error}); trust the CA that signed it with tls_ca_file"
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransientSinkError(
                f"HTTP sink: {type(exc).__name__} for {msg_id}: {exc}"
            ) from exc
        message = f"HTTP sink: {status} for {msg_id}: {excerpt!r}"
        self._log.warning("delivery_refused", webhook_id=msg_id, status=status)
        if status in _TRANSIENT_STATUSES or status >= 500:
            raise TransientSinkError(message, retry_after=retry_after)
        raise PermanentSinkError(message, failed_keys=failed_keys)
