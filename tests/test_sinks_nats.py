"""The NATS sink against the real JetStream server: conformance (dedup by Nats-Msg-Id),
subjects, the stream check, refused records, credentials, a server restarted mid-batch."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

from fonzipd import cli
from fonzipd.simulator import Simulator
from fonzipd.sink import PermanentSinkError, SinkConfigError, TransientSinkError
from fonzipd.testing import check_sink, context_for_tests, sample_records
from tests import servers

pytestmark = pytest.mark.usefixtures("_nats")


@pytest.fixture
def _nats() -> None:
    servers.need_nats()


@pytest.fixture
async def stream() -> AsyncIterator[tuple[str, str]]:
    """A stream name and subject prefix no one else uses; deleted afterwards."""
    import nats

    name = servers.unique("FZTEST").upper()
    yield name, name.lower()
    nc = await nats.connect(servers.NATS_URL)
    try:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


def _sink(tmp_path: Path, stream: tuple[str, str], **options: Any) -> Any:
    from fonzipd.sinks.nats import NATSOptions, NATSSink

    opts = {
        "servers": [servers.NATS_URL],
        "stream": stream[0],
        "subject": stream[1] + ".{kind}.{status}",
        "create_stream": True,
        **options,
    }
    return NATSSink(NATSOptions.model_validate(opts), context_for_tests(tmp_path))


async def messages(
    name: str, url: str = servers.NATS_URL, tls: ssl.SSLContext | None = None
) -> list[tuple[str, str, str]]:
    """Every message of the stream, in order: (subject, Nats-Msg-Id, the record's key)."""
    import nats
    import nats.js.errors

    nc = await nats.connect(url, **({"tls": tls} if tls is not None else {}))
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return []
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            msg = await js.get_msg(name, seq)
            body = json.loads(msg.data or b"{}")
            out.append((str(msg.subject), (msg.headers or {}).get("Nats-Msg-Id", ""), body["key"]))
        return out
    finally:
        await nc.close()


def _keys(name: str) -> Callable[[], Any]:
    async def read_back() -> list[str]:
        return [key for _, _, key in await messages(name)]

    return read_back


async def test_passes_the_conformance_suite(tmp_path: Path, stream: tuple[str, str]) -> None:
    await check_sink(lambda: _sink(tmp_path, stream), _keys(stream[0]))


async def test_subjects_ids_and_bodies(tmp_path: Path, stream: tuple[str, str]) -> None:
    recs = sample_records(6)
    sink = _sink(tmp_path, stream)
    with structlog.testing.capture_logs() as logged:
        await sink.open()
        await sink.write(recs)
        await sink.close()
    # Closing its own connection is not a disconnect worth a warning.
    assert [e["event"] for e in logged if e["log_level"] == "warning"] == []
    got = await messages(stream[0])
    assert [(s, i) for s, i, _ in got] == [
        (f"{stream[1]}.{r.kind}.{r.status}", r.key) for r in recs
    ]
    assert [k for _, _, k in got] == [r.key for r in recs]


def test_subject_templates_are_checked() -> None:
    from fonzipd.sinks.nats import NATSOptions

    NATSOptions(subject="org.{kind}.{business_date}.{fonzip_id}")
    for bad in ("fonzip.{kind}-x", "fonzip.{amount}", "fonzip..{kind}", "a b.{kind}", "f.>"):
        with pytest.raises(ValueError, match="subject token"):
            NATSOptions(subject=bad)
    with pytest.raises(ValueError, match="holds credentials"):
        NATSOptions(servers=["nats://u:secret@127.0.0.1:4222"])


async def test_a_missing_stream_is_a_clear_error_unless_created(
    tmp_path: Path, stream: tuple[str, str]
) -> None:
    sink = _sink(tmp_path, stream, create_stream=False)
    with pytest.raises(SinkConfigError, match=r"no stream .* or set create_stream = true"):
        await sink.open()
    creator = _sink(tmp_path, stream)
    await creator.open()  # creates it
    await creator.close()
    other = _sink(tmp_path, stream, create_stream=False, subject="elsewhere.{kind}")
    with pytest.raises(SinkConfigError, match=r"does not capture the subjects 'elsewhere\.\*'"):
        await other.open()


async def test_a_record_over_max_payload_or_not_utf8_is_a_dead_letter_alone(
    tmp_path: Path, stream: tuple[str, str]
) -> None:
    recs = sample_records(4)
    huge = dataclasses.replace(recs[1], data={"blob": "x" * 2_000_000})
    surrogate = dataclasses.replace(recs[2], data={"name": "Ay\ud800e"})  # a hostile API's
    sink = _sink(tmp_path, stream)
    await sink.open()
    with pytest.raises(PermanentSinkError, match="max_payload") as caught:
        await sink.write([recs[0], huge, surrogate, *recs[3:]])
    await sink.close()
    assert caught.value.failed_keys == frozenset({huge.key, surrogate.key})
    assert await _keys(stream[0])() == [recs[0].key, *(r.key for r in recs[3:])]


async def test_bad_credentials_fail_check_online_at_once(tmp_path: Path) -> None:
    with servers.private_nats(tmp_path, user="fonzipd", password="right-password") as port:
        await servers.wait_port(port, within=20)
        async with Simulator(seed=3, days=1, per_day=2, rate_per_minute=6000) as sim:
            config = tmp_path / "config.toml"
            config.write_text(
                f"""
[fonzip]
base_url = "{await sim.start()}"
client_id = "sim-client"
client_secret = "sim-secret"
[listener]
auth_token = "check-online-token-1234"
[state]
path = "state.db"
[sinks.bus]
type = "nats"
servers = ["nats://127.0.0.1:{port}"]
user = "fonzipd"
password_env = "FZ_NATS_PASSWORD"
create_stream = true
""",
                encoding="utf-8",
            )
            code, err = await asyncio.to_thread(_cli, config, "wrong-password")
            assert code == cli.EXIT_FAILED
            assert "sink bus (nats): sinks.bus: NATS refused the login" in err
            assert "Authorization Violation" in err
            assert "wrong-password" not in err
            code, err = await asyncio.to_thread(_cli, config, "right-password")
            assert code == cli.EXIT_OK, err


async def test_a_token_login_delivers_and_a_wrong_token_is_refused_unsaid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``user``, the secret from ``password_env`` is the server's token."""
    from fonzipd.sinks.nats import NATSOptions, NATSSink

    with servers.private_nats(tmp_path, token="right-token-5f2c") as port:
        await servers.wait_port(port, within=20)
        url = f"nats://127.0.0.1:{port}"
        options = NATSOptions.model_validate(
            {
                "servers": [url],
                "stream": "FZTOKEN",
                "subject": "fztoken.{kind}",
                "create_stream": True,
                "password_env": "FZ_NATS_TOKEN",
            }
        )
        monkeypatch.setenv("FZ_NATS_TOKEN", "wrong-token-9a1e")
        refused = NATSSink(options, context_for_tests(tmp_path))
        with pytest.raises(SinkConfigError) as caught:
            await refused.open()
        await refused.close()
        assert "Authorization Violation" in str(caught.value)
        assert "wrong-token-9a1e" not in str(caught.value)

        monkeypatch.setenv("FZ_NATS_TOKEN", "right-token-5f2c")
        sink = NATSSink(options, context_for_tests(tmp_path))
        await sink.open()
        recs = sample_records(3)
        try:
            await sink.write(recs)
        finally:
            await sink.close()
        got = await messages("FZTOKEN", url=f"nats://right-token-5f2c@127.0.0.1:{port}")
        assert [key for _, _, key in got] == [r.key for r in recs]


def _cli(config: Path, password: str) -> tuple[int, str]:
    import os

    os.environ["FZ_NATS_PASSWORD"] = password
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["check", "--online", "--config", str(config)])
    finally:
        del os.environ["FZ_NATS_PASSWORD"]
    return code, err.getvalue()


