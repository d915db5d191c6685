"""The sink contract: errors, options, defaults, and what plugin authors import."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pydantic
import pytest

import fonzipd.sink as sink_module
from fonzipd.config import ConfigError
from fonzipd.kinds import Kind
from fonzipd.records import Person, Record, Source
from fonzipd.sink import (
    PermanentSinkError,
    Sink,
    SinkConfigError,
    SinkError,
    SinkOptions,
    TransientSinkError,
)
from fonzipd.testing import context_for_tests


class _Options(SinkOptions):
    path: Path


class _Minimal(Sink):
    name: ClassVar[str] = "minimal"
    Options: ClassVar[type[SinkOptions]] = _Options

    async def write(self, batch: Sequence[Record]) -> None:
        pass


def test_plugin_authors_import_everything_from_sink() -> None:
    assert sink_module.Record is Record
    assert sink_module.Person is Person
    assert sink_module.Source is Source
    assert sink_module.Kind is Kind
    assert set(sink_module.__all__) >= {"Sink", "SinkOptions", "SinkContext", "Record"}


def test_errors_carry_what_the_dispatcher_needs() -> None:
    transient = TransientSinkError("down", retry_after=3.5)
    assert isinstance(transient, SinkError)
    assert transient.retry_after == 3.5
    assert TransientSinkError("down").retry_after is None
    permanent = PermanentSinkError("refused", failed_keys=["a", "b", "a"])
    assert isinstance(permanent, SinkError)
    assert permanent.failed_keys == frozenset({"a", "b"})
    assert PermanentSinkError("refused").failed_keys is None
    assert issubclass(SinkConfigError, ConfigError)


def test_options_forbid_unknown_keys_and_are_frozen(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        _Options.model_validate({"path": "x", "pth": "y"})
    options = _Options(path=tmp_path)
    with pytest.raises(pydantic.ValidationError):
        options.path = Path("/elsewhere")  # type: ignore[misc]


async def test_defaults_open_close_and_batch_size(tmp_path: Path) -> None:
    sink = _Minimal(_Options(path=tmp_path), context_for_tests(tmp_path, sink_id="m"))
    assert sink.preferred_batch_size() == Sink.batch_size == 100
    assert sink.context.sink_id == "m"
    await sink.open()
    await sink.write([])
    await sink.close()


def test_write_is_abstract(tmp_path: Path) -> None:
    class NoWrite(Sink):
        name: ClassVar[str] = "nowrite"

    with pytest.raises(TypeError, match="write"):
        NoWrite(SinkOptions(), context_for_tests(tmp_path))  # type: ignore[abstract]
