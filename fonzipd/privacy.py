"""Privacy: what each sink may receive (redaction, kind and status filters) and erasure.

A sink's ``[sinks.<id>]`` table may name Fonzip fields to ``redact`` (removed from
``Record.data`` wherever they occur, at any depth), the record fields
``person_name``, ``person_email``, ``person_phone`` (emptied), and the preset
``sensitive`` (:data:`SENSITIVE_FIELDS` plus the answers to form questions asking for
an identity number, a birthday or an address). ``kinds`` and ``statuses`` keep only
the records a sink wants. A :class:`SinkPolicy` is applied before a record is queued
for the sink, so what it must not see never reaches its outbox.

A redacted record keeps the original record's ``version`` and ``key``: the key names
one state of one Fonzip object for every sink, redacted or not, so changing ``redact``
later makes no new versions (and a replay after such a change is skipped by sinks
that hold the key already: see the README's data-protection section).

Erasure (``fonzipd forget``) replaces a record by :func:`anonymized`: the accounting
facts stay (kind, id, status, amount, currency, dates), the person and the Fonzip
object go.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fonzipd.config import Settings, SinkSettings
from fonzipd.kinds import Kind
from fonzipd.records import Person, Record, content_version

__all__ = [
    "PERSON_FIELDS",
    "PRESETS",
    "SENSITIVE_FIELDS",
    "SENSITIVE_FORM_QUESTIONS",
    "Erasure",
    "SinkPolicy",
    "anonymized",
    "policies",
    "redact_data",
    "scrubbed",
    "thinned",
]

SENSITIVE_FIELDS: tuple[str, ...] = (
    # Identity and tax numbers
    "tckno",
    "tax_info",
    # Card data
    "bin_number",
    "last_four",
    "card_info",
    # IP addresses
    "ip_address",
    # Birthday
    "birthday",
    # Addresses: the person's, the work address, the honoree's, the billing address
    "address",
    "city",
    "district",
    "post_code",
    "district_text",
    "city_text",
    "country_text",
    "work_address",
    "work_post_code",
    "work_district_text",
    "work_city_text",
    "work_country_text",
    "referring_address",
    "referring_city",
    "referring_district",
    "billing_address",
    "billing_city",
    "billing_district",
)
"""The Fonzip fields of the ``sensitive`` preset (the README lists where each occurs).

A name also matches the flattened form of a nested field (``transaction__ip_address``,
``transaction__bin_number``): a key matches when it equals a name or its last
``__``-separated part does."""

SENSITIVE_FORM_QUESTIONS: frozenset[int] = frozenset({2, 4, 30, 31, 32, 33, 34, 40, 41, 42, 43, 44})
"""``static_question`` codes of form questions whose answers the ``sensitive`` preset
removes: 2 identity number, 4 birthday, 30-34 district, city, country, address, post
code, 40-44 the same of the work address (reference §3.4)."""

_ANSWER_KEYS = ("answer", "db_answer", "selected_option_list")

PRESETS: Mapping[str, tuple[str, ...]] = {"sensitive": SENSITIVE_FIELDS}
"""Words that stand for a set of fields in ``redact``."""

PERSON_FIELDS: Mapping[str, str] = {
    "person_name": "name",
    "person_email": "email",
    "person_phone": "phone",
}
"""Record fields ``redact`` can empty, and the :class:`Person` attribute each is."""

_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def known_statuses() -> frozenset[str]:
    """Every normalized status a record can have (what ``statuses`` is checked against)."""
    from fonzipd.fonzip import statuses as st
    from fonzipd.records import DELETED

    return frozenset(
        {
            *st.PAYMENT_STATUSES.values(),
            *st.DUE_RECORD_STATUSES.values(),
            *st.CAMPAIGN_STATUSES.values(),
            *st.FORM_APPROVAL_STATUSES.values(),
            "answered",
            DELETED,
        }
    )


def check_redact(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` if each is a field name, a person field or a preset (ValueError otherwise)."""
    out = tuple(names)
    for name in out:
        if name in PRESETS or name in PERSON_FIELDS:
            continue
        if not _FIELD_NAME.match(name):
            presets = ", ".join(PRESETS)
            raise ValueError(
                f"{name!r} is neither a Fonzip field name (letters, digits, _), one of "
                f"{', '.join(PERSON_FIELDS)}, nor a preset ({presets})"
            )
    return out


def _matches(key: str, names: frozenset[str]) -> bool:
    return key in names or ("__" in key and key.rsplit("__", 1)[1] in names)


def redact_data(value: Any, names: frozenset[str], form_questions: frozenset[int]) -> Any:
    """A copy of ``value`` without the keys in ``names`` at any depth (and without the
    answers to the form questions in ``form_questions``); ``value`` is not changed."""
    if isinstance(value, dict):
        out = {k: redact_data(v, names, form_questions) for k, v in value.items()}
        out = {k: v for k, v in out.items() if not _matches(k, names)}
        if form_questions and _asks(value, form_questions):
            for key in _ANSWER_KEYS:
                out.pop(key, None)
        return out
    if isinstance(value, list):
        return [redact_data(v, names, form_questions) for v in value]
    return value


def _asks(item: Mapping[str, Any], codes: frozenset[int]) -> bool:
    """True for a form answer item whose question is one of the static ``codes``."""
    question = item.get("question")
    if not isinstance(question, Mapping):
        return False
    code = question.get("static_question")
    return isinstance(code, int) and not isinstance(code, bool) and code in codes


