"""The supervisor: a watched task that dies is reported once; a stopped one is not."""

from __future__ import annotations

import asyncio

import structlog.testing

from fonzipd.supervisor import Supervisor


async def test_a_task_that_dies_is_reported_once_and_stopped_ones_are_not() -> None:
    deaths: list[str] = []
    supervisor = Supervisor(deaths.append)

    async def crash() -> None:
        raise KeyError("lost")

    async def finish() -> None:
        return None

    async def forever() -> None:
        await asyncio.Event().wait()

    with structlog.testing.capture_logs() as logs:
        crashed = supervisor.watch(asyncio.create_task(crash(), name="fetcher-0"))
        again = supervisor.watch(asyncio.create_task(crash()), name="fetcher-0")
        finished = supervisor.watch(asyncio.create_task(finish(), name="sink-a"))
        cancelled = supervisor.watch(asyncio.create_task(forever(), name="reconciler"))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.wait([crashed, again, finished, cancelled])
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
    assert deaths == ["fetcher-0"]
    assert supervisor.failed == {"fetcher-0": "KeyError: 'lost'"}
    [line] = [e for e in logs if e["event"] == "component_died"]
    assert line["component"] == "fetcher-0"
    assert "KeyError: 'lost'" in line["traceback"]
