"""Tests of logging: JSON lines for machines, batched writes, nothing lost at shutdown."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
import structlog

from fonzipd import logs


class Stream(io.StringIO):
    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.tty = tty
        self.flushes = 0

    def isatty(self) -> bool:
        return self.tty

    def flush(self) -> None:
        self.flushes += 1


def lines(stream: Stream) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_outside_an_event_loop_are_written_at_once() -> None:
    out = Stream()
    logs.configure("info", "auto", stream=out)
    structlog.get_logger("t").info("batch_written", records=3, sink="archive")
    [line] = lines(out)
    assert line["event"] == "batch_written"
    assert line["records"] == 3
    assert line["level"] == "info"
    assert "timestamp" in line


def test_levels_filter_and_console_on_a_terminal() -> None:
    out = Stream(tty=True)
    logs.configure("warning", "auto", stream=out)
    log = structlog.get_logger("t")
    log.info("record_fetched")
    log.warning("fetch_failed", error="HTTP 503")
    text = out.getvalue()
    assert "record_fetched" not in text
    assert "fetch_failed" in text
    assert not text.lstrip().startswith("{")


async def test_lines_in_an_event_loop_are_batched_and_flush_writes_them() -> None:
    out = Stream()
    logs.configure("info", "json", stream=out)
    log = structlog.get_logger("t")
    for n in range(50):
        log.info("webhook_accepted", fonzip_id=n)
    assert out.getvalue() == "", "written per line"
    logs.flush()
    assert [line["fonzip_id"] for line in lines(out)] == list(range(50))
    assert out.flushes == 1
    log.info("webhook_accepted", fonzip_id=50)

    async def written() -> None:
        while len(lines(out)) < 51:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(written(), 2)  # by itself, a moment later


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_explicit_formats(fmt: str) -> None:
    assert logs.wants_json(fmt, Stream(tty=True)) is (fmt == "json")


def test_the_hot_path_logger_follows_a_reconfiguration() -> None:
    first, second = Stream(), Stream()
    hot = logs.HotLogger("t")
    logs.configure("info", "json", stream=first)
    hot.get().info("webhook_accepted", fonzip_id=1)
    logs.configure("warning", "json", stream=second)  # a SIGHUP that lowers the noise
    hot.get().info("webhook_accepted", fonzip_id=2)
    hot.get().warning("webhook_rejected", reason="wrong token")
    assert [line["fonzip_id"] for line in lines(first)] == [1]
    assert [line["event"] for line in lines(second)] == ["webhook_rejected"]
