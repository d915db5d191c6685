"""The sink conformance suite: check_sink() and realistic sample records for plugin authors.

Call it from your own pytest test (any async test runner works)::

    from fonzipd.testing import check_sink

    async def test_my_sink(tmp_path):
        def factory():
            return MySink(MySink.Options(path=tmp_path / "out"), context_for_tests())

        async def read_back():
            return [...]  # the keys durably present in the destination

        await check_sink(factory, read_back)

``check_sink`` raises ``AssertionError`` naming the property that failed.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Awaitable, Callable, Collection, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from fonzipd.kinds import Kind
from fonzipd.privacy import Erasure
from fonzipd.records import Person, Record, Source, content_version
from fonzipd.sink import Sink, SinkContext, SinkOptions

__all__ = ["check_sink", "context_for_tests", "sample_records"]

ISTANBUL = zoneinfo.ZoneInfo("Europe/Istanbul")

_PEOPLE = (
    ("Çağrı Öztürk", "cagri@example.org", "+90 532 000 00 01"),
    ("Şükrü Güneş, Jr.", "sukru@example.org", None),
    ('İlkay "Işık" Ağaoğlu', "ilkay@example.org", "+90 555 000 00 03"),
    ("Gülşen Ünal\nYılmaz", None, "+90 505 000 00 04"),
    ("Ömer Faruk Çelik", "omer.celik@example.com.tr", None),
)
_MESSAGES = (
    'Geçmiş olsun, "Deprem" kampanyası için; elinize sağlık!',
    'Satır 1\nSatır 2, virgüllü\r\nSatır 3 "tırnaklı"',
    "",
    "ğüşıöç ĞÜŞİÖÇ € ₺ 🙂",
    'a,b,"c"',
)
_KINDS = (Kind.DONATION, Kind.MEMBERSHIP_FEE, Kind.TICKET_SALE, Kind.FORM_ANSWER, Kind.ECARD_SALE)


def _record(
    kind: Kind,
    fonzip_id: int,
    status: str,
    amount: Decimal | None,
    occurred_at: dt.datetime | None,
    person: Person,
    data: dict[str, Any],
    fetched_at: dt.datetime,
    tz: zoneinfo.ZoneInfo,
    source: Source,
) -> Record:
    currency = None if amount is None else "TRY"
    # Form answers carry an approval of their own (Record.approval); other kinds none.
    approval = "approved" if kind is Kind.FORM_ANSWER else None
    return Record(
        kind=kind,
        fonzip_id=fonzip_id,
        status=status,
        amount=amount,
        currency=currency,
        occurred_at=occurred_at,
        business_date=None if occurred_at is None else occurred_at.astimezone(tz).date(),
        person=person,
        source=source,
        fetched_at=fetched_at,
        version=content_version(
            kind, fonzip_id, status, amount, currency, occurred_at, person, data, approval=approval
        ),
        data=data,
        approval=approval,
    )


def sample_records(
    n: int = 24,
    *,
    start: dt.datetime = dt.datetime(2025, 3, 9, 20, 30, tzinfo=dt.UTC),
    tz: zoneinfo.ZoneInfo = ISTANBUL,
    first_id: int = 1000,
) -> list[Record]:
    """``n`` realistic records, in the order their versions were created.

    They span five kinds and several business dates (some just after local midnight,
    so the local date differs from the UTC one), carry Turkish names, commas, quotes and
    newlines, one has no date, and when ``n >= 2`` the last one is a refund: a new
    version of the first record. Deterministic: the same arguments give the same records.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    records: list[Record] = []
    plain = n - 1 if n >= 2 else n
    for i in range(plain):
        kind = _KINDS[i % len(_KINDS)]
        name, email, phone = _PEOPLE[i % len(_PEOPLE)]
        person = Person(name=name, email=email, phone=phone, fonzip_user_id=500 + i)
        fid = first_id + i
        occurred: dt.datetime | None = start + dt.timedelta(hours=3 * i, minutes=7 * i)
        if i % 11 == 7:
            occurred = None
        amount = None if kind is Kind.FORM_ANSWER else Decimal(50 * (i + 1)) + Decimal("0.25")
        status = "answer" if kind is Kind.FORM_ANSWER else "paid"
        data: dict[str, Any] = {
            "id": fid,
            "status": status,
            "message": _MESSAGES[i % len(_MESSAGES)],
            "payer": {"name": name, "email": email},
            "completed_at": None if occurred is None else occurred.isoformat(),
        }
        fetched = start + dt.timedelta(days=2, seconds=i)
        records.append(
            _record(kind, fid, status, amount, occurred, person, data, fetched, tz, Source.WEBHOOK)
        )
    if n >= 2:
        first = records[0]
        refund_data = dict(first.data, status="refund", refund_date="2025-03-12T09:15:00+03:00")
        records.append(
            _record(
                first.kind,
                first.fonzip_id,
                "refund",
                first.amount,
                first.occurred_at,
                first.person,
                refund_data,
                start + dt.timedelta(days=3),
                tz,
                Source.RECONCILE,
            )
        )
    return records


