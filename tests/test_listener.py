"""Tests of the webhook listener: authentication, strict validation, commit before 200,
and hostile clients (slow, malformed, flooding) over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import resource
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from structlog.testing import capture_logs

from fonzipd import logs
from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import ListenerSettings
from fonzipd.kinds import Kind
from fonzipd.listener import (
    GUARD_KEY,
    REJECTIONS_KEY,
    DeliverySeen,
    GroupCommitter,
    PayloadError,
    Webhook,
    WebhookObserver,
    build_app,
    parse_webhook,
    start_listener,
)
from fonzipd.records import Source
from fonzipd.state import InboxEvent, Store, StoreError
from tests.support import FakeClock

TOKEN = "a-long-enough-webhook-token"
PATH = "/fonzip/webhook"


class Harness:
    """The listener as the daemon serves it (runner, guarded site) on 127.0.0.1."""

    def __init__(
        self,
        client: aiohttp.ClientSession,
        store: Store,
        committer: GroupCommitter,
        app: web.Application,
        port: int,
    ):
        self.client = client
        self.store = store
        self.committer = committer
        self.app = app
        self.port = port

    async def post(
        self,
        body: Any,
        *,
        token: str | None = TOKEN,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["X-FZ-Auth-Token"] = token
        data = raw if raw is not None else json.dumps(body).encode()
        async with self.client.post(PATH, data=data, headers=headers) as resp:
            return resp.status, await resp.json()

    async def raw(self, request: bytes) -> bytes:
        """Send bytes over a fresh socket; what the server answered until it closed."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(request)
            await writer.drain()
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path,
    *,
    clock: Clock = SYSTEM_CLOCK,
    token: str | None = TOKEN,
    observer: WebhookObserver | None = None,
    seen: DeliverySeen | None = None,
    **settings: Any,
) -> AsyncIterator[Harness]:
    secret = None if token is None else SecretStr(token)
    listener = ListenerSettings(auth_token=secret, **settings)
    async with contextlib.AsyncExitStack() as stack:
        # Closed whatever fails on the way (a listener that cannot start, too).
        store = await Store.open(tmp_path / "state.db")
        stack.push_async_callback(store.close)
        committer = GroupCommitter(store, max_batch=512, on_commit=lambda: None)

        async def ready() -> tuple[bool, dict[str, Any]]:
            depth, _ = await store.inbox.depth()
            return True, {"inbox": {"pending": depth}}

        app = build_app(listener, committer, ready, observer=observer, seen=seen, clock=clock)
        runner = await start_listener(app, "127.0.0.1", 0)
        stack.push_async_callback(runner.cleanup)
        port = int(runner.addresses[0][1])
        client = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")
        stack.push_async_callback(client.close)
        yield Harness(client, store, committer, app, port)


async def make_harness(tmp_path: Path, **settings: Any) -> AsyncIterator[Harness]:
    """``serving`` as an async generator (the fixtures here and in test_reliability)."""
    async with serving(tmp_path, **settings) as harness:
        yield harness


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async for harness in make_harness(tmp_path):
        yield harness


def hook(fid: int = 101, op: int = 1, status: int = 3) -> dict[str, int]:
    return {"id": fid, "webhook_id": 7, "operation": op, "status": status}


async def test_valid_webhook_is_committed_before_the_200(h: Harness) -> None:
    status, body = await h.post(hook())
    assert (status, body) == (200, {"result": "ok", "duplicate": False})
    # The row is in the database the moment the answer is out.
    row = await h.store.inbox.claim()
    assert row is not None
    assert (row.kind, row.fonzip_id, row.event_status) == ("donation", 101, 3)


async def test_duplicate_of_a_pending_event_is_answered_200_and_stored_once(h: Harness) -> None:
    assert (await h.post(hook()))[0] == 200
    status, body = await h.post(hook())
    assert (status, body["duplicate"]) == (200, True)
    assert (await h.post(hook(status=4)))[1]["duplicate"] is False
    assert (await h.store.inbox.depth())[0] == 2


@pytest.mark.parametrize(
    ("token", "reason"), [(None, "missing"), ("wrong-token-wrong-token", "wrong"), ("", "empty")]
)
async def test_missing_or_wrong_token_is_401(h: Harness, token: str | None, reason: str) -> None:
    status, body = await h.post(hook(), token=token)
    assert status == 401, reason
    assert "X-FZ-Auth-Token" in body["error"]
    assert (await h.store.inbox.depth())[0] == 0


