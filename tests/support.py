"""Test support: a controllable clock and realistic sample records."""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import warnings
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pydantic
from pydantic import SecretStr

from fonzipd.clock import SYSTEM_CLOCK
from fonzipd.config import ConfigWarning, FonzipSettings
from fonzipd.kinds import Kind
from fonzipd.records import Person, Record, Source, content_version
from fonzipd.simulator import Simulator
from fonzipd.state import InboxEvent


class FakeClock:
    """A clock the test moves by hand; ``sleep`` advances it instead of waiting."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)
        self._mono = 1000.0
        self.slept: list[float] = []
        """Every sleep asked for, in order."""

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


T = TypeVar("T")


class VirtualClock:
    """Time that passes only when every task is waiting on this clock's sleep."""

    def __init__(
        self,
        start: dt.datetime = dt.datetime(2024, 5, 6, tzinfo=dt.UTC),
        *,
        horizon: float = float("inf"),
    ) -> None:
        self.t = 0.0
        self._start = start
        self._horizon = horizon
        """``run`` fails once virtual time passes this: a runaway test stops at once."""
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(0.0, seconds), next(self._seq), fut))
        await fut

    async def run(self, aw: Awaitable[T]) -> T:
        """Drive ``aw`` to completion, jumping time to the next sleeper whenever idle."""
        task = asyncio.ensure_future(aw)
        while not task.done():
            for _ in range(30):
                await asyncio.sleep(0)
            if task.done():
                break
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            assert self._sleepers, "deadlock: nothing is sleeping and the task is not done"
            self.t = max(self.t, self._sleepers[0][0])
            assert self.t <= self._horizon, "virtual time ran past the horizon"
            while self._sleepers and self._sleepers[0][0] <= self.t:
                fut = heapq.heappop(self._sleepers)[2]
                if not fut.done():
                    fut.set_result(None)
        return task.result()


def make_record(
    fonzip_id: int = 101,
    *,
    kind: Kind = Kind.DONATION,
    status: str = "succeeded",
    amount: str = "250.00",
    name: str = "Ayşe Yılmaz",
    day: dt.date = dt.date(2026, 11, 26),
    source: Source = Source.WEBHOOK,
) -> Record:
    """A realistic normalized record whose version follows its content."""
    occurred = dt.datetime.combine(day, dt.time(11, 3), tzinfo=dt.UTC)
    person = Person(name=name, email="ayse@example.com", phone=None, fonzip_user_id=55)
    data = {"id": fonzip_id, "name": name, "transaction": {"payment_status": status}}
    version = content_version(
        kind, fonzip_id, status, Decimal(amount), "TRY", occurred, person, data
    )
    return Record(
        kind=kind,
        fonzip_id=fonzip_id,
        status=status,
        amount=Decimal(amount),
        currency="TRY",
        occurred_at=occurred,
        business_date=day,
        person=person,
        source=source,
        fetched_at=dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC),
        version=version,
        data=data,
    )


def write_cli_config(tmp_path: Path, token: str, extra: str = "", *, creds: bool = True) -> Path:
    """A config.toml in ``tmp_path`` for CLI tests: the webhook ``token``, state.db and one
    SQLite sink beside it, Fonzip credentials unless ``creds`` is false, then ``extra``."""
    path = tmp_path / "config.toml"
    fonzip = 'client_id = "id"\nclient_secret = "secret"\n' if creds else ""
    path.write_text(
        f"""
[fonzip]
{fonzip}
[listener]
auth_token = "{token}"
[state]
path = "state.db"
[sinks.archive]
type = "sqlite"
path = "fonzip.db"
{extra}
""",
        encoding="utf-8",
    )
    return path


def fonzip_settings(base_url: str, *, rate: float, **extra: object) -> FonzipSettings:
    """Settings for the simulator's demo account; rates above 240 are meant here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        return FonzipSettings(
            base_url=pydantic.HttpUrl(base_url),
            client_id=SecretStr("sim-client"),
            client_secret=SecretStr("sim-secret"),
            requests_per_minute=rate,
            **extra,
        )


async def until(check: Callable[[], Awaitable[object]], within: float = 10.0) -> None:
    """Poll an async condition until it holds, or fail at the deadline."""
    deadline = SYSTEM_CLOCK.monotonic() + within
    while not await check():
        if SYSTEM_CLOCK.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# The oracle's own status tables, written from the API reference (not from fonzipd's
# normalizers, which they check): §5.1 transaction payment status, §3.2 membership due
# record status, §3.6 fundraising campaign status. Form answers' approval_status has no
# legend in the reference; the simulator's (0 waiting, 1 approved, 2 rejected) is used.
PAYMENT_STATUS = {
    0: "pending",
    1: "pending",
    2: "pending",
    3: "succeeded",
    4: "refunded",
    5: "failed",
    6: "removed",
}
DUE_RECORD_STATUS = {
    1: "pending",
    2: "succeeded",
    3: "cancelled",
    4: "refunded",
    6: "removed",
    7: "adjusted",
    8: "succeeded",
}
CAMPAIGN_STATUS = {
    0: "waiting_approval",
    1: "approved",
    2: "rejected",
    3: "finalized",
    4: "deleted",
    5: "waiting_extra_approval",
    7: "archived",
}
FORM_APPROVAL = {0: "waiting_approval", 1: "approved", 2: "rejected"}
"""Form answer approval_status to Record.approval (issue 12; undocumented by Fonzip)."""


def expected_status(kind: Kind, obj: Mapping[str, Any]) -> str:
    """The status a sink must show for one simulator detail object, from the tables above."""
    if kind is Kind.CAMPAIGN:
        return CAMPAIGN_STATUS[obj["status"]]
    if kind is Kind.ECARD_SALE:
        return PAYMENT_STATUS[obj["transaction__payment_status"]]
    tx = obj.get("transaction")
    if kind is Kind.MEMBERSHIP_FEE and tx is None:
        return DUE_RECORD_STATUS[obj["status"]]
    if kind is Kind.FORM_ANSWER:
        # Issue 12: the payment's status, like every money kind; "answered" when free.
        return "answered" if tx is None else PAYMENT_STATUS[tx["payment_status"]]
    assert tx is not None, (kind, obj["id"])
    return PAYMENT_STATUS[tx["payment_status"]]


def sim_statuses(sim: Simulator, kind: Kind, tz: ZoneInfo) -> dict[int, str]:
    """The oracle: the status every object the simulator holds must show in a sink.

    ``tz`` is kept for callers; statuses do not depend on the zone.
    """
    return {int(obj["id"]): expected_status(kind, obj) for obj in sim.objects(kind)}


def hook(fid: int, status: int = 3, kind: Kind = Kind.DONATION) -> InboxEvent:
    """A webhook event for the inbox."""
    return InboxEvent(kind=kind, fonzip_id=fid, event_status=status, source=Source.WEBHOOK)
