"""The PostgreSQL sink against the real server: conformance, types, newer-wins in the
database, hostile names, migration, refused records, credentials, a restart mid-batch."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import urllib.parse
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

pytestmark = pytest.mark.usefixtures("_postgresql")

TURKISH = "İıŞşĞğÜüÖöÇç"


@pytest.fixture
def _postgresql() -> None:
    servers.need_postgresql()


async def _query(sql: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(servers.PG_DSN)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = servers.unique("fz_test")
    yield name
    await _query(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _sink(tmp_path: Path, schema: str, **options: Any) -> Any:
    from fonzipd.sinks.postgresql import PostgreSQLOptions, PostgreSQLSink

    opts = {"dsn": servers.PG_DSN, "schema": schema, **options}
    return PostgreSQLSink(PostgreSQLOptions.model_validate(opts), context_for_tests(tmp_path))


def _history_keys(schema: str, history: str = "record_history") -> Callable[[], Any]:
    async def read_back() -> list[str]:
        exists = await _query("SELECT to_regclass($1) IS NOT NULL", f'"{schema}"."{history}"')
        if not exists[0][0]:
            return []
        rows = await _query(
            f"SELECT kind || ':' || fonzip_id || ':' || version FROM \"{schema}\".\"{history}\" "
            "ORDER BY seq"
        )
        return [r[0] for r in rows]

    return read_back


async def test_passes_the_conformance_suite(tmp_path: Path, schema: str) -> None:
    async def contains(text: str) -> bool:
        # In the table's columns and in either table's JSON, as a reader would find it.
        found = await _query(
            f'SELECT (SELECT count(*) FROM "{schema}".records WHERE person_email = $1'
            f' OR strpos(data::text, $1) > 0) + (SELECT count(*) FROM "{schema}".record_history'
            " WHERE strpos(data::text, $1) > 0)",
            text,
        )
        return bool(found[0][0])

    await check_sink(lambda: _sink(tmp_path, schema), _history_keys(schema), contains=contains)


async def test_records_keep_their_types_and_the_latest_state(tmp_path: Path, schema: str) -> None:
    recs = sample_records(6)
    paid, refund = recs[0], recs[-1]
    turkish = dataclasses.replace(
        recs[1], person=Person(name=TURKISH, email="a@example.org"), data={"ad": TURKISH}
    )
    sink = _sink(tmp_path, schema)
    await sink.open()
    await sink.write([paid, turkish, *recs[2:]])
    await sink.close()

    rows = await _query(f'SELECT * FROM "{schema}".records ORDER BY fonzip_id')
    assert len(rows) == 5
    first = rows[0]
    assert first["status"] == "refund"
    assert first["version"] == refund.version
    assert first["amount"] == refund.amount
    assert isinstance(first["amount"], Decimal)
    assert first["occurred_at"] == refund.occurred_at
    assert first["business_date"] == refund.business_date
    assert first["fetched_at"] == refund.fetched_at
    assert '"refund_date"' in first["data"]
    assert rows[1]["person_name"] == TURKISH
    assert TURKISH in rows[1]["data"]
    types = dict(
        await _query(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = 'records'",
            schema,
        )
    )
    assert types["amount"] == "numeric"
    assert types["occurred_at"] == "timestamp with time zone"
    assert types["business_date"] == "date"
    assert types["data"] == "jsonb"
    history = await _query(
        f'SELECT status FROM "{schema}".record_history WHERE fonzip_id = $1 ORDER BY seq',
        paid.fonzip_id,
    )
    assert [r[0] for r in history] == ["paid", "refund"]


async def test_an_older_fetch_never_overwrites_a_newer_version(tmp_path: Path, schema: str) -> None:
    recs = sample_records(6)
    paid, refund = recs[0], recs[-1]
    newer = _sink(tmp_path, schema)
    await newer.open()
    await newer.write([refund])
    # Another instance (another process, another moment): the database decides.
    stale = _sink(tmp_path, schema)
    await stale.open()
    await stale.write([dataclasses.replace(paid, fetched_at=refund.fetched_at - dt.timedelta(1))])
    await stale.write([dataclasses.replace(paid, fetched_at=refund.fetched_at)])
    await stale.close()
    await newer.close()
    rows = await _query(
        f'SELECT status FROM "{schema}".records WHERE fonzip_id = $1', paid.fonzip_id
    )
    assert [r[0] for r in rows] == ["refund"]
    # A genuinely newer fetch of another version does win.
    later = _sink(tmp_path, schema)
    await later.open()
    await later.write([dataclasses.replace(paid, fetched_at=refund.fetched_at + dt.timedelta(1))])
    await later.close()
    rows = await _query(
        f'SELECT status FROM "{schema}".records WHERE fonzip_id = $1', paid.fonzip_id
    )
    assert [r[0] for r in rows] == ["paid"]


async def test_hostile_table_names_are_quoted_not_executed(tmp_path: Path, schema: str) -> None:
    hostile = 'x"; DROP TABLE victim; --'
    await _query(f'CREATE SCHEMA "{schema}"')
    await _query(f'CREATE TABLE "{schema}".victim (id int)')
    sink = _sink(tmp_path, schema, table=hostile)
    await sink.open()
    await sink.write(sample_records(3))
    await sink.close()
    tables = {
        r[0]
        for r in await _query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
    }
    assert tables == {"victim", hostile, f"{hostile}_history"}
    with pytest.raises(ValueError, match="longer than 48 bytes"):
        _sink(tmp_path, schema, table="t" * 49)


async def test_an_older_layout_is_migrated_and_a_foreign_table_refused(
    tmp_path: Path, schema: str
) -> None:
    await _query(f'CREATE SCHEMA "{schema}"')
    await _query(
        f'CREATE TABLE "{schema}".records (kind text NOT NULL, fonzip_id bigint NOT NULL, '
        "status text NOT NULL, version text NOT NULL, source text NOT NULL, data jsonb NOT NULL, "
        "fetched_at timestamptz NOT NULL, PRIMARY KEY (kind, fonzip_id))"
    )
    sink = _sink(tmp_path, schema)
    await sink.open()
    await sink.write(sample_records(3))
    await sink.close()
    rows = await _query(f'SELECT amount, person_name, updated_at FROM "{schema}".records')
    assert len(rows) == 2
    assert all(r["updated_at"] is not None for r in rows)

    await _query(f'CREATE TABLE "{schema}".other (kind text, fonzip_id text PRIMARY KEY)')
    foreign = _sink(tmp_path, schema, table="other")
    with pytest.raises(SinkConfigError, match=r"other\.fonzip_id is text, fonzipd needs bigint"):
        await foreign.open()


async def test_approval_is_written_and_older_tables_gain_it(tmp_path: Path, schema: str) -> None:
    # Tables made by an earlier fonzipd: both without the approval column.
    sink = _sink(tmp_path, schema)
    await sink.open()
    await sink.close()
    for table in ("records", "record_history"):
        await _query(f'ALTER TABLE "{schema}".{table} DROP COLUMN approval')
    answer = next(r for r in sample_records(6) if r.approval is not None)
    waiting = dataclasses.replace(answer, approval="waiting_approval")
    approved = dataclasses.replace(
        answer, version="v-approved", fetched_at=answer.fetched_at + dt.timedelta(1)
    )
    sink = _sink(tmp_path, schema)
    await sink.open()
    await sink.write([waiting])
    await sink.write([approved])
    await sink.close()
    rows = await _query(f'SELECT kind, approval FROM "{schema}".records')
    assert [tuple(r) for r in rows] == [("form_answer", "approved")]
    history = await _query(f'SELECT approval FROM "{schema}".record_history ORDER BY seq')
    assert [r[0] for r in history] == ["waiting_approval", "approved"]


async def test_a_refused_record_is_a_dead_letter_alone(tmp_path: Path, schema: str) -> None:
    recs = sample_records(5)
    # A lone surrogate (a hostile API's "\\ud800" escape) and a NUL: PostgreSQL takes neither.
    surrogate = dataclasses.replace(recs[1], person=Person(name="Ay\ud800e Secret"))
    bad = dataclasses.replace(recs[2], person=Person(name="nul\x00byte"))
    sink = _sink(tmp_path, schema)
    await sink.open()
    with pytest.raises(PermanentSinkError) as caught:
        await sink.write([recs[0], surrogate, bad, *recs[3:]])
    assert caught.value.failed_keys == frozenset({bad.key, surrogate.key})
    assert "surrogates not allowed" in str(caught.value)
    assert "Secret" not in str(caught.value)  # the refused value is not repeated
    await sink.close()
    written = set(await _history_keys(schema)())
    assert written == {r.key for r in recs} - {bad.key, surrogate.key}


async def test_credentials_come_from_the_environment_or_a_private_file(
    tmp_path: Path, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fonzipd.sinks.postgresql import PostgreSQLOptions

    with pytest.raises(ValueError, match="holds a password"):
        PostgreSQLOptions(dsn="postgresql://root:hunter2@127.0.0.1/test")
    monkeypatch.delenv("FZ_PG_PASSWORD", raising=False)
    sink = _sink(tmp_path, schema, password_env="FZ_PG_PASSWORD")
    with pytest.raises(SinkConfigError, match="FZ_PG_PASSWORD is not set"):
        await sink.open()
    monkeypatch.setenv("FZ_PG_PASSWORD", "anything")  # trust authentication ignores it
    await sink.open()
    await sink.close()
    secret = tmp_path / "pg-password"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    exposed = _sink(tmp_path, schema, password_file=str(secret))
    with pytest.raises(SinkConfigError, match=r"readable by others.*chmod 600"):
        await exposed.open()
    secret.chmod(0o600)
    await exposed.open()
    await exposed.close()


async def test_bad_credentials_fail_check_online_at_once(tmp_path: Path) -> None:
    # The server trusts loopback logins, so a role that does not exist stands for a
    # refused password: both are SQLSTATE class 28, refused at connection.
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
[sinks.warehouse]
type = "postgresql"
dsn = "postgresql://fonzipd_nobody@127.0.0.1:5432/test"
""",
            encoding="utf-8",
        )
        code, err = await asyncio.to_thread(_cli, "check", "--online", "--config", str(config))
    assert code == cli.EXIT_FAILED
    assert "sink warehouse (postgresql)" in err
    assert 'role "fonzipd_nobody" does not exist' in err
    assert "refused the login" in err


