"""Webhook management against the simulator, and test deliveries reaching a running daemon."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fonzipd import cli
from fonzipd.app import Daemon
from fonzipd.config import settings_from_dict
from fonzipd.fonzip.client import FonzipClient
from fonzipd.fonzip.limiter import RateLimiter
from fonzipd.fonzip.token import MemoryTokenStore
from fonzipd.simulator import EVENT_KEYS, Simulator
from fonzipd.webhooks import WebhookError, find, last_seen, register, send_test, webhook_name

TOKEN = "webhooks-test-token-0123456789"
URL = "https://fonzipd.example.org/fonzip/webhook"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(seed=5, days=1, per_day=5, rate_per_minute=6000) as s:
        yield s


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[FonzipClient]:
    settings = settings_from_dict(
        {
            "fonzip": {
                "base_url": await sim.start(),
                "client_id": "sim-client",
                "client_secret": "sim-secret",
            }
        },
        base_dir=Path("."),
        origin="(test)",
    )
    # A fast limiter: these tests are about webhooks, not about pacing.
    limiter = RateLimiter(6000, burst=50)
    async with FonzipClient(settings.fonzip, token_store=MemoryTokenStore(), limiter=limiter) as c:
        yield c


def test_webhook_name_is_safe_for_fonzip() -> None:
    assert webhook_name("vps-1.example.org") == "fonzipd-vps-1-example-org"
    assert webhook_name("(weird) host!") == "fonzipd-weird-host"
    assert webhook_name("") == "fonzipd-host"


async def test_register_creates_an_authenticated_webhook_for_all_six_events(
    sim: Simulator, client: FonzipClient
) -> None:
    reg = await register(client, URL, TOKEN, name="fonzipd-vps")
    assert reg.created
    hook = sim.webhooks[int(reg.webhook["id"])]
    assert hook.name == "fonzipd-vps"
    assert hook.url == URL
    assert hook.authentication is True
    assert hook.auth_token == TOKEN
    assert hook.events == dict.fromkeys(EVENT_KEYS.values(), True)


async def test_register_is_idempotent_by_url_and_avoids_taken_names(
    sim: Simulator, client: FonzipClient
) -> None:
    first = await register(client, URL, TOKEN, name="fonzipd-vps")
    again = await register(client, URL, TOKEN, name="fonzipd-vps")
    assert not again.created
    assert again.webhook["id"] == first.webhook["id"]
    other = await register(client, URL + "2", TOKEN, name="fonzipd-vps")
    assert other.created
    assert other.webhook["name"] == "fonzipd-vps-2"
    assert len(sim.webhooks) == 2


async def test_find_by_id_or_url_and_delete(sim: Simulator, client: FonzipClient) -> None:
    reg = await register(client, URL, TOKEN, name="fonzipd-a")
    await register(client, URL + "b", TOKEN, name="fonzipd-b")
    assert (await find(client, url=URL))["id"] == reg.webhook["id"]
    with pytest.raises(WebhookError, match="2 webhooks"):
        await find(client)
    await client.delete_webhook(int(reg.webhook["id"]))
    with pytest.raises(WebhookError, match="no webhook with id"):
        await find(client, webhook_id=int(reg.webhook["id"]))


async def test_a_test_delivery_reaches_the_running_daemon(
    tmp_path: Path, sim: Simulator, client: FonzipClient
) -> None:
    settings = settings_from_dict(
        {
            "fonzip": {
                "base_url": await sim.start(),
                "client_id": "sim-client",
                "client_secret": "sim-secret",
            },
            "listener": {"host": "127.0.0.1", "port": 0, "auth_token": TOKEN},
            "state": {"path": "state.db"},
            "reconciler": {"enabled": False},
        },
        base_dir=tmp_path,
        origin="(test)",
    )
    daemon = Daemon(settings, drain_timeout=2)
    await daemon.start()
    try:
        assert daemon.store is not None
        url = f"http://127.0.0.1:{daemon.port}/fonzip/webhook"
        reg = await register(client, url, TOKEN)
        hook_id = int(reg.webhook["id"])
        assert await last_seen(daemon.store, hook_id) is None
        before = dt.datetime.now(dt.UTC)
        took = await send_test(client, daemon.store, hook_id, timeout=10)
        elapsed = dt.datetime.now(dt.UTC) - before
        # The daemon recorded the delivery during the call, and the time reported is
        # part of the call's own duration.
        seen = await last_seen(daemon.store, hook_id)
        assert seen is not None
        assert before - dt.timedelta(seconds=1) <= seen <= before + elapsed
        assert dt.timedelta(0) <= took <= elapsed
        assert [d.payload["id"] for d in sim.deliveries] == [0]
        assert sim.deliveries[0].ok
        # Nobody listens at this one: the command says so instead of hanging.
        gone = await register(client, "http://127.0.0.1:9/nothing", TOKEN, name="gone")
        with pytest.raises(WebhookError, match="no delivery"):
            await send_test(client, daemon.store, int(gone.webhook["id"]), timeout=0.3)
    finally:
        await daemon.stop()


async def test_cli_register_list_delete_and_check_online(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[fonzip]
base_url = "{await sim.start()}"
client_id = "sim-client"
client_secret = "sim-secret"
[listener]
auth_token = "{TOKEN}"
[state]
path = "state.db"
"""
    )

    def run(*argv: str) -> int:
        return cli.main([*argv, "--config", str(config)])

    # The CLI runs its own event loop; a thread keeps it off this test's loop.
    assert await asyncio.to_thread(run, "webhooks", "register", "--url", URL) == cli.EXIT_OK
    assert await asyncio.to_thread(run, "webhooks", "register", "--url", URL) == cli.EXIT_OK
    assert await asyncio.to_thread(run, "webhooks", "list") == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "created" in out
    assert "already registered" in out
    assert URL in out
    assert len(sim.webhooks) == 1
    assert await asyncio.to_thread(run, "check", "--online") == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "Fonzip OK: association" in out
    assert "access token valid until" in out
    tokens = [r for r in sim.requests if r.path.endswith("/token")]
    assert len(tokens) == 1  # check --online reused the token the webhooks commands stored
    assert await asyncio.to_thread(run, "webhooks", "delete", "--url", URL) == cli.EXIT_OK
    assert sim.webhooks == {}
    # A daemon that is not running cannot receive a test delivery: said, not waited for.
    assert await asyncio.to_thread(run, "webhooks", "test", "--url", URL) == cli.EXIT_FAILED