async def test_a_server_restarted_mid_batch_is_retried_then_delivered(
    tmp_path: Path, stream: tuple[str, str]
) -> None:
    servers.need_restartable()
    base = sample_records(2)[0]
    # 3,000 versions of one record: published one after the other (each waits for the
    # acknowledgement of the one before), so the batch is still going when the server
    # stops under it.
    batch = [
        dataclasses.replace(base, version=f"v{i:05d}", status=f"s{i % 7}") for i in range(3000)
    ]
    sink = _sink(tmp_path, stream, timeout=3)
    await sink.open()
    try:
        write = asyncio.create_task(sink.write(batch))
        async with asyncio.timeout(30):
            while len(await messages(stream[0])) < 20:
                await asyncio.sleep(0.01)
        await asyncio.to_thread(servers.stop_nats)
        with pytest.raises(TransientSinkError):
            await write
    finally:
        await asyncio.to_thread(servers.start_nats)
        await servers.wait_port(4222)
    stored = len(await _eventually(lambda: messages(stream[0])))
    assert 20 <= stored < len(batch)  # the stop did land mid-batch
    async with asyncio.timeout(60):
        while True:  # the dispatcher's next attempts, on the same instance
            try:
                await sink.write(batch)
                break
            except TransientSinkError:
                await asyncio.sleep(0.5)
    await sink.close()
    keys = await _keys(stream[0])()
    assert keys == [r.key for r in batch]  # each once, in order


