"""The receiver's HTTP listener: it adapts requests to payments/receiver.py and decides
nothing itself.

    POST /webhooks/payments   a delivery of the provider (Stockcore-Signature header)
                              -> 200 {event_id, outcome, duplicate}; 401, 400, 409 or 503
                              with {error}; 413 past the body limit
    GET  /healthz             200 while it serves
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import start_http_server

from clients.credentials import Credentials
from clients.inventory import RetryPolicy
from clients.orders import OrderClient
from payments.config import PaymentsSettings
from payments.events import Outcome
from payments.metrics import REGISTRY, WEBHOOK_DURATION, WEBHOOKS
from payments.receiver import Reply, WebhookReceiver
from payments.signature import SIGNATURE_HEADER, load_secrets
from payments.store import PaymentEventStore

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/payments"
RECEIVER_KEY: web.AppKey[WebhookReceiver] = web.AppKey("receiver", WebhookReceiver)


# The metrics' outcome of each refusal, by status (payments/metrics.py).
_REFUSALS = {401: "refused_signature", 400: "refused", 409: "conflict", 503: "unavailable"}
# Every outcome counted from the start, at 0, so the rate of signature refusals that an
# alert reads (payments/alerts.rules.yml) is 0 before the first one, not nothing.
for _outcome in (*(o.name.lower() for o in Outcome), "repeat", *_REFUSALS.values()):
    WEBHOOKS.labels(_outcome)


def outcome_of(reply: Reply) -> str:
    """A delivery's outcome as the metrics name it."""
    if reply.status == 200:
        return "repeat" if reply.body.get("duplicate") else str(reply.body["outcome"]).lower()
    return _REFUSALS.get(reply.status, f"http_{reply.status}")


async def deliver(request: web.Request) -> web.Response:
    """POST /webhooks/payments."""
    started = time.perf_counter()
    body = await request.read()
    reply = await request.app[RECEIVER_KEY].receive(request.headers.get(SIGNATURE_HEADER), body)
    outcome = outcome_of(reply)
    WEBHOOKS.labels(outcome).inc()
    WEBHOOK_DURATION.labels(outcome).observe(time.perf_counter() - started)
    return web.json_response(reply.body, status=reply.status)


async def healthz(_: web.Request) -> web.Response:
    """GET /healthz."""
    return web.json_response({"status": "serving"})


def receiver_app(receiver: WebhookReceiver, max_body_bytes: int) -> web.Application:
    """The listener's routes; a body over `max_body_bytes` is refused (413) unread."""
    app = web.Application(client_max_size=max_body_bytes)
    app[RECEIVER_KEY] = receiver
    app.router.add_post(WEBHOOK_PATH, deliver)
    app.router.add_get("/healthz", healthz)
    return app


def order_client(settings: PaymentsSettings, credentials: Credentials) -> OrderClient:
    """The receiver's client of the order server: the one place it is built. It presents
    `credentials` (clients/credentials.py: a token with orders:pay); the token's subject is
    what the order's history records as who paid it."""
    return OrderClient(
        settings.order_target,
        credentials=credentials,
        default_timeout=settings.webhook_call_timeout_s,
        retry=RetryPolicy(max_attempts=3, initial_backoff=0.1, max_backoff=1.0),
    )


@dataclass
class RunningReceiver:
    """A receiver listening on its port, with what it opened."""

    runner: web.AppRunner
    port: int
    store: PaymentEventStore
    orders: OrderClient
    stopped: bool = False

    @property
    def url(self) -> str:
        """Where the provider delivers."""
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"

    async def stop(self) -> None:
        """Stop listening (deliveries under way are finished), then close what it opened;
        once."""
        if self.stopped:
            return
        self.stopped = True
        await self.runner.cleanup()
        await self.orders.close()
        await self.store.close()


async def start(settings: PaymentsSettings, credentials: Credentials) -> RunningReceiver:
    """Listen on settings' host and port (0: a free one) until stopped."""
    assert settings.pg_dsn is not None
    secrets = load_secrets(settings.webhook_secret_file)
    store = await PaymentEventStore.connect(
        settings.pg_dsn, pool_size=4, timeout=settings.db_timeout_s
    )
    orders = order_client(settings, credentials)
    receiver = WebhookReceiver(secrets, settings.webhook_tolerance_s, store, orders)
    runner = web.AppRunner(
        receiver_app(receiver, settings.webhook_max_body_bytes),
        access_log=None,
        handle_signals=False,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.webhook_host, settings.webhook_port, reuse_address=True)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = int(sockets[0].getsockname()[1]) if sockets else settings.webhook_port
    return RunningReceiver(runner, port, store, orders)


async def serve(settings: PaymentsSettings, credentials: Credentials) -> None:
    """Receive webhooks until SIGINT or SIGTERM; metrics on loopback, when a port is set."""
    if settings.webhook_metrics_port:
        start_http_server(settings.webhook_metrics_port, addr="127.0.0.1", registry=REGISTRY)
    running = await start(settings, credentials)
    log.info(
        "payment webhook receiver serving",
        extra={"url": running.url, "orders": settings.order_target},
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await running.stop()
