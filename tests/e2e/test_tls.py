"""TLS on the gRPC port: mutual TLS admits only certificates of the configured client CA,
and the certificate's subject joins the token's in the audit trail."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc as pb_grpc

from devstack.credentials import CLIENT_NAME, DevCredentials
from server.app import App
from server.config import Settings
from tests import callers
from tests.servers import serving
from tests.support import connected


@pytest.fixture
async def mutual(settings: Settings, credentials: DevCredentials) -> AsyncIterator[App]:
    """A server that requires a client certificate issued by the test CA."""
    async with serving(settings.with_overrides(tls_client_ca_file=str(credentials.ca_cert))) as app:
        yield app


def adjust(key: str) -> pb.AdjustStockRequest:
    return pb.AdjustStockRequest(sku="T-1", delta=1, reason="restock", idempotency_key=key)


async def handshake_fails(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pb_grpc.InventoryServiceStub(channel).AdjustStock(adjust("k-refused"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_certificate_of_the_ca_is_admitted_and_named_in_the_audit_trail(
    mutual: App, credentials: DevCredentials, service_token: str, dsn: str
) -> None:
    target = f"127.0.0.1:{mutual.port}"
    async with callers.secure_channel(target, credentials, service_token, mutual=True) as channel:
        await pb_grpc.InventoryServiceStub(channel).AdjustStock(adjust("k-1"), timeout=5)

    async with connected(dsn) as conn:
        recorded = await conn.fetchval("SELECT caller FROM stockcore.movements")
    assert recorded == f"{callers.SUBJECT} via {CLIENT_NAME}"


async def test_a_client_without_a_certificate_fails_the_handshake(
    mutual: App, credentials: DevCredentials, service_token: str
) -> None:
    target = f"127.0.0.1:{mutual.port}"
    async with callers.secure_channel(target, credentials, service_token) as channel:
        await handshake_fails(channel)


async def test_a_client_certificate_of_another_ca_fails_the_handshake(
    mutual: App, credentials: DevCredentials, service_token: str, tmp_path: Path
) -> None:
    stranger = DevCredentials(tmp_path / "other-ca").ensure()
    tls = grpc.ssl_channel_credentials(
        root_certificates=credentials.ca_cert.read_bytes(),
        private_key=stranger.client_key.read_bytes(),
        certificate_chain=stranger.client_cert.read_bytes(),
    )
    tls = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(service_token))
    async with grpc.aio.secure_channel(f"127.0.0.1:{mutual.port}", tls) as channel:
        await handshake_fails(channel)


async def test_a_plaintext_client_cannot_talk_to_a_tls_port(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        await handshake_fails(channel)


async def test_a_client_that_trusts_another_ca_refuses_the_server(
    app: App, service_token: str, tmp_path: Path
) -> None:
    stranger = DevCredentials(tmp_path / "other-ca").ensure()
    async with callers.secure_channel(f"127.0.0.1:{app.port}", stranger, service_token) as channel:
        await handshake_fails(channel)


def test_serving_without_tls_or_tokens_must_be_asked_for(settings: Settings) -> None:
    assert settings.with_overrides(tls_cert_file="").security_problem() is not None
    assert settings.with_overrides(auth_jwks_file="").security_problem() is not None
    unsecured = settings.with_overrides(
        tls_cert_file="", plaintext=True, auth_jwks_file="", auth_disabled=True
    )
    assert unsecured.security_problem() is None
