"""Tests of logging: JSON lines for machines, batched writes, nothing lost at shutdown."""

from __future__ import annotations

import asyncio
import io
import json
import logging

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


def _fails_holding_a_secret() -> None:
    token = "bearer-secret-in-a-local-variable"
    headers = {"Authorization": f"Bearer {token}"}
    raise RecursionError(f"maximum recursion depth exceeded ({len(headers)})")


@pytest.mark.parametrize(("fmt", "tty"), [("json", False), ("console", False), ("console", True)])
def test_tracebacks_never_show_local_variables(fmt: str, tty: bool) -> None:
    out = Stream(tty=tty)
    logs.configure("info", fmt, stream=out)
    try:
        _fails_holding_a_secret()
    except RecursionError:
        structlog.get_logger("t").exception("fetch_crashed", inbox_id=7)
    text = out.getvalue()
    assert "fetch_crashed" in text
    assert "_fails_holding_a_secret" in text  # the traceback is there...
    assert "bearer-secret-in-a-local-variable" not in text  # ...its frames' locals are not


def test_registered_secrets_are_redacted_from_every_line_in_every_form() -> None:
    secret = 'sec"ret/ş+value=42'
    logs.never_log(secret)
    out = Stream()
    logs.configure("info", "json", stream=out)
    log = structlog.get_logger("t")
    log.warning("fetch_failed", error=f"Fonzip said {secret!r}", form=f"s={secret}")
    logs.configure("info", "console", stream=out)
    log.warning("fetch_failed", error=secret)
    logging.getLogger("aiohttp.client").warning("echo %s", secret)
    logs.flush()
    text = out.getvalue()
    assert text.count("[redacted]") >= 4
    for form in (secret, json.dumps(secret)[1:-1], repr(secret)[1:-1], "ret/ş+value"):
        assert form not in text
    logs.never_log("short")  # too short to tell from ordinary words: not registered
    assert logs.redact("a short line") == "a short line"
