"""The systemd units: what they promise, and systemd-analyze's verdict where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fonzipd.config import ListenerSettings

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("fonzipd.service", "fonzipd@.service")
ANALYZE = shutil.which("systemd-analyze")
MAX_EXPOSURE = 2.0
"""The worst exposure accepted; the units score 1.1 ("OK") with systemd 252."""


def parse(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> keys -> every value given (units may repeat a key)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if m := re.fullmatch(r"\[(\w+)\]", line):
            current = sections.setdefault(m[1], {})
            continue
        assert current is not None, f"{path.name}:{n}: key outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{n}: not KEY=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.mark.parametrize("name", UNITS)
def test_unit_is_a_hardened_notify_service(name: str) -> None:
    svc = parse(ROOT / "systemd" / name)["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    assert one["Type"] == "notify"
    assert one["Restart"] == "on-failure"
    assert one["RestartPreventExitStatus"] == "78"  # the CLI's EX_CONFIG
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["StateDirectory"].startswith("fonzipd")
    assert one["ConfigurationDirectory"] == "fonzipd"
    # Longer than the daemon's drain (15 s) so that SIGKILL never cuts a delivery short.
    assert int(one["TimeoutStopSec"].removesuffix("s")) > 15
    assert {c.split(":")[0] for c in svc["LoadCredential"]} == {
        "fonzip.client_id",
        "fonzip.client_secret",
        "listener.auth_token",
    }
    assert one["EnvironmentFile"].startswith("-/etc/fonzipd/")
    for key in (
        "DynamicUser",
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "RestrictNamespaces",
        "LockPersonality",
    ):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["CapabilityBoundingSet"] == ""
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in svc["SystemCallFilter"]
    # Slow clients hold descriptors: the limit leaves room beyond the connection cap.
    cap = ListenerSettings.model_fields["max_connections"].default
    assert int(one["LimitNOFILE"]) >= 2 * cap


def test_template_keeps_each_account_apart() -> None:
    svc = {k: v[-1] for k, v in parse(ROOT / "systemd" / "fonzipd@.service")["Service"].items()}
    assert svc["ExecStart"].endswith("--config /etc/fonzipd/%i.toml")
    assert svc["StateDirectory"] == "fonzipd/%i"
    assert svc["EnvironmentFile"] == "-/etc/fonzipd/%i.env"


def _installable_copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart pointing at an executable that exists here."""
    text = (ROOT / "systemd" / name).read_text()
    exe = shutil.which("true") or "/bin/true"
    text = text.replace("/opt/fonzipd/bin/fonzipd", exe)
    dest = tmp_path / (name.replace("@", "@acme") if "@" in name else name)
    dest.write_text(text)
    return dest


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_passes(tmp_path: Path, name: str) -> None:
    assert ANALYZE is not None
    unit = _installable_copy(tmp_path, name)
    done = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        # Host-specific noise about other units on this machine, not about ours.
        if unit.name in line or "fonzipd" in line
    ]
    assert done.returncode == 0, done.stderr
    assert problems == []


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", UNITS)
def test_security_exposure_is_low(tmp_path: Path, name: str) -> None:
    assert ANALYZE is not None
    unit = _installable_copy(tmp_path, name)
    done = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in done.stderr and "unrecognized" in done.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert m is not None, done.stdout + done.stderr
    assert float(m[1]) <= MAX_EXPOSURE
