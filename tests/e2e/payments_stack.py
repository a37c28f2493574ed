"""A payments test stack: the simulated payment provider as a real HTTP server on a free
loopback port, at test speed, and a caller of its API and checks; a stand-in webhook
endpoint for tests of the provider alone; stockcore's webhook receiver in this process
(payments/endpoint.py) for tests of the whole way."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from clients.credentials import Credentials
from payments.config import PaymentsSettings
from payments.endpoint import RunningReceiver
from payments.endpoint import start as start_receiver
from payments.signature import SIGNATURE_HEADER, parse_header, verify
from simulators.payments import Terms, payments_app
from simulators.run import RunningSimulator, start
from simulators.webhooks import WebhookEndpoint

# Fees as the provider's defaults; money available 0.3 s after capture, refunds settled
# after 0.05 s; webhooks retried after 0.05 s, doubling up to 0.2 s.
TERMS = Terms(settle_s=0.3, refund_settle_s=0.05)
# The subject of the receiver's token, which an order's history records as the payer.
PAYER = "payment-webhooks"
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 0.2


def new_secret() -> bytes:
    """A signing secret as a provider issues one."""
    return f"whsec_{secrets.token_hex(24)}".encode()


@dataclass
class Provider:
    """The provider on its port, and calls of its API and check endpoints."""

    sim: RunningSimulator

    @property
    def url(self) -> str:
        """Its base URL."""
        return self.sim.url

    async def call(
        self, method: str, path: str, *, expect: int | None = 200, **kwargs: Any
    ) -> tuple[int, Any]:
        """One request: (status, JSON answer); fails unless the status is `expect` (None:
        any)."""
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.url + path, **kwargs) as reply,
        ):
            body = await reply.json()
            assert expect is None or reply.status == expect, (reply.status, body)
            return reply.status, body

    async def charge(
        self,
        order_id: str,
        amount: int,
        currency: str = "EUR",
        *,
        customer_id: str = "cust-1",
        key: str | None = None,
        expect: int | None = 200,
    ) -> dict[str, Any]:
        """POST /v1/charges: the charge."""
        headers = {"Idempotency-Key": key} if key else {}
        asked = {"order_id": order_id, "customer_id": customer_id}
        asked |= {"amount": amount, "currency": currency}
        _, charge = await self.call(
            "POST", "/v1/charges", json=asked, headers=headers, expect=expect
        )
        return dict(charge)

    async def refund(
        self, charge_id: str, key: str, amount: int | None = None, *, expect: int = 200
    ) -> dict[str, Any]:
        """POST /v1/refunds: the refund."""
        asked: dict[str, Any] = {"charge": charge_id}
        if amount is not None:
            asked["amount"] = amount
        _, refund = await self.call(
            "POST", "/v1/refunds", json=asked, headers={"Idempotency-Key": key}, expect=expect
        )
        return dict(refund)

    async def feed(self, after: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
        """Every balance transaction of the feed after `after`, read page by page of
        `limit`, and the cursor to read on from."""
        found: list[dict[str, Any]] = []
        while True:
            _, page = await self.call(
                "GET", f"/v1/balance_transactions?after={after}&limit={limit}"
            )
            found += page["data"]
            after = int(page["next_cursor"])
            if not page["has_more"]:
                return found, after

    async def faults(self, **knobs: Any) -> dict[str, Any]:
        """PUT /_faults."""
        _, view = await self.call("PUT", "/_faults", json=knobs)
        return dict(view)

    async def injected(self, kind: str | None = None) -> list[dict[str, Any]]:
        """GET /_faults/injected."""
        query = f"?kind={kind}" if kind else ""
        _, found = await self.call("GET", f"/_faults/injected{query}")
        return list(found["injected"])

    async def deliveries(self) -> dict[str, dict[str, Any]]:
        """GET /_webhooks: every event's deliveries, by event id."""
        _, found = await self.call("GET", "/_webhooks")
        return {e["event_id"]: e for e in found["events"]}

    async def events_of(self, object_id: str) -> list[dict[str, Any]]:
        """The deliveries of the events about one charge, refund or payout."""
        return [e for e in (await self.deliveries()).values() if e["object_id"] == object_id]


@asynccontextmanager
async def running_provider(
    webhook_url: str, secret: bytes, terms: Terms = TERMS
) -> AsyncIterator[Provider]:
    """The provider sending its webhooks to `webhook_url`, stopped when the block ends."""
    endpoint = WebhookEndpoint(
        webhook_url,
        secret,
        retry_initial_s=RETRY_INITIAL_S,
        retry_max_s=RETRY_MAX_S,
        timeout_s=5.0,
    )
    sim = await start(payments_app(endpoint, terms))
    try:
        yield Provider(sim)
    finally:
        await sim.stop()


@dataclass(frozen=True)
class Delivery:
    """One request the stand-in endpoint got: the event, its signed timestamp, and the
    status it answered."""

    event: dict[str, Any]
    timestamp: int
    status: int


@dataclass
class StandInEndpoint:
    """A webhook endpoint for tests of the provider alone: it checks every signature with
    the receiver's own check, records every delivery, and answers the statuses of
    `failures` first (one per request), then 200."""

    secret: bytes
    failures: list[int] = field(default_factory=list)
    got: list[Delivery] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        """A delivery."""
        body = await request.read()
        header = request.headers.get(SIGNATURE_HEADER)
        verify(header, body, [self.secret], now=parse_header(header).timestamp, tolerance_s=1)
        status = self.failures.pop(0) if self.failures else 200
        self.got.append(Delivery(json.loads(body), parse_header(header).timestamp, status))
        return web.json_response({}, status=status)

    def event_ids(self, acknowledged_only: bool = False) -> list[str]:
        """The event id of every delivery, in the order they came."""
        return [d.event["id"] for d in self.got if not acknowledged_only or d.status == 200]


@asynccontextmanager
async def stand_in_endpoint(secret: bytes) -> AsyncIterator[tuple[StandInEndpoint, str]]:
    """A stand-in endpoint on a free port, and its URL."""
    endpoint = StandInEndpoint(secret)
    app = web.Application()
    app.router.add_post("/hook", endpoint.handle)
    running = await start(app)
    try:
        yield endpoint, f"{running.url}/hook"
    finally:
        await running.stop()


def receiver_settings(
    pg_dsn: str, order_port: int, secret_file: Path, port: int = 0, **changes: Any
) -> PaymentsSettings:
    """Settings for a receiver in this process, on `port` (0: a free one), calling the
    order server on `order_port`."""
    return PaymentsSettings(
        pg_dsn=pg_dsn,
        payments_target=f"127.0.0.1:{order_port}",
        webhook_port=port,
        webhook_secret_file=str(secret_file),
        log_json=False,
        **changes,
    ).validate()


@asynccontextmanager
async def running_receiver(
    settings: PaymentsSettings, credentials: Credentials
) -> AsyncIterator[RunningReceiver]:
    """stockcore's webhook receiver, stopped when the block ends."""
    receiver = await start_receiver(settings, credentials)
    try:
        yield receiver
    finally:
        await receiver.stop()
