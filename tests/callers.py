"""Callers of the test servers, as real callers connect: TLS with the test CA and a
bearer token signed by the test signing key (devstack/credentials.py made both); and
stockctl, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import grpc

from clients.credentials import Credentials
from clients.tokens import SERVICE_SCOPES, issue_token, load_signing_key
from devstack.credentials import DevCredentials

SUBJECT = "tests"
"""The subject of the tests' service token: what the audit trail records for them."""


def token(
    credentials: DevCredentials,
    subject: str = SUBJECT,
    scopes: Iterable[str] = SERVICE_SCOPES,
    *,
    customer_id: str | None = None,
    ttl_s: float = 3600.0,
    now: float | None = None,
) -> str:
    """A token signed by the test key."""
    return issue_token(
        load_signing_key(credentials.signing_key),
        subject,
        scopes,
        ttl_s=ttl_s,
        customer_id=customer_id,
        now=now,
    )


def client_credentials(
    credentials: DevCredentials, bearer: str | None, *, mutual: bool = False
) -> Credentials:
    """What a typed client presents: the test CA's trust, `bearer`, and under mutual TLS
    the test client certificate."""
    return Credentials.from_files(
        token=bearer,
        ca_file=credentials.ca_cert,
        cert_file=credentials.client_cert if mutual else None,
        key_file=credentials.client_key if mutual else None,
    )


def secure_channel(
    target: str,
    credentials: DevCredentials,
    bearer: str | None,
    *,
    mutual: bool = False,
    options: Iterable[tuple[str, int | str]] = (),
) -> grpc.aio.Channel:
    """A TLS channel that sends `bearer` on every call as call credentials, the way a
    generated stub's caller would."""
    tls = client_credentials(credentials, None, mutual=mutual).channel_credentials()
    assert tls is not None
    if bearer is not None:
        tls = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(bearer))
    return grpc.aio.secure_channel(target, tls, options=list(options))


STOCKCTL = Path(sys.executable).with_name("stockctl")
"""The stockctl program pyproject.toml installs beside this Python, as a user runs it."""


def user_environment(**variables: str) -> dict[str, str]:
    """A user's environment for stockctl: this process's without its STOCKCORE_* variables
    (the session's CA and token are the suite's, not the user's) and without gRPC's log
    settings, plus `variables`."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("STOCKCORE_", "GRPC_"))
    }
    return kept | variables


def stockctl(
    args: Sequence[str], *, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run stockctl with `args` from the folder `cwd` (blocking: run it in a thread beside
    an in-process server)."""
    return subprocess.run(
        [str(STOCKCTL), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
