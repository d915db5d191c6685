"""The HTTP forwarder against a real receiver on 127.0.0.1 that checks every signature."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import ssl
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from aiohttp import web
from pydantic import SecretStr, ValidationError

from fonzipd import preflight
from fonzipd.kinds import Kind
from fonzipd.sink import PermanentSinkError, SinkConfigError, SinkContext, TransientSinkError
from fonzipd.sinks.http import HTTPOptions, HTTPSink, batch_id, sign
from fonzipd.sinks.tls import tls_context
from fonzipd.testing import ISTANBUL, check_sink, sample_records
from tests import servers
from tests.fonzip_objects import detail, donation, norm

SECRET = "whsec_" + base64.b64encode(b"a test secret of thirty-two byte").decode()
NOW = dt.datetime(2025, 3, 12, 9, 0, tzinfo=dt.UTC)


class FixedClock:
    def now(self) -> dt.datetime:
        return NOW

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("the sink must not sleep")


@dataclass
class Receiver:
    """A Standard Webhooks receiver: verifies signatures, keeps messages by webhook-id."""

    url: str = ""
    answers: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    hang: bool = False
    messages: dict[str, Any] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    bad_signatures: int = 0
    requests: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        msg_id = request.headers["webhook-id"]
        ts = request.headers["webhook-timestamp"]
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        expected = base64.b64encode(
            hmac.new(key, msg_id.encode() + b"." + ts.encode() + b"." + body, "sha256").digest()
        ).decode()
        given = request.headers["webhook-signature"].split(" ")
        if f"v1,{expected}" not in given:
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        self.headers.append(dict(request.headers))
        self.bodies.append(body)
        if self.hang:
            await self.released.wait()
        if self.answers:
            status, headers, text = self.answers.pop(0)
            return web.Response(status=status, headers=headers, text=text)
        self.messages.setdefault(msg_id, json.loads(body))
        return web.Response(status=204)

    async def keys(self) -> list[str]:
        return list(self.messages)


@contextlib.asynccontextmanager
async def serving(tls: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    """A :class:`Receiver` on 127.0.0.1: plain HTTP, or HTTPS with ``tls``."""
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/hook"
    try:
        yield rec
    finally:
        rec.released.set()
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serving() as rec:
        yield rec


def _sink(tmp_path: Path, receiver: Receiver, **options: Any) -> HTTPSink:
    opts = HTTPOptions(url=receiver.url, secret=SecretStr(SECRET), **options)
    context = SinkContext("forward", tmp_path, ISTANBUL, clock=FixedClock())
    return HTTPSink(opts, context)


async def test_passes_the_conformance_suite(tmp_path: Path, receiver: Receiver) -> None:
    await check_sink(lambda: _sink(tmp_path, receiver, concurrency=4), receiver.keys)
    assert receiver.bad_signatures == 0


async def test_batch_mode_passes_the_conformance_suite(tmp_path: Path, receiver: Receiver) -> None:
    async def keys() -> list[str]:
        return list(
            dict.fromkeys(
                payload["data"]["key"]
                for m in receiver.messages.values()
                if m.get("type") == "batch"
                for payload in m["data"]
            )
        )

    await check_sink(lambda: _sink(tmp_path, receiver, batch_mode=True), keys)
    assert receiver.bad_signatures == 0


async def test_posts_the_record_json_signed_with_its_key(
    tmp_path: Path, receiver: Receiver
) -> None:
    recs = sample_records(3)
    sink = _sink(tmp_path, receiver, headers={"Authorization": "Bearer abc"})
    with structlog.testing.capture_logs() as logs:
        await sink.open()
        await sink.write(recs)
        receiver.answers.append((400, {}, "no"))
        with pytest.raises(PermanentSinkError):
            await sink.write(sample_records(5)[3:4])
        await sink.close()
    assert logs
    assert "Bearer abc" not in repr(logs)
    assert SECRET.removeprefix("whsec_") not in repr(logs)
    # Standard Webhooks payloads: receivers route on type without reading the record.
    assert receiver.messages == {
        r.key: {
            "type": f"{r.kind}.{r.status}",
            "timestamp": r.fetched_at.isoformat(),
            "data": r.to_json_dict(),
        }
        for r in recs
    }
    assert all(h["webhook-timestamp"] == str(int(NOW.timestamp())) for h in receiver.headers)
    assert all(h["Authorization"] == "Bearer abc" for h in receiver.headers)


async def test_header_values_can_come_from_the_environment(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FONZIPD_TEST_TOKEN", "Bearer from-env")
    sink = _sink(tmp_path, receiver, headers={"Authorization": "env:FONZIPD_TEST_TOKEN"})
    await sink.open()
    await sink.write(sample_records(2)[:1])
    await sink.close()
    assert receiver.headers[0]["Authorization"] == "Bearer from-env"

    monkeypatch.delenv("FONZIPD_TEST_TOKEN")
    with pytest.raises(SinkConfigError, match=r"headers\.Authorization.*FONZIPD_TEST_TOKEN"):
        await _sink(tmp_path, receiver, headers={"Authorization": "env:FONZIPD_TEST_TOKEN"}).open()


async def test_batch_mode_sends_one_post_with_a_stable_id(
    tmp_path: Path, receiver: Receiver
) -> None:
    recs = sample_records(5)
    sink = _sink(tmp_path, receiver, batch_mode=True)
    assert sink.preferred_batch_size() == 100
    await sink.open()
    await sink.write(recs)
    await sink.write(recs)
    await sink.close()
    assert receiver.requests == 2
    assert list(receiver.messages) == [batch_id([r.key for r in recs])]
    body = receiver.messages[batch_id([r.key for r in recs])]
    assert body["type"] == "batch"
    assert body["timestamp"] == max(r.fetched_at for r in recs).isoformat()
    assert [p["data"] for p in body["data"]] == [r.to_json_dict() for r in recs]
    assert [p["type"] for p in body["data"]] == [f"{r.kind}.{r.status}" for r in recs]


@pytest.mark.parametrize("status", [500, 503, 408, 409])
async def test_server_errors_are_transient_and_recover(
    tmp_path: Path, receiver: Receiver, status: int
) -> None:
    recs = sample_records(2)[:1]
    sink = _sink(tmp_path, receiver)
    await sink.open()
    receiver.answers.append((status, {}, "try later"))
    with pytest.raises(TransientSinkError, match=str(status)):
        await sink.write(recs)
    await sink.write(recs)
    await sink.close()
    assert list(receiver.messages) == [recs[0].key]


async def test_429_is_transient_with_retry_after(tmp_path: Path, receiver: Receiver) -> None:
    sink = _sink(tmp_path, receiver)
    await sink.open()
    receiver.answers.append((429, {"Retry-After": "17"}, "slow down"))
    with pytest.raises(TransientSinkError) as caught:
        await sink.write(sample_records(2)[:1])
    await sink.close()
    assert caught.value.retry_after == 17.0


async def test_400_is_permanent_with_a_short_excerpt(tmp_path: Path, receiver: Receiver) -> None:
    recs = sample_records(4)[:2]
    sink = _sink(tmp_path, receiver)
    await sink.open()
    receiver.answers.append((400, {}, "invalid amount " + "x" * 1000))
    with pytest.raises(PermanentSinkError, match="400") as caught:
        await sink.write(recs)
    await sink.close()
    assert caught.value.failed_keys == frozenset({recs[0].key})
    assert "invalid amount" in str(caught.value)
    assert str(caught.value).count("x") <= 200
    assert list(receiver.messages) == [recs[1].key]  # the other one was delivered


async def test_a_timeout_is_transient(tmp_path: Path, receiver: Receiver) -> None:
    sink = _sink(tmp_path, receiver, timeout=0.2)
    await sink.open()
    receiver.hang = True
    with pytest.raises(TransientSinkError, match=r"no answer within 0\.2 s"):
        await sink.write(sample_records(2)[:1])
    receiver.hang = False
    receiver.released.set()
    await sink.write(sample_records(2)[:1])
    await sink.close()
    assert len(receiver.messages) == 1


async def test_a_refused_connection_is_transient(tmp_path: Path, receiver: Receiver) -> None:
    receiver.url = "http://127.0.0.1:9/hook"  # discard port: nothing listens
    sink = _sink(tmp_path, receiver)
    await sink.open()
    with pytest.raises(TransientSinkError):
        await sink.write(sample_records(2)[:1])
    await sink.close()


async def test_a_transient_failure_stops_later_versions_of_that_record(
    tmp_path: Path, receiver: Receiver
) -> None:
    recs = sample_records(2)  # a payment and its refund
    sink = _sink(tmp_path, receiver, concurrency=4)
    await sink.open()
    receiver.answers.append((503, {}, ""))
    with pytest.raises(TransientSinkError):
        await sink.write(recs)
    assert receiver.messages == {}
    await sink.write(recs)
    await sink.close()
    assert list(receiver.messages) == [r.key for r in recs]


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("whsec_!!!", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "at least 16"),
        (base64.b64encode(b"a test secret of thirty-two byte").decode(), "'whsec_' followed"),
        ("a-plain-password-of-some-length", "'whsec_' followed"),
        ("", "'whsec_' followed"),
    ],
)
def test_options_refuse_a_secret_that_is_not_whsec_base64(secret: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why) as info:
        HTTPOptions(url="http://127.0.0.1/x", secret=SecretStr(secret))
    assert "secret" in str(info.value)  # the key is named...
    if secret:
        assert secret not in str(info.value)  # ...its value is not


def test_options_refuse_signature_headers_and_plain_http_off_the_machine() -> None:
    with pytest.raises(ValidationError, match="webhook-id"):
        HTTPOptions(url="http://127.0.0.1/x", secret=SecretStr(SECRET), headers={"webhook-id": "x"})
    for url in ("http://crm.example.org/hook", "http://192.168.1.5/hook", "http://[::2]/x"):
        with pytest.raises(ValidationError, match=r"url\n.*must start with https://"):
            HTTPOptions(url=url, secret=SecretStr(SECRET))
    for url in ("https://crm.example.org/hook", "http://localhost:9/x", "http://[::1]:9/x"):
        HTTPOptions(url=url, secret=SecretStr(SECRET))


def test_a_ca_file_is_for_https_and_absolute() -> None:
    with pytest.raises(ValidationError, match="tls_ca_file: for an https:// url"):
        HTTPOptions(url="http://127.0.0.1/x", secret=SecretStr(SECRET), tls_ca_file="/ca.pem")
    with pytest.raises(ValidationError, match="must be an absolute path"):
        HTTPOptions(url="https://crm.lan/x", secret=SecretStr(SECRET), tls_ca_file="ca.pem")


async def test_delivers_to_an_https_receiver_whose_ca_it_is_told_to_trust(
    tmp_path: Path,
) -> None:
    certs = servers.certificates(tmp_path / "tls")
    async with serving(certs.server_context()) as rec:
        sink = _sink(tmp_path, rec, tls_ca_file=certs.ca)
        await sink.open()
        await sink.write(sample_records(2))
        await sink.close()
        await preflight.reach(rec.url, tls=tls_context("t", ca_file=certs.ca))  # check --online
    assert rec.bad_signatures == 0
    assert await rec.keys() == [r.key for r in sample_records(2)]


async def test_a_receiver_that_wants_a_client_certificate_gets_the_configured_one(
    tmp_path: Path,
) -> None:
    certs = servers.certificates(tmp_path / "tls")
    async with serving(certs.server_context(client_ca=certs.ca)) as rec:
        anonymous = _sink(tmp_path, rec, tls_ca_file=certs.ca)
        await anonymous.open()
        with pytest.raises(TransientSinkError):
            await anonymous.write(sample_records(1))
        await anonymous.close()
        sink = _sink(
            tmp_path,
            rec,
            tls_ca_file=certs.ca,
            tls_cert_file=certs.client_chain,
            tls_key_file=certs.client_key,
        )
        await sink.open()
        await sink.write(sample_records(2))
        await sink.close()
    assert await rec.keys() == [r.key for r in sample_records(2)]


@pytest.mark.parametrize("trust", ["the system's CAs", "another CA"])
async def test_an_https_receiver_whose_certificate_does_not_check_out_gets_nothing(
    tmp_path: Path, trust: str
) -> None:
    """Someone answering for the receiver with a certificate of their own: the records,
    their personal data and the signature never leave fonzipd."""
    shown = servers.certificates(tmp_path / "impostor")
    trusted = None if trust == "the system's CAs" else servers.certificates(tmp_path / "ours").ca
    async with serving(shown.server_context()) as rec:
        sink = _sink(tmp_path, rec, tls_ca_file=trusted)
        await sink.open()
        with pytest.raises(TransientSinkError) as caught:
            await sink.write(sample_records(1))
        await sink.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await preflight.reach(rec.url, tls=tls_context("t", ca_file=trusted))
    assert "TLS: the receiver's certificate did not check out" in str(caught.value)
    assert "tls_ca_file" in str(caught.value)
    assert rec.requests == 0


def test_signature_is_hmac_sha256_of_id_timestamp_body() -> None:
    body = b'{"a":1}'
    expected = base64.b64encode(
        hmac.new(b"raw-secret", b"id1.5." + body, hashlib.sha256).digest()
    ).decode()
    assert sign(b"raw-secret", "id1", 5, body) == "v1," + expected


@pytest.mark.parametrize(
    "value", ["²", "١٢٠", "-5", "nan", "inf", "1e999", "9" * 400, "Wed, 99 Foo 99999 GMT", "\x00"]
)
async def test_a_malformed_retry_after_never_breaks_the_batch(
    tmp_path: Path, receiver: Receiver, value: str
) -> None:
    sink = _sink(tmp_path, receiver)
    await sink.open()
    receiver.answers.append((429, {"Retry-After": value}, "slow down"))
    with pytest.raises(TransientSinkError) as info:
        await sink.write(sample_records(1))
    await sink.close()
    assert info.value.retry_after is None or 0 <= info.value.retry_after <= 3600


async def test_the_receiver_echoing_the_secret_never_reaches_a_message(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FONZIPD_TEST_BEARER", "Bearer crm-api-key-0123456789")
    sink = _sink(tmp_path, receiver, headers={"Authorization": "env:FONZIPD_TEST_BEARER"})
    await sink.open()
    echo = f"{'x' * 190}{SECRET} Bearer crm-api-key-0123456789"
    receiver.answers.append((400, {}, echo))
    with pytest.raises(PermanentSinkError) as info:
        await sink.write(sample_records(1))
    await sink.close()
    for secret in (SECRET.removeprefix("whsec_")[:12], "crm-api-key"):
        assert secret not in str(info.value)


@pytest.mark.parametrize("status", [200, 503])
async def test_a_150_mb_answer_is_not_read(tmp_path: Path, status: int) -> None:
    sent = 0
    total = 150 * 1024 * 1024

    async def huge(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        await request.read()
        resp = web.StreamResponse(status=status)
        resp.content_length = total
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            while sent < total:  # bounded: stops by itself at 150 MB
                await resp.write(b"x" * 65536)
                sent += 65536
        return resp

    app = web.Application()
    app.router.add_post("/hook", huge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    sink = HTTPSink(
        HTTPOptions(url=url, secret=SecretStr(SECRET)),
        SinkContext("forward", tmp_path, ISTANBUL, clock=FixedClock()),
    )
    tracemalloc.start()
    try:
        await sink.open()
        if status == 200:
            await sink.write(sample_records(1))
        else:
            with pytest.raises(TransientSinkError, match="503"):
                await sink.write(sample_records(1))
        await sink.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        await runner.cleanup()
    assert peak < 4 * 1024 * 1024
    assert sent < 32 * 1024 * 1024  # the connection was dropped, not drained


async def test_forget_posts_a_signed_erasure_event_with_a_stable_id(
    tmp_path: Path, receiver: Receiver
) -> None:
    from fonzipd.kinds import Kind
    from fonzipd.privacy import Erasure

    erasure = Erasure(
        ((Kind.DONATION, 7), (Kind.TICKET_SALE, 3)), email="ayse@example.org", requested_at=NOW
    )
    sink = _sink(tmp_path, receiver)
    await sink.open()
    assert await sink.forget(erasure) == 1
    # Run again (after a crash, say): the same webhook-id, so the receiver drops it.
    assert await sink.forget(erasure) == 1
    await sink.close()
    assert receiver.bad_signatures == 0
    assert [h["webhook-id"] for h in receiver.headers] == [erasure.id, erasure.id]
    assert receiver.messages == {
        erasure.id: {
            "type": "person.erased",
            "timestamp": NOW.isoformat(),
            "data": {
                "erasure_id": erasure.id,
                "email": "ayse@example.org",
                "fonzip_user_id": None,
                "records": [
                    {"kind": "donation", "fonzip_id": 7},
                    {"kind": "ticket_sale", "fonzip_id": 3},
                ],
            },
        }
    }


async def test_forget_refused_by_the_receiver_is_an_error(
    tmp_path: Path, receiver: Receiver
) -> None:
    from fonzipd.kinds import Kind
    from fonzipd.privacy import Erasure

    sink = _sink(tmp_path, receiver)
    await sink.open()
    receiver.answers.append((503, {}, "down"))
    with pytest.raises(TransientSinkError):
        await sink.forget(Erasure(((Kind.DONATION, 7),), fonzip_user_id=12))
    await sink.close()


async def test_a_refund_is_typed_donation_refunded_and_a_retry_sends_the_same_bytes(
    tmp_path: Path, receiver: Receiver
) -> None:
    paid = norm(detail(Kind.DONATION, donation(3)))
    refunded = norm(
        detail(Kind.DONATION, donation(4)), fetched_at=paid.fetched_at + dt.timedelta(1)
    )
    sink = _sink(tmp_path, receiver)
    await sink.open()
    receiver.answers.append((503, {}, "busy"))
    with pytest.raises(TransientSinkError):
        await sink.write([paid])
    await sink.write([paid, refunded])
    await sink.close()
    assert [receiver.messages[r.key]["type"] for r in (paid, refunded)] == [
        "donation.succeeded",
        "donation.refunded",
    ]
    assert receiver.messages[refunded.key]["data"]["status"] == "refunded"
    assert receiver.bodies[0] == receiver.bodies[1]  # the refused one, then its retry
