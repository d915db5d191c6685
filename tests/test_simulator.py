"""The simulator behaves like Fonzip as the reference (fonzip-api-v2.md) describes it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web

from fonzipd.kinds import Kind
from fonzipd.simulator import Simulator, serve
from tests.support import FakeClock

IST = ZoneInfo("Europe/Istanbul")
DAY = dt.date(2026, 5, 6)
UA = {"User-Agent": "fonzipd-tests/1"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime(2026, 5, 6, 12, 0, tzinfo=dt.UTC))


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    simulator = Simulator(seed=7, clock=clock, end_date=DAY, retry_delays=(0.5, 1.0))
    async with simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=UA) as session:
        yield session


class Api:
    """A minimal Fonzip client for the tests: a token and JSON calls."""

    def __init__(self, sim: Simulator, http: aiohttp.ClientSession) -> None:
        assert sim.base_url is not None
        self.base = sim.base_url
        self.http = http
        self.token: str | None = None

    async def login(self) -> None:
        status, body = await self.post_token()
        assert status == 200, body
        self.token = body["access_token"]

    async def post_token(
        self, client_id: str = "sim-client", secret: str = "sim-secret", grant: str | None = None
    ) -> tuple[int, Any]:
        form = {"grant_type": grant or "client_credentials"}
        form |= {"client_id": client_id, "client_secret": secret}
        async with self.http.post(f"{self.base}/token", data=form) as response:
            return response.status, await response.json()

    async def get(self, path: str, params: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.http.get(self.base + path, params=params, headers=headers) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()

    async def send(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.http.request(
            method, self.base + path, json=body, headers=headers
        ) as response:
            return response.status, await response.json()


@pytest.fixture
async def api(sim: Simulator, http: aiohttp.ClientSession) -> Api:
    client = Api(sim, http)
    await client.login()
    return client


def day_window(day: dt.date, end: str = "23:59:59") -> dict[str, str]:
    return {"start_date": f"{day}T00:00:00+03:00", "end_date": f"{day}T{end}+03:00"}


async def list_all(api: Api, path: str, key: str, params: dict[str, str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    page = 1
    while True:
        status, body = await api.get(path, {**params, "start_page": str(page), "how_many": "7"})
        assert status == 200, body
        rows += body[key]
        if len(body[key]) < 7:
            assert len(rows) == body["total"]
            return rows
        page += 1


# -- authentication ----------------------------------------------------------------------


async def test_token_is_one_per_client_and_expires_by_the_clock(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    api = Api(sim, http)
    status, body = await api.post_token()
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert "refresh_token" not in body

    assert await api.post_token() == (
        409,
        {"error": "invalid_request", "error_description": "Access token already created"},
    )
    clock.advance(3600)
    status, again = await api.post_token()
    assert status == 200
    assert again["access_token"] != body["access_token"]
    api.token = body["access_token"]
    assert await api.get("/me") == (401, {"error": "Unauthorized Access"})


async def test_token_rejects_bad_credentials_and_grant_types(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    api = Api(sim, http)
    assert await api.post_token(secret="wrong") == (
        401,
        {"error": "invalid_client", "error_description": "Unauthorized Access"},
    )
    status, body = await api.post_token(grant="password")
    assert (status, body["error"]) == (406, "unsupported_grant_type")


async def test_forced_foreign_token_makes_token_409(api: Api, sim: Simulator) -> None:
    sim.expire_tokens()
    foreign = sim.force_foreign_token()
    status, body = await api.post_token()
    assert status == 409
    assert "already created" in body["error_description"]
    api.token = foreign
    assert (await api.get("/me"))[0] == 200


async def test_missing_user_agent_is_cloudflare_403(sim: Simulator) -> None:
    assert sim.base_url is not None
    async with (
        aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as bare,
        bare.get(f"{sim.base_url}/me") as response,
    ):
        assert response.status == 403
        assert await response.text() == "error code: 1010"


async def test_bad_bearer_is_401(api: Api) -> None:
    api.token = "nope"
    assert await api.get("/me") == (401, {"error": "Unauthorized Access"})


async def test_rate_limit_is_a_fixed_minute_window(
    http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async with Simulator(seed=1, clock=clock, end_date=DAY, rate_per_minute=5) as sim:
        api = Api(sim, http)
        await api.login()  # /token counts for its client too
        statuses = [(await api.get("/me"))[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 200, 429]
        async with http.get(
            f"{api.base}/me", headers={"Authorization": f"Bearer {api.token}"}
        ) as response:
            assert response.status == 429
            assert "error" in await response.json()
            assert "Retry-After" not in response.headers
        sim.faults.retry_after = 7
        async with http.get(
            f"{api.base}/me", headers={"Authorization": f"Bearer {api.token}"}
        ) as response:
            assert response.headers["Retry-After"] == "7"
        clock.advance(60)
        assert (await api.get("/me"))[0] == 200
        for _ in range(4):
            await api.get("/me")
        assert (await api.get("/me"))[0] == 429
        sim.reset_rate_limit()
        assert (await api.get("/me"))[0] == 200
        assert [r.status for r in sim.requests].count(429) == 4


async def test_me_is_association_info_at_top_level(api: Api) -> None:
    status, body = await api.get("/me")
    assert status == 200
    assert body["result"] == "ok"
    assert {"id", "name", "display_name", "email", "locale"} <= set(body)
    assert "timezone" not in body


# -- lists -------------------------------------------------------------------------------

LISTS = [
    (Kind.DONATION, "/donations", "donation_list"),
    (Kind.MEMBERSHIP_FEE, "/subscriptions", "subscription_list"),
    (Kind.TICKET_SALE, "/ticket-sales", "sales_list"),
    (Kind.FORM_ANSWER, "/form-answers", "answer_list"),
    (Kind.ECARD_SALE, "/ecard-transactions", "sale_list"),
]


def local_day(value: str) -> dt.date:
    return dt.datetime.fromisoformat(value).astimezone(IST).date()


def complete_date(kind: Kind, obj: dict[str, Any], sim: Simulator) -> str:
    if kind is Kind.FORM_ANSWER:
        return str(obj["complete_date"])
    if kind is Kind.ECARD_SALE:
        return next(
            str(r["transaction__complete_date"]) for r in sim.rows(kind) if r["id"] == obj["id"]
        )
    return str(obj["transaction"]["complete_date"])


@pytest.mark.parametrize(("kind", "path", "key"), LISTS)
async def test_day_lists_page_through_every_object_of_the_day(
    api: Api, sim: Simulator, kind: Kind, path: str, key: str
) -> None:
    listed: set[int] = set()
    for status in kind.list_statuses:
        rows = await list_all(api, path, key, {"status": status, **day_window(DAY, "23:59:59")})
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), "pages overlap"
        listed |= set(ids) if status != "refund" else set()
    expected = {
        o["id"]
        for o in sim.objects(kind)
        if local_day(complete_date(kind, o, sim)) == DAY
        and (kind is not Kind.DONATION or not complete_date(kind, o, sim).endswith(".600000+03:00"))
    }
    refunded = {
        o["id"]
        for o in sim.objects(kind)
        if (o.get("transaction") or {}).get("payment_status") == 4
        or o.get("transaction__payment_status") == 4
    }
    assert listed == expected - refunded


async def test_end_bound_is_inclusive_and_the_last_subsecond_needs_a_wider_window(
    api: Api,
) -> None:
    day = DAY - dt.timedelta(days=1)
    narrow = await list_all(api, "/donations", "donation_list", day_window(day, "23:59:59"))
    wide_window = {"start_date": f"{day}T00:00:00+03:00", "end_date": f"{DAY}T00:00:00+03:00"}
    wide = await list_all(api, "/donations", "donation_list", wide_window)
    times = {r["transaction__complete_date"][11:] for r in narrow}
    assert "00:00:00+03:00" in times
    assert "23:59:59+03:00" in times
    extra = [r for r in wide if r not in narrow]
    assert any(r["transaction__complete_date"].endswith("T23:59:59.600000+03:00") for r in extra)
    assert any(r["transaction__complete_date"].endswith("T00:00:00+03:00") for r in extra)


async def test_date_params_accept_z_and_encoded_plus_but_not_a_bare_space(api: Api) -> None:
    utc_window = {
        "start_date": f"{DAY - dt.timedelta(1)}T21:00:00Z",
        "end_date": f"{DAY}T20:59:59Z",
    }
    status, in_utc = await api.get("/donations", {**utc_window, "how_many": "100"})
    assert status == 200
    _, with_offset = await api.get("/donations", {**day_window(DAY), "how_many": "100"})
    assert in_utc == with_offset
    raw = f"/donations?start_date={DAY}T00:00:00%2B03:00&end_date={DAY}T23:59:59%2B03:00"
    assert (await api.get(raw))[1]["total"] == with_offset["total"]
    unencoded = f"/donations?start_date={DAY}T00:00:00+03:00&end_date={DAY}T23:59:59+03:00"
    assert await api.get(unencoded) == (400, {"error": "Lutfen gecerli bir tarih araligi girin"})


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"start_date": f"{DAY}T00:00:00+03:00"},
        {"start_date": "dün", "end_date": f"{DAY}T00:00:00+03:00"},
        {"start_date": f"{DAY}T10:00:00+03:00", "end_date": f"{DAY}T09:00:00+03:00"},
    ],
)
async def test_bad_date_range_is_400_in_turkish(api: Api, params: dict[str, str]) -> None:
    assert await api.get("/donations", params) == (
        400,
        {"error": "Lutfen gecerli bir tarih araligi girin"},
    )


async def test_paging_defaults_and_limits(api: Api) -> None:
    status, body = await api.get("/donations", day_window(DAY))
    assert status == 200
    assert len(body["donation_list"]) == 10
    assert body["total"] > 10
    status, body = await api.get("/donations", {**day_window(DAY), "how_many": "101"})
    assert status == 400
    assert set(body) == {"error"}
    status, body = await api.get("/donations", {**day_window(DAY), "start_page": "999"})
    assert (status, body["donation_list"]) == (200, [])


async def test_order_by_complete_date_both_ways_with_ties_by_id(api: Api) -> None:
    window = {**day_window(DAY), "how_many": "100"}
    _, asc = await api.get("/donations", {**window, "order_by": "transaction__complete_date"})
    _, desc = await api.get("/donations", window)  # default: newest first
    key_asc = [(r["transaction__complete_date"], r["id"]) for r in asc["donation_list"]]
    assert key_asc == sorted(key_asc)
    dates_desc = [r["transaction__complete_date"] for r in desc["donation_list"]]
    assert dates_desc == sorted(dates_desc, reverse=True)
    assert (await api.get("/donations", {**window, "order_by": "hacker"}))[0] == 400


async def test_refund_lists_filter_on_the_refund_date(api: Api, sim: Simulator) -> None:
    earlier = DAY - dt.timedelta(days=2)
    _, paid = await api.get("/donations", {**day_window(earlier), "how_many": "100"})
    victim = paid["donation_list"][0]["id"]
    await sim.refund(Kind.DONATION, victim, deliver=False)  # the clock is on DAY
    _, refunds_today = await api.get(
        "/donations", {**day_window(DAY), "status": "refund", "how_many": "100"}
    )
    row = next(r for r in refunds_today["donation_list"] if r["id"] == victim)
    assert row["transaction__payment_status"] == 4
    assert local_day(row["transaction__refund_date"]) == DAY
    assert local_day(row["transaction__complete_date"]) == earlier
    _, paid_after = await api.get("/donations", {**day_window(earlier), "how_many": "100"})
    assert victim not in {r["id"] for r in paid_after["donation_list"]}
    assert paid_after["total"] == paid["total"] - 1


async def test_list_rows_are_flat_and_shaped_per_kind(api: Api) -> None:
    window = {**day_window(DAY), "how_many": "1"}
    _, donations = await api.get("/donations", window)
    row = donations["donation_list"][0]
    for field in (
        "transaction__amount",
        "transaction__currency__iso_code",
        "transaction__complete_date",
        "transaction__payment_status",
        "user__email",
    ):
        assert field in row
    _, answers = await api.get("/form-answers", window)
    assert "custom_form_id" in answers["answer_list"][0]
    _, tickets = await api.get("/ticket-sales", window)
    assert "transaction" in tickets["sales_list"][0]  # the reference's row is TicketSale


async def test_status_filter_values(api: Api) -> None:
    for path in ("/ecard-transactions", "/donations", "/form-answers"):
        status, body = await api.get(path, {**day_window(DAY), "status": "all"})
        assert status == 400
        assert "error" in body
    assert (await api.get("/form-answers", {**day_window(DAY), "status": "paid"}))[0] == 400


async def test_ecard_rows_follow_base_and_default_sets(api: Api) -> None:
    window = {**day_window(DAY), "how_many": "1"}
    _, default = await api.get("/ecard-transactions", window)
    row = default["sale_list"][0]
    assert {"id", "certificate_file", "transaction__complete_date", "sent_mail__status"} <= set(row)
    assert "transaction__refund_date" not in row
    _, chosen = await api.get(
        "/ecard-transactions", [*window.items(), ("list", "fonzip_id"), ("list", "amount")]
    )
    row = chosen["sale_list"][0]
    assert "transaction__fonzip_id" in row
    assert "transaction__currency__iso_code" in row
    assert "transaction__complete_date" not in row
    assert "sent_mail__status" not in row
    _, refunds = await api.get(
        "/ecard-transactions", {**window, "status": "refund", "list": "fonzip_id"}
    )
    if refunds["sale_list"]:
        assert "transaction__refund_date" in refunds["sale_list"][0]
        assert "transaction__fonzip_id" not in refunds["sale_list"][0]


async def test_campaign_list_filters_on_create_date_and_statuses(api: Api, sim: Simulator) -> None:
    status, everything = await api.get("/fundraising-campaigns", {"how_many": "100"})
    assert status == 200
    assert everything["total"] == len(sim.objects(Kind.CAMPAIGN))
    bound = f"{DAY}T00:00:00+03:00"
    _, after = await api.get(
        "/fundraising-campaigns", {"create_date": bound, "create_date_cnd": ">", "how_many": "100"}
    )
    assert all(c["create_date"] > bound for c in after["campaign_list"])
    _, same_day = await api.get("/fundraising-campaigns", {"create_date": bound, "how_many": "100"})
    assert {local_day(c["create_date"]) for c in same_day["campaign_list"]} == {DAY}
    _, chosen = await api.get(
        "/fundraising-campaigns", [("status", "1"), ("status", "3"), ("how_many", "100")]
    )
    assert {c["status"] for c in chosen["campaign_list"]} <= {1, 3}
    assert chosen["campaign_list"]


# -- details -----------------------------------------------------------------------------


async def test_donation_detail_is_nested_with_offset_dates(api: Api, sim: Simulator) -> None:
    donation_id = sim.objects(Kind.DONATION)[0]["id"]
    status, body = await api.get(f"/donation/{donation_id}")
    assert status == 200
    obj = body["donation"]
    assert "transaction__amount" not in obj
    assert obj["transaction"]["currency"]["iso_code"] in {"TRY", "USD", "EUR"}
    assert obj["transaction"]["complete_date"].endswith("+03:00")
    assert obj["user"]["email"]
    assert await api.get("/donation/999999") == (404, {"error": "Object not found"})


async def test_debts_answer_only_on_the_debt_path(api: Api, sim: Simulator) -> None:
    debt = sim.debt_ids()[0]
    payment = next(
        o["id"] for o in sim.objects(Kind.MEMBERSHIP_FEE) if o["id"] not in sim.debt_ids()
    )
    assert (await api.get(f"/subscription/{debt}"))[0] == 404
    status, body = await api.get(f"/debt/{debt}")
    assert status == 200
    assert body["subscription"]["id"] == debt
    assert (await api.get(f"/subscription/{payment}"))[0] == 200
    assert (await api.get(f"/debt/{payment}"))[0] == 404


async def test_created_debt_is_found_only_on_the_debt_path(api: Api, sim: Simulator) -> None:
    debt, status = await sim.create_event(Kind.MEMBERSHIP_FEE, debt=True, deliver=False)
    assert status == 3
    assert (await api.get(f"/subscription/{debt}"))[0] == 404
    assert (await api.get(f"/debt/{debt}"))[1]["subscription"]["status"] == 8
    _, listed = await api.get("/subscriptions", {**day_window(DAY), "how_many": "100"})
    assert debt in {r["id"] for r in listed["subscription_list"]}


async def test_form_answer_detail_needs_the_right_form(api: Api, sim: Simulator) -> None:
    answer = sim.objects(Kind.FORM_ANSWER)[0]["id"]
    form_id = sim.form_id_of(answer)
    status, body = await api.get(f"/form/{form_id}/answer/{answer}")
    assert status == 200
    assert body["answer"]["approval_status"] in {0, 1, 2}
    _, forms = await api.get("/forms")
    other = next(f["id"] for f in forms["form_list"] if f["id"] != form_id)
    assert (await api.get(f"/form/{other}/answer/{answer}"))[0] == 404
    user_id = body["answer"]["user"]["id"]
    _, mine = await api.get(f"/user/{user_id}/form-answers", {"how_many": "100"})
    assert {"id": answer, "custom_form_id": form_id}.items() <= next(
        r for r in mine["answer_list"] if r["id"] == answer
    ).items()


async def test_ecard_detail_lacks_date_and_iso_currency(api: Api, sim: Simulator) -> None:
    sale = sim.objects(Kind.ECARD_SALE)[0]
    status, body = await api.get(f"/ecard-transactions/{sale['id']}")
    assert status == 200
    obj = body["ecard_transaction"]
    assert "transaction__complete_date" not in obj
    assert "transaction__currency__iso_code" not in obj
    assert "transaction__amount" in obj
    _, theirs = await api.get(f"/user/{obj['user_id']}/ecard-transactions", {"how_many": "100"})
    row = next(r for r in theirs["sale_list"] if r["id"] == sale["id"])
    assert row["transaction__currency__iso_code"]
    assert row["transaction__complete_date"].endswith("+03:00")


@pytest.mark.parametrize(
    ("kind", "path", "key"),
    [
        (Kind.TICKET_SALE, "/ticket-sale/{}", "ticket_sale"),
        (Kind.CAMPAIGN, "/fundraising-campaign/{}", "campaign"),
    ],
)
async def test_other_details_have_their_envelopes(
    api: Api, sim: Simulator, kind: Kind, path: str, key: str
) -> None:
    obj = sim.objects(kind)[-1]
    assert await api.get(path.format(obj["id"])) == (200, {key: obj})


# -- data --------------------------------------------------------------------------------


def test_data_is_deterministic_and_realistic() -> None:
    one = Simulator(seed=3, end_date=DAY)
    two = Simulator(seed=3, end_date=DAY)
    for kind in Kind:
        assert one.objects(kind) == two.objects(kind)
    assert Simulator(seed=4, end_date=DAY).objects(Kind.DONATION) != one.objects(Kind.DONATION)
    donations = one.objects(Kind.DONATION)
    names = "".join(d["name"] for d in donations)
    assert set("şğıöüç") & set(names)
    messages = [d["message"] for d in donations if d["message"]]
    assert any("\n" in m for m in messages)
    assert any('"' in m and "," in m for m in messages)
    currencies = {d["transaction"]["currency"]["iso_code"] for d in donations}
    assert currencies == {"TRY", "USD", "EUR"}
    assert any(Decimal(str(d["transaction"]["amount"])) % 1 for d in donations)
    statuses = {d["transaction"]["payment_status"] for d in donations}
    assert statuses == {3, 4, 5}
    days = {local_day(d["transaction"]["complete_date"]) for d in donations}
    assert days == {DAY - dt.timedelta(2), DAY - dt.timedelta(1), DAY}
    refunded_later = [
        d
        for d in (o for k in Kind if k is not Kind.CAMPAIGN for o in one.objects(k))
        if (d.get("transaction") or {}).get("refund_date")
        and local_day(d["transaction"]["refund_date"])
        > local_day(d["transaction"]["complete_date"])
    ]
    assert refunded_later
    assert one.debt_ids()
    assert len({c["status"] for c in one.objects(Kind.CAMPAIGN)}) > 1


# -- webhooks ----------------------------------------------------------------------------


class Receiver:
    """A loopback webhook endpoint that answers with the statuses it is given."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = statuses or []
        self.got: list[tuple[dict[str, Any], str | None, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        self.got.append(
            (await request.json(), request.headers.get("X-FZ-Auth-Token"), request.content_type)
        )
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)


async def test_event_is_delivered_with_token_and_retried_three_times(sim: Simulator) -> None:
    async with Receiver([500, 503]) as receiver:
        sim.configure_webhook_target(receiver.url, "s3cret")
        fonzip_id, status = await sim.create_event(Kind.DONATION)
        await sim.wait_deliveries_idle()
    payload = {"id": fonzip_id, "webhook_id": 1, "operation": 1, "status": 3}
    assert status == 3
    assert receiver.got == [(payload, "s3cret", "application/json")] * 3
    assert [(d.attempt, d.status) for d in sim.deliveries] == [(1, 500), (2, 503), (3, 200)]


async def test_sender_gives_up_after_three_failed_attempts(
    sim: Simulator, clock: FakeClock
) -> None:
    async with Receiver([500, 500, 500, 200]) as receiver:
        sim.configure_webhook_target(receiver.url, None)
        await sim.create_event(Kind.TICKET_SALE, status=5)
        await sim.wait_deliveries_idle()
    assert len(receiver.got) == 3
    assert receiver.got[0][1] is None  # no token configured: no header
    assert [d.ok for d in sim.deliveries] == [False, False, False]
    assert clock.slept == [0.5, 1.0]


async def test_unreachable_target_is_logged_as_errors(sim: Simulator) -> None:
    async with Receiver() as receiver:
        url = receiver.url
    sim.configure_webhook_target(url, "t")
    await sim.create_event(Kind.CAMPAIGN)
    await sim.wait_deliveries_idle()
    assert [d.attempt for d in sim.deliveries] == [1, 2, 3]
    assert all(d.status is None and d.error for d in sim.deliveries)
    assert sim.deliveries[0].payload["status"] == 0


async def test_refund_notifies_status_4(sim: Simulator) -> None:
    paid = next(
        o["id"] for o in sim.objects(Kind.DONATION) if o["transaction"]["payment_status"] == 3
    )
    async with Receiver() as receiver:
        sim.configure_webhook_target(receiver.url, "t")
        await sim.refund(Kind.DONATION, paid)
        await sim.wait_deliveries_idle()
    assert receiver.got[0][0] == {"id": paid, "webhook_id": 1, "operation": 1, "status": 4}
    refunded = next(o for o in sim.objects(Kind.DONATION) if o["id"] == paid)
    assert refunded["transaction"]["payment_status"] == 4
    assert refunded["transaction"]["refund_date"].endswith("+03:00")


async def test_webhook_management_rules(api: Api, sim: Simulator) -> None:
    async with Receiver() as receiver:
        events = {
            "DONATION": True,
            "SUBSCRIPTION": False,
            "TICKET": False,
            "FORM": False,
            "CERTIFICATE_SALE": False,
            "FUNDRAISING_CAMPAIGN": False,
        }
        body = {"name": "fonzipd", "url": receiver.url, "authentication": True}
        body |= {"auth_token": "tok", "events": events}
        assert (await api.send("POST", "/webhooks", {**body, "events": {"DONATION": True}}))[
            0
        ] == 500
        assert (await api.send("POST", "/webhooks", {**body, "name": "fonzipd (prod)"}))[0] == 500
        assert await api.send("POST", "/webhooks", body) == (200, {"result": "ok"})
        assert (await api.send("POST", "/webhooks", body))[0] == 500  # duplicate name
        _, listing = await api.get("/webhooks")
        (hook,) = listing["webhook_list"]
        assert hook == {"id": hook["id"], "name": "fonzipd", "url": receiver.url}
        _, detail = await api.get(f"/webhook/{hook['id']}")
        assert detail["webhook"]["events"] == events

        assert await api.send("PATCH", f"/webhook/{hook['id']}") == (200, {"result": "ok"})
        await sim.create_event(Kind.DONATION)
        await sim.create_event(Kind.FORM_ANSWER)  # not subscribed
        await sim.wait_deliveries_idle()
        assert receiver.got[0][0] == {
            "id": 0,
            "webhook_id": hook["id"],
            "operation": 1,
            "status": 0,
        }
        assert [g[0]["operation"] for g in receiver.got] == [1, 1]
        assert {g[1] for g in receiver.got} == {"tok"}

        assert (await api.send("DELETE", f"/webhook/{hook['id']}"))[0] == 200
        assert (await api.get(f"/webhook/{hook['id']}"))[0] == 404


# -- faults ------------------------------------------------------------------------------


async def test_fault_knobs(api: Api, sim: Simulator, clock: FakeClock) -> None:
    sim.faults.burst_429 = 2
    assert [(await api.get("/me"))[0] for _ in range(3)] == [429, 429, 200]

    sim.faults.outage_until = clock.now() + dt.timedelta(minutes=5)
    assert (await api.get("/me"))[0] == 503
    clock.advance(300)
    assert (await api.get("/me"))[0] == 200

    sim.faults.error_rate = 1.0
    assert (await api.get("/me"))[0] >= 500
    sim.faults.error_rate = 0.0

    sim.faults.latency = 2.5
    await api.get("/me")
    assert clock.slept[-1] == 2.5
    sim.faults.latency = 0.0

    sim.faults.malformed_details = 1.0
    donation = sim.objects(Kind.DONATION)[0]["id"]
    async with api.http.get(
        f"{api.base}/donation/{donation}", headers={"Authorization": f"Bearer {api.token}"}
    ) as response:
        assert response.status == 200
        with pytest.raises(ValueError, match=r"Expecting|Unterminated"):
            await response.json()


async def test_the_knobs_that_keep_a_reconcile_from_verifying_a_day(
    api: Api, sim: Simulator
) -> None:
    first, second = (o["id"] for o in sim.objects(Kind.DONATION)[:2])
    window = {
        "start_date": f"{sim.end_date - dt.timedelta(days=5)}T00:00:00+03:00",
        "end_date": f"{sim.end_date + dt.timedelta(days=1)}T00:00:00+03:00",
        "start_page": "1",
        "how_many": "100",
    }
    sim.faults.failing_details = [f"donation:{first}"]
    assert (await api.get(f"/donation/{first}"))[0] == 503
    assert (await api.get(f"/donation/{second}"))[0] == 200

    status, body = await api.get("/donations", {**window, "status": "paid"})
    assert status == 200
    sim.faults.list_total_offset = 1
    assert (await api.get("/donations", {**window, "status": "paid"}))[1]["total"] == (
        body["total"] + 1
    )
    sim.faults.list_total_offset = 0

    sim.faults.failing_lists = ["donation:refund"]
    assert (await api.get("/donations", {**window, "status": "refund"}))[0] == 500
    assert (await api.get("/donations", {**window, "status": "paid"}))[0] == 200
    sim.faults.failing_lists = []

    sim.faults.down_after = 1
    assert [(await api.get("/me"))[0] for _ in range(3)] == [200, 503, 503]
    sim.faults.update({"down_after": None})
    assert (await api.get("/me"))[0] == 200

    for name, bad in (
        ("failing_details", ["donation"]),
        ("failing_details", ["nokind:1"]),
        ("failing_lists", "donation:paid"),
        ("down_after", "soon"),
    ):
        with pytest.raises(ValueError, match=f"fault '{name}': bad value"):
            sim.faults.update({name: bad})


async def test_dropped_webhooks_are_never_sent(sim: Simulator) -> None:
    sim.faults.drop_webhooks = 1.0
    async with Receiver() as receiver:
        sim.configure_webhook_target(receiver.url, "t")
        await sim.create_event(Kind.DONATION)
        await sim.wait_deliveries_idle()
    assert receiver.got == []
    assert [d.dropped for d in sim.deliveries] == [True]


# -- admin API and serve -----------------------------------------------------------------


async def test_admin_api_drives_the_simulator(sim: Simulator, http: aiohttp.ClientSession) -> None:
    admin = sim.admin_url
    async with Receiver() as receiver:
        async with http.post(
            f"{admin}/webhook-target", json={"url": receiver.url, "token": "x"}
        ) as response:
            assert response.status == 200
        async with http.post(f"{admin}/events", json={"kind": "donation", "status": 3}) as r:
            created = await r.json()
        async with http.post(
            f"{admin}/refund", json={"kind": "donation", "id": created["id"]}
        ) as r:
            assert r.status == 200
        async with http.post(f"{admin}/wait-idle") as r:
            assert r.status == 200
        async with http.get(f"{admin}/deliveries") as r:
            deliveries = (await r.json())["deliveries"]
    assert [d["payload"]["status"] for d in deliveries] == [3, 4]
    async with http.get(f"{admin}/objects", params={"kind": "donation"}) as r:
        objects = (await r.json())["objects"]
    assert objects[-1]["id"] == created["id"]
    async with http.post(f"{admin}/faults", json={"burst_429": 1, "latency": "x"}) as r:
        assert r.status == 400
        assert "latency" in (await r.json())["error"]
    async with http.post(f"{admin}/faults", json={"burst_429": 1}) as r:
        assert (await r.json())["burst_429"] == 1
    async with http.post(f"{admin}/events", json={"kind": "nope"}) as r:
        assert r.status == 400


async def test_serve_prints_where_it_listens_and_the_credentials() -> None:
    lines: list[str] = []
    ready: asyncio.Future[Simulator] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            host="127.0.0.1",
            port=0,
            seed=1,
            webhook_url=None,
            webhook_token=None,
            out=lines.append,
            started=ready.set_result,
        )
    )
    sim = await asyncio.wait_for(ready, timeout=10)
    assert any(sim.base_url in line for line in lines if sim.base_url)
    assert any("client_id=sim-client" in line and "sim-secret" in line for line in lines)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_start_inside_async_with_returns_the_running_url(sim: Simulator) -> None:
    base = sim.base_url
    assert base is not None
    assert await sim.start() == base
    assert sim.admin_url == base.removesuffix("/api/v2") + "/_sim"


