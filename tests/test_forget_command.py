"""`fonzipd forget` as a data-protection officer runs it: the real command in a subprocess,
over a real state database, a SQLite sink, CSV files, a signed HTTP receiver on loopback
and a plugin that cannot delete."""

from __future__ import annotations

import asyncio
import base64
import csv
import dataclasses
import hmac
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fonzipd.config import load_config
from fonzipd.kinds import Kind
from fonzipd.privacy import policies
from fonzipd.records import Person, Record, content_version
from fonzipd.registry import build_sinks
from fonzipd.state import Store
from tests.support import hook, make_record

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + base64.b64encode(b"forget test secret, 32 bytes ok").decode()
TOKEN = "a-long-enough-webhook-token"
ZEYNEP = Person("Zeynep Kaya", "zeynep.kaya@example.org", "+905320000077", 77)
MEHMET = Person("Mehmet Demir", "mehmet@example.org", "+905320000078", 78)


def about(
    fid: int, person: Person, *, status: str = "succeeded", kind: Kind = Kind.DONATION
) -> Record:
    base = make_record(fid, status=status, kind=kind)
    data = {
        **base.data,
        "name": person.name,
        "email": person.email,
        "tckno": f"9876543{person.fonzip_user_id:04d}",
        "address": f"Moda Cad. {person.fonzip_user_id}",
    }
    version = content_version(
        kind, fid, status, base.amount, base.currency, base.occurred_at, person, data
    )
    return dataclasses.replace(base, person=person, data=data, version=version)


@dataclasses.dataclass
class Receiver:
    url: str = ""
    down: bool = False
    messages: dict[str, Any] = dataclasses.field(default_factory=dict)
    bad_signatures: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        msg_id, ts = request.headers["webhook-id"], request.headers["webhook-timestamp"]
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, "sha256").digest()
        if request.headers["webhook-signature"] != "v1," + base64.b64encode(mac).decode():
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.down:
            return web.Response(status=503)
        self.messages.setdefault(msg_id, json.loads(body))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield rec
    await runner.cleanup()


def _config(tmp_path: Path, receiver: Receiver) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'plugins_dir = "{ROOT / "plugins"}"\n'
        f'[listener]\nauth_token = "{TOKEN}"\n[state]\npath = "state.db"\n'
        '[sinks.archive]\ntype = "sqlite"\npath = "archive.db"\n'
        '[sinks.sheets]\ntype = "csv"\ndirectory = "csv"\ninclude_data = true\n'
        f'[sinks.crm]\ntype = "http"\nurl = "{receiver.url}"\nsecret = "{SECRET}"\n'
        'redact = ["sensitive"]\n'
        '[sinks.lines]\ntype = "jsonl"\npath = "lines.jsonl"\n'
        '[sinks.old]\ntype = "csv"\ndirectory = "old-csv"\nenabled = false\n',
        encoding="utf-8",
    )
    return path


async def _seed(config: Path, *, deliver: bool = True) -> list[Record]:
    """Records about two people stored and delivered as the daemon would (the refund of
    Zeynep's donation 1 stays in the outbox, as if the sinks were down)."""
    settings = load_config(config)
    recs = [
        about(1, ZEYNEP),
        about(2, MEHMET),
        about(3, ZEYNEP, kind=Kind.TICKET_SALE),
    ]
    store = await Store.open(settings.state.path)
    try:
        for record in recs:
            await store.records.apply_record(None, record, policies(settings))
        built = build_sinks(settings, state_dir=settings.state.path.parent)
        for sid, b in built.items():
            rows = await store.outbox.batch(sid, 100)
            await b.sink.open()
            await b.sink.write([r.record for r in rows])
            await b.sink.close()
            await store.outbox.acknowledge(sid, [r.id for r in rows])
        await store.records.apply_record(
            None, about(1, ZEYNEP, status="refunded"), policies(settings)
        )
    finally:
        await store.close()
    return recs


