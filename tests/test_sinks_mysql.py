"""The MySQL/MariaDB sink against the real server: conformance, utf8mb4, types, newer-wins
in the database, hostile names, migration, refused records, credentials, a restart."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fonzipd import cli
from fonzipd.records import Person
from fonzipd.simulator import Simulator
from fonzipd.sink import PermanentSinkError, SinkConfigError, TransientSinkError
from fonzipd.testing import check_sink, context_for_tests, sample_records
from tests import servers

pytestmark = pytest.mark.usefixtures("_mysql")

TURKISH = "İıŞşĞğÜüÖöÇç"


@pytest.fixture
def _mysql() -> None:
    servers.need_mysql()


async def _query(sql: str, args: Any = None, *, database: str | None = None) -> list[Any]:
    import asyncmy

    conn = await asyncmy.connect(**servers.mysql_args(database), charset="utf8mb4", autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall() or [])
    finally:
        conn.close()


@pytest.fixture
async def database() -> AsyncIterator[str]:
    name = servers.unique("fz_test")
    await _query(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    yield name
    await _query(f"DROP DATABASE IF EXISTS `{name}`")


def _dsn(database: str) -> str:
    return servers.MYSQL_DSN.rsplit("/", 1)[0] + "/" + database


def _sink(tmp_path: Path, database: str, **options: Any) -> Any:
    from fonzipd.sinks.mysql import MySQLOptions, MySQLSink

    opts = {"dsn": _dsn(database), **options}
    return MySQLSink(MySQLOptions.model_validate(opts), context_for_tests(tmp_path))


def _history_keys(database: str, history: str = "record_history") -> Callable[[], Any]:
    async def read_back() -> list[str]:
        exists = await _query(
            "SELECT count(*) FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (database, history),
        )
        if not exists[0][0]:
            return []
        rows = await _query(
            f"SELECT CONCAT(kind, ':', fonzip_id, ':', version) FROM `{database}`.`{history}` "
            "ORDER BY seq"
        )
        return [r[0] for r in rows]

    return read_back


async def test_passes_the_conformance_suite(tmp_path: Path, database: str) -> None:
    async def contains(text: str) -> bool:
        # In the table's columns and in either table's JSON, as a reader would find it.
        found = await _query(
            f"SELECT (SELECT count(*) FROM `{database}`.records WHERE person_email = %s"
            " OR LOCATE(%s, CAST(data AS CHAR)) > 0) + (SELECT count(*) FROM"
            f" `{database}`.record_history WHERE LOCATE(%s, CAST(data AS CHAR)) > 0)",
            (text, text, text),
        )
        return bool(found[0][0])

    await check_sink(lambda: _sink(tmp_path, database), _history_keys(database), contains=contains)


async def test_turkish_names_and_types_round_trip_exactly(tmp_path: Path, database: str) -> None:
    recs = sample_records(6)
    paid, refund = recs[0], recs[-1]
    turkish = dataclasses.replace(
        recs[1],
        person=Person(name=TURKISH + " 🙂", email="a@example.org"),
        data={"ad": TURKISH, "not": "Geçmiş olsun"},
    )
    sink = _sink(tmp_path, database)
    await sink.open()
    await sink.write([paid, turkish, *recs[2:]])
    await sink.close()

    rows = await _query(
        f"SELECT fonzip_id, status, version, amount, occurred_at, business_date, fetched_at, "
        f"person_name, data FROM `{database}`.records ORDER BY fonzip_id"
    )
    assert len(rows) == 5
    _, status, version, amount, occurred, bdate, fetched, _, data = rows[0]
    assert (status, version) == ("refund", refund.version)
    assert amount == refund.amount
    assert isinstance(amount, Decimal)
    assert refund.occurred_at is not None
    assert occurred == refund.occurred_at.astimezone(dt.UTC).replace(tzinfo=None)
    assert bdate == refund.business_date
    assert fetched == refund.fetched_at.astimezone(dt.UTC).replace(tzinfo=None)
    assert '"refund_date"' in data
    assert rows[1][7] == TURKISH + " 🙂"
    assert TURKISH in rows[1][8]
    assert "Geçmiş olsun" in rows[1][8]
    charsets = await _query(
        "SELECT DISTINCT CHARACTER_SET_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND CHARACTER_SET_NAME IS NOT NULL",
        (database,),
    )
    assert {r[0] for r in charsets} == {"utf8mb4"}
    history = await _query(
        f"SELECT status FROM `{database}`.record_history WHERE fonzip_id = %s ORDER BY seq",
        (paid.fonzip_id,),
    )
    assert [r[0] for r in history] == ["paid", "refund"]


async def test_an_older_fetch_never_overwrites_a_newer_version(
    tmp_path: Path, database: str
) -> None:
    recs = sample_records(6)
    paid, refund = recs[0], recs[-1]
    newer = _sink(tmp_path, database)
    await newer.open()
    await newer.write([refund])
    stale = _sink(tmp_path, database)
    await stale.open()
    await stale.write([dataclasses.replace(paid, fetched_at=refund.fetched_at - dt.timedelta(1))])
    await stale.write([dataclasses.replace(paid, fetched_at=refund.fetched_at)])
    await stale.close()
    await newer.close()
    sql = f"SELECT status FROM `{database}`.records WHERE fonzip_id = %s"
    assert [r[0] for r in await _query(sql, (paid.fonzip_id,))] == ["refund"]
    later = _sink(tmp_path, database)
    await later.open()
    await later.write([dataclasses.replace(paid, fetched_at=refund.fetched_at + dt.timedelta(1))])
    await later.close()
    assert [r[0] for r in await _query(sql, (paid.fonzip_id,))] == ["paid"]


async def test_hostile_table_names_are_quoted_not_executed(tmp_path: Path, database: str) -> None:
    hostile = "x`; DROP TABLE victim; --"
    await _query(f"CREATE TABLE `{database}`.victim (id int)")
    sink = _sink(tmp_path, database, table=hostile)
    await sink.open()
    await sink.write(sample_records(3))
    await sink.close()
    tables = await _query(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (database,)
    )
    assert {r[0] for r in tables} == {"victim", hostile, f"{hostile}_history"}


async def test_an_older_layout_is_migrated_and_a_foreign_table_refused(
    tmp_path: Path, database: str
) -> None:
    await _query(
        f"CREATE TABLE `{database}`.records (kind VARCHAR(32) NOT NULL, fonzip_id BIGINT NOT NULL,"
        " status VARCHAR(64) NOT NULL, version VARCHAR(64) NOT NULL, source VARCHAR(16) NOT NULL,"
        " data JSON NOT NULL, fetched_at DATETIME(6) NOT NULL, PRIMARY KEY (kind, fonzip_id))"
        " DEFAULT CHARSET=utf8mb4"
    )
    sink = _sink(tmp_path, database)
    await sink.open()
    await sink.write(sample_records(3))
    await sink.close()
    rows = await _query(f"SELECT amount, person_name, updated_at FROM `{database}`.records")
    assert len(rows) == 2
    assert all(r[2] is not None for r in rows)

    await _query(f"CREATE TABLE `{database}`.other (kind TEXT, fonzip_id TEXT, id INT PRIMARY KEY)")
    foreign = _sink(tmp_path, database, table="other")
    with pytest.raises(SinkConfigError, match=r"other\.kind is text, fonzipd needs VARCHAR"):
        await foreign.open()


async def test_approval_is_written_and_older_tables_gain_it(tmp_path: Path, database: str) -> None:
    # Tables made by an earlier fonzipd: both without the approval column.
    sink = _sink(tmp_path, database)
    await sink.open()
    await sink.close()
    for table in ("records", "record_history"):
        await _query(f"ALTER TABLE `{database}`.{table} DROP COLUMN approval")
    answer = next(r for r in sample_records(6) if r.approval is not None)
    waiting = dataclasses.replace(answer, approval="waiting_approval")
    approved = dataclasses.replace(
        answer, version="v-approved", fetched_at=answer.fetched_at + dt.timedelta(1)
    )
    sink = _sink(tmp_path, database)
    await sink.open()
    await sink.write([waiting])
    await sink.write([approved])
    await sink.close()
    rows = await _query(f"SELECT kind, approval FROM `{database}`.records")
    assert [tuple(r) for r in rows] == [("form_answer", "approved")]
    history = await _query(f"SELECT approval FROM `{database}`.record_history ORDER BY seq")
    assert [r[0] for r in history] == ["waiting_approval", "approved"]


async def test_a_refused_record_is_a_dead_letter_alone(tmp_path: Path, database: str) -> None:
    recs = sample_records(6)
    too_long = dataclasses.replace(recs[2], status="s" * 65)
    too_precise = dataclasses.replace(recs[3], amount=Decimal("1.23456"))
    surrogate = dataclasses.replace(recs[4], person=Person(name="Ay\ud800e"))  # hostile API
    sink = _sink(tmp_path, database)
    await sink.open()
    with pytest.raises(PermanentSinkError) as caught:
        await sink.write([*recs[:2], too_long, too_precise, surrogate, *recs[5:]])
    refused = {too_long.key, too_precise.key, surrogate.key}
    assert caught.value.failed_keys == frozenset(refused)
    await sink.close()
    written = set(await _history_keys(database)())
    assert written == {r.key for r in recs} - refused


async def test_bad_credentials_fail_check_online_at_once(tmp_path: Path) -> None:
    from fonzipd.sinks.mysql import MySQLOptions

    with pytest.raises(ValueError, match="holds a password"):
        MySQLOptions(dsn="mysql://root:hunter2@127.0.0.1/test")
    async with Simulator(seed=3, days=1, per_day=2, rate_per_minute=6000) as sim:
        config = tmp_path / "config.toml"
        config.write_text(
            f"""
