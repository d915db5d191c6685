"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fonzipd import logs
from tests.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """A command run in-process configures logging; the next test starts from defaults."""
    yield
    logs.reset()