async def _eventually(check: Callable[[], Any]) -> Any:
    async with asyncio.timeout(30):
        while True:
            try:
                return await check()
            except Exception:
                await asyncio.sleep(0.2)


def _tls_sink(tmp_path: Path, url: str, ca: Path, **more: str) -> Any:
    from fonzipd.sinks.nats import NATSOptions, NATSSink

    options = {
        "servers": [url],
        "stream": "FZTLS",
        "subject": "fztls.{kind}",
        "create_stream": True,
        "tls_ca_file": str(ca),
        **more,
    }
    return NATSSink(NATSOptions.model_validate(options), context_for_tests(tmp_path))


def _trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


async def test_records_reach_a_tls_server_inside_tls(tmp_path: Path) -> None:
    certs = servers.certificates(tmp_path / "tls")
    with servers.private_nats(tmp_path, tls=certs) as port:
        await servers.wait_port(port, within=20)
        url = f"tls://127.0.0.1:{port}"
        sink = _tls_sink(tmp_path, url, certs.ca)
        recs = sample_records(3)
        await sink.open()
        try:
            await sink.write(recs)
        finally:
            await sink.close()
        got = await messages("FZTLS", url=url, tls=_trusting(certs.ca))
        assert [key for _, _, key in got] == [r.key for r in recs]


async def test_a_server_that_wants_a_client_certificate_gets_the_configured_one(
    tmp_path: Path,
) -> None:
    certs = servers.certificates(tmp_path / "tls")
    with servers.private_nats(tmp_path, tls=certs, client_ca=certs.ca) as port:
        await servers.wait_port(port, within=20)
        url = f"tls://127.0.0.1:{port}"
        anonymous = _tls_sink(tmp_path, url, certs.ca)
        # Under TLS 1.3 the refusal comes after the handshake: a connection lost.
        with pytest.raises((SinkConfigError, TransientSinkError)):
            await anonymous.open()
        await anonymous.close()
        sink = _tls_sink(
            tmp_path,
            url,
            certs.ca,
            tls_cert_file=str(certs.client_chain),
            tls_key_file=str(certs.client_key),
        )
        recs = sample_records(2)
        await sink.open()
        try:
            await sink.write(recs)
        finally:
            await sink.close()
        reader = _trusting(certs.ca)
        reader.load_cert_chain(certs.client_chain, certs.client_key)
        got = await messages("FZTLS", url=url, tls=reader)
        assert [key for _, _, key in got] == [r.key for r in recs]


