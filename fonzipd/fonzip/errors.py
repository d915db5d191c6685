"""The typed errors of the Fonzip client: what failed, on which endpoint, and Fonzip's words."""

from __future__ import annotations


class FonzipError(Exception):
    """A call to Fonzip failed.

    ``endpoint`` is the method and path that failed (``GET /donation/5``), ``status``
    the HTTP status when there was a response, ``error_text`` Fonzip's ``error`` (or
    ``error_description``) text when it gave one.
    """

    def __init__(
        self,
        endpoint: str,
        message: str,
        *,
        status: int | None = None,
        error_text: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.status = status
        self.error_text = error_text
        self.reason = message
        details = []
        if status is not None:
            details.append(f"HTTP {status}")
        if error_text:
            details.append(f"Fonzip said: {error_text!r}")
        text = f"{endpoint}: {message}"
        super().__init__(f"{text} ({', '.join(details)})" if details else text)


class FonzipNotFound(FonzipError):
    """404: the object does not exist (or no longer: Fonzip has no deletion webhook)."""


class FonzipUnauthorized(FonzipError):
    """Bad credentials on /token, a 401 that a fresh token did not cure, or a 403."""


class FonzipRateLimited(FonzipError):
    """429 still returned after every retry."""


class FonzipUnavailable(FonzipError):
    """5xx, network errors or timeouts after every retry.

    ``blocked`` is true for Cloudflare's 520/521/523, which Fonzip documents as "your
    IP is blocked at our origin: contact us with it".
    """

    def __init__(
        self,
        endpoint: str,
        message: str,
        *,
        status: int | None = None,
        error_text: str | None = None,
        blocked: bool = False,
    ) -> None:
        super().__init__(endpoint, message, status=status, error_text=error_text)
        self.blocked = blocked


class FonzipBadResponse(FonzipError):
    """A 2xx answer that is not JSON, lacks a key or has a value of the wrong type."""


class FonzipRequestError(FonzipError):
    """Another 4xx (400, 402, 405...): the request itself is wrong; not retried."""


class FonzipTokenLocked(FonzipError):
    """/token answered 409 and no stored token exists, and the caller's wait deadline passed.

    Fonzip keeps one live token per API key and does not hand it out again. It ends
    when the old token expires (about an hour), or earlier with a fixed token in
    FONZIPD_FONZIP__ACCESS_TOKEN or a second API key.
    """
