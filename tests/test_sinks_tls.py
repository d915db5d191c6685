"""TLS for the sinks' connections: the context every sink connects with, and how a CA
file that cannot be used and a refused handshake are reported."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from fonzipd.sink import SinkConfigError, TransientSinkError
from fonzipd.sinks.tls import raise_if_tls_refused, tls_context
from tests import servers


def test_the_context_checks_the_chain_and_the_name_from_tls_1_2_up() -> None:
    context = tls_context("sinks.crm")
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "No such file or directory"), (b"not a certificate\n", "NO_CERTIFICATE")],
)
def test_a_ca_file_that_cannot_be_used_is_named_with_why(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    with pytest.raises(SinkConfigError) as caught:
        tls_context("sinks.crm", ca_file=ca)
    assert str(caught.value).startswith(
        f"sinks.crm.tls_ca_file: cannot load CA certificates from {ca}: "
    )
    assert reason in str(caught.value)


def test_a_client_key_others_can_read_or_that_does_not_match_is_refused(tmp_path: Path) -> None:
    mine = servers.certificates(tmp_path / "mine")
    other = servers.certificates(tmp_path / "other")
    tls_context("sinks.crm", cert_file=mine.client_chain, key_file=mine.client_key)
    mine.client_key.chmod(0o640)
    with pytest.raises(SinkConfigError) as caught:
        tls_context("sinks.crm", cert_file=mine.client_chain, key_file=mine.client_key)
    assert str(caught.value) == (
        f"sinks.crm.tls_key_file: {mine.client_key} is readable by others (mode 0640); chmod 600 it"
    )
    with pytest.raises(SinkConfigError) as caught:
        tls_context("sinks.crm", cert_file=mine.client_chain, key_file=other.client_key)
    assert str(caught.value).startswith(
        f"sinks.crm.tls_cert_file: cannot load the client certificate {mine.client_chain} "
        f"with its key {other.client_key}: "
    )
    assert "KEY_VALUES_MISMATCH" in str(caught.value)


def test_a_refused_handshake_stops_the_open_and_makes_a_later_write_wait() -> None:
    context = tls_context("sinks.crm")
    refused = ssl.SSLCertVerificationError(1, "certificate verify failed")
    refused.verify_message = "self-signed certificate"
    with pytest.raises(SinkConfigError, match=r"^crm db: TLS: the server's certificate did not"):
        raise_if_tls_refused(refused, context, "crm db", at_open=True)
    with pytest.raises(TransientSinkError, match=r"self-signed certificate\); trust the CA"):
        raise_if_tls_refused(refused, context, "crm db", at_open=False)
    # Up to TLS 1.2 a server that wants a client certificate refuses inside the handshake.
    alert = ssl.SSLError(1, "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3 alert handshake failure")
    alert.reason = "SSLV3_ALERT_HANDSHAKE_FAILURE"
    with pytest.raises(SinkConfigError, match=r"refused the handshake .*set tls_cert_file and"):
        raise_if_tls_refused(alert, context, "crm db", at_open=True)
    # Not TLS's doing, or no TLS asked for: the caller reports it as it would anyway.
    raise_if_tls_refused(ConnectionRefusedError(111, "refused"), context, "crm db", at_open=True)
    raise_if_tls_refused(refused, None, "crm db", at_open=True)