def context_for_tests(
    state_dir: Path, *, sink_id: str = "under_test", tz: zoneinfo.ZoneInfo = ISTANBUL
) -> SinkContext:
    """A :class:`SinkContext` for tests: ``state_dir`` should be a temporary directory."""
    return SinkContext(sink_id=sink_id, state_dir=state_dir, timezone=tz)


def _fail(prop: str, message: str) -> AssertionError:
    return AssertionError(f"check_sink: {prop}: {message}")


def _duplicates(keys: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    dups: list[str] = []
    for key in keys:
        if key in seen:
            dups.append(key)
        seen.add(key)
    return dups


async def _read(read_back: Callable[[], Awaitable[Collection[str]]]) -> list[str]:
    return list(await read_back())


async def _write(prop: str, sink: Sink, batch: Sequence[Record]) -> None:
    try:
        await sink.write(batch)
    except Exception as exc:
        raise _fail(
            prop, f"write() of {len(batch)} record(s) raised {type(exc).__name__}: {exc}"
        ) from exc


async def _expect_once(
    prop: str, read_back: Callable[[], Awaitable[Collection[str]]], expected: Sequence[Record]
) -> list[str]:
    keys = await _read(read_back)
    missing = [r.key for r in expected if r.key not in set(keys)]
    if missing:
        raise _fail(
            prop,
            f"{len(missing)} key(s) written were not in the destination once write() "
            f"returned, e.g. {missing[:3]}",
        )
    dups = _duplicates(keys)
    if dups:
        raise _fail(prop, f"key(s) present more than once: {sorted(set(dups))[:3]}")
    return keys


def _check_class(cls: type[Sink]) -> None:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise _fail("class", f"{cls.__qualname__}.name must be a non-empty str, got {name!r}")
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, SinkOptions)):
        raise _fail("class", f"{cls.__qualname__}.Options must subclass fonzipd.sink.SinkOptions")
    size = cls.batch_size
    if not isinstance(size, int) or size < 1:
        raise _fail("class", f"{cls.__qualname__}.batch_size must be an int >= 1, got {size!r}")


