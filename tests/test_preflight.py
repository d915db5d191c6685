"""The preflight through the real CLI: each broken setup is one line naming the key and the fix.

`fonzipd check` and `fonzipd run` are run in a subprocess, as an operator meets them;
`run` must exit 78 at once with the same line, never a traceback (which systemd would
restart in a loop).
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fonzipd.cli import EXIT_CONFIG, EXIT_OK
from fonzipd.preflight import bind_problem, daemon_running

TOKEN = "preflight-webhook-token-123"
SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"  # 24 bytes, base64


def fonzipd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FONZIPD_")}
    environ.pop("HOOK_TOKEN", None)
    environ.pop("PG_PASSWORD_PREFLIGHT", None)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "fonzipd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def good(port: int, extra: str = "") -> str:
    return f"""
[fonzip]
client_id = "id"
client_secret = "secret"
[listener]
auth_token = "{TOKEN}"
port = {port}
[state]
path = "state/state.db"
[sinks.archive]
type = "sqlite"
path = "fonzip.db"
{extra}
"""


def test_mistyped_keys_zones_and_quoted_booleans_each_get_their_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[fonzip]\ntimezon = "Europe/Istanbul"\n'
        "[listner]\nport = 8787\n"
        '[sinks.archive]\ntype = "sqlite"\npath = "x.db"\nenabled = "yes"\n',
    )
    for command in ("check", "run"):
        proc = fonzipd(command, "--config", str(path))
        assert proc.returncode == EXIT_CONFIG, proc.stderr
        assert "Traceback" not in proc.stderr
        err = proc.stderr
        assert "line 2: fonzip.timezon: unknown key; did you mean timezone?" in err
        assert "line 3: listner: unknown key; did you mean listener?" in err
        assert (
            "line 8: sinks.archive.enabled: 'yes' is a string; write enabled = true "
            "(true or false, without quotes)" in err
        )
    zone = write(tmp_path, '[fonzip]\ntimezone = "Istanbul"\n')
    proc = fonzipd("check", "--config", str(zone))
    assert proc.returncode == EXIT_CONFIG
    assert (
        "line 2: fonzip.timezone: Value error, unknown IANA timezone 'Istanbul'; "
        "did you mean Europe/Istanbul?" in proc.stderr
    )


def test_a_false_quoted_boolean_is_refused_too_but_the_environment_may_say_false(
    tmp_path: Path,
) -> None:
    from fonzipd.config import ConfigError, load_config

    path = write(tmp_path, good(0, '[reconciler]\nenabled = "false"\n'))
    with pytest.raises(ConfigError, match="write enabled = false"):
        load_config(path)
    os.environ["FONZIPD_RECONCILER__ENABLED"] = "false"
    try:
        assert not load_config(write(tmp_path, good(0))).reconciler.enabled
    finally:
        del os.environ["FONZIPD_RECONCILER__ENABLED"]


def test_machine_problems_stop_check_and_run_with_the_same_lines(
    tmp_path: Path, busy_port: int
) -> None:
    with socket.socket() as metrics:
        metrics.bind(("127.0.0.1", 0))
        metrics.listen()
        metrics_port = metrics.getsockname()[1]
        path = write(
            tmp_path,
            good(
                busy_port,
                f"""