async def test_test_deliveries_are_answered_and_not_stored(h: Harness) -> None:
    status, body = await h.post({"id": 0, "webhook_id": 7, "operation": 1, "status": 0})
    assert (status, body["test"]) == (200, True)
    assert (await h.store.inbox.depth())[0] == 0


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"webhook_id": 1, "operation": 1, "status": 3}, "id: missing"),
        ({**hook(), "id": "101"}, "id: must be an integer"),
        ({**hook(), "id": 1.5}, "id: must be an integer"),
        ({**hook(), "id": True}, "id: must be an integer"),
        ({**hook(), "id": -1}, "id: out of range"),
        ({**hook(), "id": 2**70}, "id: out of range"),
        ({**hook(), "id": 2**63}, "id: out of range (9223372036854775808)"),
        (
            {"id": "a", "webhook_id": "b", "operation": 1},
            'id: must be an integer, got "a"; '
            'webhook_id: must be an integer, got "b"; status: missing',
        ),
        (
            {"id": -1, "webhook_id": -2, "operation": 1, "status": 3},
            "id: out of range (-1); webhook_id: out of range (-2)",
        ),
        ({**hook(), "operation": 7}, "operation: must be 1 to 6"),
        ({**hook(), "operation": 0}, "operation: must be 1 to 6"),
        ({**hook(), "operation": 6, "status": 7}, "status: must be 0, 3, 4 or 5, got 7"),
        ({**hook(), "status": 1}, "status: must be 0, 3, 4 or 5"),
        ({**hook(), "webhook_id": None}, "webhook_id: must be an integer"),
        # true is 1 and false is 0 to Python: in range, yet not numbers.
        ({**hook(), "operation": True}, "operation: must be an integer, got true"),
        ({**hook(), "status": False}, "status: must be an integer, got false"),
        ({**hook(), "webhook_id": 2**63}, "webhook_id: out of range"),
        ({**hook(), "status": 3.0}, "status: must be an integer, got 3.0"),
        ([hook()], "must be a JSON object, got list"),
        ("hello", "must be a JSON object"),
    ],
)
async def test_invalid_payloads_get_422_saying_what_is_wrong(
    h: Harness, payload: Any, fragment: str
) -> None:
    status, body = await h.post(payload)
    assert status == 422
    assert fragment in body["error"]
    assert (await h.store.inbox.depth())[0] == 0


async def test_a_wrong_value_is_quoted_in_the_error_at_most_40_characters(h: Harness) -> None:
    status, body = await h.post({**hook(), "id": "x" * 60})
    assert status == 422
    assert body["error"] == 'id: must be an integer, got "' + "x" * 39


async def test_not_json_wrong_type_and_oversized_bodies(h: Harness) -> None:
    status, body = await h.post(None, raw=b"{not json")
    assert (status, "not valid JSON" in body["error"]) == (422, True)
    status, body = await h.post(None, raw=b"\xff\xfe", content_type="application/json")
    assert status == 422
    status, body = await h.post(hook(), content_type="text/plain")
    assert (status, "application/json" in body["error"]) == (415, True)
    status, body = await h.post(None, raw=b"{" + b" " * 10_000 + b"}")
    assert status == 413
    assert (await h.store.inbox.depth())[0] == 0


async def test_wrong_method_is_405(h: Harness) -> None:
    async with h.client.get(PATH) as resp:
        assert resp.status == 405


async def test_concurrent_webhooks_are_committed_in_groups(h: Harness) -> None:
    results = await asyncio.gather(*(h.post(hook(fid)) for fid in range(1, 201)))
    assert all(status == 200 for status, _ in results)
    assert h.committer.committed == 200
    assert h.committer.commits < 200
    assert (await h.store.inbox.depth())[0] == 200


async def test_every_acknowledged_webhook_is_named_in_one_line_per_commit(h: Harness) -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    try:
        results = await asyncio.gather(*(h.post(hook(fid)) for fid in range(1, 51)))
        again = await h.post(hook(7))
        logs.flush()
    finally:
        logs.reset()
    assert all(status == 200 for status, _ in [*results, again])
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    committed = [line for line in lines if line["event"] == "webhooks_committed"]
    assert 0 < len(committed) <= h.committer.commits < 51
    named = sorted(w for line in committed for w in line["webhooks"])
    assert named == sorted(f"donation:{fid}:3" for fid in range(1, 51))
    assert [w for line in committed for w in line["duplicates"]] == ["donation:7:3"]
    assert sum(line["events"] for line in committed) == 51
    # No line per webhook: that line was the largest cost of ingest (BENCHMARKS.md).
    assert len(lines) == len(committed)


