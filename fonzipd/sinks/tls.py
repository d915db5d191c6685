"""TLS for the sinks' connections: the client context, and what a refusal says.

Every sink that reaches another machine checks the server's certificate chain and
name, TLS 1.2 or later; a private CA is trusted through the sink's ``tls_ca_file``.
A connection TLS refused is a :class:`SinkConfigError` when the sink opens (nothing was
sent; the operator has to change something) and transient afterwards (the records wait).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from fonzipd.sink import SinkConfigError, TransientSinkError

__all__ = ["raise_if_tls_refused", "tls_context", "tls_problem"]


def tls_context(ca_file: Path | None, where: str) -> ssl.SSLContext:
    """A client context: TLS 1.2 or later, the chain checked against the system's CAs or
    those in ``ca_file``, the host name against the certificate.

    Raises :class:`SinkConfigError` naming ``<where>.tls_ca_file`` when it cannot be used.
    """
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SinkConfigError(
            f"{where}.tls_ca_file: cannot load CA certificates from {ca_file}: {reason}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_problem(exc: BaseException, tls: ssl.SSLContext | None) -> str | None:
    """What TLS refused in this failure to connect, or None when TLS was not the cause."""
    if tls is None:
        return None
    cause = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"TLS: the server's certificate did not check out ({cause.verify_message}); "
            "trust the CA that signed it with tls_ca_file, and connect by a name it holds"
        )
    # asyncpg says this when the server answers its TLS request with "N".
    if isinstance(cause, ssl.SSLError) or "rejected SSL upgrade" in str(exc):
        return (
            f"TLS: the server did not start TLS ({cause if cause else exc}); turn TLS on in "
            'the server, or set tls = "off" if the network to it is trusted'
        )
    return None


def raise_if_tls_refused(
    exc: BaseException, tls: ssl.SSLContext | None, server: str, *, at_open: bool
) -> None:
    """Raise what ``exc`` is if TLS refused the connection (see :func:`tls_problem`):
    :class:`SinkConfigError` at ``open``, :class:`TransientSinkError` afterwards, each
    saying ``<server>: TLS: ...``. Return if TLS was not the cause."""
    refused = tls_problem(exc, tls)
    if refused is None:
        return
    if at_open:
        raise SinkConfigError(f"{server}: {refused}") from None
    raise TransientSinkError(f"{server}: {refused}") from exc