def _cli(*argv: str) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(list(argv))
    return code, err.getvalue()


async def test_a_server_restarted_mid_batch_is_retried_then_delivered(
    tmp_path: Path, schema: str
) -> None:
    import asyncpg

    servers.need_restartable()
    recs = sample_records(200)
    sink = _sink(tmp_path, schema)
    await sink.open()
    await sink.write(recs[:50])
    # Another session locks a row the batch updates, so that the batch stops mid-way,
    # inside its transaction, until the server goes down under it.
    blocker = await asyncpg.connect(servers.PG_DSN)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute(
        f'SELECT 1 FROM "{schema}".records WHERE fonzip_id = $1 FOR UPDATE', recs[40].fonzip_id
    )
    changed = dataclasses.replace(
        recs[40],
        fetched_at=recs[40].fetched_at + dt.timedelta(1),
        status="refunded",
        version="v-mid-batch",
    )
    batch = [*recs[50:120], changed, *recs[120:]]
    try:
        write = asyncio.create_task(sink.write(batch))
        await _until_waiting_on_lock(schema)
        await asyncio.to_thread(servers.stop_postgresql)
        with pytest.raises(TransientSinkError):
            await write
    finally:
        blocker.terminate()
        await asyncio.to_thread(servers.start_postgresql)
        await servers.wait_port(5432)
    await _until_accepting()
    # Nothing of the interrupted batch was committed.
    assert len(await _history_keys(schema)()) == 50
    await sink.write(batch)  # the dispatcher's next attempt, on the same instance
    await sink.close()
    keys = await _history_keys(schema)()
    assert sorted(keys) == sorted({r.key for r in [*recs, changed]})
    status = await _query(
        f'SELECT status FROM "{schema}".records WHERE fonzip_id = $1', recs[40].fonzip_id
    )
    assert status[0][0] == "refunded"


