"""TLS on the gRPC port: the server's certificate, and the client CA under mutual TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from server.config import Settings, SettingsError


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{setting}: cannot read {path}: {exc.strerror}") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The port's TLS credentials (None when plaintext was asked for). With a client CA
    every connection must present a certificate that CA issued, or its handshake fails."""
    if settings.plaintext:
        return None
    problem = settings.security_problem()
    if not (settings.tls_cert_file and settings.tls_key_file) and problem:
        raise SettingsError(problem)
    chain = _read(settings.tls_cert_file, "STOCKCORE_TLS_CERT")
    key = _read(settings.tls_key_file, "STOCKCORE_TLS_KEY")
    client_ca = (
        _read(settings.tls_client_ca_file, "STOCKCORE_TLS_CLIENT_CA")
        if settings.tls_client_ca_file
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def certificate_subject(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The verified client certificate's common name (else its whole subject), or None
    when the connection presented no certificate."""
    auth = context.auth_context()
    for key in ("x509_common_name", "x509_subject"):
        for raw in auth.get(key) or ():
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return None
