"""The Fonzip API client: one session, the token, the shared rate limit, retries, typed errors.

Every call goes through ``_send``: wait for the rate limiter (live work first), attach
the token, send, and sort the answer: 2xx is returned; 401 drops the token and retries
once with a fresh one; 429, 5xx, network errors and timeouts are retried with
exponential backoff and jitter (the ``backoff`` package's generators, waiting on the
injected clock), honouring ``Retry-After`` when Fonzip sends one; anything else raises
a typed FonzipError naming the endpoint.

Fonzip's answers are not trusted: redirects are never followed (a 3xx is an error,
so credentials never go to another host), answers are read up to
``fonzip.max_response_bytes`` (a larger one is a failed attempt, refused before it is
read), JSON nested deeper than MAX_JSON_DEPTH or echoing one of our secrets is a bad
response, and every text taken from an answer has our secrets replaced by
``[redacted]`` before it reaches an error message or a log line.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

import aiohttp
import backoff
import structlog
from yarl import URL

from fonzipd import __version__, logs
from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import FonzipSettings
from fonzipd.fonzip.endpoints import (
    ECARD_FIELDS_FROM_LIST,
    ENDPOINTS,
    HOW_MANY,
    Detail,
    ListPage,
    ListResult,
    format_query_datetime,
    max_pages,
    validate_detail,
    validate_list,
    validate_rows,
)
from fonzipd.fonzip.errors import (
    FonzipBadResponse,
    FonzipError,
    FonzipNotFound,
    FonzipRateLimited,
    FonzipRequestError,
    FonzipUnauthorized,
    FonzipUnavailable,
)
from fonzipd.fonzip.fields import parse_fonzip_datetime
from fonzipd.fonzip.limiter import Priority, RateLimiter
from fonzipd.fonzip.list_rows import LIST_FIELDS
from fonzipd.fonzip.statuses import PAYMENT_STATUSES, list_holding
from fonzipd.fonzip.token import StoredToken, TokenManager, TokenStore, token_key
from fonzipd.kinds import Kind
from fonzipd.retry_after import parse_retry_after

log = structlog.get_logger(__name__)

USER_AGENT = f"fonzipd/{__version__}"
RETRY_AFTER_CAP = 60.0
"""Longest Retry-After honoured, in seconds."""
BLOCKED_STATUSES = frozenset({520, 521, 523})
BLOCKED_HINT = "Fonzip is blocking this IP; contact Fonzip support (help@fonzip.com) with it"
SEARCH_DAYS_BACK = 3
"""Days before today searched for a list row the webhook does not give (form id, e-card date)."""
WEBHOOK_EVENTS = (
    "DONATION",
    "SUBSCRIPTION",
    "TICKET",
    "FORM",
    "CERTIFICATE_SALE",
    "FUNDRAISING_CAMPAIGN",
)
_WEBHOOK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _-]{0,99}$")
MAX_ERROR_BODY = 65536
"""Bytes of a non-2xx answer read for Fonzip's error text; the rest is never read."""
MAX_JSON_DEPTH = 64
"""Deepest nesting accepted in an answer (Fonzip's objects are a few levels deep)."""
_ERROR_TEXT_CHARS = 300
_NOT_JSON = object()


