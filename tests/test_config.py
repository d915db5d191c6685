"""Tests of the configuration: the file, the environment, and the errors users see."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fonzipd.config import ConfigError, ConfigWarning, listener_problems, load_config

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "a-long-enough-webhook-token"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_loads_and_documents_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # The example keeps the webhook token out of the file, as users should.
    monkeypatch.setenv("FONZIPD_LISTENER__AUTH_TOKEN", TOKEN)
    settings = load_config(ROOT / "config.example.toml")
    assert settings.fonzip.timezone == "Europe/Istanbul"
    assert settings.listener.port == 8787
    assert set(settings.sinks) == {"archive", "spreadsheets", "crm"}
    assert set(settings.enabled_sinks) == {"archive", "spreadsheets"}
    text = (ROOT / "config.example.toml").read_text()
    for section, model in (
        ("fonzip", type(settings.fonzip)),
        ("listener", type(settings.listener)),
        ("state", type(settings.state)),
        ("fetcher", type(settings.fetcher)),
        ("reconciler", type(settings.reconciler)),
        ("logging", type(settings.logging)),
        ("metrics", type(settings.metrics)),
        ("health", type(settings.health)),
    ):
        for key in model.model_fields:
            assert f"{key} =" in text, f"config.example.toml does not document {section}.{key}"


def test_issue_example_with_relative_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[fonzip]
base_url = "https://fonzip.com/api/v2"
client_id = "id"
client_secret = "s3cr3t-value"
timezone = "Europe/Istanbul"
requests_per_minute = 240

[listener]
host = "127.0.0.1"
port = 8787
path = "/fonzip/webhook"
auth_token = "{TOKEN}"

[state]
path = "state/state.db"

[fetcher]
concurrency = 4

[sinks.archive]
type = "sqlite"
path = "fonzip.db"
""",
    )
    s = load_config(path)
    assert s.state.path == (tmp_path / "state" / "state.db").resolve()
    assert s.sinks["archive"].options == {"path": str((tmp_path / "fonzip.db").resolve())}
    assert s.fonzip.client_secret is not None
    assert s.fonzip.client_secret.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(s)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        f'[listener]\nauth_token = "{TOKEN}"\n[sinks.a]\ntype = "sqlite"\npath = "/from/file.db"\n',
    )
    monkeypatch.setenv("FONZIPD_FONZIP__CLIENT_SECRET", "from-env")
    monkeypatch.setenv("FONZIPD_LISTENER__PORT", "9999")
    monkeypatch.setenv("FONZIPD_SINKS__A__PATH", "/from/env.db")
    s = load_config(path)
    assert s.fonzip.client_secret is not None
    assert s.fonzip.client_secret.get_secret_value() == "from-env"
    assert s.listener.port == 9999
    assert s.sinks["a"].options["path"] == "/from/env.db"


def test_unknown_keys_and_bad_values_name_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[listener]\nauth_token = "{TOKEN}"\nprot = 80\n[fonzip]\ntimezone = "Mars/Olympus"\n'
        "requests_per_minute = 0\n",
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text
    assert "listener.prot: unknown key" in text
    assert "fonzip.timezone" in text
    assert "Mars/Olympus" in text
    assert "fonzip.requests_per_minute" in text


def test_secrets_are_not_echoed_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, '[listener]\nauth_token = "short"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "at least 16 characters" in str(err.value)
    assert "short" not in str(err.value)


def test_secrets_too_short_name_a_real_environment_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, '[listener]\nauth_token = "short"\n'))
    assert "listener.auth_token: Value error, must be at least 16" in str(err.value)
    assert "FONZIPD_LISTENER__AUTH_TOKEN" in str(err.value)


@pytest.mark.parametrize(
    "text",
    ["", "[listener]\nport = 8787\n", "[listener]\nallow_unauthenticated = false\n"],
    ids=["no-listener-table", "table-without-token", "opt-out-false"],
)
def test_no_token_by_omission_is_a_listener_problem(tmp_path: Path, text: str) -> None:
    # Today's config accepted these and ran an open listener; they must not serve.
    settings = load_config(write(tmp_path, text))
    problems = listener_problems(settings)
    assert len(problems) == 1
    assert problems[0].startswith("listener.auth_token is not set")
    assert "\n" not in problems[0]