async def check_sink(
    factory: Callable[[], Sink],
    read_back: Callable[[], Awaitable[Collection[str]]],
    *,
    records: Sequence[Record] | None = None,
    contains: Callable[[str], Awaitable[bool]] | None = None,
) -> None:
    """Run the conformance suite against a sink; AssertionError names what failed.

    ``factory`` builds a new, unopened sink writing to one fresh, empty destination
    (each call must return a new instance on the same destination). ``read_back``
    returns the ``Record.key`` of every record durably present there, one entry per
    copy stored: for a destination that deduplicates by key itself (an HTTP receiver
    honouring ``webhook-id``), return what it kept. When it returns a list or tuple in
    the order the destination stored them, the order of versions is checked too; a
    set skips that check.

    ``records`` defaults to :func:`sample_records`; they must come in version order.

    Checked, in this order: the class attributes; an empty batch is a no-op; every
    key is present once ``write`` returns (durability as far as a read can see it);
    writing the same batch again adds nothing (idempotency); ``close`` is idempotent
    and ``write`` after it raises; a new instance re-writing everything, as after a
    crash between a write and its acknowledgement, adds nothing, nor does a batch
    holding the same record twice; versions of one record are stored in order.

    A sink that implements the optional ``forget`` is checked too: on a new instance,
    forgetting the person of the first record returns a count >= 1, keeps every other
    record, and can be repeated. ``contains(text)``, when given, says whether the
    destination holds ``text`` anywhere: then the person's e-mail must be gone after
    ``forget`` and another person's must stay.
    """
    recs = list(sample_records() if records is None else records)
    if len(recs) < 2:
        raise ValueError("check_sink needs at least 2 records")
    first = factory()
    if not isinstance(first, Sink):
        raise _fail("class", f"factory() returned {type(first).__name__}, not a Sink")
    _check_class(type(first))
    if await _read(read_back):
        raise _fail("setup", "read_back() is not empty before the first write: use a fresh one")

    half = len(recs) // 2
    # The first record goes with the second half, where the sample records hold its
    # refund: both versions in one batch, so that their order within a batch is seen.
    one, two = recs[1:half], [recs[0], *recs[half:]]
    try:
        await first.open()
    except Exception as exc:
        raise _fail("open", f"open() raised {type(exc).__name__}: {exc}") from exc
    await _write("empty batch", first, ())
    if await _read(read_back):
        raise _fail("empty batch", "writing an empty batch stored something")
    await _write("durability", first, tuple(one))
    await _expect_once("durability", read_back, one)
    await _write("idempotency", first, list(one))
    await _expect_once("idempotency (same batch written twice)", read_back, one)
    await _write("durability", first, two)
    await _expect_once("durability", read_back, recs)

    await first.close()
    try:
        await first.close()
    except Exception as exc:
        raise _fail("close", f"a second close() raised {type(exc).__name__}: {exc}") from exc
    try:
        await first.write(recs[:1])
    except Exception:  # raising is what the contract asks for
        pass
    else:
        raise _fail("close", "write() after close() returned instead of raising")

    second = factory()
    if second is first:
        raise _fail("class", "factory() must return a new instance on each call")
    await second.open()
    try:
        await _write("crash recovery", second, recs)
        await _expect_once(
            "crash recovery (a new instance re-writing every record)", read_back, recs
        )
        await _write("idempotency", second, [recs[0], recs[0], recs[1]])
        await _expect_once("idempotency (the same record twice in one batch)", read_back, recs)
    finally:
        await second.close()

    returned = await read_back()
    if isinstance(returned, Sequence):
        _check_order(list(returned), recs)
    if second.can_forget:
        await _check_forget(factory, read_back, recs, contains)


async def _check_forget(
    factory: Callable[[], Sink],
    read_back: Callable[[], Awaitable[Collection[str]]],
    recs: Sequence[Record],
    contains: Callable[[str], Awaitable[bool]] | None,
) -> None:
    """``forget`` removes one person's data, keeps everyone else's, and is idempotent."""
    email = next((r.person.email for r in recs if r.person.email), None)
    if email is None:
        raise ValueError("check_sink needs a record with a person's e-mail to check forget")
    mine = sorted({(r.kind, r.fonzip_id) for r in recs if r.person.email == email})
    others = [r for r in recs if (r.kind, r.fonzip_id) not in set(mine)]
    other_email = next((r.person.email for r in others if r.person.email), None)
    erasure = Erasure(tuple(mine), email=email)
    sink = factory()
    await sink.open()
    try:
        if contains is not None and not await contains(email):
            raise _fail("forget", "contains() does not find the e-mail of a record written")
        try:
            changed = await sink.forget(erasure)
        except Exception as exc:
            raise _fail("forget", f"forget() raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(changed, int) or changed < 1:
            raise _fail("forget", f"forget() of stored records returned {changed!r}, not >= 1")
        if contains is not None:
            if await contains(email):
                raise _fail("forget", "the person's e-mail is still in the destination")
            if other_email is not None and not await contains(other_email):
                raise _fail("forget", "forget() removed another person's data too")
        kept = set(await _read(read_back))
        lost = [r.key for r in others if r.key not in kept]
        if lost:
            raise _fail("forget", f"other people's records went missing, e.g. {lost[:3]}")
        try:
            again = await sink.forget(erasure)
        except Exception as exc:
            raise _fail(
                "forget", f"forget() a second time raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(again, int) or again < 0:
            raise _fail("forget", f"forget() a second time returned {again!r}")
    finally:
        await sink.close()


def _check_order(stored: list[str], recs: Sequence[Record]) -> None:
    position = {key: i for i, key in enumerate(stored)}
    last: dict[tuple[str, int], tuple[int, str]] = {}
    for record in recs:
        ident = (str(record.kind), record.fonzip_id)
        pos = position[record.key]
        if ident in last and last[ident][0] > pos:
            raise _fail(
                "ordering",
                f"version {record.key} was stored before the earlier version {last[ident][1]}",
            )
        last[ident] = (pos, record.key)