@dataclasses.dataclass(frozen=True, slots=True)
class SinkPolicy:
    """What one sink receives: which records, and what is removed from them first."""

    redact: frozenset[str] = frozenset()
    """Fonzip field names removed from ``data`` at any depth."""
    person: frozenset[str] = frozenset()
    """Attributes of ``Record.person`` emptied: ``name``, ``email``, ``phone``."""
    form_questions: frozenset[int] = frozenset()
    """Static form questions whose answers are removed (the ``sensitive`` preset)."""
    kinds: frozenset[Kind] | None = None
    """Only these kinds (None: all)."""
    statuses: frozenset[str] | None = None
    """Only records in these statuses (None: all)."""
    enrichments: bool = True
    """Whether a detail that only enriches a record built from a list row (same
    normalized fields) is queued (see ``SinkSettings.enrichments``)."""

    @classmethod
    def from_settings(cls, settings: SinkSettings) -> SinkPolicy:
        """The policy of one ``[sinks.<id>]`` table."""
        fields: set[str] = set()
        person: set[str] = set()
        questions: frozenset[int] = frozenset()
        for name in settings.redact:
            if name in PRESETS:
                fields.update(PRESETS[name])
                if name == "sensitive":
                    questions = SENSITIVE_FORM_QUESTIONS
            elif name in PERSON_FIELDS:
                person.add(PERSON_FIELDS[name])
            else:
                fields.add(name)
        return cls(
            redact=frozenset(fields),
            person=frozenset(person),
            form_questions=questions,
            kinds=None if settings.kinds is None else frozenset(settings.kinds),
            statuses=None if settings.statuses is None else frozenset(settings.statuses),
            enrichments=_takes_enrichments(settings),
        )

    @property
    def redacts(self) -> bool:
        """True when records are changed before they are queued."""
        return bool(self.redact or self.person or self.form_questions)

    def admits(self, record: Record) -> bool:
        """True when the sink wants this record (its kind and status pass the filters)."""
        if self.kinds is not None and record.kind not in self.kinds:
            return False
        return self.statuses is None or record.status in self.statuses

    def apply(self, record: Record) -> Record:
        """``record`` as this sink receives it; the key and version stay the original's."""
        if not self.redacts:
            return record
        person = record.person
        if self.person:
            person = dataclasses.replace(person, **dict.fromkeys(self.person))
        data = redact_data(record.data, self.redact, self.form_questions)
        return dataclasses.replace(record, person=person, data=data)


NO_POLICY = SinkPolicy()
"""Everything, unchanged."""


def _takes_enrichments(settings: SinkSettings) -> bool:
    if settings.enrichments is not None:
        return settings.enrichments
    # A CSV row without the data column would repeat the previous one cell for cell
    # (but key, version and read time): no new information, a duplicate to the reader.
    return settings.type != "csv" or bool((settings.model_extra or {}).get("include_data"))


def policies(settings: Settings) -> dict[str, SinkPolicy]:
    """The policy of every enabled sink, by sink id."""
    return {sid: SinkPolicy.from_settings(s) for sid, s in settings.enabled_sinks.items()}


def thinned(data: Mapping[str, Any]) -> dict[str, Any]:
    """What is kept of a Fonzip object once its full ``data`` is dropped (retention,
    erasure): the refund date, which the reconciler counts refunds by, and Fonzip's
    last update time, which orders two states of one object. No personal data."""
    kept: dict[str, Any] = {}
    transaction = data.get("transaction")
    if isinstance(transaction, Mapping) and transaction.get("refund_date") is not None:
        kept["transaction"] = {"refund_date": transaction["refund_date"]}
    for key in ("transaction__refund_date", "refund_date", "last_update_date"):
        if data.get(key) is not None:
            kept[key] = data[key]
    return kept


def anonymized(record: Record) -> Record:
    """``record`` without the person and the Fonzip object, re-versioned.

    What stays are the association's accounting facts: kind, Fonzip id, status,
    amount, currency, dates, source; ``data`` keeps only :func:`thinned`'s dates.
    """
    person = Person()
    data = thinned(record.data)
    version = content_version(
        record.kind,
        record.fonzip_id,
        record.status,
        record.amount,
        record.currency,
        record.occurred_at,
        person,
        data,
    )
    return dataclasses.replace(record, person=person, data=data, version=version)


def scrubbed(record: Record) -> Record:
    """``record`` without the person and the Fonzip object, keeping its key (for a copy
    already queued under that key: an outbox row)."""
    return dataclasses.replace(record, person=Person(), data=thinned(record.data))


@dataclasses.dataclass(frozen=True, slots=True)
class Erasure:
    """One person's erasure (``fonzipd forget``), as every sink's ``forget`` receives it."""

    records: tuple[tuple[Kind, int], ...]
    """``(kind, fonzip_id)`` of every record about the person that fonzipd holds."""
    email: str | None = None
    """The e-mail address the erasure was asked for, if it was asked by e-mail."""
    fonzip_user_id: int | None = None
    """The Fonzip user id the erasure was asked for, if it was asked by id (both may be
    given)."""
    requested_at: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def id(self) -> str:
        """A stable id of this erasure (the same person and records, the same id): an
        idempotency key for destinations, such as the HTTP forwarder's ``webhook-id``."""
        who = f"email:{self.email}|user:{self.fonzip_user_id}"
        idents = ",".join(f"{k}:{i}" for k, i in sorted(self.records))
        return "erasure_" + hashlib.sha256(f"{who}|{idents}".encode()).hexdigest()[:32]
