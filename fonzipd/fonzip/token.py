"""The Fonzip access token: where it is kept, and the lifecycle around one-live-token-per-key.

Fonzip grants one live token per API key and answers ``409 already created`` to every
``POST /token`` while it lives, without handing it out again. So the token and its
expiry are stored outside the process (a 0600 file or the state database) and every
fonzipd process of the account reuses it until it expires; only then is a new one
requested. There is no early renewal: asking before expiry can only get a 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import structlog

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.fonzip.errors import FonzipTokenLocked, FonzipUnavailable
from fonzipd.private_files import make_private_dir, open_private

log = structlog.get_logger(__name__)

TOKEN_ENDPOINT = "POST /token"
DEFAULT_LIFETIME = 3600.0
"""Seconds a token lives when Fonzip's ``expires_in`` is missing (its documented value)."""

LOCK_GUIDANCE = (
    "to end this early, set FONZIPD_FONZIP__ACCESS_TOKEN to the live token, "
    "or create a second API key in Fonzip (Settings > Advanced > Fonzip API) and use it"
)


@dataclasses.dataclass(frozen=True, slots=True)
class StoredToken:
    """An access token and the instant it expires (aware, UTC)."""

    access_token: str = dataclasses.field(repr=False)
    expires_at: dt.datetime

    def __post_init__(self) -> None:
        if not self.access_token:
            raise ValueError("access_token must not be empty")
        if self.expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")


class TokenStore(Protocol):
    """Where tokens outlive the process, shared by every fonzipd process of the account."""

    async def load(self, key: str) -> StoredToken | None:
        """The token stored under ``key``, expired or not; None when there is none."""
        ...

    async def save(self, key: str, token: StoredToken) -> None:
        """Store ``token`` under ``key``, replacing any other."""
        ...

    async def discard(self, key: str, access_token: str) -> None:
        """Forget the token under ``key`` only if it is still ``access_token``."""
        ...


def token_key(base_url: str, client_id: str) -> str:
    """The store key of an account: sha256 of ``"<base_url> <client_id>"``, 32 hex digits.

    The secret never enters the key or the store.
    """
    return hashlib.sha256(f"{base_url.rstrip('/')} {client_id}".encode()).hexdigest()[:32]


class MemoryTokenStore:
    """A TokenStore that lives as long as the object (tests, one-shot commands)."""

    def __init__(self) -> None:
        self.tokens: dict[str, StoredToken] = {}

    async def load(self, key: str) -> StoredToken | None:
        return self.tokens.get(key)

    async def save(self, key: str, token: StoredToken) -> None:
        self.tokens[key] = token

    async def discard(self, key: str, access_token: str) -> None:
        current = self.tokens.get(key)
        if current is not None and current.access_token == access_token:
            del self.tokens[key]


