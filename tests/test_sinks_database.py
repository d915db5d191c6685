"""What the database-server sinks share: when a connection must run inside TLS, what a
dsn may not say about TLS, and the warning when TLS is turned off across a network."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import structlog.testing

from fonzipd.sinks.database import DatabaseOptions, Endpoint, client_tls, opened, tls_mode

SCHEMES = ("postgresql",)


def _mode(**options: Any) -> str:
    opts = DatabaseOptions.model_validate(options)
    return tls_mode(opts, Endpoint.of(opts, SCHEMES))


@pytest.mark.parametrize(
    "where",
    [
        {},
        {"host": "127.0.0.1"},
        {"host": "127.8.9.10"},
        {"host": "localhost"},
        {"host": "::1"},
        {"host": "/var/run/postgresql"},
        {"dsn": "postgresql://fonzipd@localhost:5432/crm"},
        {"dsn": "postgresql://fonzipd@[::1]/crm"},
        {"dsn": "postgresql:///crm?host=/var/run/postgresql"},
    ],
)
def test_a_server_on_this_machine_is_reached_in_cleartext_by_default(
    where: dict[str, str],
) -> None:
    assert _mode(**where) == "off"


@pytest.mark.parametrize(
    "where",
    [
        {"host": "db.example.org"},
        {"host": "10.0.0.7"},
        {"host": "localhost.example.org"},
        {"dsn": "postgresql://fonzipd@db.example.org/crm"},
        {"dsn": "postgresql:///crm?host=db.example.org"},
        {"host": "127.0.0.1", "tls_ca_file": "/etc/fonzipd/ca.pem"},
        {"host": "127.0.0.1", "tls_cert_file": "/etc/c.pem", "tls_key_file": "/etc/c.key"},
    ],
)
def test_any_other_server_is_reached_only_inside_verified_tls(where: dict[str, str]) -> None:
    assert _mode(**where) == "verify"


def test_tls_can_be_turned_off_for_a_trusted_network_or_on_for_loopback() -> None:
    assert _mode(host="10.0.0.7", tls="off") == "off"
    assert _mode(host="127.0.0.1", tls="verify") == "verify"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (
            {"dsn": "postgresql://u@db.example.org/crm?sslmode=disable"},
            "holds sslmode: remove it and set tls and tls_ca_file instead",
        ),
        (
            {"dsn": "postgresql://u@db/crm?sslrootcert=/x.pem&SSLMODE=require"},
            "holds SSLMODE, sslrootcert",
        ),
        (
            {"host": "db.example.org", "tls": "off", "tls_ca_file": "/etc/ca.pem"},
            'tls_ca_file: for tls = "verify"; tls = "off" sends cleartext',
        ),
        (
            {"host": "db.example.org", "tls_cert_file": "/etc/fonzipd/client.pem"},
            "set tls_cert_file and tls_key_file together",
        ),
        ({"host": "db.example.org", "tls_ca_file": "ca.pem"}, "must be an absolute path"),
        ({"host": "db.example.org", "tls": "require"}, "Input should be 'verify' or 'off'"),
    ],
)
def test_tls_settings_that_would_be_undone_or_make_no_sense_are_refused(
    options: dict[str, str], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        DatabaseOptions.model_validate(options)


def test_only_a_connection_that_leaves_the_machine_gets_a_tls_context() -> None:
    remote = DatabaseOptions(host="db.example.org")
    context = client_tls(remote, Endpoint.of(remote, SCHEMES), "sinks.crm")
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    local = DatabaseOptions(host="127.0.0.1")
    assert client_tls(local, Endpoint.of(local, SCHEMES), "sinks.crm") is None


def test_cleartext_across_a_network_is_logged_as_a_warning_at_open() -> None:
    log = structlog.get_logger("test")
    with structlog.testing.capture_logs() as logs:
        for opts in (
            DatabaseOptions(host="10.0.0.7", tls="off"),
            DatabaseOptions(host="127.0.0.1"),
            DatabaseOptions(host="db.example.org"),
        ):
            opened(log, opts, Endpoint.of(opts, SCHEMES))
    assert [(e["event"], e.get("tls")) for e in logs] == [
        ("tls_turned_off", None),
        ("sink_opened", "off"),
        ("sink_opened", "off"),
        ("sink_opened", "verify"),
    ]
    assert logs[0]["log_level"] == "warning"
