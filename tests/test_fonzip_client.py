"""The Fonzip client: on the wire, token lifecycle, retries, the six kinds, and their traps."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import re
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus
from zoneinfo import ZoneInfo

import aiohttp
import pydantic
import pytest
import structlog
from aiohttp import web
from aioresponses import aioresponses
from pydantic import HttpUrl, SecretStr

from fonzipd import logs as fonzipd_logs
from fonzipd.config import FonzipSettings
from fonzipd.fonzip.client import USER_AGENT, FonzipClient, MemoryFormIdCache
from fonzipd.fonzip.errors import (
    FonzipBadResponse,
    FonzipError,
    FonzipNotFound,
    FonzipRateLimited,
    FonzipRequestError,
    FonzipUnauthorized,
    FonzipUnavailable,
)
from fonzipd.fonzip.limiter import RateLimiter
from fonzipd.fonzip.token import FileTokenStore, MemoryTokenStore
from fonzipd.kinds import Kind
from fonzipd.simulator import Simulator
from tests.support import until

IST = ZoneInfo("Europe/Istanbul")
DAY_START = dt.datetime(2024, 5, 6, tzinfo=IST)
DAY_END = dt.datetime(2024, 5, 7, tzinfo=IST)


class FastClock:
    """Real time plus every sleep taken, which returns at once: retries cost nothing."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.offset)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.offset += max(0.0, seconds)
        await asyncio.sleep(0)


def settings(base_url: str, **kw: Any) -> FonzipSettings:
    values: dict[str, Any] = {
        "base_url": HttpUrl(base_url),
        "client_id": SecretStr("sim-client"),
        "client_secret": SecretStr("sim-secret"),
        "max_retries": 3,
        "request_timeout": 5,
        "requests_per_minute": 240,
    }
    values.update(kw)
    return FonzipSettings(**values)