class FileTokenStore:
    """A TokenStore in one JSON file (mode 0600, its directory created 0700).

    Writes replace the file atomically under an advisory lock (``<path>.lock``), so the
    daemon and the CLI can share it. An unreadable or corrupt file reads as empty (and
    is logged); the next save replaces it. Expired tokens are pruned on save.
    """

    def __init__(self, path: Path, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.path = Path(path)
        self._clock = clock

    async def load(self, key: str) -> StoredToken | None:
        return await asyncio.to_thread(self._load, key)

    async def save(self, key: str, token: StoredToken) -> None:
        await asyncio.to_thread(self._save, key, token)

    async def discard(self, key: str, access_token: str) -> None:
        await asyncio.to_thread(self._discard, key, access_token)

    def _load(self, key: str) -> StoredToken | None:
        with self._locked():
            return self._read().get(key)

    def _save(self, key: str, token: StoredToken) -> None:
        with self._locked():
            tokens = self._read()
            now = self._clock.now()
            tokens = {k: t for k, t in tokens.items() if t.expires_at > now}
            tokens[key] = token
            self._write(tokens)

    def _discard(self, key: str, access_token: str) -> None:
        with self._locked():
            tokens = self._read()
            current = tokens.get(key)
            if current is not None and current.access_token == access_token:
                del tokens[key]
                self._write(tokens)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_dir()
        fd, _ = open_private(self.path.with_name(self.path.name + ".lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _ensure_dir(self) -> None:
        make_private_dir(self.path.parent)

    def _read(self) -> dict[str, StoredToken]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("token_store_unreadable", path=str(self.path), error=str(exc))
            return {}
        try:
            data: Any = json.loads(raw)
            return {
                str(k): StoredToken(
                    access_token=str(v["access_token"]),
                    expires_at=dt.datetime.fromisoformat(v["expires_at"]),
                )
                for k, v in data["tokens"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "token_store_corrupt",
                path=str(self.path),
                error=f"{type(exc).__name__}: {exc}",
                consequence="read as empty; replaced on the next save",
            )
            return {}

    def _write(self, tokens: dict[str, StoredToken]) -> None:
        payload = {
            "version": 1,
            "tokens": {
                k: {"access_token": t.access_token, "expires_at": t.expires_at.isoformat()}
                for k, t in tokens.items()
            },
        }
        # mkstemp creates the file 0600 from the start: the token is never world-readable.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


Issuer = Callable[[], Awaitable[StoredToken | None]]
"""Requests a new token from Fonzip; returns None when Fonzip answers 409 already created."""


class TokenManager:
    """Hands out the access token: memory, then the store, then ``POST /token``.

    - A token counts as expired ``skew`` seconds before its ``expires_at``, for clock
      drift and the request in flight; until then it is used as is.
    - Concurrent callers share one token request.
    - On 409 the store is read again (another fonzipd process may just have saved the
      live token). If the last known token expired moments ago, Fonzip's clock is
      behind: retry in a few seconds. Otherwise the live token is lost: log
      ``token_locked`` once, with how to end it early, and poll every
      ``poll_interval`` seconds until the old token must have expired.
    - With a fixed token (``fixed_token``) none of this happens.
    """

    def __init__(
        self,
        *,
        key: str,
        store: TokenStore,
        issue: Issuer,
        clock: Clock = SYSTEM_CLOCK,
        fixed_token: str | None = None,
        skew: float = 10.0,
        poll_interval: float = 30.0,
        conflict_retry: float = 5.0,
        lifetime: float = DEFAULT_LIFETIME,
    ) -> None:
        self.key = key
        self._store = store
        self._issue = issue
        self._clock = clock
        self._fixed = fixed_token
        self._skew = dt.timedelta(seconds=skew)
        self._poll_interval = poll_interval
        self._conflict_retry = conflict_retry
        self._lifetime = lifetime
        self._memory: StoredToken | None = None
        self._memory_until: dt.datetime | None = None
        self._last_expiry: dt.datetime | None = None
        self._inflight: asyncio.Task[str] | None = None
        self._rejected: str | None = None
        """The last token Fonzip answered 401 to: never kept on a 409."""
        self.locked = False
        """True while fonzipd waits for a token it cannot get (409, nothing stored)."""
        self.issued = 0
        """Tokens obtained from ``POST /token`` by this process."""

    @property
    def fixed(self) -> bool:
        """True when a fixed access token replaces the token flow."""
        return self._fixed is not None

    def describe(self) -> str:
        """The token's state in words, for health checks (never the token itself)."""
        if self._fixed is not None:
            return "fixed access token"
        if self.locked:
            return "locked: Fonzip holds a live token fonzipd lacks (409); waiting for it to expire"
        if self._memory is not None:
            return f"valid until {self._memory.expires_at.isoformat()}"
        return "not requested yet"

    async def get(self, *, wait: float | None = None) -> str:
        """The access token to send.

        ``wait`` bounds, in seconds of the clock, how long a caller waits for a token
        that Fonzip's 409 withholds: past it, FonzipTokenLocked. Without it the caller
        waits until the token can be had. Bad credentials raise FonzipUnauthorized.
        """
        if self._fixed is not None:
            return self._fixed
        memory = self._memory
        if memory is not None and self._memory_until and self._clock.now() < self._memory_until:
            return memory.access_token
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._obtain())
            self._inflight.add_done_callback(_retrieve)
        task = self._inflight
        if wait is None:
            return await asyncio.shield(task)
        timer = asyncio.ensure_future(self._clock.sleep(wait))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if task.done():
            return task.result()
        if self.locked:
            raise FonzipTokenLocked(
                TOKEN_ENDPOINT,
                f"Fonzip keeps a live token for this API key that fonzipd does not have, "
                f"and it did not expire within {wait:g} s; {LOCK_GUIDANCE}",
                status=409,
            )
        raise FonzipUnavailable(TOKEN_ENDPOINT, f"no access token within {wait:g} s")

    async def invalidate(self, access_token: str) -> None:
        """Drop ``access_token`` (Fonzip answered 401 with it), here and in the store."""
        if self._fixed is not None:
            return
        self._rejected = access_token
        if self._memory is not None and self._memory.access_token == access_token:
            self._last_expiry = self._memory.expires_at
            self._memory = self._memory_until = None
        try:
            await self._store.discard(self.key, access_token)
        except Exception as exc:
            log.error("token_store_failed", operation="discard", error=repr(exc))
        log.info("token_dropped", reason="401 from Fonzip")

    async def aclose(self) -> None:
        """Stop a token request still in flight (at shutdown)."""
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._inflight

    def _usable(self, token: StoredToken) -> bool:
        return self._clock.now() < token.expires_at - self._skew

    def _remember(self, token: StoredToken, *, to_the_end: bool = False) -> None:
        self._memory = token
        # After a 409 the stored token is used to its very end: asking again before
        # then could only get another 409.
        self._memory_until = token.expires_at if to_the_end else token.expires_at - self._skew

    async def _load(self) -> StoredToken | None:
        try:
            return await self._store.load(self.key)
        except Exception as exc:
            log.error("token_store_failed", operation="load", error=repr(exc))
            return None

    async def _obtain(self) -> str:
        held = self._memory
        if held is not None:
            self._last_expiry = held.expires_at
        stored = await self._load()
        if stored is not None and self._usable(stored):
            self._remember(stored)
            log.info("token_reused", expires_at=stored.expires_at.isoformat(), source="store")
            return stored.access_token
        if stored is not None:
            self._last_expiry = max(self._last_expiry or stored.expires_at, stored.expires_at)
        logged_lock = logged_overdue = False
        locked_since: float | None = None
        try:
            while True:
                token = await self._issue()
                if token is not None:
                    self.issued += 1
                    self._remember(token)
                    try:
                        await self._store.save(self.key, token)
                    except Exception as exc:
                        # The token still works; but a restart would meet a 409 lock.
                        log.error("token_store_failed", operation="save", error=repr(exc))
                    log.info(
                        "token_fetched",
                        expires_at=token.expires_at.isoformat(),
                        after_lock=logged_lock,
                    )
                    return token.access_token
                stored = await self._load()
                now = self._clock.now()
                if stored is not None and now < stored.expires_at:
                    # Another process saved the live token; its last seconds are still good.
                    self._remember(stored, to_the_end=True)
                    log.info("token_reused", expires_at=stored.expires_at.isoformat(), source="409")
                    return stored.access_token
                held = held or stored
                if held is not None and held.access_token != self._rejected:
                    # Fonzip says a token of ours is alive, and the one we hold expired
                    # only by our clock (behind Fonzip's, or stepped forward): keep using
                    # it until Fonzip answers 401, rather than wait out its lifetime.
                    self._memory = held
                    self._memory_until = now + dt.timedelta(seconds=self._lifetime)
                    log.info("token_kept", reason="409: the held token is still alive at Fonzip")
                    return held.access_token
                last = self._last_expiry
                if last is not None and abs((now - last).total_seconds()) < 120:
                    # Our token just expired by our clock, not yet by Fonzip's.
                    log.debug("token_renewal_refused", retry_in=self._conflict_retry)
                    await self._clock.sleep(self._conflict_retry)
                    continue
                self.locked = True
                mono = self._clock.monotonic()
                if locked_since is None:
                    locked_since = mono
                if not logged_lock:
                    logged_lock = True
                    log.warning(
                        "token_locked",
                        problem=(
                            "Fonzip answered 409 'already created': a token for this API key "
                            "is alive but fonzipd does not have it (lost, or used by another "
                            "program). Calls to Fonzip wait until it expires, at most about "
                            f"{self._lifetime / 60:.0f} minutes"
                        ),
                        retry_every=self._poll_interval,
                        end_early=LOCK_GUIDANCE,
                    )
                elif not logged_overdue and mono - locked_since > self._lifetime + 120:
                    logged_overdue = True
                    log.warning(
                        "token_lock_outlived_lifetime",
                        waited=round(mono - locked_since),
                        problem="Fonzip still refuses a new token after its documented lifetime",
                        end_early=LOCK_GUIDANCE,
                    )
                await self._clock.sleep(self._poll_interval)
        finally:
            self.locked = False


def _retrieve(task: asyncio.Task[str]) -> None:
    # Every waiter may have given up; the outcome must not surface as "never retrieved".
    if not task.cancelled():
        task.exception()
