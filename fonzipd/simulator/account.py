"""The simulated association's data: a seeded, deterministic account of all six kinds."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from decimal import Decimal
from typing import Any

from fonzipd.kinds import Kind

__all__ = ["Account", "Entry", "Person"]

# Payment statuses (reference §5.1) the simulator produces.
PAID = 3
REFUNDED = 4
FAILED = 5

# Form answer approval_status: the reference gives no legend. Assumption: 0 waiting
# approval, 1 approved, 2 rejected.
WAITING_APPROVAL = 0
APPROVED = 1
REJECTED = 2

_FIRST_NAMES = (
    "Ayşe", "Şule", "Gülşen", "İbrahim", "Çağrı", "Öykü", "Ümit", "Ömer", "Işıl", "Doğan",
    "Buğra", "Sıla", "Ilgın", "Zeynep", "Hüseyin", "Gökçe", "Tuğçe", "Şükrü", "İpek", "Ağahan",
)  # fmt: skip
_LAST_NAMES = (
    "Yılmaz", "Şahin", "Öztürk", "Çelik", "Aydın", "Güneş", "Kılıç", "Koç", "Ünal", "Işık",
    "Çakır", "Yücel", "Özdemir", "Ağaoğlu", "Erdoğan", "Gündüz", "Karaçam", "Bulut",
)  # fmt: skip
_MESSAGES = (
    None,
    None,
    "Allah kabul etsin, hayırlı olsun.",
    'Annemin anısına, "sevgiyle".',
    "Küçük bir katkı;\numarım işe yarar.",
    'Çocuklar için, "okul" kampanyasına.\nTeşekkürler, iyi ki varsınız!',
    "Geçmiş olsun, Türkiye'm.",
)
_CATEGORIES = ((3, "Genel Bağış"), (4, "Eğitim Bursu"), (5, "Su Kuyusu, Afrika"))
_EVENTS = ((71, "Bahar Şenliği 2026", "bahar-senligi"), (72, "Çocuk Tiyatrosu", "cocuk-tiyatrosu"))
FORMS: tuple[tuple[int, str, bool], ...] = (
    # (form id, title, paid): answers of unpaid forms have no transaction.
    (41, "Gönüllü Başvuru Formu", False),
    (42, "Yaz Kampı Kaydı", True),
    (43, "Üyelik Başvurusu", True),
)
_ECARDS = ((61, "Fidan Sertifikası"), (62, "Doğum Günü E-Kartı"))
_CAMPAIGN_TITLES = (
    "Köy Okuluna Kütüphane",
    "Şırnak'ta Su Kuyusu",
    "İstanbul Maratonu İçin Koşuyorum",
    "Öğrencilere Kışlık Mont",
    'Barınak "Patiler" İçin Mama',
)
_CAMPAIGN_STATUSES = (0, 1, 1, 1, 2, 3, 5, 7)
_TR_ASCII = str.maketrans("şŞğĞıİöÖüÜçÇ'", "sSgGiIoOuUcC-")


@dataclasses.dataclass(slots=True)
class Person:
    """A contact of the association (a Fonzip user)."""

    id: int
    first_name: str
    last_name: str
    email: str
    phone: str
    membership_no: int

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"


@dataclasses.dataclass(slots=True)
class Entry:
    """One object of any kind, in the simulator's own terms; ``shapes`` renders it.

    ``when`` is the completion date (creation date for campaigns), aware.
    ``extra`` holds the kind's own facts: ``category``, ``message``, ``is_debt``,
    ``event``, ``form``, ``approval_status``, ``ecard``, ``campaign_status``, ``title``.
    """

    kind: Kind
    id: int
    person: Person
    when: dt.datetime
    payment_status: int
    amount: Decimal | None
    currency: str | None
    transaction_id: int | None
    refund_date: dt.datetime | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


_ID_BASES = {
    Kind.DONATION: 10_001,
    Kind.MEMBERSHIP_FEE: 20_001,
    Kind.TICKET_SALE: 30_001,
    Kind.FORM_ANSWER: 40_001,
    Kind.ECARD_SALE: 50_001,
    Kind.CAMPAIGN: 60_001,
}


class Account:
    """All objects of the simulated association, generated from a seed.

    The same seed, ``end_date``, ``days``, ``per_day`` and zone give the same account.
    """

    def __init__(
        self, *, seed: int, days: int, per_day: int, end_date: dt.date, zone: dt.tzinfo
    ) -> None:
        if days < 1 or per_day < 1:
            raise ValueError(f"days and per_day must be >= 1, got {days} and {per_day}")
        self.zone = zone
        self._rng = random.Random(seed)
        self._next_id = dict(_ID_BASES)
        self._next_transaction = 900_001
        self.people = [self._person(i) for i in range(30)]
        self.entries: dict[Kind, dict[int, Entry]] = {kind: {} for kind in Kind}
        first = end_date - dt.timedelta(days=days - 1)
        for offset in range(days):
            self._generate_day(first + dt.timedelta(days=offset), per_day)
        self._generate_refunds(first, end_date)

    # -- generation ------------------------------------------------------------------

    def _person(self, index: int) -> Person:
        first = self._rng.choice(_FIRST_NAMES)
        last = self._rng.choice(_LAST_NAMES)
        local = f"{first}.{last}".translate(_TR_ASCII).lower()
        return Person(
            id=501 + index,
            first_name=first,
            last_name=last,
            email=f"{local}{index}@example.com",
            phone=f"+90532{self._rng.randrange(1_000_000, 9_999_999)}",
            membership_no=1000 + index,
        )

    def _generate_day(self, day: dt.date, per_day: int) -> None:
        start = dt.datetime.combine(day, dt.time(), self.zone)
        for kind in Kind:
            count = per_day if kind is not Kind.CAMPAIGN else max(1, per_day // 5)
            for index in range(count):
                if index == 0:
                    when = start  # exactly 00:00:00 local
                elif index == 1:
                    when = start + dt.timedelta(seconds=86_399)  # 23:59:59 local
                elif index == 2 and kind is Kind.DONATION:
                    # The final sub-second of the day, missed by an end bound of 23:59:59.
                    when = start + dt.timedelta(seconds=86_399, microseconds=600_000)
                else:
                    when = start + dt.timedelta(seconds=self._rng.randrange(60, 86_340))
                status = FAILED if self._rng.random() < 0.12 else PAID
                if kind is Kind.CAMPAIGN:
                    status = 0
                elif index < 3:
                    status = PAID  # boundary records stay paid, so paid lists show them
                entry = self.add(kind, when=when, status=status)
                entry.extra["boundary"] = index < 3

    def _generate_refunds(self, first: dt.date, last: dt.date) -> None:
        """Refund some paid objects, mostly on a later day than they were paid."""
        for kind in Kind:
            if kind is Kind.CAMPAIGN:
                continue
            paid = [
                e
                for e in self.entries[kind].values()
                if e.payment_status == PAID and e.amount is not None and not e.extra.get("boundary")
            ]
            if not paid:
                continue  # a small account may have no refundable payment of a kind
            for entry in self._rng.sample(paid, k=max(1, len(paid) // 10)):
                paid_day = entry.when.astimezone(self.zone).date()
                span = (last - paid_day).days
                refund_day = paid_day + dt.timedelta(days=self._rng.randint(0, span))
                refund_at = dt.datetime.combine(refund_day, dt.time(), self.zone) + dt.timedelta(
                    seconds=self._rng.randrange(0, 86_400)
                )
                if refund_at <= entry.when:
                    refund_at = entry.when + dt.timedelta(minutes=5)
                self.refund(kind, entry.id, at=refund_at)

    def _amount(self, kind: Kind) -> tuple[Decimal, str]:
        roll = self._rng.random()
        currency = "TRY" if roll < 0.8 else ("USD" if roll < 0.9 else "EUR")
        if kind is Kind.MEMBERSHIP_FEE:
            whole = self._rng.choice((100, 150, 250))
        else:
            whole = self._rng.choice((10, 25, 50, 100, 250, 500, 1000, 2500))
        kurus = self._rng.choice((0, 0, 0, 50, 99, 5, 25))
        if kind is Kind.MEMBERSHIP_FEE:
            currency = "TRY"
        return Decimal(whole) + Decimal(kurus) / 100, currency

    def add(self, kind: Kind, *, when: dt.datetime, status: int) -> Entry:
        """Create one object of ``kind`` (payment status 3 or 5; campaigns take 0)."""
        rng = self._rng
        entry_id = self._next_id[kind]
        self._next_id[kind] += 1
        person = rng.choice(self.people)
        amount: Decimal | None
        currency: str | None
        amount, currency = self._amount(kind)
        extra: dict[str, Any] = {}
        transaction_id: int | None = self._next_transaction
        self._next_transaction += 1
        if kind is Kind.DONATION:
            extra["category"] = rng.choice(_CATEGORIES)
            extra["message"] = rng.choice(_MESSAGES)
            extra["donor_type"] = "corporate" if rng.random() < 0.1 else "personal"
        elif kind is Kind.MEMBERSHIP_FEE:
            extra["is_debt"] = rng.random() < 0.2
            extra["period"] = when.astimezone(self.zone).date().replace(day=1)
        elif kind is Kind.TICKET_SALE:
            extra["event"] = rng.choice(_EVENTS)
            extra["quantity"] = rng.randint(1, 3)
        elif kind is Kind.FORM_ANSWER:
            # A failed payment needs a paid form: free forms have no transaction.
            form = rng.choice(FORMS if status != FAILED else [f for f in FORMS if f[2]])
            extra["form"] = form
            extra["approval_status"] = rng.choice(
                (APPROVED, APPROVED, APPROVED, WAITING_APPROVAL, REJECTED)
            )
            if not form[2]:
                amount, currency, transaction_id = None, None, None
        elif kind is Kind.ECARD_SALE:
            extra["ecard"] = rng.choice(_ECARDS)
            extra["recipients"] = rng.randint(1, 2)
        elif kind is Kind.CAMPAIGN:
            amount, currency, transaction_id = None, "TRY", None
            extra["title"] = rng.choice(_CAMPAIGN_TITLES)
            extra["campaign_status"] = rng.choice(_CAMPAIGN_STATUSES)
            extra["target"] = rng.choice((5000, 10000, 25000))
            extra["donation_total"] = Decimal(rng.randrange(0, 500_000)) / 100
        entry = Entry(
            kind=kind,
            id=entry_id,
            person=person,
            when=when,
            payment_status=status,
            amount=amount,
            currency=currency,
            transaction_id=transaction_id,
            extra=extra,
        )
        if kind is Kind.CAMPAIGN and status == 0:
            # A campaign created through the webhook path starts waiting approval.
            entry.payment_status = 0
        self.entries[kind][entry_id] = entry
        return entry

    def refund(self, kind: Kind, fonzip_id: int, *, at: dt.datetime) -> Entry:
        """Mark a paid object refunded at ``at``; KeyError or ValueError when impossible."""
        entry = self.entries[kind][fonzip_id]
        if kind is Kind.CAMPAIGN or entry.transaction_id is None:
            raise ValueError(f"{kind} {fonzip_id} has no payment to refund")
        if entry.payment_status != PAID:
            raise ValueError(
                f"{kind} {fonzip_id} has payment status {entry.payment_status}, not 3 (paid)"
            )
        entry.payment_status = REFUNDED
        entry.refund_date = at
        return entry

    def get(self, kind: Kind, fonzip_id: int) -> Entry | None:
        return self.entries[kind].get(fonzip_id)
