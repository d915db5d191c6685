"""The simulator: a real aiohttp server that answers like Fonzip API v2, with fault knobs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.kinds import Kind
from fonzipd.simulator import shapes
from fonzipd.simulator.account import (
    APPROVED,
    FAILED,
    FORMS,
    PAID,
    REFUNDED,
    REJECTED,
    WAITING_APPROVAL,
    Account,
    Entry,
)
from fonzipd.simulator.sender import Delivery, Sender

__all__ = [
    "API_PREFIX",
    "DEFAULT_CLIENTS",
    "EVENT_KEYS",
    "Faults",
    "Hold",
    "RequestLog",
    "Simulator",
    "Webhook",
    "serve",
]

log = structlog.get_logger(__name__)

API_PREFIX = "/api/v2"
ADMIN_PREFIX = "/_sim"
DEFAULT_CLIENTS: Mapping[str, str] = {"sim-client": "sim-secret"}

EVENT_KEYS: dict[Kind, str] = {
    Kind.DONATION: "DONATION",
    Kind.MEMBERSHIP_FEE: "SUBSCRIPTION",
    Kind.TICKET_SALE: "TICKET",
    Kind.FORM_ANSWER: "FORM",
    Kind.ECARD_SALE: "CERTIFICATE_SALE",
    Kind.CAMPAIGN: "FUNDRAISING_CAMPAIGN",
}
_LIST_PATHS: dict[Kind, str] = {
    Kind.DONATION: "/donations",
    Kind.MEMBERSHIP_FEE: "/subscriptions",
    Kind.TICKET_SALE: "/ticket-sales",
    Kind.FORM_ANSWER: "/form-answers",
    Kind.ECARD_SALE: "/ecard-transactions",
    Kind.CAMPAIGN: "/fundraising-campaigns",
}
_BAD_RANGE = "Lutfen gecerli bir tarih araligi girin"
_ORDER_FIELDS: dict[Kind, frozenset[str]] = {
    Kind.DONATION: frozenset({"name", "transaction__amount", "transaction__complete_date"}),
    Kind.MEMBERSHIP_FEE: frozenset(
        {"id", "user__name", "transaction__amount", "transaction__complete_date"}
    ),
    Kind.TICKET_SALE: frozenset({"id", "transaction__amount", "transaction__complete_date"}),
    Kind.FORM_ANSWER: frozenset(),
    # "Any field of the CertificateSale model": the ones this fake knows.
    Kind.ECARD_SALE: frozenset(
        {
            "id",
            "first_name",
            "last_name",
            "certificate_id",
            "certificate__title",
            "transaction__amount",
            "transaction__complete_date",
            "transaction__refund_date",
        }
    ),
    Kind.CAMPAIGN: frozenset(
        {"user__name", "title", "create_date", "activation_date", "donation_total"}
    ),
}


@dataclasses.dataclass(slots=True)
class Faults:
    """Fault knobs, mutable at run time (also through ``POST /_sim/faults``)."""

    latency: float = 0.0
    """Seconds added before every API answer."""
    error_rate: float = 0.0
    """Share (0..1) of API requests answered with a 5xx."""
    burst_429: int = 0
    """The next N API requests are answered 429."""
    drop_webhooks: float = 0.0
    """Share (0..1) of notifications never delivered at all."""
    outage_until: dt.datetime | None = None
    """Every API request is answered 503 until then (aware)."""
    malformed_details: float = 0.0
    """Share (0..1) of detail answers that are broken JSON with status 200."""
    retry_after: float | None = None
    """Seconds sent as ``Retry-After`` with 429s; None sends no header (Fonzip documents none)."""
    failing_details: list[str] = dataclasses.field(default_factory=list)
    """Objects whose detail answers 503 every time, as ``"kind:id"`` (``"donation:10003"``)."""
    failing_lists: list[str] = dataclasses.field(default_factory=list)
    """Lists answered 500 every time, as ``"kind:status"`` (``"donation:refund"``,
    ``"campaign:created"``)."""
    list_total_offset: int = 0
    """Added to every list's ``total``: Fonzip counting rows its pages never show."""
    down_after: int | None = None
    """Answer this many more API requests, then 503 to every one (Fonzip down mid-run)."""

    def update(self, values: Mapping[str, Any]) -> None:
        """Set fields from JSON-like values; ValueError naming the field on a bad one."""
        names = {field.name for field in dataclasses.fields(self)}
        for name, value in values.items():
            if name not in names:
                raise ValueError(f"unknown fault {name!r}; known: {sorted(names)}")
            try:
                if name == "outage_until":
                    parsed: Any = None
                    if value is not None:
                        parsed = dt.datetime.fromisoformat(str(value))
                        if parsed.tzinfo is None:
                            raise ValueError("needs an offset")
                elif name in ("burst_429", "list_total_offset"):
                    parsed = int(value)
                elif name == "down_after":
                    parsed = None if value is None else int(value)
                elif name in ("failing_details", "failing_lists"):
                    parsed = _object_keys(value)
                elif name == "retry_after":
                    parsed = None if value is None else float(value)
                else:
                    parsed = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"fault {name!r}: bad value {value!r} ({exc})") from exc
            if name in {"error_rate", "drop_webhooks", "malformed_details"} and not (
                0.0 <= parsed <= 1.0
            ):
                raise ValueError(f"fault {name!r} must be between 0 and 1, got {value!r}")
            setattr(self, name, parsed)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.outage_until is not None:
            data["outage_until"] = self.outage_until.isoformat()
        return data


@dataclasses.dataclass(frozen=True, slots=True)
class RequestLog:
    """One API request as the simulator answered it."""

    method: str
    path: str
    query: str
    status: int
    at: dt.datetime
    client_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "at": self.at.isoformat()}


@dataclasses.dataclass(slots=True)
class Webhook:
    """A webhook registered with the fake account."""

    id: int
    name: str
    url: str
    authentication: bool
    auth_token: str | None
    events: dict[str, bool]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(slots=True)