def test_the_fixes_named_in_the_message_really_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "")
    (problem,) = listener_problems(load_config(path))
    # Every environment variable and credential the message names sets the token.
    names = re.findall(r"FONZIPD_[A-Z_]+", problem)
    assert names == ["FONZIPD_LISTENER__AUTH_TOKEN"]
    monkeypatch.setenv(names[0], TOKEN)
    assert listener_problems(load_config(path)) == []
    monkeypatch.delenv(names[0])
    (credential,) = re.findall(r"systemd credential (\S+)", problem)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / credential).write_text(TOKEN)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert listener_problems(load_config(path)) == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_explicit_opt_out_is_allowed_on_loopback_only(tmp_path: Path, host: str) -> None:
    s = load_config(write(tmp_path, f'[listener]\nhost = "{host}"\nallow_unauthenticated = true\n'))
    assert s.listener.auth_token is None
    assert listener_problems(s) == []


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10", "fonzipd.example.org"])
def test_opt_out_on_a_public_host_is_refused_even_with_a_token(tmp_path: Path, host: str) -> None:
    for token in ("", f'auth_token = "{TOKEN}"\n'):
        s = load_config(
            write(tmp_path, f'[listener]\nhost = "{host}"\nallow_unauthenticated = true\n{token}')
        )
        (problem,) = listener_problems(s)
        assert problem.startswith("listener.allow_unauthenticated = true is refused")
        assert repr(host) in problem


def test_metrics_on_the_listener_port_is_a_problem(tmp_path: Path) -> None:
    base = f'[listener]\nport = 8787\nauth_token = "{TOKEN}"\n[metrics]\n'
    (problem,) = listener_problems(load_config(write(tmp_path, base + "port = 8787\n")))
    assert problem.startswith("metrics.port = 8787 is also listener.port")
    assert listener_problems(load_config(write(tmp_path, base + "port = 9787\n"))) == []
    # Port 0 twice means two free ports, not one.
    zero = f'[listener]\nport = 0\nauth_token = "{TOKEN}"\n[metrics]\nport = 0\n'
    assert listener_problems(load_config(write(tmp_path, zero))) == []


def test_rate_above_fonzips_limit_is_accepted_with_a_warning(tmp_path: Path) -> None:
    path = write(
        tmp_path, f'[listener]\nauth_token = "{TOKEN}"\n[fonzip]\nrequests_per_minute = 1000\n'
    )
    with pytest.warns(ConfigWarning, match="above Fonzip's documented 240"):
        s = load_config(path)
    assert s.fonzip.requests_per_minute == 1000


def test_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[listener\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[fonzip]\ntimezone = "\xe7"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


def test_sink_ids_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, f'[listener]\nauth_token = "{TOKEN}"\n[sinks."Bad Id"]\ntype = "csv"\n')
    with pytest.raises(ConfigError, match="sinks"):
        load_config(path)


def test_systemd_credentials_set_keys_and_the_environment_still_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "fonzip.client_secret").write_text("from-credential\n")
    (creds / "listener.auth_token").write_text("a-long-credential-token")
    (creds / "fonzip.client_id").write_text("cred-id")
    path = write(tmp_path, '[fonzip]\nclient_id = "file-id"\n')
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("FONZIPD_FONZIP__CLIENT_ID", "env-id")
    settings = load_config(path)
    assert settings.fonzip.client_secret is not None
    assert settings.fonzip.client_secret.get_secret_value() == "from-credential"
    assert settings.listener.auth_token is not None
    assert settings.listener.auth_token.get_secret_value() == "a-long-credential-token"
    assert settings.fonzip.client_id is not None
    assert settings.fonzip.client_id.get_secret_value() == "env-id"


def test_sink_redaction_and_filters_are_validated_with_the_key_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[listener]\nauth_token = "{TOKEN}"\n'
        '[sinks.crm]\ntype = "http"\nredact = ["sensitive", "tc-no"]\n'
        'kinds = ["donation", "donations"]\nstatuses = ["succeeded", "paid"]\n',
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "sinks.crm.redact" in text
    assert "'tc-no' is neither a Fonzip field name" in text
    assert "sinks.crm.kinds" in text
    assert "donations" in text
    assert "sinks.crm.statuses" in text
    assert "unknown status 'paid'; known: " in text
    assert "succeeded" in text


def test_sink_filters_and_redaction_are_shared_keys_not_sink_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[listener]\nauth_token = "{TOKEN}"\n[state]\nkeep_data_days = 90\n'
        '[sinks.crm]\ntype = "sqlite"\npath = "x.db"\nredact = ["sensitive", "person_phone"]\n'
        'kinds = ["donation"]\nstatuses = ["succeeded", "refunded"]\n',
    )
    s = load_config(path)
    crm = s.sinks["crm"]
    assert set(crm.options) == {"path"}
    assert crm.redact == ("sensitive", "person_phone")
    assert [str(k) for k in crm.kinds or ()] == ["donation"]
    assert s.state.keep_data_days == 90
    with pytest.raises(ConfigError, match=r"sinks\.crm\.kinds: .*names no kind"):
        load_config(write(tmp_path, path.read_text().replace('["donation"]', "[]")))