async def _until_waiting_on_lock(schema: str) -> None:
    async with asyncio.timeout(20):
        while True:
            rows = await _query(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND application_name LIKE 'fonzipd:%' AND query LIKE $1",
                f'%"{schema}"%',
            )
            if rows[0][0]:
                return
            await asyncio.sleep(0.02)


async def _until_accepting() -> None:
    import asyncpg

    async with asyncio.timeout(60):
        while True:
            try:
                await _query("SELECT 1")
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(0.1)


def test_a_password_in_the_dsn_is_refused_and_never_echoed(tmp_path: Path) -> None:
    from fonzipd.config import settings_from_dict
    from fonzipd.registry import build_sinks

    settings = settings_from_dict(
        {"sinks": {"pg": {"type": "postgresql", "dsn": "postgresql://u:hunter2@db/x"}}},
        base_dir=tmp_path,
        origin="config.toml",
    )
    with pytest.raises(SinkConfigError) as caught:
        build_sinks(settings, state_dir=tmp_path)
    assert "sinks.pg.dsn: Value error, holds a password" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def _tls_sink(tmp_path: Path, schema: str, port: int, ca: Path, **options: Any) -> Any:
    """A sink for the test server's database at 127.0.0.1:``port``, trusting only ``ca``."""
    parsed = urllib.parse.urlsplit(servers.PG_DSN)
    dsn = f"postgresql://{parsed.username or 'root'}@127.0.0.1:{port}{parsed.path}"
    return _sink(tmp_path, schema, dsn=dsn, tls_ca_file=str(ca), **options)


