"""Shared fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fonzipd import logs
from fonzipd.state import Store
from tests.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """A command run in-process configures logging; the next test starts from defaults."""
    yield
    logs.reset()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    """A fresh state database in the test's directory."""
    s = await Store.open(tmp_path / "state.db", clock=clock)
    yield s
    await s.close()