async def test_a_failed_commit_is_503_never_200_and_recovers(h: Harness) -> None:
    # A database that refuses writes (as a read-only file or a full disk would).
    await h.store.db.execute("PRAGMA query_only = ON")
    status, body = await h.post(hook(1))
    assert status == 503
    assert "retry" in body["error"]
    await h.store.db.execute("PRAGMA query_only = OFF")
    assert (await h.post(hook(1)))[0] == 200
    assert (await h.store.inbox.depth())[0] == 1


async def test_health_and_readiness(h: Harness) -> None:
    async with h.client.get("/healthz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "alive"})
    await h.post(hook())
    async with h.client.get("/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ready", "inbox": {"pending": 1}}


async def test_not_ready_is_503_saying_so(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    committer = GroupCommitter(store, max_batch=8, on_commit=lambda: None)

    async def not_ready() -> tuple[bool, dict[str, Any]]:
        return False, {"sinks": "archive not open"}

    try:
        app = build_app(ListenerSettings(auth_token=SecretStr(TOKEN)), committer, not_ready)
        async with (
            TestClient(TestServer(app, host="127.0.0.1")) as client,
            client.get("/readyz") as resp,
        ):
            assert resp.status == 503
            assert await resp.json() == {"status": "not ready", "sinks": "archive not open"}
    finally:
        await store.close()


async def test_unauthenticated_mode_needs_the_explicit_opt_out(tmp_path: Path) -> None:
    async with serving(tmp_path, token=None, allow_unauthenticated=True) as h:
        assert (await h.post(hook(), token=None))[0] == 200


async def test_no_token_without_the_opt_out_never_serves(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        committer = GroupCommitter(store, max_batch=8, on_commit=lambda: None)

        async def ready() -> tuple[bool, dict[str, Any]]:
            return True, {}

        with pytest.raises(ValueError, match="auth_token is not set"):
            build_app(ListenerSettings(), committer, ready)
    finally:
        await store.close()


def test_parse_webhook_ignores_unknown_extra_keys() -> None:
    assert parse_webhook(json.dumps({**hook(), "extra": "x"}).encode()).id == 101
    with pytest.raises(PayloadError, match="id: missing; status: missing"):
        parse_webhook(b'{"webhook_id": 1, "operation": 1}')


def test_a_refused_webhook_names_only_what_is_wrong_whatever_the_valid_values() -> None:
    """The 422 says which field is wrong; large ids and operation 6 are valid."""
    body = b'{"id": 5000000, "webhook_id": 300, "operation": 6, "status": 9}'
    with pytest.raises(PayloadError) as caught:
        parse_webhook(body)
    assert str(caught.value) == "status: must be 0, 3, 4 or 5, got 9"


# -- hostile clients ------------------------------------------------------------------


def raw_post(body: bytes, *, token: bytes = TOKEN.encode(), length: int | None = None) -> bytes:
    head = (
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: fonzipd\r\n"
        b"X-FZ-Auth-Token: " + token + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body) if length is None else length).encode() + b"\r\n"
        b"Connection: close\r\n\r\n"
    )
    return head + body


def status_of(answer: bytes) -> int:
    assert answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), answer[:80]
    return int(answer.split(b" ", 2)[1])


DEEP = b"[" * 2000 + b"]" * 2000


async def test_a_token_of_invalid_bytes_is_401_not_500(h: Harness) -> None:
    # Before: the header's surrogates raised UnicodeEncodeError before the comparison.
    with capture_logs() as lines:
        answer = await h.raw(raw_post(json.dumps(hook()).encode(), token=b"\xff\xfe"))
    assert status_of(answer) == 401
    assert not [ln for ln in lines if ln["log_level"] in ("error", "critical")]
    assert (await h.store.inbox.depth())[0] == 0
    # The right token still works over the same raw path.
    assert status_of(await h.raw(raw_post(json.dumps(hook()).encode()))) == 200


async def test_an_authenticated_body_nested_2000_deep_is_422_not_500(h: Harness) -> None:
    assert len(DEEP) <= 4096  # inside max_body_bytes: it reaches the parser
    answer = await h.raw(raw_post(DEEP))
    assert status_of(answer) == 422
    assert b"nested too deeply" in answer