class Hold:
    """The detail answers of one object, held back: a race a test can stage.

    A held request reads the object's state when it arrives and answers with that
    state once :meth:`release` is called (or after ``seconds``), so a fetch that
    started earlier lands later. ``count`` requests are held; later ones pass.
    ``arrived`` is set as soon as a held request is waiting.
    """

    kind: Kind
    fonzip_id: int
    count: int = 1
    seconds: float | None = None
    arrived: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    released: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    held: int = 0
    """Requests held so far."""

    def release(self) -> None:
        """Let every held answer (and any later one) go."""
        self.released.set()


@dataclasses.dataclass(slots=True)
class _Token:
    client_id: str
    expires_at: dt.datetime


class _ApiError(Exception):
    """An API answer other than success, raised from deep inside a handler."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = dict(body)


def _error(status: int, message: str) -> NoReturn:
    raise _ApiError(status, {"error": message})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(
        data, status=status, dumps=lambda v: json.dumps(v, default=str, ensure_ascii=False)
    )


class Simulator:
    """A faithful fake Fonzip: the API under ``/api/v2`` and an admin API under ``/_sim``.

    The generated account covers the ``days`` dates (in ``timezone``) ending at
    ``end_date`` (default: today there), ``per_day`` objects of each money kind a day.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        days: int = 3,
        per_day: int = 20,
        clients: Mapping[str, str] | None = None,
        timezone: str = "Europe/Istanbul",
        rate_per_minute: float = 240,
        token_ttl: float = 3600,
        clock: Clock = SYSTEM_CLOCK,
        end_date: dt.date | None = None,
        retry_delays: Sequence[float] = (1.0, 2.0),
        delivery_timeout: float = 5.0,
    ) -> None:
        self.zone = ZoneInfo(timezone)
        self.clock = clock
        self.clients = dict(DEFAULT_CLIENTS if clients is None else clients)
        self.rate_per_minute = rate_per_minute
        self.token_ttl = token_ttl
        self.end_date = end_date or clock.now().astimezone(self.zone).date()
        self.account = Account(
            seed=seed, days=days, per_day=per_day, end_date=self.end_date, zone=self.zone
        )
        self.faults = Faults()
        self.tampered: dict[tuple[Kind, int], Callable[[dict[str, Any]], None]] = {}
        """Details served edited, as a hostile API would: see :meth:`tamper`."""
        self.tampered_rows: dict[tuple[Kind, int], Callable[[dict[str, Any]], None]] = {}
        """List rows served edited: see :meth:`tamper_row`."""
        self.requests: list[RequestLog] = []
        self.sender = Sender(clock=clock, retry_delays=retry_delays, timeout=delivery_timeout)
        self.webhooks: dict[int, Webhook] = {}
        self._next_webhook_id = 1
        self._target_webhook_id: int | None = None
        self._tokens: dict[str, _Token] = {}
        self._holds: dict[tuple[Kind, int], Hold] = {}
        self._windows: dict[str, tuple[dt.datetime, int]] = {}
        self._fault_rng = random.Random(seed ^ 0x5EED)
        self._runner: web.AppRunner | None = None
        self.base_url: str | None = None
        self.app = self._build_app()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port); return the API base URL.

        Calling it again while running (``async with`` already started it) returns the
        same URL without moving.
        """
        if self._runner is not None and self.base_url is not None:
            return self.base_url
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}{API_PREFIX}"
        log.info("simulator_started", url=self.base_url)
        return self.base_url

    async def stop(self) -> None:
        """Cancel pending webhook deliveries and stop listening."""
        await self.sender.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("simulator_stopped")

    async def __aenter__(self) -> Simulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def admin_url(self) -> str:
        """The admin API's base URL (``http://host:port/_sim``); needs ``start()`` first."""
        if self.base_url is None:
            raise RuntimeError("simulator not started")
        return self.base_url.removesuffix(API_PREFIX) + ADMIN_PREFIX

    # -- oracle ----------------------------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        """Every webhook attempt so far, in order."""
        return self.sender.deliveries

    def objects(self, kind: Kind) -> list[dict[str, Any]]:
        """The current detail objects of ``kind`` (unwrapped), by ascending id."""
        return [shapes.detail(e, self.zone) for e in self._entries(kind)]

    def rows(self, kind: Kind) -> list[dict[str, Any]]:
        """The current list rows of ``kind`` (all statuses; e-cards: default set), by id."""
        return [shapes.row(e, self.zone) for e in self._entries(kind)]

    def list_dates(self, kind: Kind, list_status: str) -> dict[int, dt.datetime]:
        """The truth of one list: id -> the date the list filters it on, for every object
        of ``kind`` the list with ``list_status`` shows (on some date). Campaigns:
        ``"created"``, by creation date."""
        found = {}
        for entry in self._entries(kind):
            when = entry.when if kind is Kind.CAMPAIGN else _list_date(entry, list_status)
            if when is not None:
                found[entry.id] = when
        return found

    def debt_ids(self) -> list[int]:
        """The membership-fee ids that are debts: ``/debt/{id}`` answers, not ``/subscription``."""
        return [e.id for e in self._entries(Kind.MEMBERSHIP_FEE) if e.extra["is_debt"]]

    def form_id_of(self, answer_id: int) -> int:
        """The form an answer belongs to (what the webhook does not say)."""
        entry = self.account.get(Kind.FORM_ANSWER, answer_id)
        if entry is None:
            raise KeyError(f"no form answer {answer_id}")
        form_id: int = entry.extra["form"][0]
        return form_id

    def _entries(self, kind: Kind) -> list[Entry]:
        return sorted(self.account.entries[kind].values(), key=lambda e: e.id)

    async def wait_deliveries_idle(self) -> None:
        """Return once every webhook delivery started so far has succeeded or given up."""
        await self.sender.wait_idle()

    # -- driving ---------------------------------------------------------------------

    def configure_webhook_target(self, url: str, token: str | None) -> None:
        """Deliver every kind's events to ``url``, with ``X-FZ-Auth-Token: token`` if given.

        This is the webhook a user would have set up in Fonzip's UI: it shows in
        ``GET /webhooks`` under the name ``fonzipd-simulator``.
        """
        events = {key: True for key in EVENT_KEYS.values()}
        if self._target_webhook_id is not None and self._target_webhook_id in self.webhooks:
            hook = self.webhooks[self._target_webhook_id]
            hook.url, hook.auth_token, hook.authentication = url, token, token is not None
            hook.events = events
            return
        hook = self._add_webhook("fonzipd-simulator", url, token is not None, token, events)
        self._target_webhook_id = hook.id

    async def create_event(
        self,
        kind: Kind,
        *,
        status: int = 3,
        deliver: bool = True,
        when: dt.datetime | None = None,
        debt: bool | None = None,
    ) -> tuple[int, int]:
        """Create a new object and notify the webhooks; return (id, webhook status).

        ``status`` is 3 (paid) or 5 (failed); campaigns ignore it and notify 0.
        ``debt`` (membership fees only) forces the object to be a debt (True: only
        ``/debt/{id}`` answers) or a payment (False); None leaves it to the seed.
        """
        if kind is not Kind.CAMPAIGN and status not in (PAID, FAILED):
            raise ValueError(f"status must be 3 (paid) or 5 (failed), got {status!r}")
        if when is not None and when.tzinfo is None:
            raise ValueError("when must be aware (have a timezone)")
        entry = self.account.add(kind, when=when or self.clock.now(), status=status)
        if kind is Kind.MEMBERSHIP_FEE and debt is not None:
            entry.extra["is_debt"] = debt
        webhook_status = 0 if kind is Kind.CAMPAIGN else status
        if deliver:
            self._notify(kind, entry.id, webhook_status)
        log.info("event_created", kind=str(kind), id=entry.id, status=webhook_status)
        return entry.id, webhook_status

    async def refund(self, kind: Kind, fonzip_id: int, *, deliver: bool = True) -> None:
        """Refund a paid object now (payment status 4, refund date) and notify status 4."""
        if self.account.get(kind, fonzip_id) is None:
            raise KeyError(f"no {kind} with id {fonzip_id}")
        self.account.refund(kind, fonzip_id, at=self.clock.now())
        if deliver:
            self._notify(kind, fonzip_id, REFUNDED)
        log.info("event_refunded", kind=str(kind), id=fonzip_id)

    def delete(self, kind: Kind, fonzip_id: int) -> None:
        """Delete an object, as an admin in Fonzip's panel would: its detail answers 404
        and no list shows it. Fonzip sends no webhook for a deletion."""
        if self.account.entries[kind].pop(fonzip_id, None) is None:
            raise KeyError(f"no {kind} with id {fonzip_id}")
        log.info("event_deleted", kind=str(kind), id=fonzip_id)

    def tamper(self, kind: Kind, fonzip_id: int, change: Callable[[dict[str, Any]], None]) -> None:
        """Serve the detail of one object edited in place by ``change``, as JSON with
        ASCII escapes: a hostile API's values (a lone surrogate, a negative amount...)."""
        if self.account.get(kind, fonzip_id) is None:
            raise KeyError(f"no {kind} with id {fonzip_id}")
        self.tampered[kind, fonzip_id] = change

    def tamper_row(
        self, kind: Kind, fonzip_id: int, change: Callable[[dict[str, Any]], None]
    ) -> None:
        """Serve the list row of one object edited in place by ``change`` (an id past
        2**63-1, a missing id...), in every list that shows it."""
        if self.account.get(kind, fonzip_id) is None:
            raise KeyError(f"no {kind} with id {fonzip_id}")
        self.tampered_rows[kind, fonzip_id] = change

    def hold_detail(
        self, kind: Kind, fonzip_id: int, *, count: int = 1, seconds: float | None = None
    ) -> Hold:
        """Hold the next ``count`` detail answers of one object (see :class:`Hold`)."""
        if count < 1 or (seconds is not None and seconds < 0):
            raise ValueError(f"count must be >= 1 and seconds >= 0, got {count}, {seconds}")
        hold = Hold(kind, fonzip_id, count=count, seconds=seconds)
        self._holds[(kind, fonzip_id)] = hold
        return hold

    def release_detail(self, kind: Kind, fonzip_id: int) -> None:
        """Release (and forget) the hold on one object's detail, if there is one."""
        hold = self._holds.pop((kind, fonzip_id), None)
        if hold is not None:
            hold.release()

    def amend(
        self,
        kind: Kind,
        fonzip_id: int,
        *,
        first_name: str | None = None,
        payment_status: int | None = None,
        campaign_status: int | None = None,
        amount: Decimal | None = None,
        deliver: bool = False,
    ) -> None:
        """Change an object as an admin would in Fonzip's panel: correct the person's
        first name or the amount, set the payment status (3 or 5) or the campaign status. Its
        ``last_update_date`` moves to now. ``deliver`` notifies the new payment status
        (a name correction sends no webhook at Fonzip)."""
        entry = self.account.get(kind, fonzip_id)
        if entry is None:
            raise KeyError(f"no {kind} with id {fonzip_id}")
        if first_name is not None:
            # People are shared between objects: the correction is this object's own.
            entry.person = dataclasses.replace(entry.person, first_name=first_name)
        if payment_status is not None:
            if payment_status not in (PAID, FAILED) or entry.transaction_id is None:
                raise ValueError(f"{kind} {fonzip_id}: cannot set payment status {payment_status}")
            entry.payment_status = payment_status
        if amount is not None:
            if entry.amount is None:
                raise ValueError(f"{kind} {fonzip_id} has no amount to correct")
            entry.amount = amount
        if campaign_status is not None:
            if kind is not Kind.CAMPAIGN:
                raise ValueError(f"{kind} {fonzip_id} is not a campaign")
            entry.extra["campaign_status"] = campaign_status
        entry.extra["updated_at"] = self.clock.now()
        if deliver and payment_status is not None:
            self._notify(kind, fonzip_id, payment_status)
        log.info("event_amended", kind=str(kind), id=fonzip_id)

    async def _held(self, kind: Kind, fonzip_id: int) -> None:
        hold = self._holds.get((kind, fonzip_id))
        if hold is None or hold.released.is_set() or hold.held >= hold.count:
            return
        hold.held += 1
        hold.arrived.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hold.released.wait(), hold.seconds)

    def reset_rate_limit(self) -> None:
        """Forget every client's request count in the current window."""
        self._windows.clear()

    def force_foreign_token(self, client_id: str | None = None) -> str:
        """Make a live token exist for ``client_id`` that no client holds: /token now 409s.

        Returns the token (a test may use it to play the process that lost it).
        """
        client = client_id or next(iter(self.clients))
        if client not in self.clients:
            raise KeyError(f"unknown client {client!r}")
        return self._issue_token(client)

    def expire_tokens(self) -> None:
        """End every token now, as if their time were up: calls 401, /token issues anew."""
        self._tokens.clear()

    # -- internals: tokens, notifications --------------------------------------------

    def _issue_token(self, client_id: str) -> str:
        token = secrets.token_urlsafe(32)
        expires = self.clock.now() + dt.timedelta(seconds=self.token_ttl)
        self._tokens[token] = _Token(client_id, expires)
        return token

    def _live_token(self, token: str) -> _Token | None:
        found = self._tokens.get(token)
        if found is None:
            return None
        if found.expires_at <= self.clock.now():
            del self._tokens[token]
            return None
        return found

    def _client_has_live_token(self, client_id: str) -> bool:
        return any(
            self._live_token(t) is not None
            for t, v in list(self._tokens.items())
            if v.client_id == client_id
        )

    def _notify(self, kind: Kind, fonzip_id: int, status: int) -> None:
        key = EVENT_KEYS[kind]
        for hook in list(self.webhooks.values()):
            if not hook.events.get(key) or not hook.url:
                continue
            payload = {
                "id": fonzip_id,
                "webhook_id": hook.id,
                "operation": kind.operation,
                "status": status,
            }
            drop = self._fault_rng.random() < self.faults.drop_webhooks
            token = hook.auth_token if hook.authentication else None
            self.sender.send(hook.url, token, payload, drop=drop)

    def _add_webhook(
        self,
        name: str,
        url: str,
        authentication: bool,
        auth_token: str | None,
        events: dict[str, bool],
    ) -> Webhook:
        hook = Webhook(self._next_webhook_id, name, url, authentication, auth_token, events)
        self._next_webhook_id += 1
        self.webhooks[hook.id] = hook
        return hook

    # -- the app ---------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        p = API_PREFIX
        routes = [
            web.post(f"{p}/token", self._token),
            web.get(f"{p}/me", self._me),
            web.get(f"{p}/donation/{{id:\\d+}}", self._detail_handler(Kind.DONATION)),
            web.get(f"{p}/subscription/{{id:\\d+}}", self._subscription),
            web.get(f"{p}/debt/{{id:\\d+}}", self._debt),
            web.get(f"{p}/ticket-sale/{{id:\\d+}}", self._detail_handler(Kind.TICKET_SALE)),
            web.get(f"{p}/form/{{form_id:\\d+}}/answer/{{id:\\d+}}", self._form_answer),
            web.get(f"{p}/ecard-transactions/{{id:\\d+}}", self._detail_handler(Kind.ECARD_SALE)),
            web.get(f"{p}/fundraising-campaign/{{id:\\d+}}", self._detail_handler(Kind.CAMPAIGN)),
            web.get(f"{p}/forms", self._forms),
            web.get(f"{p}/user/{{user_id:\\d+}}/form-answers", self._user_form_answers),
            web.get(f"{p}/user/{{user_id:\\d+}}/ecard-transactions", self._user_ecards),
            web.get(f"{p}/webhooks", self._webhooks_list),
            web.post(f"{p}/webhooks", self._webhooks_create),
            web.get(f"{p}/webhook/{{id:\\d+}}", self._webhook_get),
            web.put(f"{p}/webhook/{{id:\\d+}}", self._webhook_put),
            web.delete(f"{p}/webhook/{{id:\\d+}}", self._webhook_delete),
            web.patch(f"{p}/webhook/{{id:\\d+}}", self._webhook_test),
        ]
        routes += [web.get(f"{p}{path}", self._list_handler(k)) for k, path in _LIST_PATHS.items()]
        a = ADMIN_PREFIX
        routes += [
            web.post(f"{a}/events", self._admin_event),
            web.post(f"{a}/refund", self._admin_refund),
            web.get(f"{a}/faults", self._admin_faults),
            web.post(f"{a}/faults", self._admin_faults),
            web.get(f"{a}/objects", self._admin_objects),
            web.get(f"{a}/deliveries", self._admin_deliveries),
            web.get(f"{a}/requests", self._admin_requests),
            web.post(f"{a}/webhook-target", self._admin_webhook_target),
            web.post(f"{a}/reset-rate-limit", self._admin_reset_rate_limit),
            web.post(f"{a}/foreign-token", self._admin_foreign_token),
            web.post(f"{a}/expire-tokens", self._admin_expire_tokens),
            web.post(f"{a}/wait-idle", self._admin_wait_idle),
            web.post(f"{a}/hold", self._admin_hold),
            web.post(f"{a}/release", self._admin_release),
        ]
        app.add_routes(routes)
        return app

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/"):
            try:
                return await handler(request)
            except _ApiError as exc:
                return _json(exc.body, exc.status)
        client_id: list[str | None] = [None]
        try:
            response = await self._guarded(request, handler, client_id)
        except _ApiError as exc:
            response = _json(exc.body, exc.status)
        except web.HTTPException as exc:
            response = _json({"error": exc.reason}, exc.status)
        self.requests.append(
            RequestLog(
                request.method,
                request.path,
                request.query_string,
                response.status,
                self.clock.now(),
                client_id[0],
            )
        )
        return response

    async def _guarded(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        client_id: list[str | None],
    ) -> web.StreamResponse:
        # Cloudflare, in front of Fonzip, refuses requests without a User-Agent.
        if not request.headers.get("User-Agent"):
            return web.Response(status=403, text="error code: 1010")
        faults = self.faults
        if faults.outage_until is not None and self.clock.now() < faults.outage_until:
            return _json({"error": "Service Unavailable"}, 503)
        if faults.down_after is not None:
            if faults.down_after <= 0:
                return _json({"error": "Service Unavailable"}, 503)
            faults.down_after -= 1
        if faults.latency > 0:
            await self.clock.sleep(faults.latency)
        if faults.burst_429 > 0:
            faults.burst_429 -= 1
            return self._too_many()
        if faults.error_rate > 0 and self._fault_rng.random() < faults.error_rate:
            status = self._fault_rng.choice((500, 502, 503))
            return _json({"error": "Simulated server error"}, status)
        if request.path == f"{API_PREFIX}/token":
            form = await request.post()
            client_id[0] = str(form.get("client_id", "")) or None
        else:
            header = request.headers.get("Authorization", "")
            scheme, _, value = header.partition(" ")
            token = self._live_token(value.strip()) if scheme.lower() == "bearer" else None
            if token is None:
                return _json({"error": "Unauthorized Access"}, 401)
            client_id[0] = token.client_id
        if client_id[0] is not None and not self._admit(client_id[0]):
            return self._too_many()
        return await handler(request)

    def _admit(self, client_id: str) -> bool:
        """Count one request in the client's fixed 60-s window; False when over the limit."""
        now = self.clock.now()
        start, count = self._windows.get(client_id, (now, 0))
        if (now - start).total_seconds() >= 60:
            start, count = now, 0
        if count >= self.rate_per_minute:
            self._windows[client_id] = (start, count)
            return False
        self._windows[client_id] = (start, count + 1)
        return True

    def _too_many(self) -> web.Response:
        response = _json({"error": "Rate limit exceeded: 240 requests per minute"}, 429)
        if self.faults.retry_after is not None:
            response.headers["Retry-After"] = str(round(self.faults.retry_after))
        return response

    # -- /token and /me --------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant_type = str(form.get("grant_type", "client_credentials"))
        if grant_type in ("authorization_code", "refresh_token"):
            # The fake supports only server-side keys: no code or refresh token is valid.
            return _json(
                {"error": "invalid_grant", "error_description": "Invalid authorization code"},
                400,
            )
        if grant_type != "client_credentials":
            return _json(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "Invalid grant_type parameter",
                },
                406,
            )
        client_id = str(form.get("client_id", ""))
        secret = str(form.get("client_secret", ""))
        expected = self.clients.get(client_id)
        if expected is None or not secrets.compare_digest(expected, secret):
            # The spec says 401 invalid_client; fonzip-mcp observed 403 for mangled
            # secrets. The fake sends the spec's 401.
            return _json(
                {"error": "invalid_client", "error_description": "Unauthorized Access"}, 401
            )
        if self._client_has_live_token(client_id):
            return _json(
                {"error": "invalid_request", "error_description": "Access token already created"},
                409,
            )
        token = self._issue_token(client_id)
        log.info("token_issued", client_id=client_id)
        ttl = int(self.token_ttl) if float(self.token_ttl).is_integer() else self.token_ttl
        return _json({"access_token": token, "token_type": "Bearer", "expires_in": ttl})

    async def _me(self, request: web.Request) -> web.Response:
        return _json(
            {
                "id": 77,
                "name": "Umut Işığı Derneği",
                "display_name": "Umut Işığı",
                "details": "Eğitim, su ve gıda yardımı; İstanbul merkezli.",
                "phone": "+902125550000",
                "email": "info@umutisigi.example.org",
                "url": "umutisigi",
                "display_name_translations": {"en": "Light of Hope"},
                "details_translations": {},
                "facebook_url": "",
                "twitter_url": "",
                "instagram_url": "",
                "linkedin_url": "",
                "youtube_url": "",
                "locale": "tr",
                "footer_address": "Moda Cad. No: 5, Kadıköy/İstanbul",
                "footer_phone": "+902125550000",
                "footer_email": "info@umutisigi.example.org",
                "whatsapp_number": "",
                "result": "ok",
            }
        )

    # -- lists -----------------------------------------------------------------------

    def _list_handler(self, kind: Kind) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return _json(self._list(kind, request.query))

        return handler

    def _list(self, kind: Kind, query: Mapping[str, str]) -> dict[str, Any]:
        listed = "created" if kind is Kind.CAMPAIGN else query.get("status") or ""
        if f"{kind}:{listed}" in self.faults.failing_lists:
            _error(500, "Simulated server error")
        start_page, how_many = _paging(query)
        if kind is Kind.CAMPAIGN:
            entries = self._campaigns(query)
            order = query.get("order_by") or "id"
            status = "created"
        else:
            start, end = self._date_range(query)
            default_status = "answer" if kind is Kind.FORM_ANSWER else "paid"
            status = query.get("status") or default_status
            if status not in kind.list_statuses:
                # The reference says so for e-cards; the fake is as strict for all kinds.
                _error(400, f"status must be one of {', '.join(kind.list_statuses)}")
            entries = []
            for entry in self.account.entries[kind].values():
                when = _list_date(entry, status)
                if when is not None and start <= when <= end:
                    entries.append(entry)
            refund_first = kind is Kind.ECARD_SALE and status == "refund"
            default_order = "-transaction__refund_date" if refund_first else None
            order = query.get("order_by") or default_order or "-transaction__complete_date"
            if kind is Kind.FORM_ANSWER:
                order = "-transaction__complete_date"  # no order_by parameter on forms
        entries = _ordered(kind, entries, order)
        page = entries[(start_page - 1) * how_many : start_page * how_many]
        if kind is Kind.ECARD_SALE:
            wanted = query.getall("list", []) if hasattr(query, "getall") else []
            rows = [shapes.ecard_row(e, self.zone, status=status, wanted=wanted) for e in page]
        else:
            rows = [shapes.row(e, self.zone) for e in page]
        for entry, row in zip(page, rows, strict=True):
            change = self.tampered_rows.get((entry.kind, entry.id))
            if change is not None:
                change(row)
        total = len(entries) + self.faults.list_total_offset
        return {shapes.LIST_KEYS[kind]: rows, "total": total}

    def _date_range(self, query: Mapping[str, str]) -> tuple[dt.datetime, dt.datetime]:
        try:
            start = _parse_date(query["start_date"], self.zone)
            end = _parse_date(query["end_date"], self.zone)
        except (KeyError, ValueError):
            _error(400, _BAD_RANGE)
        if end < start:
            _error(400, _BAD_RANGE)
        return start, end

    def _campaigns(self, query: Mapping[str, str]) -> list[Entry]:
        getall = getattr(query, "getall", None)
        raw_statuses: list[str] = getall("status", []) if getall else []
        try:
            statuses = {int(s) for s in raw_statuses}
        except ValueError:
            _error(400, f"status must be integers, got {raw_statuses!r}")
        bound: dt.datetime | None = None
        if query.get("create_date"):
            try:
                bound = _parse_date(query["create_date"], self.zone)
            except ValueError:
                _error(400, f"create_date is not a valid date: {query['create_date']!r}")
        cnd = query.get("create_date_cnd") or "null"
        if cnd not in (">", "<", "null"):
            _error(400, f"create_date_cnd must be '>', '<' or null, got {cnd!r}")
        found = []
        for entry in self.account.entries[Kind.CAMPAIGN].values():
            if statuses and entry.extra["campaign_status"] not in statuses:
                continue
            if bound is not None:
                if cnd == ">" and not entry.when > bound:
                    continue
                if cnd == "<" and not entry.when < bound:
                    continue
                # Equality on a date-time is useless; assumed: the same local date.
                if cnd == "null" and (
                    entry.when.astimezone(self.zone).date() != bound.astimezone(self.zone).date()
                ):
                    continue
            found.append(entry)
        return found

    # -- details ---------------------------------------------------------------------

    async def _detail_response(self, entry: Entry | None, key: str) -> web.Response:
        if entry is None:
            _error(404, "Object not found")
        if f"{entry.kind}:{entry.id}" in self.faults.failing_details:
            _error(503, "Service Unavailable")
        # The state as it is when the request arrives, even if the answer is held.
        obj = shapes.detail(entry, self.zone)
        await self._held(entry.kind, entry.id)
        change = self.tampered.get((entry.kind, entry.id))
        if change is not None:
            change(obj)
            text = json.dumps({key: obj}, default=str)  # a lone surrogate as its \ud800 escape
            return web.Response(text=text, content_type="application/json")
        if (
            self.faults.malformed_details > 0
            and self._fault_rng.random() < self.faults.malformed_details
        ):
            text = json.dumps({key: obj}, default=str)
            return web.Response(text=text[: len(text) // 2], content_type="application/json")
        return _json({key: obj})

    def _detail_handler(self, kind: Kind) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            entry = self.account.get(kind, int(request.match_info["id"]))
            return await self._detail_response(entry, shapes.DETAIL_KEYS[kind])

        return handler

    async def _subscription(self, request: web.Request) -> web.Response:
        entry = self.account.get(Kind.MEMBERSHIP_FEE, int(request.match_info["id"]))
        if entry is not None and entry.extra["is_debt"]:
            entry = None  # a debt: only /debt/{id} knows it
        return await self._detail_response(entry, "subscription")

    async def _debt(self, request: web.Request) -> web.Response:
        entry = self.account.get(Kind.MEMBERSHIP_FEE, int(request.match_info["id"]))
        if entry is not None and not entry.extra["is_debt"]:
            entry = None
        return await self._detail_response(entry, "subscription")

    async def _form_answer(self, request: web.Request) -> web.Response:
        entry = self.account.get(Kind.FORM_ANSWER, int(request.match_info["id"]))
        # Open question in the reference; assumed strict: the wrong form id is a 404.
        if entry is not None and entry.extra["form"][0] != int(request.match_info["form_id"]):
            entry = None
        return await self._detail_response(entry, "answer")

    async def _forms(self, request: web.Request) -> web.Response:
        # The reference names GET /forms but not its shape; assumed {form_list, total}.
        forms = [{"id": f[0], "title": f[1], "paid": f[2]} for f in FORMS]
        return _json({"form_list": forms, "total": len(forms)})

    def _user_entries(self, kind: Kind, request: web.Request) -> tuple[list[Entry], int, int]:
        user_id = int(request.match_info["user_id"])
        if all(p.id != user_id for p in self.account.people):
            _error(404, "Object not found")
        start_page, how_many = _paging(request.query)
        entries = [e for e in self._entries(kind) if e.person.id == user_id]
        entries.sort(key=lambda e: e.when, reverse=True)
        return entries, start_page, how_many

    async def _user_form_answers(self, request: web.Request) -> web.Response:
        entries, page, n = self._user_entries(Kind.FORM_ANSWER, request)
        rows = [shapes.user_answer_row(e, self.zone) for e in entries[(page - 1) * n : page * n]]
        return _json({"answer_list": rows, "total": len(entries)})

    async def _user_ecards(self, request: web.Request) -> web.Response:
        entries, page, n = self._user_entries(Kind.ECARD_SALE, request)
        rows = [shapes.user_ecard_row(e, self.zone) for e in entries[(page - 1) * n : page * n]]
        return _json({"sale_list": rows, "total": len(entries)})

    # -- webhooks management ---------------------------------------------------------

    async def _webhook_body(self, request: web.Request, exclude: int | None) -> Webhook:
        try:
            body = await request.json()
        except ValueError:
            _error(400, "Invalid Request: body is not JSON")
        if not isinstance(body, dict) or not body.get("name") or not body.get("url"):
            _error(400, "Invalid Request: name and url are required")
        name, url = str(body["name"]), str(body["url"])
        events = body.get("events")
        # Observed by a real client: all three of these make Fonzip answer 500.
        if not isinstance(events, dict) or set(EVENT_KEYS.values()) - set(events):
            _error(500, "Internal Server Error")
        if "(" in name or ")" in name:
            _error(500, "Internal Server Error")
        if any(h.name == name and h.id != exclude for h in self.webhooks.values()):
            _error(500, "Internal Server Error")
        authentication = bool(body.get("authentication", False))
        token = body.get("auth_token")
        hook_events = {key: bool(events[key]) for key in EVENT_KEYS.values()}
        return Webhook(
            0, name, url, authentication, None if token is None else str(token), hook_events
        )

    def _webhook_of(self, request: web.Request) -> Webhook:
        hook = self.webhooks.get(int(request.match_info["id"]))
        if hook is None:
            _error(404, "Object not found")
        return hook

    async def _webhooks_list(self, request: web.Request) -> web.Response:
        hooks = [{"id": h.id, "name": h.name, "url": h.url} for h in self.webhooks.values()]
        return _json({"webhook_list": hooks})

    async def _webhooks_create(self, request: web.Request) -> web.Response:
        new = await self._webhook_body(request, exclude=None)
        self._add_webhook(new.name, new.url, new.authentication, new.auth_token, new.events)
        return _json({"result": "ok"})  # Fonzip does not return the new id

    async def _webhook_get(self, request: web.Request) -> web.Response:
        # Assumed: the detail echoes the create body's fields, auth_token included.
        return _json({"webhook": self._webhook_of(request).to_json()})

    async def _webhook_put(self, request: web.Request) -> web.Response:
        hook = self._webhook_of(request)
        new = await self._webhook_body(request, exclude=hook.id)
        hook.name, hook.url, hook.events = new.name, new.url, new.events
        hook.authentication, hook.auth_token = new.authentication, new.auth_token
        return _json({"result": "ok"})

    async def _webhook_delete(self, request: web.Request) -> web.Response:
        hook = self._webhook_of(request)
        del self.webhooks[hook.id]
        if hook.id == self._target_webhook_id:
            self._target_webhook_id = None
        return _json({"result": "ok"})

    async def _webhook_test(self, request: web.Request) -> web.Response:
        hook = self._webhook_of(request)
        # Shape of test deliveries is an open question; the help page's dummy zeros.
        payload = {"id": 0, "webhook_id": hook.id, "operation": 1, "status": 0}
        token = hook.auth_token if hook.authentication else None
        self.sender.send(hook.url, token, payload, drop=False)
        return _json({"result": "ok"})

    # -- admin API (loopback only, so no auth) ---------------------------------------

    async def _admin_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            _error(400, "body must be JSON")
        if not isinstance(body, dict):
            _error(400, "body must be a JSON object")
        return body

    @staticmethod
    def _admin_kind(value: Any) -> Kind:
        try:
            return Kind(value)
        except ValueError:
            _error(400, f"kind must be one of {[str(k) for k in Kind]}, got {value!r}")

    async def _admin_event(self, request: web.Request) -> web.Response:
        body = await self._admin_body(request)
        kind = self._admin_kind(body.get("kind"))
        when = None
        if body.get("when"):
            try:
                when = dt.datetime.fromisoformat(str(body["when"]))
            except ValueError:
                _error(400, f"when is not an ISO-8601 date-time: {body['when']!r}")
        try:
            fonzip_id, status = await self.create_event(
                kind,
                status=int(body.get("status", 3)),
                deliver=bool(body.get("deliver", True)),
                when=when,
                debt=None if body.get("debt") is None else bool(body["debt"]),
            )
        except ValueError as exc:
            _error(400, str(exc))
        return _json({"id": fonzip_id, "status": status, "operation": kind.operation})

    async def _admin_refund(self, request: web.Request) -> web.Response:
        body = await self._admin_body(request)
        kind = self._admin_kind(body.get("kind"))
        try:
            await self.refund(kind, int(body["id"]), deliver=bool(body.get("deliver", True)))
        except KeyError as exc:
            _error(404, str(exc.args[0]) if exc.args else "id is required")
        except (TypeError, ValueError) as exc:
            _error(400, str(exc))
        return _json({"result": "ok"})

    async def _admin_faults(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                self.faults.update(await self._admin_body(request))
            except ValueError as exc:
                _error(400, str(exc))
        return _json(self.faults.to_json())

    async def _admin_objects(self, request: web.Request) -> web.Response:
        kind = self._admin_kind(request.query.get("kind"))
        return _json({"kind": str(kind), "objects": self.objects(kind), "rows": self.rows(kind)})

    async def _admin_deliveries(self, request: web.Request) -> web.Response:
        return _json({"deliveries": [d.to_json() for d in self.deliveries]})

    async def _admin_requests(self, request: web.Request) -> web.Response:
        return _json({"requests": [r.to_json() for r in self.requests]})

    async def _admin_webhook_target(self, request: web.Request) -> web.Response:
        body = await self._admin_body(request)
        if not body.get("url"):
            _error(400, "url is required")
        token = body.get("token")
        self.configure_webhook_target(str(body["url"]), None if token is None else str(token))
        return _json({"result": "ok", "webhook_id": self._target_webhook_id})

    async def _admin_reset_rate_limit(self, request: web.Request) -> web.Response:
        self.reset_rate_limit()
        return _json({"result": "ok"})

    async def _admin_foreign_token(self, request: web.Request) -> web.Response:
        body = await self._admin_body(request)
        try:
            self.force_foreign_token(body.get("client_id"))
        except KeyError as exc:
            _error(404, str(exc.args[0]))
        return _json({"result": "ok"})

    async def _admin_expire_tokens(self, request: web.Request) -> web.Response:
        self.expire_tokens()
        return _json({"result": "ok"})

    async def _admin_hold(self, request: web.Request) -> web.Response:
        body = await self._admin_body(request)
        kind = self._admin_kind(body.get("kind"))
        try:
            seconds = body.get("seconds")
            self.hold_detail(
                kind,
                int(body["id"]),
                count=int(body.get("count", 1)),
                seconds=None if seconds is None else float(seconds),
            )
        except (KeyError, TypeError, ValueError) as exc:
            _error(400, f"hold needs id, and count >= 1 / seconds >= 0: {exc}")
        return _json({"result": "ok"})

    async def _admin_release(self, request: web.Request) -> web.Response:
        body = await self._admin_body(request)
        kind = self._admin_kind(body.get("kind"))
        try:
            self.release_detail(kind, int(body["id"]))
        except (KeyError, TypeError, ValueError) as exc:
            _error(400, f"release needs an id: {exc}")
        return _json({"result": "ok"})

    async def _admin_wait_idle(self, request: web.Request) -> web.Response:
        await asyncio.wait_for(self.wait_deliveries_idle(), timeout=60)
        return _json({"result": "ok"})


def _object_keys(value: Any) -> list[str]:
    """``["kind:suffix", ...]`` checked: a known kind before the colon, something after."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list of 'kind:...' strings, got {type(value).__name__}")
    keys = []
    for item in value:
        kind, sep, rest = str(item).partition(":")
        if not sep or not rest or kind not in {k.value for k in Kind}:
            raise ValueError(f"{item!r} is not 'kind:...' with a known kind")
        keys.append(f"{kind}:{rest}")
    return keys


def _paging(query: Mapping[str, str]) -> tuple[int, int]:
    try:
        start_page = int(query.get("start_page") or 1)
        how_many = int(query.get("how_many") or 10)
    except ValueError:
        _error(400, "start_page and how_many must be integers")
    if start_page < 1:
        _error(400, f"start_page must be at least 1, got {start_page}")
    if not 1 <= how_many <= 100:
        _error(400, f"how_many must be between 1 and 100, got {how_many}")
    return start_page, how_many


def _parse_date(raw: str, zone: dt.tzinfo) -> dt.datetime:
    """ISO-8601 with an offset or Z; a naive value is taken in the association's zone.

    A space where the offset's '+' belongs is what a client that did not encode '+'
    as %2B sends: it is rejected, not guessed at.
    """
    if " " in raw or not raw:
        raise ValueError(f"not a date-time: {raw!r}")
    value = dt.datetime.fromisoformat(raw)
    if value.tzinfo is None:
        # Assumption: Fonzip reads naive (and date-only) values in its own zone.
        value = value.replace(tzinfo=zone)
    return value


def _list_date(entry: Entry, status: str) -> dt.datetime | None:
    """The date a list with this ``status`` filters ``entry`` on, or None if not listed.

    Refund lists filter on the refund date: the reference says so for e-cards and
    leaves it open for the others; the fake assumes the same for every kind.
    """
    ps = entry.payment_status
    if status == "refund":
        return entry.refund_date if ps == REFUNDED else None
    if status == "failed":
        return entry.when if ps == FAILED else None
    if status == "paid":
        return entry.when if ps == PAID else None
    if ps not in (PAID,) and entry.transaction_id is not None:
        return None  # refunded or failed answers are in those lists only
    approval = entry.extra["approval_status"]
    wanted = {"answer": APPROVED, "waiting_approval": WAITING_APPROVAL, "rejected": REJECTED}
    return entry.when if wanted.get(status) == approval else None


def _ordered(kind: Kind, entries: list[Entry], order: str) -> list[Entry]:
    field = order.removeprefix("-")
    allowed = _ORDER_FIELDS[kind] | {"id", "transaction__complete_date"}
    if kind is not Kind.CAMPAIGN:
        allowed |= {"transaction__refund_date"}
    if field not in allowed:
        _error(400, f"order_by {order!r} is not one of {sorted(allowed)} (or with '-')")
    entries = sorted(entries, key=lambda e: e.id)
    entries.sort(key=lambda e: _sort_key(e, field), reverse=order.startswith("-"))
    return entries  # ties stay in ascending id order: the sort is stable


def _sort_key(entry: Entry, field: str) -> Any:
    if field == "id":
        return entry.id
    if field in ("transaction__complete_date", "create_date", "activation_date"):
        return entry.when
    if field == "transaction__refund_date":
        return entry.refund_date or dt.datetime.min.replace(tzinfo=dt.UTC)
    if field == "transaction__amount":
        return entry.amount or Decimal(0)
    if field in ("name", "user__name"):
        return entry.person.name
    if field == "first_name":
        return (entry.person.first_name, entry.person.last_name)
    if field == "last_name":
        return entry.person.last_name
    if field == "certificate_id":
        return entry.extra["ecard"][0]
    if field == "certificate__title":
        return entry.extra["ecard"][1]
    if field == "title":
        return entry.extra["title"]
    return entry.extra.get(field, 0)


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    seed: int = 0,
    webhook_url: str | None = None,
    webhook_token: str | None = None,
    days: int = 3,
    per_day: int = 20,
    timezone: str = "Europe/Istanbul",
    clients: Mapping[str, str] | None = None,
    out: Callable[[str], None] = print,
    started: Callable[[Simulator], None] | None = None,
) -> None:
    """Run a simulator until cancelled (``fonzipd simulate``); print where it listens.

    ``started`` is called with the running simulator, for callers that drive it.
    """
    sim = Simulator(seed=seed, days=days, per_day=per_day, clients=clients, timezone=timezone)
    if webhook_url:
        sim.configure_webhook_target(webhook_url, webhook_token)
    base = await sim.start(host, port)
    try:
        out(f"Fake Fonzip API listening on {base}")
        out(f"Admin API: {sim.admin_url} (no auth: keep it on loopback)")
        for client_id, secret in sim.clients.items():
            out(f"Demo credentials: client_id={client_id} client_secret={secret}")
        if webhook_url:
            auth = "with X-FZ-Auth-Token" if webhook_token else "without auth token"
            out(f"Webhooks go to {webhook_url} ({auth})")
        out(f"Data: seed {seed}, {days} days up to {sim.end_date} ({timezone}), Ctrl-C stops")
        if started is not None:
            started(sim)
        await asyncio.Event().wait()
    finally:
        await sim.stop()
