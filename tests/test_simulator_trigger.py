"""`fonzipd simulate trigger` through the real CLI against a running simulator and receiver."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from fonzipd.kinds import Kind
from fonzipd.simulator import Simulator
from fonzipd.simulator.trigger import TriggerError, events, parse


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fonzipd",
        "simulate",
        "trigger",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/hook", got
    await runner.cleanup()


async def test_trigger_makes_the_event_and_its_webhooks(
    receiver: tuple[str, list[dict[str, Any]]],
) -> None:
    url, got = receiver
    async with Simulator(seed=2, days=1, per_day=1) as sim:
        base = await sim.start()
        sim.configure_webhook_target(url, "trigger-test-token-0123")
        root = base.removesuffix("/api/v2")
        code, out, err = await cli("donation.refunded", "--url", root)
        assert code == 0, err
        fid = int(out.split(": donation ", 1)[1].split()[0])
        assert (
            out == f"triggered donation.refunded: donation {fid} refunded (webhook status 4 sent)\n"
        )
        detail = next(o for o in sim.objects(Kind.DONATION) if int(o["id"]) == fid)
        assert detail["transaction"]["payment_status"] == 4
        await sim.wait_deliveries_idle()
        assert [(h["id"], h["status"]) for h in got] == [(fid, 3), (fid, 4)]

        code, out, _ = await cli("ticket_sale.failed", "--url", root)
        assert code == 0
        assert "ticket_sale" in out
        assert "failed (webhook status 5 sent)" in out

        code, _, err = await cli("donation.exploded", "--url", root)
        assert code == 1
        assert "unknown event 'donation.exploded': one of campaign.created, " in err
    code, _, err = await cli("donation.succeeded", "--url", root)
    assert code == 1
    assert f"no simulator at {root}/_sim" in err
    assert "fonzipd simulate --port 8788" in err


def test_every_listed_event_parses_and_others_do_not() -> None:
    for name in events():
        parse(name)
    assert parse("donation.paid") == (Kind.DONATION, "succeeded")
    for bad in ("campaign.refunded", "donation.created", "donation", "gift.succeeded"):
        with pytest.raises(TriggerError):
            parse(bad)