async def _forget(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fonzipd", "forget", "--config", str(config), *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=config.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _everything(tmp_path: Path) -> bytes:
    """Every byte of every file fonzipd and its sinks wrote (databases, WALs, CSV, JSONL)."""
    return b"".join(
        p.read_bytes()
        for p in sorted(tmp_path.rglob("*"))
        if p.is_file() and p.name != "config.toml" and "jsonl" not in p.name
    )


def _erasures(receiver: Receiver) -> dict[str, Any]:
    return {k: v for k, v in receiver.messages.items() if k.startswith("erasure_")}


def _csv_rows(tmp_path: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted((tmp_path / "csv").glob("*/*.csv")):
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows.extend(csv.DictReader(f))
    return rows


async def test_forget_by_email_erases_the_person_everywhere_and_says_where(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _config(tmp_path, receiver)
    await _seed(config)
    assert b"zeynep.kaya@example.org" in _everything(tmp_path)
    # A webhook not fetched yet: it carries only an id, so no one knows whose it is.
    store = await Store.open(tmp_path / "state.db")
    await store.inbox.add_events([hook(9)])
    await store.close()

    code, out, err = await _forget(config, "--email", "Zeynep.Kaya@example.org", "--dry-run")
    assert (code, err) == (0, "")
    assert "2 record(s) found: donation 1, ticket_sale 3" in out
    assert "sink lines (jsonl): cannot delete" in out
    assert "sink archive (sqlite): would be asked to forget" in out
    assert "would anonymize 2 record(s), scrub 4 outbox row(s)" in out
    assert "dry run: nothing changed" in out
    assert b"zeynep.kaya@example.org" in _everything(tmp_path)
    assert _erasures(receiver) == {}

    code, out, err = await _forget(config, "--email", "Zeynep.Kaya@example.org")
    assert (code, err) == (0, "")
    assert "sink archive (sqlite): 4 stored item(s) changed" in out  # 2 latest + 2 history
    assert "sink sheets (csv): 2 stored item(s) changed" in out
    assert "sink crm (http): 1 stored item(s) changed" in out
    assert "sink lines (jsonl): cannot delete: remove the person's data there yourself" in out
    assert "sink old (csv): disabled, not asked" in out
    assert "state database: 2 record(s) anonymized, 4 outbox row(s) scrubbed" in out
    assert "note: 1 event(s) still wait in the inbox to be fetched" in out
    # Only the identifier given: no name, phone or ID number in the output.
    beyond = out.replace("Zeynep.Kaya@example.org", "")
    for secret in ("Zeynep", "Kaya", "0077", "Moda"):
        assert secret not in beyond
    # Nowhere on disk: databases (free pages, WAL), CSV files, the CSV ledger.
    everything = _everything(tmp_path)
    for value in (b"zeynep.kaya@example.org", b"98765430077", b"Moda Cad. 77"):
        assert value not in everything
    for kept in (b"mehmet@example.org", b"98765430078"):
        assert kept in everything  # everyone else's data stays
    # The accounting stays: amounts and statuses, in the sinks and the state database.
    with sqlite3.connect(tmp_path / "archive.db") as db:
        rows = list(db.execute("SELECT fonzip_id, status, amount, person_name FROM records"))
    assert sorted(rows) == [
        (1, "succeeded", "250.00", None),
        (2, "succeeded", "250.00", "Mehmet Demir"),
        (3, "succeeded", "250.00", None),
    ]
    assert {r["fonzip_id"]: r["person_email"] for r in _csv_rows(tmp_path)} == {
        "1": "", "2": "mehmet@example.org", "3": ""
    }  # fmt: skip
    # The HTTP receiver got the signed erasure event.
    assert receiver.bad_signatures == 0
    ((msg_id, event),) = _erasures(receiver).items()
    assert msg_id.startswith("erasure_")
    assert event["type"] == "person.erased"
    assert event["data"]["email"] == "Zeynep.Kaya@example.org"
    assert event["data"]["records"] == [
        {"kind": "donation", "fonzip_id": 1},
        {"kind": "ticket_sale", "fonzip_id": 3},
    ]

    code, out, _ = await _forget(config, "--email", "zeynep.kaya@example.org")
    assert code == 0
    assert "no records about this person" in out


async def test_a_sink_that_is_down_leaves_the_state_database_for_a_second_run(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _config(tmp_path, receiver)
    await _seed(config)
    receiver.down = True
    code, out, err = await _forget(config, "--fonzip-user-id", "77")
    assert code == 1
    assert "sink crm (http): FAILED" in out
    assert "the state database is unchanged so that the same command can be run again" in err
    assert "state database:" not in out
    receiver.down = False
    code, out, _ = await _forget(config, "--fonzip-user-id", "77")
    assert code == 0
    assert "2 record(s) found" in out
    assert "state database: 2 record(s) anonymized" in out
    assert b"zeynep.kaya@example.org" not in _everything(tmp_path)


async def test_forget_changes_nothing_while_a_daemon_runs(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _config(tmp_path, receiver)
    await _seed(config)
    # A running daemon holds the state database's worker lock: hold it as one would.
    daemon = await Store.open(tmp_path / "state.db")
    try:
        assert daemon.acquire_worker_lock()
        code, out, err = await _forget(config, "--email", "zeynep.kaya@example.org")
    finally:
        await daemon.close()
    assert code == 1
    assert "a daemon is running on this state database" in err
    assert "stop it" in err
    assert out == ""
    assert _erasures(receiver) == {}
    assert b"zeynep.kaya@example.org" in _everything(tmp_path)


async def test_forget_needs_one_identifier(tmp_path: Path, receiver: Receiver) -> None:
    config = _config(tmp_path, receiver)
    code, _, err = await _forget(config)
    assert code == 2
    assert "give --email, --fonzip-user-id, or both" in err


async def test_a_sink_that_cannot_open_is_reported_and_the_others_still_forget(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _config(tmp_path, receiver)
    await _seed(config)
    text = config.read_text().replace(
        'redact = ["sensitive"]\n',
        'redact = ["sensitive"]\nheaders = { Authorization = "env:FONZIPD_TEST_UNSET_BEARER" }\n',
    )
    config.write_text(text)
    code, out, _ = await _forget(config, "--email", "zeynep.kaya@example.org")
    assert code == 1
    assert "sink crm (http): FAILED: " in out
    assert "FONZIPD_TEST_UNSET_BEARER is not set" in out
    assert "sink archive (sqlite): 4 stored item(s) changed" in out
    assert "state database:" not in out


async def test_records_with_only_her_user_id_are_named_and_taken_with_both_identifiers(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _config(tmp_path, receiver)
    await _seed(config)
    store = await Store.open(tmp_path / "state.db")
    campaign = dataclasses.replace(
        make_record(60, kind=Kind.CAMPAIGN), person=Person("Zeynep Kaya", fonzip_user_id=77)
    )
    await store.records.apply_record(None, campaign, [])
    await store.close()
    code, out, _ = await _forget(config, "--email", "zeynep.kaya@example.org", "--dry-run")
    assert code == 0
    assert "2 record(s) found: donation 1, ticket_sale 3" in out
    assert (
        "note: these records are of Fonzip user 77, who also has campaign 60: "
        "add --fonzip-user-id 77 to erase those too"
    ) in out
    code, out, _ = await _forget(
        config, "--email", "zeynep.kaya@example.org", "--fonzip-user-id", "77"
    )
    assert code == 0
    assert (
        "e-mail zeynep.kaya@example.org and Fonzip user 77: 3 record(s) found: "
        "campaign 60, donation 1, ticket_sale 3"
    ) in out
    assert "note: these records" not in out
    assert "state database: 3 record(s) anonymized" in out