async def test_a_server_whose_certificate_does_not_check_out_gets_nothing(
    tmp_path: Path,
) -> None:
    """An impostor's certificate, from a CA the sink does not trust: no login, no stream."""
    shown = servers.certificates(tmp_path / "impostor")
    trusted = servers.certificates(tmp_path / "trusted")
    with servers.private_nats(tmp_path, tls=shown) as port:
        await servers.wait_port(port, within=20)
        url = f"tls://127.0.0.1:{port}"
        sink = _tls_sink(tmp_path, url, trusted.ca)
        with pytest.raises(SinkConfigError) as caught:
            await sink.open()
        await sink.close()
        assert "TLS: the server's certificate did not check out" in str(caught.value)
        assert await messages("FZTLS", url=url, tls=_trusting(shown.ca)) == []


async def test_a_tls_url_to_a_server_without_tls_gets_no_records(tmp_path: Path) -> None:
    """``tls://`` to a server that does not ask for TLS (misconfigured, or a middleman
    stripping it): nats-py would carry on in cleartext; the sink closes the connection
    before it publishes or creates anything."""
    certs = servers.certificates(tmp_path / "tls")
    with servers.private_nats(tmp_path) as port:
        await servers.wait_port(port, within=20)
        sink = _tls_sink(tmp_path, f"tls://127.0.0.1:{port}", certs.ca)
        with pytest.raises(SinkConfigError) as caught:
            await sink.open()
        assert "TLS: the server did not start TLS" in str(caught.value)
        with pytest.raises(TransientSinkError, match="did not start TLS"):
            await sink.write(sample_records(1))
        await sink.close()
        assert await messages("FZTLS", url=f"nats://127.0.0.1:{port}") == []


async def test_a_tls_server_whose_greeting_does_not_ask_for_tls_never_hears_the_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A middleman answers for a ``tls://`` server with a greeting that does not require
    TLS. nats-py would log in in cleartext; the sink hangs up before the login."""
    from fonzipd.sinks.nats import NATSOptions, NATSSink

    heard = bytearray()
    hung_up = asyncio.Event()

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b'INFO {"server_id":"NIMPOSTOR","version":"2.10.0","proto":1,'
            b'"max_payload":1048576,"auth_required":true,"jetstream":true}\r\n'
        )
        with contextlib.suppress(OSError):
            await writer.drain()
            while data := await reader.read(4096):
                heard.extend(data)
        writer.close()
        hung_up.set()

    listening = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    monkeypatch.setenv("FZ_NATS_PASSWORD", "the-login-4b1d")
    options = {
        "servers": [f"tls://127.0.0.1:{port}"],
        "user": "fonzipd",
        "password_env": "FZ_NATS_PASSWORD",
        "tls_ca_file": str(servers.certificates(tmp_path / "tls").ca),
    }
    sink = NATSSink(NATSOptions.model_validate(options), context_for_tests(tmp_path))
    try:
        with pytest.raises(SinkConfigError, match="TLS: the server did not start TLS"):
            await sink.open()
        await sink.close()
        async with asyncio.timeout(10):
            await hung_up.wait()
    finally:
        listening.close()
        await listening.wait_closed()
    assert b"CONNECT" not in heard
    assert b"the-login-4b1d" not in heard


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"servers": ["nats://bus.example.org:4222"]}, "nats:// carries records in cleartext"),
        ({"servers": ["nats://10.0.0.7"], "tls": "verify"}, 'tls = "verify" needs tls://'),
        ({"servers": ["tls://bus.example.org"], "tls": "off"}, 'is tls:// but tls = "off"'),
        (
            {"servers": ["nats://10.0.0.7"], "tls": "off", "tls_handshake_first": True},
            "are for tls:// servers",
        ),
        ({"servers": ["tls://bus.example.org"], "tls_ca_file": "ca.pem"}, "absolute path"),
    ],
)
def test_cleartext_across_a_network_needs_saying_so(options: dict[str, Any], error: str) -> None:
    from fonzipd.sinks.nats import NATSOptions

    with pytest.raises(ValueError, match=error):
        NATSOptions.model_validate(options)
    for allowed in (
        {"servers": ["nats://10.0.0.7"], "tls": "off"},
        {"servers": ["nats://127.0.0.1", "nats://localhost:4223"]},
        {"servers": ["tls://bus.example.org"], "tls": "verify", "tls_handshake_first": True},
    ):
        NATSOptions.model_validate(allowed)
