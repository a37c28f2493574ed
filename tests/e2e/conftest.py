"""An in-process server on a free loopback port, and a channel to it: TLS with the test
CA, and a token with every service scope sent on every call, as a real caller would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from stockcore.v1 import inventory_pb2_grpc, orders_pb2_grpc

from clients.credentials import Credentials
from clients.tokens import load_signing_key
from devstack import page_session
from devstack.credentials import DevCredentials
from devstack.payments import SimulatedPayments
from gateway.config import GatewaySettings
from gateway.envoy import Gateway
from payments.endpoint import RunningReceiver
from runtime.processes import free_port
from server.app import App
from server.config import Settings
from tests import callers
from tests.e2e.fulfilment_stack import Partners, running_partners
from tests.e2e.payments_stack import (
    PAYER,
    Provider,
    new_secret,
    receiver_settings,
    running_provider,
    running_receiver,
)
from tests.servers import serving


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    """A started server; stopped after the test."""
    async with serving(settings) as started:
        yield started


@pytest.fixture
async def partners() -> AsyncIterator[Partners]:
    """The simulated warehouse and carriers at test speed; stopped after the test."""
    async with running_partners() as started:
        yield started


@pytest.fixture
async def channel(
    app: App, credentials: DevCredentials, service_token: str
) -> AsyncIterator[grpc.aio.Channel]:
    """A TLS channel to the server whose calls carry the service token."""
    async with callers.secure_channel(f"127.0.0.1:{app.port}", credentials, service_token) as ch:
        yield ch


@pytest.fixture
def caller_credentials(credentials: DevCredentials, service_token: str) -> Credentials:
    """What the typed clients present: the test CA and the service token."""
    return callers.client_credentials(credentials, service_token)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> inventory_pb2_grpc.InventoryServiceStub:
    """The inventory stub."""
    return inventory_pb2_grpc.InventoryServiceStub(channel)


@pytest.fixture
def orders(channel: grpc.aio.Channel) -> orders_pb2_grpc.OrderServiceStub:
    """The order stub."""
    return orders_pb2_grpc.OrderServiceStub(channel)


@pytest.fixture
def dsn(settings: Settings) -> str:
    """The test database, for checks that read it directly."""
    assert settings.pg_dsn is not None
    return settings.pg_dsn


@pytest.fixture
def credentials_for(credentials: DevCredentials) -> Callable[..., Credentials]:
    """What a typed client presents as `subject` (every service scope unless `scopes=`;
    keyword arguments go to tests.callers.token)."""

    def make(subject: str, **claims: object) -> Credentials:
        return callers.client_credentials(
            credentials, callers.token(credentials, subject, **claims)
        )  # type: ignore[arg-type]

    return make


STOREFRONT = "https://shop.example.com"


@pytest.fixture
def gateway_settings(
    settings: Settings, credentials: DevCredentials, tmp_path: Path
) -> GatewaySettings:
    """Settings for a gateway on a free loopback port, reaching the test server over TLS
    (trusting the test CA): one storefront origin, a 16 KiB body limit, AdjustStock given
    0.5 s, the access log in a file."""
    return GatewaySettings(
        grpc_host=settings.grpc_host,
        grpc_port=settings.grpc_port,
        plaintext=settings.plaintext,
        log_json=settings.log_json,
        gateway_access_log=str(tmp_path / "access.log"),
        gateway_port=free_port(),
        gateway_stats_port=0,
        gateway_origins=(STOREFRONT,),
        gateway_max_request_bytes=16_384,
        gateway_timeouts={"AdjustStock": 0.5},
        gateway_upstream_ca_file=str(credentials.ca_cert),
    ).validate()


@pytest.fixture
def secret(tmp_path: Path) -> tuple[bytes, Path]:
    """The signing secret shared by the provider and the receiver, and its file."""
    value = new_secret()
    path = tmp_path / "webhook-secret"
    path.write_bytes(value + b"\n")
    path.chmod(0o600)
    return value, path


@pytest.fixture
def payer(credentials_for: Callable[..., Credentials]) -> Credentials:
    """What the receiver presents: a token that may confirm payments and nothing else."""
    return credentials_for(PAYER, scopes=("orders:pay",))


@pytest.fixture
async def receiver(
    app: App, settings: Settings, secret: tuple[bytes, Path], payer: Credentials
) -> AsyncIterator[RunningReceiver]:
    """stockcore's webhook receiver in front of the test server."""
    assert settings.pg_dsn is not None
    config = receiver_settings(settings.pg_dsn, app.port, secret[1])
    async with running_receiver(config, payer) as started:
        yield started


