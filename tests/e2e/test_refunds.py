"""Refunds over the real stack: the simulated payment provider as a real HTTP server,
stockcore's webhook receiver, the refund sender (refunds/), the server, PostgreSQL and
Redis. A paid order cancelled is refunded once, whatever happens to the sends; a refund
the provider fails ends FAILED with its event; an outage is retried behind an open
breaker; a charge to return is returned."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from clients.inventory import InventoryClient
from clients.orders import Order, OrderClient, OrderStatus
from refunds import config as refund_config
from refunds.config import RefundSettings
from refunds.metrics import REGISTRY as REFUND_METRICS
from refunds.provider import RefundsApi
from refunds.store import RefundState, RefundStore
from refunds.worker import RefundSender
from runtime.breaker import BreakerState
from server.app import App
from tests.e2e.payments_stack import (
    Provider,
)
from tests.invariants import assert_invariants_hold
from tests.support import connected
from tests.waiting import until

SKU = "REFUND-SKU-1"
PRICE = 5999
PAID = OrderStatus.ORDER_STATUS_PAID
REQUESTED, REFUNDED, REFUND_FAILED = 8, 9, 10


def sender_settings(dsn: str, provider: Provider, **changes: Any) -> RefundSettings:
    """A sender at test speed: retries from 0.05 s, polls every 0.5 s, a breaker that opens
    after 3 failures in a row for 1 s; a sender process serves no metrics (a stack beside
    the tests may hold the port)."""
    base = RefundSettings(
        pg_dsn=dsn,
        refund_metrics_port=0,
        provider_url=provider.url,
        provider_timeout_s=2.0,
        refund_lease_s=3.0,
        refund_idle_s=0.05,
        refund_retry_initial_s=0.05,
        refund_retry_max_s=0.2,
        refund_poll_s=0.5,
        breaker_consecutive_failures=3,
        breaker_open_s=1.0,
        log_json=False,
    )
    return base.with_overrides(**changes).validate()


@asynccontextmanager
async def running_sender(settings: RefundSettings) -> AsyncIterator[RefundSender]:
    """A refund sender in this process, stopped when the block ends."""
    assert settings.pg_dsn is not None
    store = await RefundStore.connect(settings.pg_dsn, pool_size=2, timeout=10.0)
    api = RefundsApi(settings.provider_url, timeout_s=settings.provider_timeout_s)
    sender = RefundSender(settings, store, api, name="test-sender")
    task = asyncio.create_task(sender.run())
    try:
        yield sender
    finally:
        sender.stop()
        await task
        await api.close()
        await store.close()


async def paid_order(app: App, provider: Provider, order_id: str) -> tuple[Order, str]:
    """An order of one unit at PRICE, paid through the provider's webhook; its charge id."""
    target = f"127.0.0.1:{app.port}"
    async with InventoryClient(target) as inventory:
        await inventory.adjust_stock(SKU, delta=1, reason="refunds", idempotency_key=order_id)
    async with OrderClient(target) as orders:
        order = await orders.create_order(order_id, "cust-1", [(SKU, 1, PRICE)], "EUR", 600.0)
        charge = await provider.charge(order.order_id, order.total_minor)

        async def paid() -> bool:
            return (await orders.get_order(order_id))[0].status == PAID

        await until(paid, f"{order_id} paid", 20)
    return order, str(charge["id"])


async def cancel(app: App, order_id: str) -> None:
    """Cancel an order as a service does."""
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        await orders.cancel_order(order_id, "customer asked")


async def refund_of(dsn: str, order_id: str) -> dict[str, Any]:
    """The one refund row of an order."""
    async with connected(dsn) as conn:
        [row] = await conn.fetch("SELECT * FROM stockcore.refunds WHERE order_id = $1", order_id)
        return dict(row)