async def test_a_flood_of_bad_requests_is_counted_not_logged_line_by_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    async with serving(tmp_path, clock=clock) as h:
        floods: dict[str, bytes] = {
            "unauthorized": raw_post(json.dumps(hook()).encode(), token=b"\xff\xfe"),
            "invalid": raw_post(DEEP),
            # Not HTTP at all: aiohttp itself logs each of these with a traceback.
            "malformed_http": b"GET /\x00\x01 HTTP/1.1\r\nHost: \xff\r\n\r\n",
        }
        with capture_logs() as lines:
            for request in floods.values():
                answers = await asyncio.gather(*(h.raw(request) for _ in range(100)))
                assert all(400 <= status_of(a) < 500 for a in answers)
        totals = h.app[REJECTIONS_KEY].totals
        assert {k: totals[k] for k in floods} == dict.fromkeys(floods, 100)
        # One line per kind of rejection, at once; the other 99 wait for the summary.
        rejected = [ln for ln in lines if ln["event"] == "webhook_rejected"]
        assert sorted(ln["outcome"] for ln in rejected) == sorted(floods)
        assert all(ln["count"] == 1 for ln in rejected)
        assert not [r for r in caplog.records if r.levelno >= 30], "aiohttp logged on its own"
        with capture_logs() as lines:
            clock.advance(61)
            h.app[REJECTIONS_KEY].flush()
        assert {ln["outcome"]: ln["count"] for ln in lines} == dict.fromkeys(floods, 99)
        assert (await h.store.inbox.depth())[0] == 0


class SlowClient:
    """One slow-loris connection: what it sends, a byte at a time, and when it was cut."""

    def __init__(self, port: int, opening: bytes, trickle: bytes) -> None:
        self.port, self.opening, self.trickle = port, opening, trickle
        self.closed_after: float | None = None

    async def run(self, within: float) -> None:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(self.opening)

            # Trickle a byte every 50 ms until the server hangs up (or our bound ends).
            async def trickle() -> None:
                for i in range(int(within / 0.05)):
                    writer.write(self.trickle[i % len(self.trickle) : i % len(self.trickle) + 1])
                    await asyncio.sleep(0.05)

            feeding = asyncio.create_task(trickle() if self.trickle else asyncio.sleep(0))
            try:
                # Returns at EOF; raises at a reset (the server aborts slow clients).
                await asyncio.wait_for(reader.read(), within)
            except TimeoutError:
                return  # still open at the end of our bound
            except ConnectionError:
                pass
            finally:
                feeding.cancel()
            self.closed_after = time.monotonic() - started
        except ConnectionError:
            self.closed_after = time.monotonic() - started
        finally:
            writer.close()


def slow_clients(port: int, count: int) -> list[SlowClient]:
    head = b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: fonzipd\r\n"
    body_head = raw_post(b"", length=400).replace(b"Connection: close\r\n", b"")
    wrong = raw_post(b"", token=b"wrong-wrong-wrong-wrong", length=400)  # answered 401 at once
    kinds = [
        (head, b"X-Padding: aaaaaaaa\r\n"),  # headers that never end
        (body_head, b'{"id": 1, '),  # a valid token, then a body a byte at a time
        (wrong, b"x"),  # refused, then a body that never ends
        (b"", b""),  # connects, says nothing
    ]
    return [SlowClient(port, *kinds[i % len(kinds)]) for i in range(count)]


async def test_slow_clients_are_cut_off_while_webhooks_keep_landing(tmp_path: Path) -> None:
    timeout = 2.0
    async with serving(
        tmp_path, header_timeout=timeout, body_timeout=timeout, keepalive_timeout=timeout
    ) as h:
        clients = slow_clients(h.port, 300)
        attack = asyncio.gather(*(c.run(within=timeout + 4.0) for c in clients))
        guard = h.app[GUARD_KEY]

        async def connected() -> None:
            deadline = time.monotonic() + 10
            while guard.open_connections < 250:
                assert time.monotonic() < deadline, "the slow clients did not connect"
                await asyncio.sleep(0.01)

        await connected()
        # Valid webhooks, each on a fresh connection, while the slow ones hold theirs.
        latencies = []
        for fid in range(1, 21):
            started = time.monotonic()
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.post(
                    f"http://127.0.0.1:{h.port}{PATH}",
                    json=hook(fid),
                    headers={"X-FZ-Auth-Token": TOKEN},
                ) as resp,
            ):
                assert resp.status == 200
            latencies.append(time.monotonic() - started)
        await attack
        assert (await h.store.inbox.depth())[0] == 20
        assert max(latencies) < 1.0, latencies
        # Every slow connection was cut, each within its bound (plus scheduling slack).
        cut = [c.closed_after for c in clients]
        never = sorted({i % 4 for i, c in enumerate(cut) if c is None})
        assert None not in cut, f"{cut.count(None)} slow connections never closed, kinds {never}"
        assert max(c for c in cut if c is not None) < 2 * timeout + 3.0, max(cut)  # type: ignore[type-var]
        assert guard.open_connections == 0
        totals = h.app[REJECTIONS_KEY].totals
        assert totals["slow_headers"] >= 150  # the header and silent clients
        assert totals["slow_body"] == 75