@pytest.mark.parametrize("per_day", [1, 2, 5])
def test_small_accounts_generate(per_day: int) -> None:
    # A kind with no refundable payment used to crash the generator.
    for seed in range(10):
        sim = Simulator(seed=seed, days=1, per_day=per_day)
        assert all(sim.objects(kind) for kind in Kind)


# -- held detail answers (staged races) ------------------------------------------------


async def test_a_held_detail_answers_the_state_read_when_it_arrived(
    api: Api, sim: Simulator, clock: FakeClock
) -> None:
    fid, _ = await sim.create_event(Kind.DONATION, deliver=False)
    hold = sim.hold_detail(Kind.DONATION, fid)
    held = asyncio.create_task(api.get(f"/donation/{fid}"))
    await asyncio.wait_for(hold.arrived.wait(), 5)
    clock.advance(60)
    await sim.refund(Kind.DONATION, fid, deliver=False)
    sim.amend(Kind.DONATION, fid, first_name="Düzeltilmiş")
    # A later request is not held (count=1) and reads the new state.
    status, later = await api.get(f"/donation/{fid}")
    assert status == 200
    assert later["donation"]["transaction"]["payment_status"] == 4
    assert later["donation"]["user"]["first_name"] == "Düzeltilmiş"
    assert not held.done()
    hold.release()
    status, earlier = await held
    assert status == 200
    assert earlier["donation"]["transaction"]["payment_status"] == 3
    assert earlier["donation"]["user"]["first_name"] != "Düzeltilmiş"
    assert earlier["donation"]["last_update_date"] < later["donation"]["last_update_date"]


async def test_a_hold_with_seconds_lets_go_by_itself_and_the_admin_api_sets_one(
    api: Api, sim: Simulator, http: aiohttp.ClientSession
) -> None:
    fid, _ = await sim.create_event(Kind.TICKET_SALE, deliver=False)
    body = {"kind": "ticket_sale", "id": fid, "seconds": 0.05}
    async with http.post(f"{sim.admin_url}/hold", json=body) as resp:
        assert resp.status == 200
    status, _ = await asyncio.wait_for(api.get(f"/ticket-sale/{fid}"), 5)
    assert status == 200
    async with http.post(f"{sim.admin_url}/hold", json={"kind": "ticket_sale"}) as resp:
        assert resp.status == 400
    with pytest.raises(ValueError, match="count"):
        sim.hold_detail(Kind.TICKET_SALE, fid, count=0)
