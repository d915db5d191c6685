"""Tests of the webhook listener: authentication, strict validation, and commit before 200."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from fonzipd.config import ListenerSettings
from fonzipd.listener import GroupCommitter, PayloadError, build_app, parse_webhook
from fonzipd.state import Store

TOKEN = "a-long-enough-webhook-token"
PATH = "/fonzip/webhook"


class Harness:
    def __init__(self, client: TestClient[Any, Any], store: Store, committer: GroupCommitter):
        self.client = client
        self.store = store
        self.committer = committer
        self.commits_signalled = 0

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


async def make_harness(tmp_path: Path, **settings: Any) -> AsyncIterator[Harness]:
    store = await Store.open(tmp_path / "state.db")
    listener = ListenerSettings(auth_token=SecretStr(TOKEN), **settings)
    signalled: list[int] = []
    committer = GroupCommitter(store, max_batch=512, on_commit=lambda: signalled.append(1))

    async def ready() -> tuple[bool, dict[str, Any]]:
        depth, _ = await store.inbox.depth()
        return True, {"inbox": {"pending": depth}}

    app = build_app(listener, committer, ready)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Harness(client, store, committer)
    finally:
        await client.close()
        await store.close()


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
        ({**hook(), "operation": 7}, "operation: must be 1 to 6"),
        ({**hook(), "operation": 0}, "operation: must be 1 to 6"),
        ({**hook(), "status": 1}, "status: must be 0, 3, 4 or 5"),
        ({**hook(), "webhook_id": None}, "webhook_id: must be an integer"),
        ([hook()], "must be a JSON object"),
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
        assert (await resp.json())["inbox"]["pending"] == 1


async def test_unauthenticated_mode_needs_the_explicit_opt_out(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        settings = ListenerSettings(allow_unauthenticated=True)
        committer = GroupCommitter(store, max_batch=8, on_commit=lambda: None)

        async def ready() -> tuple[bool, dict[str, Any]]:
            return True, {}

        client = TestClient(TestServer(build_app(settings, committer, ready)))
        async with client, client.post(PATH, json=hook()) as resp:
            assert resp.status == 200
    finally:
        await store.close()


def test_parse_webhook_ignores_unknown_extra_keys() -> None:
    assert parse_webhook(json.dumps({**hook(), "extra": "x"}).encode()).id == 101
    with pytest.raises(PayloadError, match="id: missing; status: missing"):
        parse_webhook(b'{"webhook_id": 1, "operation": 1}')
