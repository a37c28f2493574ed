"""The reconciler with what it opens (a pool, an HTTP session to the provider, a client of
the order server), built from its settings in one place, and its loop until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from prometheus_client import start_http_server

from clients.credentials import Credentials
from clients.inventory import RetryPolicy
from clients.orders import OrderClient
from payments.reconciler.config import ReconcilerSettings
from payments.reconciler.feed import SettlementFeed
from payments.reconciler.matching import Policy
from payments.reconciler.metrics import LAST_PASS, REGISTRY
from payments.reconciler.reconciliation import Reconciler
from payments.reconciler.store import ReconciliationStore
from payments.store import PaymentEventStore

log = logging.getLogger(__name__)


def order_client(settings: ReconcilerSettings, credentials: Credentials) -> OrderClient:
    """The reconciler's client of the order server: it presents `credentials` (a token
    with orders:pay), whose subject the order's history records as who paid it."""
    return OrderClient(
        settings.order_target,
        credentials=credentials,
        default_timeout=settings.call_timeout_s,
        retry=RetryPolicy(max_attempts=3, initial_backoff=0.1, max_backoff=1.0),
    )


@asynccontextmanager
async def opened(
    settings: ReconcilerSettings, credentials: Credentials
) -> AsyncIterator[Reconciler]:
    """A reconciler on settings' database and provider, closed when the block ends."""
    assert settings.pg_dsn is not None
    store = await ReconciliationStore.connect(
        settings.pg_dsn, pool_size=2, timeout=settings.db_timeout_s
    )
    events = PaymentEventStore(store.pool)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.provider_timeout_s))
    orders = order_client(settings, credentials) if settings.recover else None
    try:
        yield Reconciler(
            store,
            SettlementFeed(settings.provider_url, http),
            events,
            orders,
            Policy(settings.grace_s, settings.settle_deadline_s),
            settings.page_size,
            settings.close_margin_s,
            settings.ledger_check_s,
        )
    finally:
        if orders is not None:
            await orders.close()
        await http.close()
        await store.close()


async def serve(settings: ReconcilerSettings, credentials: Credentials) -> None:
    """Reconcile until SIGINT or SIGTERM; metrics on loopback, when a port is set."""
    # A pass's age counts from the start until the first pass ends: a reconciler that never
    # completes one is stuck, not new.
    LAST_PASS.set_to_current_time()
    if settings.reconcile_metrics_port:
        start_http_server(settings.reconcile_metrics_port, addr="127.0.0.1", registry=REGISTRY)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    async with opened(settings, credentials) as reconciler:
        log.info(
            "reconciler following the settlement feed",
            extra={"provider": settings.provider_url, "recover": settings.recover},
        )
        await reconciler.run(stopping, settings.interval_s)
