"""The fulfilment worker against the simulated partners: the way of a paid order, each
circuit breaker trigger, recovery, a lost acknowledgement, a poison reply and its replay."""

from __future__ import annotations

import asyncpg

from clients.orders import OrderClient, OrderStatus
from server.app import App
from server.config import Settings
from tests.e2e.fulfilment_stack import (
    PRIMARY,
    fulfil_settings,
    fulfilment_rows,
    paid_orders,
    running_worker,
    start_partners,
    stock,
    wait_statuses,
)


async def test_a_paid_order_is_handed_off_booked_shipped_and_delivered(app: App, settings: Settings) -> None:
    partners = await start_partners()
    try:
        await stock(app)
        async with running_worker(fulfil_settings(settings, app, partners)):
            [order_id] = await paid_orders(app, 1)
            await wait_statuses(app, [order_id], {OrderStatus.DELIVERED})
        async with OrderClient(f"127.0.0.1:{app.port}", caller="test") as orders:
            order, history = await orders.get_order(order_id)
        assert order.shipment is not None and order.shipment.carrier == PRIMARY
        booked = await partners.bookings(partners.primary)
        assert [(b["order_id"], b["tracking_no"]) for b in booked] == [
            (order_id, order.shipment.tracking_no)
        ]
        assert [c.to_status for c in history][-3:] == [
            OrderStatus.SHIPPED, OrderStatus.IN_TRANSIT, OrderStatus.DELIVERED
        ]
        row = (await fulfilment_rows(settings.pg_dsn or "", [order_id]))[order_id]
        assert row["stage"] == 6 and row["warehouse_ref"].startswith("WH-")
        assert row["last_sync_at"] is not None and order.shipment.last_sync_time is not None
        conn = await asyncpg.connect(settings.pg_dsn)
        try:
            steps = [
                r["what"]
                for r in await conn.fetch(
                    "SELECT what FROM stockcore.fulfilment_history WHERE order_id = $1 ORDER BY id",
                    order_id,
                )
            ]
        finally:
            await conn.close()
        assert steps == ["paid", "handed off", "packed", "bound", "booked", "shipped", "in transit", "delivered"]
    finally:
        await partners.stop()