class FormIdCache(Protocol):
    """Which form each form answer belongs to (the op-4 webhook does not say)."""

    async def get(self, answer_id: int) -> int | None:
        """The form id of ``answer_id``, or None when unknown."""
        ...

    async def put_many(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Remember ``(answer_id, form_id)`` pairs."""
        ...


class MemoryFormIdCache:
    """A FormIdCache in memory."""

    def __init__(self) -> None:
        self.form_of: dict[int, int] = {}

    async def get(self, answer_id: int) -> int | None:
        return self.form_of.get(answer_id)

    async def put_many(self, pairs: Iterable[tuple[int, int]]) -> None:
        self.form_of.update(pairs)


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    sent_at: dt.datetime
    """When the request that got this answer was sent (after the rate limiter's wait)."""


class FonzipClient:
    """Reads Fonzip for fonzipd; the only code that knows Fonzip's HTTP API.

    Use as ``async with FonzipClient(settings, token_store=...) as client``. One
    instance (and one RateLimiter) per process: they are what keeps the process
    under Fonzip's rate limit and its single live token.

    ``retry_base`` and ``retry_cap`` shape the backoff (first wait, longest wait, in
    seconds); ``token_wait`` bounds how long a call waits for a token that Fonzip's
    409 withholds (None: until it can be had).
    """

    def __init__(
        self,
        settings: FonzipSettings,
        *,
        token_store: TokenStore,
        limiter: RateLimiter | None = None,
        clock: Clock = SYSTEM_CLOCK,
        form_ids: FormIdCache | None = None,
        session: aiohttp.ClientSession | None = None,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
        token_wait: float | None = None,
    ) -> None:
        fixed = settings.access_token.get_secret_value() if settings.access_token else None
        if fixed is None and (settings.client_id is None or settings.client_secret is None):
            raise ValueError(
                "Fonzip credentials missing: set fonzip.client_id and fonzip.client_secret "
                "(FONZIPD_FONZIP__CLIENT_ID, FONZIPD_FONZIP__CLIENT_SECRET) or a fixed "
                "FONZIPD_FONZIP__ACCESS_TOKEN"
            )
        self.settings = settings
        self._base = str(settings.base_url).rstrip("/")
        self._clock = clock
        self.limiter = limiter or RateLimiter(settings.effective_rate, clock=clock)
        self.form_ids: FormIdCache = form_ids or MemoryFormIdCache()
        self._session = session
        self._own_session = session is None
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._token_wait = token_wait
        client_id = settings.client_id.get_secret_value() if settings.client_id else ""
        self._secrets: set[str] = set()
        self._shown_by_fonzip: set[str] = set()
        self._recent_tokens: collections.deque[str] = collections.deque(maxlen=4)
        for secret in (settings.client_secret, settings.access_token):
            if secret is not None:
                self._keep_secret(secret.get_secret_value())
        self.tokens = TokenManager(
            key=token_key(self._base, client_id),
            store=token_store,
            issue=self._issue_token,
            clock=clock,
            fixed_token=fixed,
            poll_interval=settings.token_lock_poll,
        )
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        """Requests made, by ``(endpoint template, HTTP status or "network")``."""
        self.retries = 0
        """Requests sent again after a 429, 5xx, network error or timeout."""

    async def __aenter__(self) -> FonzipClient:
        self._ensure_session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop a pending token request and close the session if this client made it."""
        await self.tokens.aclose()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _keep_secret(self, value: str, *, rotating: bool = False, echoed: bool = False) -> None:
        """Remember a secret that no message may contain and (unless ``echoed``: Fonzip
        may legitimately show it, as the webhook token) no answer may echo."""
        if len(value) < 8:
            return  # short values would match ordinary text; real credentials are longer
        if echoed:
            self._shown_by_fonzip.add(value)
        elif rotating:
            if value not in self._recent_tokens:
                self._recent_tokens.append(value)
        else:
            self._secrets.add(value)
        logs.never_log(value, rotating=rotating)

    def _secret_values(self) -> tuple[str, ...]:
        """The secrets no answer may contain: the API secret and our access tokens."""
        return (*self._secrets, *self._recent_tokens)

    def _redact(self, text: str) -> str:
        for secret in (*self._secret_values(), *self._shown_by_fonzip):
            for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                text = text.replace(form, "[redacted]")
        return text

    def _error_text(self, body: bytes) -> str | None:
        """Fonzip's own words, from any body: never raises, never holds a secret of ours."""
        data: object = _NOT_JSON
        with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
            data = json.loads(body)
        if isinstance(data, dict):
            for key in ("error_description", "error", "message", "detail"):
                value = data.get(key)
                if isinstance(value, str) and value.strip():
                    return self._redact(value.strip())[:_ERROR_TEXT_CHARS]
            return None
        if data is not _NOT_JSON:
            return None
        # Redacted before it is cut: a cut must not leave half a secret behind.
        text = self._redact(body[:4096].decode("utf-8", "replace")).strip()
        return text[:_ERROR_TEXT_CHARS] or None

    def _parse_json(self, endpoint: str, answer: _Answer, *, allow: str | None = None) -> object:
        """The JSON of a 2xx answer, or FonzipBadResponse; ``allow`` may appear in it."""
        try:
            data: object = json.loads(answer.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            shown = self._redact(answer.body[:4096].decode("utf-8", "replace"))[:80]
            raise FonzipBadResponse(
                endpoint,
                f"not JSON ({len(answer.body)} bytes, starting {shown!r})",
                status=answer.status,
            ) from None
        secrets = tuple(s for s in self._secret_values() if s != allow)
        problem = _inspect(data, secrets)
        if problem:
            raise FonzipBadResponse(endpoint, f"refused: {problem}", status=answer.status)
        return data

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout),
            )
        return self._session

    # -- the wire -------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        template: str,
        *,
        priority: Priority,
        params: Sequence[tuple[str, str]] | None = None,
        json_body: object = None,
        form: dict[str, str] | None = None,
        auth: bool = True,
        idempotent: bool = True,
        passthrough: Collection[int] = (),
    ) -> _Answer:
        endpoint = f"{method} {path}"
        session = self._ensure_session()
        delays = backoff.expo(base=2, factor=self._retry_base, max_value=self._retry_cap)
        next(delays)  # backoff's generators start primed with a None
        attempt = 0
        refreshed = False
        while True:
            await self.limiter.acquire(priority)
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
            token = ""
            if auth:
                token = await self.tokens.get(wait=self._token_wait)
                self._keep_secret(token, rotating=True)
                headers["Authorization"] = f"Bearer {token}"
            sent_at = self._clock.now()
            try:
                async with session.request(
                    method,
                    self._base + path,
                    params=params,
                    json=json_body,
                    data=form,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout),
                    # A redirect would carry the token (or, on /token, the API secret)
                    # to wherever Fonzip's answer points: never followed.
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
                    location = resp.headers.get("Location", "")
                    body = await _read_capped(
                        resp,
                        self.settings.max_response_bytes if 200 <= status < 300 else MAX_ERROR_BODY,
                        truncate=not 200 <= status < 300,
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.calls[template, "network"] += 1
                reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
                never_arrived = isinstance(exc, aiohttp.ClientConnectorError)
                if attempt >= self.settings.max_retries or not (idempotent or never_arrived):
                    raise FonzipUnavailable(
                        endpoint, f"no answer after {attempt + 1} attempt(s): {reason}"
                    ) from exc
                attempt += 1
                await self._wait_retry(endpoint, attempt, next(delays), None, reason)
                continue
            self.calls[template, str(status)] += 1
            if body is None:
                raise FonzipBadResponse(
                    endpoint,
                    f"answer larger than {self.settings.max_response_bytes} bytes "
                    "(fonzip.max_response_bytes); refused unread",
                    status=status,
                )
            if 300 <= status < 400:
                raise FonzipRequestError(
                    endpoint,
                    f"redirected to {_where(location)}; fonzipd never follows redirects "
                    "(they would carry the credentials to another address): "
                    "check fonzip.base_url",
                    status=status,
                )
            if 200 <= status < 300 or status in passthrough:
                return _Answer(status, body, sent_at)
            text = self._error_text(body)
            if status == 401 and auth:
                if not refreshed and not self.tokens.fixed:
                    refreshed = True
                    await self.tokens.invalidate(token)
                    continue
                why = (
                    "the fixed access token (FONZIPD_FONZIP__ACCESS_TOKEN) was refused"
                    if self.tokens.fixed
                    else "refused even a freshly issued token"
                )
                raise FonzipUnauthorized(endpoint, why, status=status, error_text=text)
            if status == 403:
                why = "no permission"
                if text and "1010" in text:
                    why = "Cloudflare refused the request (error 1010: User-Agent or IP)"
                raise FonzipUnauthorized(endpoint, why, status=status, error_text=text)
            if status == 404:
                raise FonzipNotFound(endpoint, "not found", status=status, error_text=text)
            if status == 429 or status >= 500:
                blocked = status in BLOCKED_STATUSES
                if blocked:
                    log.error(
                        "fonzip_ip_blocked", endpoint=endpoint, status=status, hint=BLOCKED_HINT
                    )
                if attempt >= self.settings.max_retries or (status != 429 and not idempotent):
                    if status == 429:
                        raise FonzipRateLimited(
                            endpoint,
                            f"still rate limited after {attempt + 1} attempt(s)",
                            status=status,
                            error_text=text,
                        )
                    raise FonzipUnavailable(
                        endpoint,
                        BLOCKED_HINT if blocked else f"failed after {attempt + 1} attempt(s)",
                        status=status,
                        error_text=text,
                        blocked=blocked,
                    )
                attempt += 1
                await self._wait_retry(
                    endpoint,
                    attempt,
                    next(delays),
                    retry_after,
                    f"HTTP {status}",
                    pause=status == 429,
                )
                continue
            raise FonzipRequestError(endpoint, "request refused", status=status, error_text=text)

    async def _wait_retry(
        self,
        endpoint: str,
        attempt: int,
        base_delay: float,
        retry_after: str | None,
        reason: str,
        *,
        pause: bool = False,
    ) -> None:
        told = parse_retry_after(retry_after, self._clock.now(), cap=RETRY_AFTER_CAP)
        delay = told if told is not None else backoff.full_jitter(base_delay)
        self.retries += 1
        log.warning(
            "fonzip_call_retried",
            endpoint=endpoint,
            attempt=attempt,
            reason=reason,
            wait=round(delay, 3),
            retry_after=None if retry_after is None else retry_after[:40],
        )
        if pause:
            # Fonzip counts per account: everyone holds back, not just this caller.
            self.limiter.pause(delay)
        else:
            await self._clock.sleep(delay)

    async def _get_json(
        self,
        path: str,
        template: str,
        *,
        priority: Priority,
        params: Sequence[tuple[str, str]] | None = None,
    ) -> object:
        answer = await self._send("GET", path, template, priority=priority, params=params)
        return self._parse_json(f"GET {path}", answer)

    async def _issue_token(self) -> StoredToken | None:
        settings = self.settings
        if settings.client_id is None or settings.client_secret is None:
            raise FonzipUnauthorized("POST /token", "no client_id/client_secret configured")
        requested_at = self._clock.now()
        answer = await self._send(
            "POST",
            "/token",
            "POST /token",
            priority=Priority.LIVE,
            form={
                "grant_type": "client_credentials",
                "client_id": settings.client_id.get_secret_value(),
                "client_secret": settings.client_secret.get_secret_value(),
            },
            auth=False,
            passthrough=(401, 403, 409),
        )
        text = self._error_text(answer.body)
        if answer.status == 409:
            if text and "already created" not in text.lower():
                log.warning("token_conflict_unrecognised", error_text=text)
            return None
        if answer.status in (401, 403):
            hint = ""
            if text and "1010" in text:
                hint = " (Cloudflare error 1010: the request's User-Agent or IP was refused)"
            raise FonzipUnauthorized(
                "POST /token",
                "Fonzip refused the API key; check FONZIPD_FONZIP__CLIENT_ID and "
                f"FONZIPD_FONZIP__CLIENT_SECRET (not retried){hint}",
                status=answer.status,
                error_text=text,
            )
        body = self._parse_json("POST /token", answer, allow=_token_in(answer.body))
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise FonzipBadResponse("POST /token", "no 'access_token' string in the answer")
        if not body["access_token"]:
            raise FonzipBadResponse("POST /token", "'access_token' is empty")
        self._keep_secret(body["access_token"], rotating=True)
        expires_in = body.get("expires_in")
        if (
            not isinstance(expires_in, int | float)
            or isinstance(expires_in, bool)
            or expires_in <= 0
        ):
            log.warning("token_expiry_missing", expires_in=repr(expires_in), assumed=3600)
            expires_in = 3600
        # Counted from before the request: the token may have been issued a moment earlier.
        return StoredToken(
            body["access_token"], expires_at=requested_at + dt.timedelta(seconds=expires_in)
        )

    # -- reading ----------------------------------------------------------------------

    async def me(self) -> dict[str, Any]:
        """``GET /me``: the association; a cheap check of the connection and credentials."""
        body = await self._get_json("/me", "GET /me", priority=Priority.LIVE)
        if not isinstance(body, dict):
            raise FonzipBadResponse("GET /me", "expected a JSON object")
        return body

    async def fetch_detail(
        self,
        kind: Kind,
        fonzip_id: int,
        *,
        priority: Priority = Priority.LIVE,
        list_row: dict[str, Any] | None = None,
    ) -> Detail:
        """The object ``fonzip_id`` of ``kind``, as its detail endpoint returns it.

        Handles the kinds' traps: dues ids that are debts, form answers whose form is
        unknown, e-card details without date and ISO currency (see Detail). Raises
        FonzipNotFound when Fonzip has no such object (it may have been deleted).
        """
        spec = ENDPOINTS[kind]
        if kind is Kind.FORM_ANSWER:
            return await self._fetch_form_answer(fonzip_id, priority, list_row)
        path = spec.detail_path.format(id=fonzip_id)
        try:
            obj, read_at = await self._get_detail(
                path, spec.detail_path, spec.detail_key, fonzip_id, priority
            )
        except FonzipNotFound:
            if spec.fallback_detail_path is None:
                raise
            path = spec.fallback_detail_path.format(id=fonzip_id)
            obj, read_at = await self._get_detail(
                path, spec.fallback_detail_path, spec.detail_key, fonzip_id, priority
            )
        if kind is Kind.ECARD_SALE:
            list_row = list_row or await self._find_ecard_row(fonzip_id, obj, priority)
            if list_row is None:
                log.warning(
                    "ecard_list_row_not_found",
                    fonzip_id=fonzip_id,
                    missing=list(ECARD_FIELDS_FROM_LIST),
                )
            else:
                obj = {**obj, **{k: list_row[k] for k in ECARD_FIELDS_FROM_LIST if k in list_row}}
        return Detail(
            kind=kind,
            fonzip_id=fonzip_id,
            obj=obj,
            list_row=list_row,
            endpoint=path,
            read_at=read_at,
        )

    async def _get_detail(
        self, path: str, template: str, key: str, fonzip_id: int, priority: Priority
    ) -> tuple[dict[str, Any], dt.datetime]:
        """The detail object, and when the request that read it was sent."""
        answer = await self._send("GET", path, f"GET {template}", priority=priority)
        body = self._parse_json(f"GET {path}", answer)
        return validate_detail(f"GET {path}", body, key, fonzip_id), answer.sent_at

    async def _fetch_form_answer(
        self, answer_id: int, priority: Priority, list_row: dict[str, Any] | None
    ) -> Detail:
        spec = ENDPOINTS[Kind.FORM_ANSWER]
        form_id = _int_or_none(list_row.get("custom_form_id")) if list_row else None
        if form_id is None:
            form_id = await self.form_ids.get(answer_id)
        if form_id is None:
            list_row = await self._find_recent_row(
                Kind.FORM_ANSWER, answer_id, Kind.FORM_ANSWER.list_statuses, priority
            )
            form_id = _int_or_none(list_row.get("custom_form_id")) if list_row else None
        candidates = [form_id] if form_id is not None else await self._form_ids_from_forms(priority)
        for candidate in candidates:
            path = spec.detail_path.format(form_id=candidate, id=answer_id)
            try:
                obj, read_at = await self._get_detail(
                    path, spec.detail_path, spec.detail_key, answer_id, priority
                )
            except FonzipNotFound:
                if form_id is not None:
                    raise
                continue  # the wrong form: try the next
            await self.form_ids.put_many([(answer_id, candidate)])
            return Detail(
                Kind.FORM_ANSWER, answer_id, obj, list_row, endpoint=path, read_at=read_at
            )
        raise FonzipNotFound(
            f"GET /form/{{form_id}}/answer/{answer_id}",
            f"no form holds answer {answer_id} (searched the last {SEARCH_DAYS_BACK} days of "
            f"form answers and tried {len(candidates)} form(s) of GET /forms)",
            status=404,
        )

    async def _form_ids_from_forms(self, priority: Priority) -> list[int]:
        # The shape of GET /forms is not in the reference: assumed {"form_list": [...]},
        # else the first list of objects with an integer id; paged like the other lists.
        ids: list[int] = []
        for page in range(1, 51):
            params = [("start_page", str(page)), ("how_many", str(HOW_MANY))]
            body = await self._get_json("/forms", "GET /forms", priority=priority, params=params)
            key = "form_list"
            if isinstance(body, dict) and key not in body:
                key = next((k for k, v in body.items() if isinstance(v, list)), key)
            rows = validate_rows("GET /forms", body, key)
            ids.extend(r["id"] for r in rows if r["id"] not in ids)
            if len(rows) < HOW_MANY:
                break
        return ids

    async def _find_recent_row(
        self, kind: Kind, fonzip_id: int, statuses: Iterable[str], priority: Priority
    ) -> dict[str, Any] | None:
        """The list row of ``fonzip_id`` in the last few days' lists, or None."""
        tz = self.settings.tz
        today = self._clock.now().astimezone(tz).date()
        start = dt.datetime.combine(today - dt.timedelta(days=SEARCH_DAYS_BACK), dt.time(), tz)
        end = dt.datetime.combine(today + dt.timedelta(days=2), dt.time(), tz)
        for status in statuses:
            async for page in self.iter_list(kind, status, start, end, priority=priority):
                for row in page.rows:
                    if row["id"] == fonzip_id:
                        return row
        return None

    async def _find_ecard_row(
        self, sale_id: int, obj: dict[str, Any], priority: Priority
    ) -> dict[str, Any] | None:
        user_id = _int_or_none(obj.get("user_id"))
        if user_id is not None:
            path = f"/user/{user_id}/ecard-transactions"
            for page in range(1, 21):
                params = [("start_page", str(page)), ("how_many", str(HOW_MANY))]
                try:
                    body = await self._get_json(
                        path, "GET /user/{id}/ecard-transactions", priority=priority, params=params
                    )
                    rows = validate_rows(f"GET {path}", body, "sale_list")
                except (FonzipNotFound, FonzipBadResponse) as exc:
                    log.warning("ecard_user_list_failed", fonzip_id=sale_id, error=str(exc))
                    break
                for row in rows:
                    if row["id"] == sale_id:
                        return row
                if len(rows) < HOW_MANY:
                    break
        # The payment status tells which list holds the sale: 3 paid, 4 refund, 5 failed.
        paid = PAYMENT_STATUSES.get(_int_or_none(obj.get("transaction__payment_status")) or -1)
        first = list_holding(Kind.ECARD_SALE, paid)
        statuses = Kind.ECARD_SALE.list_statuses
        ordered = ([first] if first else []) + [s for s in statuses if s != first]
        return await self._find_recent_row(Kind.ECARD_SALE, sale_id, ordered, priority)

    async def iter_list(
        self,
        kind: Kind,
        list_status: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        priority: Priority = Priority.BULK,
    ) -> AsyncIterator[ListPage]:
        """The pages of ``kind``'s list for ``list_status`` and the window [start, end).

        ``start`` and ``end`` are aware; they are sent with their own offset. Pages
        hold 100 rows; paging stops when Fonzip's ``total`` is reached, or on a short
        or empty page. Rows are deduplicated by id across pages. Campaigns, whose list
        has no date range, are listed by ``create_date > start`` in ascending order,
        filtered to [start, end), and their ``total`` is None. Form answers' form ids
        are remembered in the FormIdCache on the way.
        """
        if list_status not in kind.list_statuses:
            raise ValueError(
                f"{kind} lists have statuses {', '.join(kind.list_statuses)}, not {list_status!r}"
            )
        if start >= end:
            raise ValueError(f"empty window: start {start} is not before end {end}")
        spec = ENDPOINTS[kind]
        if kind is Kind.CAMPAIGN:
            # '>' excludes the instant itself: ask from one second before the start.
            base = [
                ("create_date", format_query_datetime(start - dt.timedelta(seconds=1))),
                ("create_date_cnd", ">"),
                ("order_by", "create_date"),
            ]
        else:
            base = [
                ("status", list_status),
                ("start_date", format_query_datetime(start)),
                ("end_date", format_query_datetime(end, round_up=True)),
            ]
            if spec.order_by:
                base.append(("order_by", spec.order_by))
            if kind is Kind.TICKET_SALE:
                base.append(("time_selection", "0"))
            if kind is Kind.DONATION or (kind is Kind.ECARD_SALE and list_status == "paid"):
                # The fields a record needs (fonzip.list_rows); e-card refund and failed
                # lists ignore `list` and return their own fixed set.
                base.extend(("list", value) for value in LIST_FIELDS[kind])
        seen: set[int] = set()
        fetched = 0
        page = 1
        tz = self.settings.tz
        while True:
            params = [*base, ("start_page", str(page)), ("how_many", str(HOW_MANY))]
            endpoint = f"GET {spec.list_path}"
            answer = await self._send(
                "GET", spec.list_path, endpoint, priority=priority, params=params
            )
            body = self._parse_json(endpoint, answer)
            rows, total = validate_list(f"{endpoint} (page {page})", body, spec.list_key)
            fetched += len(rows)
            fresh = [r for r in rows if r["id"] not in seen]
            seen.update(r["id"] for r in rows)
            past_end = False
            if kind is Kind.FORM_ANSWER:
                pairs = [(r["id"], f) for r in rows if (f := _int_or_none(r.get("custom_form_id")))]
                if pairs:
                    await self.form_ids.put_many(pairs)
            if kind is Kind.CAMPAIGN:
                created = []
                for r in fresh:
                    try:
                        when = parse_fonzip_datetime(r.get("create_date"), tz)
                    except ValueError:
                        when = None
                    if when is None:
                        raise FonzipBadResponse(
                            f"{endpoint} (page {page})",
                            f"campaign {r['id']} has no readable create_date",
                        )
                    created.append((when, r))
                past_end = any(when >= end for when, _ in created)
                fresh = [r for when, r in created if start <= when < end]
            yield ListPage(
                rows=fresh,
                total=None if kind is Kind.CAMPAIGN else total,
                page=page,
                read_at=answer.sent_at,
            )
            if not rows or len(rows) < HOW_MANY or fetched >= total or past_end:
                return
            if page >= max_pages(total):
                log.warning(
                    "list_paging_stopped", endpoint=endpoint, page=page, total=total, seen=len(seen)
                )
                return
            page += 1

    async def list_window(
        self,
        kind: Kind,
        list_status: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        priority: Priority = Priority.BULK,
    ) -> ListResult:
        """Every row of iter_list's pages, Fonzip's total and the requests made."""
        rows: list[dict[str, Any]] = []
        total: int | None = None
        calls = 0
        async for page in self.iter_list(kind, list_status, start, end, priority=priority):
            rows.extend(page.rows)
            total = page.total
            calls += 1
        return ListResult(rows=rows, total=total, calls=calls)

    # -- webhooks ---------------------------------------------------------------------

    async def list_webhooks(self) -> list[dict[str, Any]]:
        """``GET /webhooks``: the account's webhooks (``id``, ``name``, ``url``)."""
        body = await self._get_json("/webhooks", "GET /webhooks", priority=Priority.LIVE)
        return validate_rows("GET /webhooks", body, "webhook_list")

    async def create_webhook(self, name: str, url: str, auth_token: str) -> dict[str, Any]:
        """Create a webhook for all six events, with authentication; return it from the list.

        Fonzip does not return the new id, so the webhook is found by ``url`` afterwards.
        Names must be unique; letters, digits, spaces, ``-`` and ``_`` only (Fonzip
        answered 500 to parentheses).
        """
        if not _WEBHOOK_NAME.match(name):
            raise ValueError(
                f"webhook name {name!r}: use letters, digits, spaces, '-' and '_' only"
            )
        body = {
            "name": name,
            "url": url,
            "authentication": True,
            "auth_token": auth_token,
            # All six sent explicitly: Fonzip answered 500 when some were left out.
            "events": dict.fromkeys(WEBHOOK_EVENTS, True),
        }
        self._keep_secret(auth_token, echoed=True)
        answer = await self._send(
            "POST",
            "/webhooks",
            "POST /webhooks",
            priority=Priority.LIVE,
            json_body=body,
            idempotent=False,
        )
        self._parse_json("POST /webhooks", answer)
        matches = [w for w in await self.list_webhooks() if w.get("url") == url]
        if not matches:
            raise FonzipBadResponse(
                "POST /webhooks", f"created, but no webhook with url {url!r} is listed"
            )
        return max(matches, key=lambda w: int(w["id"]))

    async def delete_webhook(self, webhook_id: int) -> None:
        """``DELETE /webhook/{id}``."""
        path = f"/webhook/{webhook_id}"
        answer = await self._send("DELETE", path, "DELETE /webhook/{id}", priority=Priority.LIVE)
        self._parse_json(f"DELETE {path}", answer)

    async def test_webhook(self, webhook_id: int) -> None:
        """``PATCH /webhook/{id}``: Fonzip sends a test notification to the webhook's URL."""
        path = f"/webhook/{webhook_id}"
        answer = await self._send(
            "PATCH", path, "PATCH /webhook/{id}", priority=Priority.LIVE, idempotent=False
        )
        self._parse_json(f"PATCH {path}", answer)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, *, truncate: bool) -> bytes | None:
    """At most ``limit`` bytes of the body, read as it streams.

    A larger body (announced by Content-Length, or found while streaming when the
    length is absent or false) is None, unread past the limit; with ``truncate`` its
    first ``limit`` bytes instead. Leaving the rest unread makes aiohttp close the
    connection rather than reuse it.
    """
    announced = resp.content_length
    if announced is not None and announced > limit and not truncate:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        if size + len(chunk) > limit:
            if not truncate:
                return None
            chunks.append(chunk[: limit - size])
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _token_in(body: bytes) -> str | None:
    """The access_token of a /token answer: the one secret that answer may hold."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    token = data.get("access_token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def _inspect(data: object, secrets: Sequence[str]) -> str | None:
    """What makes a parsed answer unacceptable (too deep, echoing a secret), or None."""
    stack: list[tuple[object, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if any(secret in value for secret in secrets):
                return "the answer contains a credential of ours (echoed back)"
        elif isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                stack.append((key, depth + 1))
                stack.append((item, depth + 1))
    return None


def _where(location: str) -> str:
    """Scheme and host of a redirect's target (never its path or query), for messages."""
    try:
        url = URL(location[:2048])
    except ValueError:
        return "an unreadable Location"
    if not url.is_absolute():
        return "another path of the same host"
    return f"{url.scheme}://{url.host}"[:100]


__all__ = [
    "FonzipClient",
    "FonzipError",
    "FormIdCache",
    "MemoryFormIdCache",
]