@pytest.fixture
async def provider(
    receiver: RunningReceiver, secret: tuple[bytes, Path]
) -> AsyncIterator[Provider]:
    """The provider, sending its webhooks to the receiver."""
    async with running_provider(receiver.url, secret[0]) as started:
        yield started


PAGE_TOKEN_TTL_S = 300.0


@pytest.fixture
def page_sessions(
    app: App, settings: Settings, credentials: DevCredentials, provider: Provider
) -> Iterator[Path]:
    """The checkout page's session endpoint as `make run` starts it (devstack/page_session.py),
    paying through the simulated provider and stockcore's webhook receiver, for the test
    server and signed by the test key, its tokens valid for PAGE_TOKEN_TTL_S; its Unix
    socket is yielded."""
    key = load_signing_key(credentials.signing_key)
    sessions = page_session.PageSessions(key, settings.auth_audience, PAGE_TOKEN_TTL_S)
    tls = callers.client_credentials(credentials, None)
    # A confirmation later than 2 s is answered as pending (make run waits 10 s).
    payments = SimulatedPayments(
        f"127.0.0.1:{app.port}", tls, key, settings.auth_audience, provider.url, confirm_wait_s=2.0
    )
    with page_session.serving(sessions, payments) as socket:
        yield socket


@pytest.fixture
def gateway(
    app: App, gateway_settings: GatewaySettings, page_sessions: Path, tmp_path: Path
) -> Iterator[Gateway]:
    """Envoy in front of the test server, the checkout page's sessions behind it; stopped
    after the test. Started from this (the main) thread: Envoy dies with the thread that
    started it."""
    with_sessions = replace(gateway_settings, gateway_session_socket=str(page_sessions))
    with Gateway(with_sessions, tmp_path / "gateway", grpc_port=app.port) as gw:
        yield gw


@dataclass(frozen=True)
class GatewayCaller:
    """Calls the gateway over HTTP as a storefront back end does: `token` is the bearer
    of every request that names no Authorization of its own (None: no token at all)."""

    gateway: Gateway
    token: str | None

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return self.gateway.url

    @property
    def settings(self) -> GatewaySettings:
        """The gateway's settings."""
        return self.gateway.settings

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request (blocking; run it in a thread beside an in-process server)."""
        kwargs.setdefault("timeout", 10)
        headers = dict(kwargs.pop("headers", None) or {})
        if self.token is not None and "authorization" not in {h.lower() for h in headers}:
            headers["Authorization"] = f"Bearer {self.token}"
        return requests.request(method, self.url + path, headers=headers, **kwargs)

    def with_token(self, token: str | None) -> GatewayCaller:
        """The same gateway, called with another token (or none)."""
        return replace(self, token=token)

    def page_session(self, cookies: requests.cookies.RequestsCookieJar | None = None) -> Any:
        """What the checkout page gets from POST /session (JSON), as the page asks: from
        its own origin, with the session cookie in `cookies` (kept there when set)."""
        jar = requests.cookies.RequestsCookieJar() if cookies is None else cookies
        reply = requests.post(
            self.url + "/session",
            headers={"Origin": self.url, "Sec-Fetch-Site": "same-origin"},
            cookies=jar,
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        jar.update(reply.cookies)
        return reply.json()


@pytest.fixture
def api(gateway: Gateway, service_token: str) -> GatewayCaller:
    """The gateway, called with the service token."""
    return GatewayCaller(gateway, service_token)
