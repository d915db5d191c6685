"""TLS for the sinks' connections: the keys, the client context, and what a refusal says.

Every sink that reaches another machine checks the server's certificate chain and
name, TLS 1.2 or later; a private CA is trusted through the sink's ``tls_ca_file``, and
a server that wants a client certificate gets ``tls_cert_file`` and ``tls_key_file``.
A connection TLS refused is a :class:`SinkConfigError` when the sink opens (nothing was
sent; the operator has to change something) and transient afterwards (the records wait).
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pydantic

from fonzipd.sink import SinkConfigError, SinkOptions, TransientSinkError

__all__ = ["ClientTLSOptions", "raise_if_tls_refused", "tls_context", "tls_problem"]


class ClientTLSOptions(SinkOptions):
    """The TLS keys of a sink that connects to a server (``postgresql``, ``mysql``,
    ``nats``, ``http``): whom to trust, and the certificate to show if asked."""

    tls_ca_file: Path | None = None
    """Absolute path of a PEM file of the CA certificates to trust instead of the
    system's: a private CA's, or a self-signed server's own certificate."""
    tls_cert_file: Path | None = None
    """Absolute path of a PEM file of the client certificate (and its chain) for a server
    that asks for one; with ``tls_key_file``."""
    tls_key_file: Path | None = None
    """Absolute path of that certificate's private key (PEM, not encrypted); mode 0600 or
    stricter."""

    @pydantic.field_validator("tls_ca_file", "tls_cert_file", "tls_key_file")
    @classmethod
    def _tls_files_absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value

    @pydantic.model_validator(mode="after")
    def _certificate_with_its_key(self) -> ClientTLSOptions:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set tls_cert_file and tls_key_file together")
        return self

    def tls_files(self) -> list[str]:
        """The names of the ``tls_*_file`` keys that are set."""
        return [
            name
            for name in ("tls_ca_file", "tls_cert_file", "tls_key_file")
            if getattr(self, name) is not None
        ]

    def tls_context(self, where: str) -> ssl.SSLContext:
        """The client context for these keys: see :func:`tls_context`."""
        return tls_context(
            where,
            ca_file=self.tls_ca_file,
            cert_file=self.tls_cert_file,
            key_file=self.tls_key_file,
        )


def tls_context(
    where: str,
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext:
    """A client context: TLS 1.2 or later, the chain checked against the system's CAs or
    those in ``ca_file``, the host name against the certificate; the client certificate
    ``cert_file`` with ``key_file`` shown to a server that asks.

    Raises :class:`SinkConfigError` naming ``<where>.tls_..._file`` when one cannot be used
    (missing, not PEM, a key that others may read or that does not match).
    """
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise SinkConfigError(
            f"{where}.tls_ca_file: cannot load CA certificates from {ca_file}: {_reason(exc)}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None and key_file is not None:
        try:
            mode = key_file.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise SinkConfigError(
                    f"{where}.tls_key_file: {key_file} is readable by others "
                    f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
                )
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise SinkConfigError(
                f"{where}.tls_cert_file: cannot load the client certificate {cert_file} "
                f"with its key {key_file}: {_reason(exc)}"
            ) from None
    return context


def _reason(exc: OSError) -> str:
    return exc.strerror if not isinstance(exc, ssl.SSLError) and exc.strerror else str(exc)


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
    if isinstance(cause, ssl.SSLError) and "ALERT" in (cause.reason or ""):
        return (
            f"TLS: the server refused the handshake ({cause}); if it wants a client "
            "certificate, set tls_cert_file and tls_key_file"
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