async def test_at_the_connection_cap_idle_clients_make_room_for_webhooks(tmp_path: Path) -> None:
    # A long header deadline: only the cap stands between the attacker and the limit.
    async with serving(tmp_path, header_timeout=60, max_connections=32) as h:
        guard = h.app[GUARD_KEY]
        idle = [await asyncio.open_connection("127.0.0.1", h.port) for _ in range(200)]
        try:

            async def settled() -> None:
                deadline = time.monotonic() + 10
                while h.app[REJECTIONS_KEY].totals["evicted"] < 200 - 32:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)

            await settled()
            assert guard.open_connections <= 32
            for fid in range(1, 11):
                assert (await h.post(hook(fid)))[0] == 200
            assert (await h.store.inbox.depth())[0] == 10
            assert guard.open_connections <= 32
        finally:
            for _, writer in idle:
                writer.close()


async def _answer(reader: asyncio.StreamReader) -> int:
    """Read one keep-alive answer (headers and Content-Length body); its status."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 10)
    return status_of(head)


async def test_the_header_deadline_runs_from_the_last_answer_on_a_busy_keep_alive_connection(
    tmp_path: Path,
) -> None:
    # The guard arms its timer once and re-arms it when it fires (not per request):
    # a connection that keeps sending requests, each well within header_timeout of
    # the previous answer, is never cut, even long past header_timeout in all; once it
    # goes quiet it is cut header_timeout after its last answer, not before.
    timeout = 1.0
    async with serving(tmp_path, header_timeout=timeout, keepalive_timeout=60) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        try:
            started = time.monotonic()
            fid = 0
            while time.monotonic() - started < 3 * timeout:
                fid += 1
                writer.write(
                    raw_post(json.dumps(hook(fid)).encode()).replace(b"close", b"keep-alive")
                )
                assert await _answer(reader) == 200
                last_answer = time.monotonic()
                await asyncio.sleep(timeout / 4)  # the client's pace, not a wait for the server
            assert await asyncio.wait_for(reader.read(), 10 * timeout) == b""
            quiet = time.monotonic() - last_answer
        finally:
            writer.close()
        assert timeout - 0.05 <= quiet < timeout + 2.0, quiet
        assert (await h.store.inbox.depth())[0] == fid
        assert h.app[REJECTIONS_KEY].totals["slow_headers"] == 1


async def test_a_scanner_getting_only_not_found_answers_is_cut_after_header_timeout(
    tmp_path: Path,
) -> None:
    # The guard hears of routed requests only (guarded wraps each route): a client
    # that probes paths that do not exist, however briskly, on one kept-alive
    # connection, holds it header_timeout from its opening, then is cut; the
    # listener still takes webhooks after.
    timeout = 1.0
    async with serving(tmp_path, header_timeout=timeout, keepalive_timeout=60) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        opened = time.monotonic()
        statuses: list[int] = []
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while time.monotonic() - opened < 5 * timeout:
                    writer.write(b"GET /wp-login.php HTTP/1.1\r\nHost: fonzipd\r\n\r\n")
                    statuses.append(await _answer(reader))
                    await asyncio.sleep(timeout / 4)  # the client's pace
            held = time.monotonic() - opened
        finally:
            writer.close()
        assert set(statuses) == {404}, statuses
        assert len(statuses) >= 2, statuses
        assert timeout - 0.05 <= held < timeout + 2.0, held
        assert (await h.post(hook(5)))[0] == 200
        assert h.app[REJECTIONS_KEY].totals["slow_headers"] == 1


async def test_a_body_sent_after_its_headers_is_read_within_body_timeout(tmp_path: Path) -> None:
    # A body that came with its headers is read with no deadline (it cannot wait); one
    # that comes later is read under body_timeout: accepted when it arrives in time,
    # 408 when it does not.
    async with serving(tmp_path, body_timeout=1.0) as h:
        body = json.dumps(hook(5)).encode()
        for late, status in ((b"", 200), (body, 200), (body[:10], 408)):
            reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
            try:
                request = raw_post(body)
                head = request[: -len(body)] if late else request
                writer.write(head)
                await writer.drain()
                if late:
                    await asyncio.sleep(0.2)  # the client's pace: the body comes apart
                    writer.write(late)
                answer = await asyncio.wait_for(reader.read(), 10)
            finally:
                writer.close()
            assert status_of(answer) == status, answer
        assert (await h.store.inbox.depth())[0] == 1
        assert h.app[REJECTIONS_KEY].totals["slow_body"] == 1


async def test_the_connection_cap_fits_under_the_file_limit(tmp_path: Path) -> None:
    # Outside systemd the soft limit is often 1024: accept() would fail with EMFILE
    # before a cap of 1024 is reached, refusing valid webhooks with the rest.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        async with serving(tmp_path, max_connections=1024) as h:
            assert h.app[GUARD_KEY].max_connections == 512 - 128
            assert (await h.post(hook()))[0] == 200
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_committer_that_is_not_running_refuses_at_once(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    committed: list[int] = []
    committer = GroupCommitter(store, max_batch=8, on_commit=lambda: committed.append(1))
    event = InboxEvent(Kind.DONATION, 5, 3, Source.WEBHOOK)
    try:
        with pytest.raises(StoreError, match=r"^the group committer is not running$"):
            await committer.submit(event)  # never started
        committer.start()
        assert await committer.submit(event) is True
        assert await committer.submit(event) is False  # the same pending event: a duplicate
        assert (committer.commits, committer.committed, committed) == (2, 2, [1, 1])
        await committer.stop()
        with pytest.raises(StoreError, match=r"^the group committer is not running$"):
            await committer.submit(InboxEvent(Kind.DONATION, 6, 3, Source.WEBHOOK))
        assert await store.inbox.counts() == {"pending": 1}
    finally:
        await store.close()


async def test_every_valid_delivery_is_seen_and_the_committer_task_is_watched(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "s.db")
    watched: list[asyncio.Task[None]] = []
    committer = GroupCommitter(store, max_batch=8, on_commit=lambda: None, watch=watched.append)
    seen: list[tuple[int, int]] = []

    async def heard(hook_: Webhook) -> None:
        seen.append((hook_.id, hook_.webhook_id))

    headers = {"X-FZ-Auth-Token": TOKEN}
    try:
        app = build_app(
            ListenerSettings(auth_token=SecretStr(TOKEN)), committer, _ready, seen=heard
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            assert len(watched) == 1
            assert not watched[0].done()
            for body in (hook(5), {"id": 0, "webhook_id": 9, "operation": 1, "status": 0}):
                async with client.post(PATH, json=body, headers=headers) as resp:
                    assert resp.status == 200
            async with client.post(PATH, json={**hook(6), "status": 2}, headers=headers) as resp:
                assert resp.status == 422
        assert seen == [(5, 7), (0, 9)]
    finally:
        await store.close()


async def _ready() -> tuple[bool, dict[str, Any]]:
    return True, {}


async def test_a_dead_committer_answers_its_batch_and_the_queued_ones_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await Store.open(tmp_path / "s.db")
    watched: list[asyncio.Task[None]] = []
    committer = GroupCommitter(store, max_batch=1, on_commit=lambda: None, watch=watched.append)

    async def bug(events: object) -> list[bool]:
        raise RuntimeError("a bug in the store")

    monkeypatch.setattr(store.inbox, "add_events", bug)
    committer.start()
    try:
        answers = await asyncio.gather(
            *(committer.submit(InboxEvent(Kind.DONATION, i, 3, Source.WEBHOOK)) for i in (1, 2, 3)),
            return_exceptions=True,
        )
        assert [str(a) for a in answers] == [
            "the event could not be stored",
            "the group committer is not running",
            "the group committer is not running",
        ]
        assert all(isinstance(a, StoreError) for a in answers)
        assert watched[0].done()
        assert watched[0].get_name() == "group-committer"
    finally:
        await committer.stop()
        await store.close()


async def test_events_arriving_together_are_committed_max_batch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await Store.open(tmp_path / "s.db")
    sizes: list[int] = []
    add_events = store.inbox.add_events

    async def counted(events: list[InboxEvent]) -> list[bool]:
        sizes.append(len(events))
        return await add_events(events)

    monkeypatch.setattr(store.inbox, "add_events", counted)
    committer = GroupCommitter(store, max_batch=2, on_commit=lambda: None)
    committer.start()
    try:
        events = [InboxEvent(Kind.DONATION, i, 3, Source.WEBHOOK) for i in range(1, 6)]
        assert await asyncio.gather(*(committer.submit(e) for e in events)) == [True] * 5
        assert sizes == [2, 2, 1]
        assert (committer.commits, committer.committed) == (3, 5)
    finally:
        await committer.stop()
        await store.close()


async def test_a_failed_commit_is_logged_and_reported_with_its_size_and_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's readiness hears of it too (``on_failure``): /readyz fails at once."""
    store = await Store.open(tmp_path / "s.db")

    async def full(events: object) -> list[bool]:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.inbox, "add_events", full)
    failures: list[str] = []
    committer = GroupCommitter(
        store, max_batch=8, on_commit=lambda: None, on_failure=failures.append
    )
    committer.start()
    try:
        with capture_logs() as lines, pytest.raises(StoreError, match="disk is full"):
            await committer.submit(InboxEvent(Kind.DONATION, 1, 3, Source.WEBHOOK))
        assert [ln for ln in lines if ln["log_level"] == "error"] == [
            {
                "event": "commit_failed",
                "events": 1,
                "error": "database or disk is full",
                "log_level": "error",
            }
        ]
        assert failures == ["database or disk is full"]
    finally:
        await committer.stop()
        await store.close()