[fonzip]
base_url = "{await sim.start()}"
client_id = "sim-client"
client_secret = "sim-secret"
[listener]
auth_token = "check-online-token-1234"
[state]
path = "state.db"
[sinks.books]
type = "mysql"
dsn = "{servers.MYSQL_DSN}"
password_env = "FZ_WRONG_MYSQL_PASSWORD"
""",
            encoding="utf-8",
        )
        code, err = await asyncio.to_thread(
            _cli, "check", "--online", "--config", str(config), password="not-the-password"
        )
    assert code == cli.EXIT_FAILED
    assert "sink books (mysql)" in err
    assert "refused the login: Access denied for user 'root'" in err
    assert "not-the-password" not in err


def _cli(*argv: str, password: str) -> tuple[int, str]:
    import os

    os.environ["FZ_WRONG_MYSQL_PASSWORD"] = password
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(list(argv))
    finally:
        del os.environ["FZ_WRONG_MYSQL_PASSWORD"]
    return code, err.getvalue()


async def test_a_server_restarted_mid_batch_is_retried_then_delivered(
    tmp_path: Path, database: str
) -> None:
    import asyncmy

    servers.need_restartable()
    recs = sample_records(200)
    sink = _sink(tmp_path, database)
    await sink.open()
    await sink.write(recs[:50])
    # Another session locks a row the batch reads FOR UPDATE, so that the batch stops
    # inside its transaction until the server goes down under it.
    blocker = await asyncmy.connect(**servers.mysql_args(database))
    changed = dataclasses.replace(
        recs[40],
        fetched_at=recs[40].fetched_at + dt.timedelta(1),
        status="refunded",
        version="v-mid-batch",
    )
    batch = [*recs[50:120], changed, *recs[120:]]
    try:
        async with blocker.cursor() as cur:
            await cur.execute("START TRANSACTION")
            await cur.execute(
                "SELECT 1 FROM records WHERE kind = %s AND fonzip_id = %s FOR UPDATE",
                (str(recs[40].kind), recs[40].fonzip_id),
            )
        write = asyncio.create_task(sink.write(batch))
        await _until_waiting_on_lock(write, database)
        await asyncio.to_thread(servers.stop_mariadb)
        with pytest.raises(TransientSinkError):
            await write
    finally:
        blocker.close()
        await asyncio.to_thread(servers.start_mariadb)
        await servers.wait_port(3306)
    await _until_accepting()
    assert len(await _history_keys(database)()) == 50
    await sink.write(batch)
    await sink.close()
    keys = await _history_keys(database)()
    assert sorted(keys) == sorted({r.key for r in [*recs, changed]})
    status = await _query(
        f"SELECT status FROM `{database}`.records WHERE fonzip_id = %s", (recs[40].fonzip_id,)
    )
    assert status[0][0] == "refunded"


async def _until_waiting_on_lock(write: asyncio.Task[None], database: str) -> None:
    # Once seen failing in a full CI-like run (no lock wait within 20 s) and never
    # alone: a write that ends without waiting says how it ended, and a wait that does
    # not come says what each session of the test's database was doing.
    try:
        async with asyncio.timeout(20):
            while True:
                if write.done():
                    raise AssertionError(f"the write ended before waiting on the lock: {write!r}")
                rows = await _query(
                    "SELECT count(*) FROM information_schema.INNODB_TRX "
                    "WHERE trx_state = 'LOCK WAIT'"
                )
                if rows[0][0]:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        sessions = await _query(
            "SELECT ID, COMMAND, TIME, STATE, LEFT(INFO, 80) FROM information_schema.PROCESSLIST "
            "WHERE DB = %s",
            (database,),
        )
        message = f"no lock wait within 20 s; the database's sessions: {sessions}"
        raise AssertionError(message) from None


async def _until_accepting() -> None:
    async with asyncio.timeout(60):
        while True:
            try:
                await _query("SELECT 1")
                return
            except Exception:
                await asyncio.sleep(0.1)


async def test_a_server_that_does_not_start_tls_gets_nothing(tmp_path: Path, database: str) -> None:
    """Asked for TLS, the test server (which has none, as a downgrading middleman would
    answer) fails the handshake: the sink neither logs in nor writes; later, the records
    wait. Should the server have TLS after all, its certificate does not check out."""
    certs = servers.certificates(tmp_path / "tls")
    sink = _sink(tmp_path, database, tls="verify", tls_ca_file=str(certs.ca))
    with pytest.raises(SinkConfigError) as caught:
        await sink.open()
    assert "TLS: the server" in str(caught.value)
    with pytest.raises(TransientSinkError, match="TLS: the server"):
        await sink.write(sample_records(1))
    tables = await _query(
        "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (database,)
    )
    assert tables == [(0,)]


def _tls_dsn(database: str, port: int) -> str:
    user = servers.mysql_args()["user"]
    return f"mysql://{user}@127.0.0.1:{port}/{database}"


async def test_records_reach_a_tls_server_only_inside_tls(tmp_path: Path, database: str) -> None:
    certs = servers.certificates(tmp_path / "tls")
    with servers.mysql_tls_front(certs.server_context()) as front:
        sink = _sink(
            tmp_path, database, dsn=_tls_dsn(database, front.port), tls_ca_file=str(certs.ca)
        )
        records = sample_records(3)
        await sink.open()
        await sink.write(records)
        await sink.close()
    assert (front.encrypted, front.cleartext, front.refused) == (1, 0, 0)
    assert await _history_keys(database)() == [r.key for r in records]


@pytest.mark.parametrize(("impostor", "why"), servers.IMPOSTORS)
async def test_a_server_whose_certificate_does_not_check_out_gets_nothing(
    tmp_path: Path, database: str, impostor: str, why: str
) -> None:
    """Someone between fonzipd and the database answers with a certificate of their own:
    signed by a CA the sink does not trust, or made out to another host."""
    shown, trusted_ca = servers.impostor(tmp_path, impostor)
    with servers.mysql_tls_front(shown.server_context()) as front:
        dsn = _tls_dsn(database, front.port)
        sink = _sink(tmp_path, database, dsn=dsn, tls_ca_file=str(trusted_ca))
        with pytest.raises(SinkConfigError) as caught:
            await sink.open()
    assert "TLS: the server's certificate did not check out" in str(caught.value)
    assert why in str(caught.value)
    # The handshake failed before the login: the server never heard of the sink.
    assert (front.encrypted, front.cleartext) == (0, 0)
    tables = await _query(
        "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (database,)
    )
    assert tables == [(0,)]


async def test_a_server_that_wants_a_client_certificate_gets_the_configured_one(
    tmp_path: Path, database: str
) -> None:
    certs = servers.certificates(tmp_path / "tls")
    with servers.mysql_tls_front(certs.server_context(client_ca=certs.ca)) as front:
        dsn = _tls_dsn(database, front.port)
        anonymous = _sink(tmp_path, database, dsn=dsn, tls_ca_file=str(certs.ca))
        with pytest.raises((SinkConfigError, TransientSinkError)):
            await anonymous.open()
        sink = _sink(
            tmp_path,
            database,
            dsn=dsn,
            tls_ca_file=str(certs.ca),
            tls_cert_file=str(certs.client_chain),
            tls_key_file=str(certs.client_key),
        )
        records = sample_records(2)
        await sink.open()
        await sink.write(records)
        await sink.close()
    assert (front.refused, front.encrypted) == (1, 1)
    assert await _history_keys(database)() == [r.key for r in records]
