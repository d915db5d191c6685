"""The conformance suite: it passes a correct sink and names the property a faulty one breaks."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from fonzipd.records import Record
from fonzipd.sink import Sink, SinkContext, SinkOptions
from fonzipd.testing import check_sink, context_for_tests, sample_records


class MemorySink(Sink):
    """A correct sink over a list shared between instances (the 'destination')."""

    name: ClassVar[str] = "memory"

    def __init__(self, store: list[str], context: SinkContext) -> None:
        super().__init__(SinkOptions(), context)
        self.store = store
        self.closed = False

    async def write(self, batch: Sequence[Record]) -> None:
        if self.closed:
            raise RuntimeError("closed")
        for record in batch:
            if record.key not in self.store:
                self.store.append(record.key)

    async def close(self) -> None:
        self.closed = True


class Duplicating(MemorySink):
    async def write(self, batch: Sequence[Record]) -> None:
        self.store.extend(r.key for r in batch)


class Buffering(MemorySink):
    """Returns before the batch is stored: it keeps it until close."""

    pending: list[Record]

    async def write(self, batch: Sequence[Record]) -> None:
        self.pending = [*getattr(self, "pending", []), *batch]

    async def close(self) -> None:
        await super().write(getattr(self, "pending", []))
        self.closed = True


class Reversing(MemorySink):
    async def write(self, batch: Sequence[Record]) -> None:
        await super().write(list(reversed(batch)))


class OpenAfterClose(MemorySink):
    async def close(self) -> None:
        pass


class Failing(MemorySink):
    async def write(self, batch: Sequence[Record]) -> None:
        if batch:
            raise ValueError("bug")


async def _check(cls: type[MemorySink], tmp_path: Path) -> None:
    store: list[str] = []

    async def read_back() -> list[str]:
        return list(store)

    await check_sink(lambda: cls(store, context_for_tests(tmp_path)), read_back)


async def test_a_correct_sink_passes(tmp_path: Path) -> None:
    await _check(MemorySink, tmp_path)


@pytest.mark.parametrize(
    ("cls", "prop"),
    [
        (Duplicating, "idempotency"),
        (Buffering, "durability"),
        (Reversing, "ordering"),
        (OpenAfterClose, "close"),
        (Failing, r"durability: write\(\) of"),
    ],
)
async def test_a_faulty_sink_fails_naming_the_property(
    tmp_path: Path, cls: type[MemorySink], prop: str
) -> None:
    with pytest.raises(AssertionError, match=f"check_sink: {prop}"):
        await _check(cls, tmp_path)


async def test_a_dirty_destination_is_reported(tmp_path: Path) -> None:
    store = ["stale"]

    async def read_back() -> list[str]:
        return store

    with pytest.raises(AssertionError, match="not empty before the first write"):
        await check_sink(lambda: MemorySink(store, context_for_tests(tmp_path)), read_back)


def test_sample_records_are_realistic_and_in_version_order() -> None:
    recs = sample_records(24)
    assert len(recs) == 24
    assert recs == sample_records(24)  # deterministic
    assert len({r.key for r in recs}) == 24
    first, refund = recs[0], recs[-1]
    assert (refund.kind, refund.fonzip_id, refund.status) == (first.kind, first.fonzip_id, "refund")
    assert refund.version != first.version
    assert refund.fetched_at > first.fetched_at
    names = "".join(r.person.name or "" for r in recs)
    assert all(c in names for c in 'ÇŞİğüÖ,"\n')
    assert any(r.business_date is None for r in recs)
    assert any(
        r.occurred_at is not None
        and r.business_date is not None
        and r.occurred_at.date() != r.business_date
        for r in recs
    )
    assert len({r.kind for r in recs}) >= 5
    assert dataclasses.replace(recs[1]) == recs[1]
