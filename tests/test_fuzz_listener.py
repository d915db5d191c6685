"""Property-based fuzz of the webhook listener: bad input is a clear 4xx, never a 5xx or a row.

A real listener over a real state database serves on 127.0.0.1 from a thread of its
own; hypothesis throws methods, content types, sizes, encodings, JSON shapes,
out-of-range numbers and missing or wrong tokens at it over plain HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from fonzipd.config import ListenerSettings
from fonzipd.listener import GroupCommitter, build_app
from fonzipd.state import Store

TOKEN = "fuzz-listener-token-0123456789"
PATH = "/fonzip/webhook"
MAX_BODY = 4096


class Served:
    """The listener on its own event loop in a thread; ``port`` once it is bound."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),))

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        store = await Store.open(self.state)
        listener = ListenerSettings(auth_token=SecretStr(TOKEN), max_body_bytes=MAX_BODY)
        committer = GroupCommitter(store, max_batch=64, on_commit=lambda: None)

        async def ready() -> tuple[bool, dict[str, Any]]:
            return True, {}

        runner = web.AppRunner(build_app(listener, committer, ready), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = int(runner.addresses[0][1])
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await store.close()

    def __enter__(self) -> Served:
        self._thread.start()
        assert self._ready.wait(30), "listener did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._loop.close()

    def inbox_rows(self) -> int:
        with contextlib.closing(sqlite3.connect(self.state)) as db:
            return int(db.execute("SELECT count(*) FROM inbox").fetchone()[0])

    def stored(self, kind: str, fonzip_id: int, status: int) -> list[tuple[str, str]]:
        """(source, state) of the inbox rows holding one webhook event."""
        with contextlib.closing(sqlite3.connect(self.state)) as db:
            return db.execute(
                "SELECT source, state FROM inbox WHERE kind = ? AND fonzip_id = ?"
                " AND event_status = ?",
                (kind, fonzip_id, status),
            ).fetchall()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with Served(tmp_path_factory.mktemp("fuzz") / "state.db") as s:
        yield s


def request(port: int, method: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, PATH, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type", "")
    finally:
        conn.close()


# Values that are almost right: the ways a sender (or an attacker) gets a field wrong.
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 3, 4, 5, 6, 7, -1, 2**63 - 1, 2**63, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
webhook_like = st.fixed_dictionaries(
    {},
    optional={
        "id": numbers,
        "webhook_id": numbers,
        "operation": numbers,
        "status": numbers,
        "extra": json_values,
    },
)


def encode(value: Any, encoding: str) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False).encode(encoding)
    except UnicodeEncodeError:
        return json.dumps(value).encode(encoding)


# Valid notifications, so that the accepted branch (stored as sent) is exercised too.
valid_webhooks = st.fixed_dictionaries(
    {
        "id": st.integers(min_value=0, max_value=2**63 - 1),
        "webhook_id": st.integers(min_value=0, max_value=2**63 - 1),
        "operation": st.integers(min_value=0, max_value=7),
        "status": st.sampled_from([0, 1, 3, 4, 5, 6]),
    },
    optional={"extra": json_values},
)

bodies = st.one_of(
    valid_webhooks.map(lambda v: json.dumps(v).encode()),
    st.tuples(webhook_like, st.sampled_from(["utf-8", "utf-16", "latin-1"])).map(
        lambda t: encode(t[0], t[1])
    ),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.integers(min_value=MAX_BODY - 8, max_value=3 * MAX_BODY).map(
        lambda n: b'{"id": 1' + b" " * n + b"}"
    ),
    # The NaN and Infinity JSON extensions Python accepts and strict JSON does not.
    st.sampled_from([b'{"id": NaN}', b'{"id": Infinity, "status": 3}', b"1e999999"]),
)
tokens = st.sampled_from([None, TOKEN, TOKEN, "", TOKEN + "x", TOKEN.upper(), "wrong"])
methods = st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH"])
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/JSON",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
    ]
)