async def test_the_listener_token_is_redacted_from_every_log_line(tmp_path: Path) -> None:
    token = f"listener-token-{tmp_path.name}-0123456789"
    async with serving(tmp_path, token=token) as h:
        out = io.StringIO()
        logs.configure("info", "json", stream=out)
        try:
            structlog.get_logger("t").warning(
                "webhook_rejected", header=f"X-FZ-Auth-Token: {token}"
            )
            status, _ = await h.post(hook(), token=token)
        finally:
            logs.flush()
            logs.reset()
    assert status == 200
    text = out.getvalue()
    assert "webhook_rejected" in text
    assert "[redacted]" in text
    assert token not in text


async def test_stop_commits_what_is_queued_before_it_ends(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    committer = GroupCommitter(store, max_batch=1, on_commit=lambda: None)
    committer.start()
    try:
        submits = [
            asyncio.create_task(committer.submit(InboxEvent(Kind.DONATION, i, 3, Source.WEBHOOK)))
            for i in (1, 2, 3)
        ]
        await asyncio.sleep(0)  # the three are queued; none is committed yet
        await committer.stop()
        assert [await s for s in submits] == [True, True, True]
        assert await store.inbox.counts() == {"pending": 3}
    finally:
        await store.close()


# -- the answer: what decides whether a webhook is acknowledged ---------------------------


LONG_TYPE = "text/" + "x" * 60


def chunked_post(body: bytes) -> bytes:
    """A POST without Content-Length: aiohttp learns the size only by reading."""
    head = (
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: fonzipd\r\n"
        b"X-FZ-Auth-Token: " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    return head + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


def body_of(answer: bytes) -> Any:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


async def test_every_webhook_request_is_answered_counted_and_logged_by_its_outcome(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    counted: list[tuple[int | None, int | None, str]] = []
    heard: list[tuple[int, int]] = []

    def observe(operation: int | None, status: int | None, outcome: str) -> None:
        counted.append((operation, status, outcome))

    async def seen(hook_: Webhook) -> None:
        heard.append((hook_.id, hook_.operation))

    async with serving(tmp_path, clock=clock, observer=observe, seen=seen) as h:
        with capture_logs() as lines:
            # Operation 6 (campaigns) is the last valid one.
            ok = await h.post(hook(5, op=6, status=0))
            again = await h.post(hook(5, op=6, status=0))
            # A body of exactly max_body_bytes is taken.
            edge = await h.post(None, raw=json.dumps(hook(9)).encode().ljust(4096))
            test = await h.post({"id": 0, "webhook_id": 9, "operation": 2, "status": 4})
            missing = await h.post(hook(), token=None)
            clock.advance(61)  # past the quiet period: the next rejection logs its line
            wrong = await h.post(hook(), token="wrong-token-wrong-token")
            media = await h.post(hook(), content_type=LONG_TYPE)
            declared = await h.raw(raw_post(b"{" + b" " * 4998 + b"}"))
            clock.advance(61)
            chunked = await h.raw(chunked_post(b"{" + b" " * 5000 + b"}"))
            clock.advance(61)
            invalid = await h.post({**hook(), "status": 1})
            await h.store.db.execute("PRAGMA query_only = ON")
            refused = await h.post(hook(8, op=2, status=4))
            await h.store.db.execute("PRAGMA query_only = OFF")
        pending = (await h.store.inbox.depth())[0]
        totals = dict(h.app[REJECTIONS_KEY].totals)
    assert ok == (200, {"result": "ok", "duplicate": False})
    assert again == (200, {"result": "ok", "duplicate": True})
    assert edge == (200, {"result": "ok", "duplicate": False})
    assert test == (200, {"result": "ok", "test": True})
    unauthorized = {"error": "missing or wrong X-FZ-Auth-Token header"}
    assert missing == wrong == (401, unauthorized)
    assert media == (415, {"error": f"Content-Type must be application/json, got {LONG_TYPE!r}"})
    too_large = {"error": "body larger than 4096 bytes"}
    assert (status_of(declared), body_of(declared)) == (413, too_large)
    assert (status_of(chunked), body_of(chunked)) == (413, too_large)
    assert invalid == (422, {"error": "status: must be 0, 3, 4 or 5, got 1"})
    # Never a 200 for an event that is not stored: Fonzip retries anything else.
    assert refused == (503, {"error": "the event could not be stored; please retry"})
    assert pending == 2
    assert counted == [
        (6, 0, "accepted"),
        (6, 0, "duplicate"),
        (1, 3, "accepted"),
        (2, 4, "test"),
        (None, None, "unauthorized"),
        (None, None, "unauthorized"),
        (None, None, "unsupported_media_type"),
        (None, None, "too_large"),
        (None, None, "too_large"),
        (None, None, "invalid"),
        (2, 4, "not_stored"),
    ]
    assert heard == [(5, 6), (5, 6), (9, 1), (0, 2)]  # valid deliveries only, once answered
    rejected = [
        (ln["outcome"], ln.get("reason")) for ln in lines if ln["event"] == "webhook_rejected"
    ]
    assert rejected == [
        ("unauthorized", "missing token"),
        ("unauthorized", "wrong token"),
        ("unsupported_media_type", f"Content-Type {LONG_TYPE[:40]!r}"),  # at most 40
        ("too_large", "Content-Length 5000"),
        ("too_large", "body over the limit"),
        ("invalid", "status: must be 0, 3, 4 or 5, got 1"),
    ]
    assert totals == {"unauthorized": 2, "unsupported_media_type": 1, "too_large": 2, "invalid": 1}
    fields = {"kind": "membership_fee", "fonzip_id": 8, "status": 4, "webhook_id": 7}
    assert [{k: ln[k] for k in fields} for ln in lines if ln["event"] == "webhook_not_stored"] == [
        fields
    ]
    assert [
        (ln["kind"], ln["fonzip_id"], ln["status"], ln["webhook_id"])
        for ln in lines
        if ln["event"] == "webhook_test_received"
    ] == [("membership_fee", 0, 4, 9)]


async def test_a_body_that_does_not_arrive_in_time_is_408_and_the_connection_closed(
    tmp_path: Path,
) -> None:
    counted: list[tuple[int | None, int | None, str]] = []

    def observe(operation: int | None, status: int | None, outcome: str) -> None:
        counted.append((operation, status, outcome))

    async with serving(tmp_path, body_timeout=0.2, observer=observe) as h:
        with capture_logs() as lines:
            # Headers announce 100 bytes; none follow, and the connection stays open.
            answer = await h.raw(raw_post(b"", length=100))
    assert counted == [(None, None, "slow_body")]
    assert status_of(answer) == 408
    assert body_of(answer) == {"error": "body not received within 0.2 s"}
    assert b"Connection: close" in answer
    rejected = [(ln["outcome"], ln["reason"]) for ln in lines if ln["event"] == "webhook_rejected"]
    assert rejected == [("slow_body", "body not received within 0.2 s")]


def test_the_body_parser_names_what_is_wrong_exactly() -> None:
    assert parse_webhook(json.dumps(hook(1, op=6, status=0)).encode()) == Webhook(1, 7, 6, 0)
    with pytest.raises(PayloadError) as deep:
        parse_webhook(DEEP)
    assert str(deep.value) == "body is nested too deeply"