[sinks.files]
type = "csv"
directory = "typo/csv"
[sinks.hook]
type = "http"
url = "http://127.0.0.1:9/hook"
secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="
headers = {{ Authorization = "env:HOOK_TOKEN" }}
[metrics]
port = {metrics_port}
""",
            ),
        )
        outputs = {}
        for command in ("check", "run"):
            proc = fonzipd(command, "--config", str(path))
            assert proc.returncode == EXIT_CONFIG, proc.stderr
            assert "Traceback" not in proc.stderr
            outputs[command] = proc.stderr
    err = outputs["check"]
    assert outputs["run"] == err, "run must refuse with exactly the lines check prints"
    lines = err.splitlines()
    assert len(lines) == 4, err
    assert all(line.startswith(f"fonzipd: {path}: ") for line in lines)
    assert f"listener.port = {busy_port}: cannot listen on 127.0.0.1:{busy_port}: " in err
    assert f"metrics.port = {metrics_port}: cannot listen on 127.0.0.1:{metrics_port}: " in err
    assert "already in use by another program" in err
    assert (
        f"sinks.files.directory = '{tmp_path / 'typo' / 'csv'}': its parent folder "
        f"{tmp_path / 'typo'} does not exist" in err
    )
    assert 'sinks.hook.headers.Authorization = "env:HOOK_TOKEN": the environment variable ' in err
    assert "systemd credential sinks.hook.headers.Authorization" in err
    assert not (tmp_path / "state").exists(), "the preflight must create nothing"

    # Fixed, the same configuration passes.
    (tmp_path / "typo").mkdir()
    fixed = path.read_text().replace(f"port = {busy_port}", "port = 0")
    fixed = fixed.replace(f"port = {metrics_port}", "port = 0")
    proc = fonzipd("check", "--config", str(write(tmp_path, fixed)), env={"HOOK_TOKEN": "t"})
    assert proc.returncode == EXIT_OK, proc.stderr


def test_an_unset_password_variable_names_the_file_alternative(tmp_path: Path) -> None:
    from fonzipd.config import load_config
    from fonzipd.preflight import problems

    settings = load_config(
        write(
            tmp_path,
            good(
                0,
                '[sinks.pg]\ntype = "postgresql"\ndsn = "postgresql://u@127.0.0.1/db"\n'
                'password_env = "PG_PASSWORD_PREFLIGHT"\n',
            ),
        )
    )
    found = problems(settings)
    assert len(found) == 1
    assert "sinks.pg.password_env = 'PG_PASSWORD_PREFLIGHT': the environment variable" in found[0]
    assert "sinks.pg.password_file" in found[0]


def test_the_running_daemons_own_port_is_not_a_problem(tmp_path: Path, busy_port: int) -> None:
    path = write(tmp_path, good(busy_port))
    (tmp_path / "state").mkdir()
    lock = tmp_path / "state" / "state.db.lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the daemon holds it
        assert daemon_running(tmp_path / "state" / "state.db")
        proc = fonzipd("check", "--config", str(path))
        assert proc.returncode == EXIT_OK, proc.stderr
    finally:
        os.close(fd)
    assert not daemon_running(tmp_path / "state" / "state.db")
    assert bind_problem("127.0.0.1", busy_port) is not None


def test_tls_files_that_cannot_be_used_are_named_before_the_start(tmp_path: Path) -> None:
    from tests import servers

    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("-----BEGIN NOTHING-----\n")
    certs = servers.certificates(tmp_path / "tls")
    certs.client_key.chmod(0o644)
    sinks = "".join(
        f'[sinks.{sid}]\ntype = "http"\nurl = "https://crm.example.org/hook"\n'
        f'secret = "{SECRET}"\n{tls}\n'
        for sid, tls in (
            ("crm", f'tls_ca_file = "{tmp_path / "missing.pem"}"'),
            ("erp", f'tls_ca_file = "{not_pem}"'),
            ("ops", f'tls_cert_file = "{certs.client_chain}"\ntls_key_file = "{certs.client_key}"'),
        )
    )
    proc = fonzipd("check", "--config", str(write(tmp_path, good(0, sinks))))
    assert proc.returncode == EXIT_CONFIG
    missing = tmp_path / "missing.pem"
    assert f"sinks.crm.tls_ca_file: cannot load CA certificates from {missing}: No such" in (
        proc.stderr
    )
    assert f"sinks.erp.tls_ca_file: cannot load CA certificates from {not_pem}: " in proc.stderr
    assert f"sinks.ops.tls_key_file: {certs.client_key} is readable by others (mode 0644)" in (
        proc.stderr
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere; needs another user")
def test_a_state_folder_this_user_cannot_write_is_named(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    path = write(tmp_path, good(0).replace('"state/state.db"', '"locked/state/state.db"'))
    proc = fonzipd("check", "--config", str(path))
    assert proc.returncode == EXIT_CONFIG
    assert f"state.path = '{locked / 'state' / 'state.db'}': " in proc.stderr
    assert f"cannot write in {locked}" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="what root does to a service's files")
def test_root_is_refused_on_a_state_folder_the_service_owns(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    path = write(tmp_path, good(0))
    for command in (
        ["replay", "--sink", "archive"],
        ["backfill", "--from", "2026-01-01", "--to", "2026-01-01"],
    ):
        proc = fonzipd(*command, "--config", str(path))
        assert proc.returncode == 1, proc.stderr
        assert f"running as root on {state}, which belongs to " in proc.stderr
        assert f"setpriv --reuid=65534 --regid=65534 --clear-groups fonzipd {command[0]}" in (
            proc.stderr
        )
    assert list(state.iterdir()) == [], "root created files the service could not write"
    os.chown(state, 0, 0)
    proc = fonzipd("replay", "--sink", "archive", "--config", str(path))
    assert proc.returncode == 0, proc.stderr


async def test_check_online_reaches_a_forwarders_host_without_a_delivery(
    tmp_path: Path, busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from fonzipd import cli
    from fonzipd.simulator import Simulator

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        free_port = closed.getsockname()[1]
    async with Simulator(seed=1, days=1, per_day=1) as sim:
        base = await sim.start()
        for port, expected in ((busy_port, EXIT_OK), (free_port, 1)):
            path = write(
                tmp_path,
                good(0)
                .replace("[fonzip]\n", f'[fonzip]\nbase_url = "{base}"\n')
                .replace('client_id = "id"', 'client_id = "sim-client"')
                .replace('client_secret = "secret"', 'client_secret = "sim-secret"')
                + f'[sinks.hook]\ntype = "http"\nurl = "http://127.0.0.1:{port}/hook"\n'
                'secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="\n',
            )
            code = await asyncio.to_thread(cli.main, ["check", "--online", "--config", str(path)])
            assert code == expected, port
            said = capsys.readouterr()
            if expected == EXIT_OK:
                assert "sink hook (http) OK" in said.out
            else:
                assert "fonzipd: sink hook (http): " in said.err
                assert str(free_port) in said.err, said.err