async def test_records_reach_a_tls_server_only_inside_tls(tmp_path: Path, schema: str) -> None:
    certs = servers.certificates(tmp_path / "tls")
    async with servers.postgresql_tls_front(certs.server_context()) as front:
        sink = _tls_sink(tmp_path, schema, front.port, certs.ca)
        records = sample_records(3)
        await sink.open()
        await sink.write(records)
        await sink.close()
    assert (front.encrypted, front.cleartext, front.refused) == (1, 0, 0)
    assert await _history_keys(schema)() == [r.key for r in records]


@pytest.mark.parametrize(("impostor", "why"), servers.IMPOSTORS)
async def test_a_server_whose_certificate_does_not_check_out_gets_nothing(
    tmp_path: Path, schema: str, impostor: str, why: str
) -> None:
    """Someone between fonzipd and the database answers with a certificate of their own:
    signed by a CA the sink does not trust, or made out to another host."""
    shown, trusted_ca = servers.impostor(tmp_path, impostor)
    async with servers.postgresql_tls_front(shown.server_context()) as front:
        sink = _tls_sink(tmp_path, schema, front.port, trusted_ca)
        with pytest.raises(SinkConfigError) as caught:
            await sink.open()
    message = str(caught.value)
    assert "TLS: the server's certificate did not check out" in message
    assert why in message
    assert "tls_ca_file" in message
    # The handshake failed before the login: the server never heard of the sink.
    assert (front.encrypted, front.cleartext) == (0, 0)
    assert await _query("SELECT to_regnamespace($1)", schema) == [(None,)]


async def test_a_server_that_does_not_start_tls_gets_nothing(tmp_path: Path, schema: str) -> None:
    """The test server has no TLS: asked for it (as a downgrading middleman would answer),
    it says no, and the sink neither logs in nor writes; later, the records wait."""
    parsed = urllib.parse.urlsplit(servers.PG_DSN)
    if parsed.hostname != "127.0.0.1" or parsed.port is None:
        pytest.skip("the test server is not at 127.0.0.1:<port>")
    certs = servers.certificates(tmp_path / "tls")
    sink = _tls_sink(tmp_path, schema, parsed.port, certs.ca, tls="verify")
    with pytest.raises(SinkConfigError) as caught:
        await sink.open()
    assert "TLS: the server did not start TLS" in str(caught.value)
    assert 'tls = "off"' in str(caught.value)
    with pytest.raises(TransientSinkError, match="did not start TLS"):
        await sink.write(sample_records(1))
    assert await _query("SELECT to_regnamespace($1)", schema) == [(None,)]


def test_pghost_is_where_tls_is_decided_for_when_no_host_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg connects to $PGHOST when the configuration names no host: a remote one
    gets verified TLS like a configured one, a socket folder none."""
    from fonzipd.sinks.database import tls_mode
    from fonzipd.sinks.postgresql import PostgreSQLOptions, PostgreSQLSink

    for pghost, mode in (("db.example.org", "verify"), ("/var/run/postgresql", "off")):
        monkeypatch.setenv("PGHOST", pghost)
        options = PostgreSQLOptions(database="crm")
        sink = PostgreSQLSink(options, context_for_tests(tmp_path))
        assert tls_mode(options, sink._endpoint) == mode


async def test_a_server_that_wants_a_client_certificate_gets_the_configured_one(
    tmp_path: Path, schema: str
) -> None:
    """Without one, the server refuses the handshake and hears no login: under TLS 1.3
    the client sees the connection closed (transient: the records wait)."""
    certs = servers.certificates(tmp_path / "tls")
    wants = certs.server_context(client_ca=certs.ca)
    async with servers.postgresql_tls_front(wants) as front:
        anonymous = _tls_sink(tmp_path, schema, front.port, certs.ca)
        with pytest.raises((SinkConfigError, TransientSinkError)):
            await anonymous.open()
        sink = _tls_sink(
            tmp_path,
            schema,
            front.port,
            certs.ca,
            tls_cert_file=str(certs.client_chain),
            tls_key_file=str(certs.client_key),
        )
        records = sample_records(2)
        await sink.open()
        await sink.write(records)
        await sink.close()
    assert (front.refused, front.encrypted) == (1, 1)
    assert await _history_keys(schema)() == [r.key for r in records]