def client_for(base_url: str, clock: FastClock | None = None, **kw: Any) -> FonzipClient:
    clock = clock or FastClock()
    store = kw.pop("token_store", None) or MemoryTokenStore()
    return FonzipClient(
        settings(base_url, **kw.pop("settings", {})),
        token_store=store,
        clock=clock,
        limiter=RateLimiter(6000, clock=clock, burst=50),
        **kw,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[str]]]:
    """Start a loopback server with the given ``"METHOD /path": handler`` routes."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for key, handler in routes.items():
            method, path = key.split(" ", 1)
            app.router.add_route(method, "/api/v2" + path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}/api/v2"

    yield start
    for runner in runners:
        await runner.cleanup()


def token_ok(name: str = "tok") -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"access_token": name, "token_type": "Bearer", "expires_in": 3600})

    return handler


# -- the wire --------------------------------------------------------------------------


async def test_headers_form_encoded_token_and_plus_encoded_as_2b(serve: Any) -> None:
    seen: dict[str, Any] = {}

    async def token(request: web.Request) -> web.Response:
        seen["token_ct"] = request.content_type
        seen["form"] = dict(await request.post())
        seen["token_ua"] = request.headers.get("User-Agent")
        return web.json_response({"access_token": "tok", "expires_in": 3600})

    async def donations(request: web.Request) -> web.Response:
        seen["raw"] = request.raw_path
        seen["query"] = dict(request.query)
        seen["headers"] = dict(request.headers)
        return web.json_response({"donation_list": [], "total": 0})

    base = await serve({"POST /token": token, "GET /donations": donations})
    async with client_for(base) as client:
        result = await client.list_window(Kind.DONATION, "paid", DAY_START, DAY_END)
    assert result.rows == []
    assert result.total == 0
    assert result.calls == 1
    assert seen["token_ct"] == "application/x-www-form-urlencoded"
    assert seen["form"] == {
        "grant_type": "client_credentials",
        "client_id": "sim-client",
        "client_secret": "sim-secret",
    }
    assert seen["token_ua"] == USER_AGENT
    assert re.fullmatch(r"fonzipd/\d+\.\d+\.\d+.*", USER_AGENT)
    assert seen["headers"]["User-Agent"] == USER_AGENT
    assert seen["headers"]["Accept"] == "application/json"
    assert seen["headers"]["Authorization"] == "Bearer tok"
    assert "start_date=2024-05-06T00:00:00%2B03:00" in seen["raw"]
    assert "end_date=2024-05-07T00:00:00%2B03:00" in seen["raw"]
    assert seen["query"]["start_date"] == "2024-05-06T00:00:00+03:00"
    assert seen["query"]["status"] == "paid"
    assert seen["query"]["order_by"] == "transaction__complete_date"
    assert (seen["query"]["start_page"], seen["query"]["how_many"]) == ("1", "100")


# -- tokens ----------------------------------------------------------------------------


async def test_409_waits_logs_once_then_gets_a_token(serve: Any) -> None:
    answers = iter([409, 409, 409, 200])

    async def token(request: web.Request) -> web.Response:
        if next(answers) == 409:
            return web.json_response(
                {"error": "invalid_request", "error_description": "Access token already created"},
                status=409,
            )
        return web.json_response({"access_token": "late", "expires_in": 3600})

    async def me(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer late"
        return web.json_response({"id": 1, "name": "Dernek"})

    base = await serve({"POST /token": token, "GET /me": me})
    clock = FastClock()
    with structlog.testing.capture_logs() as logs:
        async with client_for(base, clock) as client:
            assert (await client.me())["id"] == 1
    assert [e["event"] for e in logs].count("token_locked") == 1
    assert clock.sleeps.count(30.0) == 3
    assert client.calls["POST /token", "409"] == 3


async def test_401_refreshes_the_token_once_and_retries(serve: Any) -> None:
    issued = iter(["old", "new"])

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": next(issued), "expires_in": 3600})

    async def me(request: web.Request) -> web.Response:
        if request.headers["Authorization"] == "Bearer old":
            return web.json_response({"error": "Unauthorized Access"}, status=401)
        return web.json_response({"id": 1})

    base = await serve({"POST /token": token, "GET /me": me})
    store = MemoryTokenStore()
    async with client_for(base, token_store=store) as client:
        assert (await client.me())["id"] == 1
    assert client.calls["GET /me", "401"] == 1
    assert client.calls["GET /me", "200"] == 1
    assert [t.access_token for t in store.tokens.values()] == ["new"]


async def test_persistent_401_raises_unauthorized_after_one_refresh(serve: Any) -> None:
    async def me(request: web.Request) -> web.Response:
        return web.json_response({"error": "Unauthorized Access"}, status=401)

    base = await serve({"POST /token": token_ok(), "GET /me": me})
    async with client_for(base) as client:
        with pytest.raises(FonzipUnauthorized, match="GET /me") as info:
            await client.me()
    assert info.value.error_text == "Unauthorized Access"
    assert client.calls["GET /me", "401"] == 2
    assert client.calls["POST /token", "200"] == 2


@pytest.mark.parametrize("status", [401, 403])
async def test_bad_credentials_stop_with_a_clear_error(serve: Any, status: int) -> None:
    async def token(request: web.Request) -> web.Response:
        body = {"error": "invalid_client", "error_description": "Unauthorized Access"}
        return web.json_response(body, status=status)

    base = await serve({"POST /token": token})
    async with client_for(base) as client:
        with pytest.raises(FonzipUnauthorized, match="FONZIPD_FONZIP__CLIENT_SECRET"):
            await client.me()
    assert client.calls["POST /token", str(status)] == 1


async def test_fixed_token_skips_the_token_endpoint(serve: Any) -> None:
    async def me(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer fixed-one"
        return web.json_response({"id": 3})

    base = await serve({"GET /me": me})
    kw = {"access_token": SecretStr("fixed-one"), "client_id": None, "client_secret": None}
    async with client_for(base, settings=kw) as client:
        assert (await client.me())["id"] == 3


def test_missing_credentials_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="FONZIPD_FONZIP__CLIENT_ID"):
        FonzipClient(
            settings("http://127.0.0.1:9/api/v2", client_id=None), token_store=MemoryTokenStore()
        )


# -- retries ---------------------------------------------------------------------------


async def test_429_storm_pauses_everyone_and_honours_retry_after(serve: Any) -> None:
    left = {"429": 3}

    async def me(request: web.Request) -> web.Response:
        if left["429"]:
            left["429"] -= 1
            return web.json_response(
                {"error": "rate limit"}, status=429, headers={"Retry-After": "7"}
            )
        return web.json_response({"id": 1})

    base = await serve({"POST /token": token_ok(), "GET /me": me})
    clock = FastClock()
    async with client_for(base, clock) as client:
        await client.me()
    assert client.calls["GET /me", "429"] == 3
    assert client.retries == 3
    # Retry-After 7 became a pause of the shared limiter, waited out on the clock.
    assert sum(s for s in clock.sleeps if s > 1) == pytest.approx(21, abs=0.5)


async def test_429_after_all_retries_is_rate_limited(serve: Any) -> None:
    async def me(request: web.Request) -> web.Response:
        return web.json_response({"error": "Rate limit exceeded"}, status=429)

    base = await serve({"POST /token": token_ok(), "GET /me": me})
    async with client_for(base) as client:
        with pytest.raises(FonzipRateLimited) as info:
            await client.me()
    assert info.value.error_text == "Rate limit exceeded"
    assert client.calls["GET /me", "429"] == 4  # 1 + max_retries


async def test_other_4xx_are_not_retried(serve: Any) -> None:
    async def donations(request: web.Request) -> web.Response:
        return web.json_response({"error": "Lutfen gecerli bir tarih araligi girin"}, status=400)

    base = await serve({"POST /token": token_ok(), "GET /donations": donations})
    async with client_for(base) as client:
        with pytest.raises(FonzipRequestError, match="tarih") as info:
            await client.list_window(Kind.DONATION, "paid", DAY_START, DAY_END)
    assert info.value.endpoint == "GET /donations"
    assert info.value.status == 400
    assert client.calls["GET /donations", "400"] == 1


async def test_not_json_and_missing_keys_are_bad_responses_naming_the_endpoint(
    serve: Any,
) -> None:
    async def detail(request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    async def donations(request: web.Request) -> web.Response:
        return web.json_response({"donation_list": [{"id": "7"}], "total": 1})

    async def ticket(request: web.Request) -> web.Response:
        return web.json_response({"ticket": {"id": 1}})

    base = await serve(
        {
            "POST /token": token_ok(),
            "GET /donation/{id}": detail,
            "GET /donations": donations,
            "GET /ticket-sale/{id}": ticket,
        }
    )
    async with client_for(base) as client:
        with pytest.raises(FonzipBadResponse, match=r"GET /donation/5: not JSON"):
            await client.fetch_detail(Kind.DONATION, 5)
        with pytest.raises(FonzipBadResponse, match=r"donation_list\[0\]\.id is str"):
            await client.list_window(Kind.DONATION, "paid", DAY_START, DAY_END)
        with pytest.raises(
            FonzipBadResponse, match=r"GET /ticket-sale/1: missing key 'ticket_sale'"
        ):
            await client.fetch_detail(Kind.TICKET_SALE, 1)


# -- mocked failures the loopback cannot produce ----------------------------------------

BASE = "https://fonzip.test/api/v2"
TOKEN_URL = f"{BASE}/token"
ME_URL = f"{BASE}/me"


async def test_connection_reset_and_truncated_body_are_retried() -> None:
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, payload={"access_token": "t", "expires_in": 3600})
        mocked.get(ME_URL, exception=aiohttp.ClientOSError(104, "Connection reset by peer"))
        mocked.get(
            ME_URL, exception=aiohttp.ClientPayloadError("Response payload is not completed")
        )
        mocked.get(ME_URL, exception=TimeoutError())
        mocked.get(ME_URL, payload={"id": 9})
        async with client_for(BASE) as client:
            assert (await client.me())["id"] == 9
    assert client.calls["GET /me", "network"] == 3


async def test_truncated_json_body_is_a_bad_response() -> None:
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, payload={"access_token": "t", "expires_in": 3600})
        mocked.get(f"{BASE}/donation/5", body='{"donation": {"id": 5, "na', status=200)
        async with client_for(BASE) as client:
            with pytest.raises(FonzipBadResponse, match="GET /donation/5: not JSON"):
                await client.fetch_detail(Kind.DONATION, 5)


async def test_network_errors_after_all_retries_are_unavailable() -> None:
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, payload={"access_token": "t", "expires_in": 3600})
        mocked.get(ME_URL, exception=aiohttp.ServerDisconnectedError(), repeat=True)
        async with client_for(BASE) as client:
            with pytest.raises(FonzipUnavailable, match="GET /me: no answer after 4") as info:
                await client.me()
    assert not info.value.blocked


@pytest.mark.parametrize("status", [520, 521, 523])
async def test_cloudflare_520s_say_the_ip_is_blocked(status: int) -> None:
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, payload={"access_token": "t", "expires_in": 3600})
        mocked.get(ME_URL, status=status, body="<html>cf</html>", repeat=True)
        with structlog.testing.capture_logs() as logs:
            async with client_for(BASE) as client:
                with pytest.raises(FonzipUnavailable, match="blocking this IP") as info:
                    await client.me()
    assert info.value.blocked
    assert info.value.status == status
    blocked = [e for e in logs if e["event"] == "fonzip_ip_blocked"]
    assert blocked
    assert "contact Fonzip support" in blocked[0]["hint"]


async def test_5xx_then_success_is_retried_with_backoff() -> None:
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, payload={"access_token": "t", "expires_in": 3600})
        mocked.get(ME_URL, status=502, body="bad gateway")
        mocked.get(ME_URL, status=503, payload={"error": "down"})
        mocked.get(ME_URL, payload={"id": 2})
        clock = FastClock()
        async with client_for(BASE, clock, retry_base=1.0) as client:
            assert (await client.me())["id"] == 2
    retry_sleeps = [s for s in clock.sleeps if s > 0]
    assert len(retry_sleeps) == 2
    assert retry_sleeps[0] <= 1.0
    assert retry_sleeps[1] <= 2.0


# -- against the simulator ---------------------------------------------------------------

SIM_END = dt.date(2024, 5, 8)


def sim_window(days: int) -> tuple[dt.datetime, dt.datetime]:
    first = SIM_END - dt.timedelta(days=days - 1)
    return (
        dt.datetime.combine(first, dt.time(), IST),
        dt.datetime.combine(SIM_END + dt.timedelta(days=1), dt.time(), IST),
    )


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(seed=7, days=2, per_day=12, end_date=SIM_END) as simulator:
        yield simulator


async def test_all_six_kinds_list_and_detail_against_the_simulator(sim: Simulator) -> None:
    assert sim.base_url is not None
    start, end = sim_window(2)
    async with client_for(sim.base_url) as client:
        for kind in Kind:
            listed: dict[int, dict[str, Any]] = {}
            for status in kind.list_statuses:
                result = await client.list_window(kind, status, start, end)
                if kind is not Kind.CAMPAIGN:
                    assert result.total == len(result.rows), (kind, status)
                listed.update((r["id"], r) for r in result.rows)
            expected = {o["id"]: o for o in sim.objects(kind)}
            assert set(listed) == set(expected), kind
            for fonzip_id in sorted(listed)[:3]:
                detail = await client.fetch_detail(kind, fonzip_id)
                assert detail.kind is kind
                assert detail.fonzip_id == fonzip_id
                if kind is Kind.ECARD_SALE:
                    row = listed[fonzip_id]
                    # The detail lacks these; the client found the list row itself.
                    for field in ("transaction__complete_date", "transaction__currency__iso_code"):
                        assert detail.obj[field] == row[field]
                        assert field not in expected[fonzip_id]
                else:
                    assert detail.obj == expected[fonzip_id], kind


async def test_form_answer_without_cache_finds_its_form_and_remembers_it(sim: Simulator) -> None:
    assert sim.base_url is not None
    answer_id = sim.objects(Kind.FORM_ANSWER)[0]["id"]
    cache = MemoryFormIdCache()
    clock = FastClock()
    # "Now" is the simulator's last day: the recent-lists search must find the answer.
    clock.offset = (
        dt.datetime.combine(SIM_END, dt.time(12), IST) - dt.datetime.now(dt.UTC)
    ).total_seconds()
    async with client_for(sim.base_url, clock, form_ids=cache) as client:
        detail = await client.fetch_detail(Kind.FORM_ANSWER, answer_id)
        assert detail.endpoint == f"/form/{sim.form_id_of(answer_id)}/answer/{answer_id}"
        assert await cache.get(answer_id) == sim.form_id_of(answer_id)
        searched = sum(n for (t, _), n in client.calls.items() if t == "GET /form-answers")
        again = await client.fetch_detail(Kind.FORM_ANSWER, answer_id)
        assert again.obj == detail.obj
        assert sum(n for (t, _), n in client.calls.items() if t == "GET /form-answers") == searched


async def test_form_answer_falls_back_to_trying_each_form(sim: Simulator) -> None:
    assert sim.base_url is not None
    answer_id = sim.objects(Kind.FORM_ANSWER)[-1]["id"]
    clock = FastClock()
    clock.offset = 365 * 86400.0  # far from the data: the list search finds nothing
    async with client_for(sim.base_url, clock) as client:
        detail = await client.fetch_detail(Kind.FORM_ANSWER, answer_id)
    assert detail.endpoint == f"/form/{sim.form_id_of(answer_id)}/answer/{answer_id}"


async def test_membership_fee_id_of_a_debt_falls_back_to_debt_endpoint(sim: Simulator) -> None:
    assert sim.base_url is not None
    debt = sim.debt_ids()[0]
    async with client_for(sim.base_url) as client:
        detail = await client.fetch_detail(Kind.MEMBERSHIP_FEE, debt)
        with pytest.raises(FonzipNotFound, match="/debt/999999"):
            await client.fetch_detail(Kind.MEMBERSHIP_FEE, 999_999)
    assert detail.endpoint == f"/debt/{debt}"
    assert client.calls["GET /subscription/{id}", "404"] == 2


async def test_campaigns_are_filtered_to_the_window(sim: Simulator) -> None:
    assert sim.base_url is not None
    start = dt.datetime.combine(SIM_END, dt.time(), IST)
    end = start + dt.timedelta(days=1)
    async with client_for(sim.base_url) as client:
        result = await client.list_window(Kind.CAMPAIGN, "created", start, end)
    expected = [
        o["id"]
        for o in sim.objects(Kind.CAMPAIGN)
        if start <= dt.datetime.fromisoformat(o["create_date"]) < end
    ]
    assert sorted(r["id"] for r in result.rows) == sorted(expected)
    assert result.total is None


async def test_pagination_of_more_than_100_rows_counts_requests() -> None:
    async with Simulator(seed=1, days=1, per_day=1000, end_date=SIM_END) as sim:
        assert sim.base_url is not None
        start, end = sim_window(1)
        async with client_for(sim.base_url) as client:
            results = {
                s: await client.list_window(Kind.DONATION, s, start, end)
                for s in Kind.DONATION.list_statuses
            }
    paid = results["paid"]
    assert paid.total is not None
    assert paid.total > 100
    assert len(paid.rows) == paid.total == len({r["id"] for r in paid.rows})
    total_rows = sum(len(r.rows) for r in results.values())
    list_calls = sum(r.calls for r in results.values())
    expected_calls = sum(max(1, -(-(r.total or 0) // 100)) for r in results.values())
    assert list_calls == expected_calls
    assert client.calls["POST /token", "200"] == 1
    print(f"\n1000-record day: {total_rows} rows, {list_calls} list requests + 1 token request")


async def test_token_is_reused_across_a_restart_via_the_file_store(tmp_path: Path) -> None:
    clock = FastClock()
    path = tmp_path / "token.json"
    async with Simulator(seed=3, days=1, per_day=12, end_date=SIM_END, clock=clock) as sim:
        assert sim.base_url is not None
        store = FileTokenStore(path)
        async with client_for(sim.base_url, clock, token_store=store) as first:
            await first.me()
        async with client_for(sim.base_url, clock, token_store=FileTokenStore(path)) as second:
            await second.me()
        assert first.calls["POST /token", "200"] == 1
        assert ("POST /token", "200") not in second.calls
        assert ("POST /token", "409") not in second.calls
        # Without the file, a restart meets Fonzip's 409 and waits out the old token.
        with structlog.testing.capture_logs() as logs:
            async with client_for(sim.base_url, clock) as third:
                await third.me()
    assert [e["event"] for e in logs].count("token_locked") == 1
    assert third.calls["POST /token", "409"] >= 100
    assert third.calls["POST /token", "200"] == 1
    assert 3600 <= clock.offset <= 3600 + 60


async def test_simulator_429_storm_is_survived(sim: Simulator) -> None:
    assert sim.base_url is not None
    sim.faults.update({"burst_429": 3})
    async with client_for(sim.base_url) as client:
        got = await asyncio.gather(*(client.me() for _ in range(3)))
    assert len(got) == 3
    assert client.calls["GET /me", "429"] + client.calls["POST /token", "429"] == 3


async def test_webhook_management_against_the_simulator(sim: Simulator) -> None:
    assert sim.base_url is not None
    async with client_for(sim.base_url) as client:
        hook = await client.create_webhook("fonzipd-1", "http://127.0.0.1:9/hook", "x" * 20)
        assert hook["url"] == "http://127.0.0.1:9/hook"
        assert [w["id"] for w in await client.list_webhooks()] == [hook["id"]]
        await client.delete_webhook(hook["id"])
        assert await client.list_webhooks() == []
        with pytest.raises(ValueError, match="letters"):
            await client.create_webhook("bad (name)", "http://127.0.0.1:9/x", "x" * 20)


# -- a hostile Fonzip: nothing it answers puts a secret in a log line or a message ------

CLIENT_SECRET = "hostile-test-client-secret-9f3a"
ACCESS_TOKEN = "live-access-token-5be21c7d0a"


class LogCapture:
    """Every rendered log line, JSON and console, as the daemon would write them."""

    def __init__(self) -> None:
        self.text = ""

    def log_failure(self, exc: BaseException) -> None:
        # What the fetcher and the reconciler do with a failure: a line with the error,
        # and a traceback (with its frames) when it is not a FonzipError.
        for fmt in ("json", "console"):
            out = io.StringIO()
            fonzipd_logs.configure("debug", fmt, stream=out)
            log = structlog.get_logger("hostile")
            try:
                raise exc
            except BaseException:
                log.exception("fetch_crashed", error=str(exc))
            log.warning("fetch_failed", error=str(exc), error_text=getattr(exc, "error_text", ""))
            fonzipd_logs.flush()
            self.text += out.getvalue()


def hostile_body(kind: str, secret: str, status: int, token: str = ACCESS_TOKEN) -> web.Response:
    if kind == "deep":
        body = b'{"error": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        return web.Response(body=body, status=status, content_type="application/json")
    if kind == "echo_json":
        text = f"invalid secret {secret} (token {token})"
        return web.json_response({"error": text, secret: {"id": 5, "x": secret}}, status=status)
    if kind == "echo_text":
        text = f"{'x' * 150}client_secret={quote_plus(secret)}&token={token}"
        return web.Response(text=text, status=status)
    assert kind == "not_json"
    return web.Response(body=b"\xff\xfe<html>" + secret.encode() + b"</html>", status=status)


@pytest.mark.parametrize("step", ["token", "list", "detail"])
@pytest.mark.parametrize("status", [200, 400, 500])
@pytest.mark.parametrize("kind", ["deep", "echo_json", "echo_text", "not_json"])
async def test_hostile_answers_never_leak_a_secret(
    serve: Any, step: str, status: int, kind: str
) -> None:
    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if step == "token":
            # Before a token is issued only the API secret is ours to leak.
            return hostile_body(kind, str(form["client_secret"]), status, token="-")
        return web.json_response({"access_token": ACCESS_TOKEN, "expires_in": 3600})

    async def donations(request: web.Request) -> web.Response:
        if step == "list":
            return hostile_body(kind, CLIENT_SECRET, status)
        return web.json_response({"donation_list": [], "total": 0})

    async def detail(request: web.Request) -> web.Response:
        return hostile_body(kind, CLIENT_SECRET, status)

    base = await serve(
        {"POST /token": token, "GET /donations": donations, "GET /donation/{id}": detail}
    )
    captured = LogCapture()
    client = client_for(
        base, settings={"client_secret": SecretStr(CLIENT_SECRET), "max_retries": 1}
    )
    async with client:
        call = (
            client.fetch_detail(Kind.DONATION, 5)
            if step == "detail"
            else client.list_window(Kind.DONATION, "paid", DAY_START, DAY_END)
        )
        with pytest.raises(FonzipError) as info:
            await call
    captured.log_failure(info.value)
    told = f"{info.value} {info.value.error_text} {info.value.args}"
    for secret in (CLIENT_SECRET, quote_plus(CLIENT_SECRET), ACCESS_TOKEN):
        assert secret not in told
        assert secret not in captured.text
    assert info.value.endpoint.startswith(
        {"token": "POST /token", "list": "GET /donations", "detail": "GET /donation/5"}[step]
    )


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_never_followed_so_credentials_stay_home(
    serve: Any, status: int
) -> None:
    stolen: list[str] = []

    async def thief(request: web.Request) -> web.Response:
        stolen.append(f"{request.method} {request.path} {await request.text()}")
        return web.json_response({"access_token": "stolen-token-xxxxxx", "expires_in": 3600})

    thief_base = await serve({"POST /token": thief, "GET /donation/{id}": thief})

    async def token(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": f"{thief_base}/token"})

    base = await serve({"POST /token": token})
    async with client_for(base) as client:
        with pytest.raises(FonzipRequestError) as info:
            await client.me()
    assert info.value.endpoint == "POST /token"
    assert info.value.status == status
    assert "never follows redirects" in str(info.value)
    assert "127.0.0.1" in str(info.value)
    assert stolen == []

    async def detail(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": f"{thief_base}/donation/5"})

    base = await serve({"POST /token": token_ok("a-valid-token-123"), "GET /donation/{id}": detail})
    async with client_for(base) as client:
        with pytest.raises(FonzipRequestError, match="GET /donation/5: redirected"):
            await client.fetch_detail(Kind.DONATION, 5)
    assert stolen == []


def test_base_url_must_be_https_unless_loopback() -> None:
    for ok in (
        "https://fonzip.com/api/v2",
        "http://127.0.0.1:8/a",
        "http://localhost/a",
        "http://[::1]:9/a",
        "http://127.8.0.1/a",
    ):
        settings(ok)
    for bad in ("http://fonzip.com/api/v2", "http://10.0.0.1/api", "http://localhost.evil.org/"):
        with pytest.raises(pydantic.ValidationError, match="must start with https://"):
            settings(bad)


@pytest.mark.parametrize("announce", [True, False])
async def test_a_150_mb_answer_is_refused_after_the_cap_and_memory_stays_flat(
    serve: Any, announce: bool
) -> None:
    sent = 0
    chunk = b"x" * 65536
    total = 150 * 1024 * 1024

    async def detail(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if announce:
            resp.content_length = total
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            while sent < total:  # bounded: stops by itself at 150 MB
                await resp.write(chunk)
                sent += len(chunk)
        return resp

    base = await serve({"POST /token": token_ok(), "GET /donation/{id}": detail})
    cap = 1024 * 1024
    tracemalloc.start()
    try:
        async with client_for(base, settings={"max_response_bytes": cap}) as client:
            with pytest.raises(FonzipBadResponse, match="larger than 1048576 bytes") as info:
                await client.fetch_detail(Kind.DONATION, 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.endpoint == "GET /donation/5"
    assert client.calls["GET /donation/{id}", "200"] == 1  # one failed attempt
    assert peak < 4 * cap  # the 150 MB never reach memory
    assert sent < 32 * 1024 * 1024  # the connection was dropped, not drained


async def test_error_bodies_are_read_only_up_to_a_small_excerpt(serve: Any) -> None:
    async def detail(request: web.Request) -> web.Response:
        return web.json_response({"error": "e" * 10_000_000}, status=400)

    base = await serve({"POST /token": token_ok(), "GET /donation/{id}": detail})
    async with client_for(base) as client:
        with pytest.raises(FonzipRequestError) as info:
            await client.fetch_detail(Kind.DONATION, 5)
    assert info.value.status == 400
    assert len(str(info.value)) < 1000


async def test_the_webhook_token_is_redacted_from_errors_but_may_be_listed(serve: Any) -> None:
    hook_token = "webhook-shared-token-0123456789"
    refuse = True

    async def create(request: web.Request) -> web.Response:
        sent = (await request.json())["auth_token"]
        if refuse:
            return web.json_response({"error": f"token {sent} already used"}, status=400)
        return web.json_response({"result": "ok"})

    async def listing(request: web.Request) -> web.Response:
        # Fonzip may show a webhook's own token back: that is no reason to refuse it.
        row = {"id": 3, "name": "n", "url": "https://x.test/h", "auth_token": hook_token}
        return web.json_response({"webhook_list": [row]})

    base = await serve(
        {"POST /token": token_ok(), "POST /webhooks": create, "GET /webhooks": listing}
    )
    async with client_for(base) as client:
        with pytest.raises(FonzipRequestError) as info:
            await client.create_webhook("fonzipd", "https://x.test/h", hook_token)
        assert hook_token not in str(info.value)
        assert "[redacted]" in str(info.value)
        refuse = False
        assert (await client.create_webhook("fonzipd", "https://x.test/h", hook_token))["id"] == 3


async def test_a_detail_carries_when_its_request_was_sent_not_when_it_came_back(
    serve: Any,
) -> None:
    arrived: list[dt.datetime] = []
    answer = asyncio.Event()

    async def donation(request: web.Request) -> web.Response:
        arrived.append(dt.datetime.now(dt.UTC))
        await answer.wait()  # Fonzip answers slowly: this state was read at arrival
        tx = {"payment_status": 3, "amount": 10, "complete_date": "2024-05-06T10:00:00+03:00"}
        return web.json_response({"donation": {"id": 7, "transaction": tx}})

    base = await serve({"POST /token": token_ok(), "GET /donation/7": donation})
    async with client_for(base) as client:
        fetching = asyncio.create_task(client.fetch_detail(Kind.DONATION, 7))

        async def request_arrived() -> bool:
            return bool(arrived)

        await until(request_arrived)
        await asyncio.sleep(0.2)  # the slow answer itself, not a wait for an event
        answered_at = dt.datetime.now(dt.UTC)
        answer.set()
        detail = await fetching
    assert detail.read_at is not None
    assert detail.read_at <= arrived[0] < answered_at