async def settled(dsn: str, order_id: str, state: int, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the order's refund is in `state`; its row."""

    async def reached() -> bool:
        async with connected(dsn) as conn:
            found = await conn.fetchval(
                "SELECT state FROM stockcore.refunds WHERE order_id = $1", order_id
            )
        return found == state

    await until(reached, f"the refund of {order_id} in state {state}", timeout)
    return await refund_of(dsn, order_id)


async def refund_events(dsn: str, order_id: str) -> list[tuple[int, dict[str, Any]]]:
    """The refund events of an order, in outbox order: (type, the refund in the body)."""
    async with connected(dsn) as conn:
        rows = await conn.fetch(
            "SELECT type, body -> 'refund' AS refund FROM stockcore.order_events"
            " WHERE order_id = $1 AND type >= 8 ORDER BY id",
            order_id,
        )
    return [(int(r["type"]), json.loads(r["refund"])) for r in rows]


async def refunded_at_provider(provider: Provider, charge_id: str) -> int:
    """What the provider refunded of a charge."""
    _, charge = await provider.call("GET", f"/v1/charges/{charge_id}")
    return int(charge["amount_refunded"])


async def invariants_hold(dsn: str) -> None:
    """stockcore.invariant_violations() finds nothing."""
    async with connected(dsn) as conn:
        await assert_invariants_hold(conn)


async def test_a_paid_order_cancelled_is_refunded_with_its_events(
    app: App, provider: Provider, dsn: str
) -> None:
    order, charge_id = await paid_order(app, provider, "rf-cancelled")
    await cancel(app, order.order_id)
    owed = await refund_of(dsn, order.order_id)
    assert (owed["state"], owed["amount_minor"], owed["charge_id"]) == (1, PRICE, charge_id)

    async with running_sender(sender_settings(dsn, provider)):
        row = await settled(dsn, order.order_id, 3)

    assert row["provider_refund_id"]
    events = await refund_events(dsn, order.order_id)
    assert [t for t, _ in events] == [REQUESTED, REFUNDED]
    assert [(e["refund_id"], e["state"]) for _, e in events] == [
        (row["refund_id"], 2),
        (row["refund_id"], 3),
    ]
    assert await refunded_at_provider(provider, charge_id) == PRICE
    await invariants_hold(dsn)


def sample(name: str, **labels: str) -> float:
    """A sample of the refund sender's metrics (0 when it has none)."""
    return REFUND_METRICS.get_sample_value(name, labels) or 0.0


async def test_the_sender_counts_its_calls_and_reads_the_refunds_waiting(
    app: App, provider: Provider, dsn: str
) -> None:
    calls = "stockcore_refund_calls_total"
    sent = sum(sample(calls, call="send", outcome=o) for o in ("pending", "succeeded"))
    order, _ = await paid_order(app, provider, "rf-metrics")
    await cancel(app, order.order_id)
    store = await RefundStore.connect(dsn, pool_size=1, timeout=10.0)
    try:
        waiting = await store.backlog()
    finally:
        await store.close()
    # Owed just now and due at once: a sender has not claimed it yet.
    assert waiting.unsettled == {RefundState.REQUESTED: 1, RefundState.SENT: 0}
    assert 0 <= waiting.oldest_s[RefundState.REQUESTED] < 10
    assert waiting.oldest_s[RefundState.SENT] == 0
    assert 0 <= waiting.oldest_due_s < 10

    async with running_sender(sender_settings(dsn, provider)) as sender:
        await settled(dsn, order.order_id, 3)
        await sender.read_backlog()

    assert sum(sample(calls, call="send", outcome=o) for o in ("pending", "succeeded")) == sent + 1
    for state in ("requested", "sent"):
        assert sample("stockcore_refunds_unsettled", state=state) == 0
        assert sample("stockcore_refunds_oldest_unsettled_seconds", state=state) == 0
    assert sample("stockcore_refunds_oldest_due_seconds") == 0


async def test_a_refund_the_provider_fails_ends_failed_with_its_event(
    app: App, provider: Provider, dsn: str
) -> None:
    order, charge_id = await paid_order(app, provider, "rf-fails")
    await provider.faults(refund_fail_rate=1.0)
    await cancel(app, order.order_id)

    async with running_sender(sender_settings(dsn, provider)):
        row = await settled(dsn, order.order_id, 4)

    assert row["provider_refund_id"] and row["last_error"]
    assert [t for t, _ in await refund_events(dsn, order.order_id)] == [REQUESTED, REFUND_FAILED]
    assert await refunded_at_provider(provider, charge_id) == 0
    await invariants_hold(dsn)


async def test_a_provider_outage_is_retried_behind_an_open_breaker(
    app: App, provider: Provider, dsn: str
) -> None:
    order, charge_id = await paid_order(app, provider, "rf-outage")
    await provider.faults(outage_s=60)
    await cancel(app, order.order_id)

    async with running_sender(sender_settings(dsn, provider)) as sender:

        async def opened() -> bool:
            return sender.breaker.state is BreakerState.OPEN

        await until(opened, "the breaker open", 10)
        row = await refund_of(dsn, order.order_id)
        assert row["state"] == 1 and row["attempts"] >= 3 and "HTTP 503" in row["last_error"]
        await provider.faults(outage_s=0)
        await settled(dsn, order.order_id, 3)

    assert [t for t, _ in await refund_events(dsn, order.order_id)] == [REQUESTED, REFUNDED]
    assert await refunded_at_provider(provider, charge_id) == PRICE
    await invariants_hold(dsn)


async def test_a_lost_answer_is_sent_again_and_refunds_once(
    app: App, provider: Provider, dsn: str
) -> None:
    order, charge_id = await paid_order(app, provider, "rf-lost")
    await provider.faults(lose_next=1)
    await cancel(app, order.order_id)

    async with running_sender(sender_settings(dsn, provider)):
        row = await settled(dsn, order.order_id, 3)

    assert row["attempts"] >= 2
    assert await refunded_at_provider(provider, charge_id) == PRICE
    await invariants_hold(dsn)


async def test_a_charge_to_return_is_refunded_and_returned(
    app: App, provider: Provider, dsn: str
) -> None:
    target = f"127.0.0.1:{app.port}"
    async with InventoryClient(target) as inventory:
        await inventory.adjust_stock(SKU, delta=1, reason="refunds", idempotency_key="rf-ret")
    async with OrderClient(target) as orders:
        order = await orders.create_order("rf-return", "cust-1", [(SKU, 1, PRICE)], "EUR", 600.0)
        await orders.cancel_order(order.order_id, "changed their mind")
    charge = await provider.charge(order.order_id, order.total_minor)

    async with running_sender(sender_settings(dsn, provider)):
        row = await settled(dsn, order.order_id, 3)

    assert (row["reason"], row["charge_id"]) == (2, charge["id"])
    async with connected(dsn) as conn:
        returned = await conn.fetchval(
            "SELECT returned_at FROM stockcore.payments_to_return WHERE charge_id = $1",
            charge["id"],
        )
    assert returned is not None
    assert [t for t, _ in await refund_events(dsn, order.order_id)] == [REQUESTED, REFUNDED]
    assert await refunded_at_provider(provider, str(charge["id"])) == PRICE
    await invariants_hold(dsn)


async def test_a_sender_killed_mid_send_does_not_refund_twice(
    app: App, provider: Provider, dsn: str
) -> None:
    order, charge_id = await paid_order(app, provider, "rf-killed")
    # Every answer waits 1.5 s, so the sender is killed while its POST is under way.
    await provider.faults(latency_s=1.5)
    await cancel(app, order.order_id)
    settings = sender_settings(dsn, provider, refund_lease_s=2.5)
    env = {**os.environ, **refund_config.to_env(settings)}
    process = subprocess.Popen([sys.executable, "-m", "refunds"], env=env)  # noqa: ASYNC220
    try:

        async def claimed() -> bool:
            return (await refund_of(dsn, order.order_id))["lease_owner"] is not None

        await until(claimed, "the refund claimed by the sender process", 20)
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    # The provider may have the refund now (the request reached it) or not; either way
    # the next sender sends it again, with the same key, once the lease lapses.
    await asyncio.sleep(1.5)
    await provider.faults(latency_s=0)
    async with running_sender(settings):
        row = await settled(dsn, order.order_id, 3)

    assert row["attempts"] >= 2
    assert await refunded_at_provider(provider, charge_id) == PRICE
    refunds_made = [
        e for e in (await provider.deliveries()).values() if e.get("type") == "refund.succeeded"
    ]
    assert len(refunds_made) == 1, refunds_made
    await invariants_hold(dsn)