# The oracle, written from the API reference (§4.2, §4.3) and independent of the
# listener's parser: which requests are webhooks to store, and as what.
OPERATION_KINDS = {
    1: "donation",
    2: "membership_fee",
    3: "ticket_sale",
    4: "form_answer",
    5: "ecard_sale",
    6: "campaign",
}
WEBHOOK_STATUSES = {0, 3, 4, 5}  # 0 campaign created; 3 successful, 4 refunded, 5 error


def expected_event(
    method: str, token: str | None, ctype: str | None, body: bytes
) -> tuple[str, int, int] | None:
    """(kind, id, status) a request must be stored as, or None if it must be refused.

    A webhook is a POST with the shared X-FZ-Auth-Token, a JSON content type, a body
    within the size bound that is a JSON object whose four fields id, webhook_id,
    operation and status are integers (not booleans) from 0 to 2**63 - 1, operation
    1 to 6, status 0, 3, 4 or 5. Id 0 is Fonzip's test delivery: answered, not stored.
    """
    if method != "POST" or token != TOKEN or len(body) > MAX_BODY:
        return None
    if ctype is None or ctype.split(";")[0].strip().lower() != "application/json":
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    fields = [data.get(name) for name in ("id", "webhook_id", "operation", "status")]
    if not all(type(v) is int and 0 <= v < 2**63 for v in fields):
        return None
    fonzip_id, _, operation, status = fields
    assert isinstance(fonzip_id, int)
    assert isinstance(operation, int)
    assert isinstance(status, int)
    if operation not in OPERATION_KINDS or status not in WEBHOOK_STATUSES or fonzip_id == 0:
        return None
    return OPERATION_KINDS[operation], fonzip_id, status


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(method=methods, token=tokens, ctype=content_types, body=bodies)
def test_bad_input_is_a_clear_4xx_and_stores_nothing(
    served: Served, method: str, token: str | None, ctype: str | None, body: bytes
) -> None:
    headers = {}
    if token is not None:
        headers["X-FZ-Auth-Token"] = token
    if ctype is not None:
        headers["Content-Type"] = ctype
    before = served.inbox_rows()
    status, text, answer_type = request(served.port, method, body, headers)
    assert status < 500, (status, text)
    event = expected_event(method, token, ctype, body)
    if event is not None:
        assert status == 200, (status, text)
        # Answered 200 means stored: the row is there, as the event it was sent as.
        assert ("webhook", "pending") in served.stored(*event), event
        return
    assert 400 <= status < 500 or (status == 200 and b'"test": true' in text), (status, text)
    assert served.inbox_rows() == before, "a rejected request left a row"
    if status != 200:
        assert text, "a 4xx without a body says nothing"
        if method == "POST":
            # Our own refusals say what was wrong, as JSON.
            assert answer_type.startswith("application/json"), (status, text)
            assert json.loads(text)["error"]


good_webhooks = st.fixed_dictionaries(
    {
        "id": st.integers(min_value=1, max_value=2**63 - 1),
        "webhook_id": st.integers(min_value=0, max_value=2**63 - 1),
        "operation": st.integers(min_value=1, max_value=6),
        "status": st.sampled_from(sorted(WEBHOOK_STATUSES)),
    },
    optional={"extra": json_values},
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=good_webhooks, ctype=st.sampled_from(["application/json", "application/JSON"]))
def test_every_valid_webhook_is_answered_200_and_stored_as_sent(
    served: Served, payload: dict[str, Any], ctype: str
) -> None:
    body = json.dumps(payload).encode()
    event = expected_event("POST", TOKEN, ctype, body)
    assert event is not None
    headers = {"X-FZ-Auth-Token": TOKEN, "Content-Type": ctype}
    status, text, _ = request(served.port, "POST", body, headers)
    assert status == 200, (status, text)
    assert ("webhook", "pending") in served.stored(*event), (event, text)


def test_the_listener_still_serves_after_the_fuzz(served: Served) -> None:
    body = json.dumps({"id": 99, "webhook_id": 1, "operation": 1, "status": 3}).encode()
    headers = {"X-FZ-Auth-Token": TOKEN, "Content-Type": "application/json"}
    status, text, _ = request(served.port, "POST", body, headers)
    assert status == 200, text
