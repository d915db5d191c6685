"""The policy of tests/servers.py: a missing server fails the test in CI, skips it elsewhere."""

from __future__ import annotations

import pytest

from tests import servers


def _closed_port() -> int:
    return servers.free_port()  # bound and released: nothing listens there


def test_a_missing_server_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FONZIPD_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="FONZIPD_REQUIRE_SERVICES=1"):
        servers.need("json", "x", "127.0.0.1", _closed_port(), "PostgreSQL")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        servers.need("no_such_driver_module", "x", "127.0.0.1", _closed_port(), "X")


def test_a_missing_server_skips_with_a_reason_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FONZIPD_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no PostgreSQL at 127\.0\.0\.1:\d+"):
        servers.need("json", "x", "127.0.0.1", _closed_port(), "PostgreSQL")
    with pytest.raises(pytest.skip.Exception, match="restarts a shared server"):
        servers.need_restartable()
