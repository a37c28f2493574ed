"""What must hold between orders, holds, stock, history, payments and events, checked
from one PostgreSQL snapshot (used after races and after a crash)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise

import asyncpg

from server.domain.inventory import ReservationStatus
from server.domain.orders import CREATED_EVENT, TRANSITIONS, OrderStatus

# The hold each order status goes with; a cancelled order's depends on whether it was paid.
HOLD_OF: dict[OrderStatus, ReservationStatus] = {
    OrderStatus.PENDING_PAYMENT: ReservationStatus.HELD,
    OrderStatus.PAID: ReservationStatus.COMMITTED,
    OrderStatus.SHIPPED: ReservationStatus.COMMITTED,
    OrderStatus.IN_TRANSIT: ReservationStatus.COMMITTED,
    OrderStatus.DELIVERED: ReservationStatus.COMMITTED,
    OrderStatus.EXPIRED: ReservationStatus.EXPIRED,
}


@dataclass
class Snapshot:
    """What the checks read, for callers that check more."""

    orders: dict[str, asyncpg.Record] = field(default_factory=dict)
    reservations: dict[str, asyncpg.Record] = field(default_factory=dict)
    events: dict[str, list[asyncpg.Record]] = field(default_factory=dict)
    cursors: list[int] = field(default_factory=list)
    unsequenced: int = 0
    late_holds: int = 0
    overdue_orders: int = 0


async def check_orders_agree(dsn: str) -> Snapshot:
    """Assert every invariant; return the snapshot it was checked on."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snap = Snapshot(
                orders={
                    r["order_id"]: r for r in await conn.fetch("SELECT * FROM stockcore.orders")
                },
                reservations={
                    r["reservation_id"]: r
                    for r in await conn.fetch("SELECT * FROM stockcore.reservations")
                },
            )
            history: dict[str, list[asyncpg.Record]] = defaultdict(list)
            for r in await conn.fetch(
                "SELECT * FROM stockcore.order_history ORDER BY order_id, version"
            ):
                history[r["order_id"]].append(r)
            events: dict[str, list[asyncpg.Record]] = defaultdict(list)
            for r in await conn.fetch(
                "SELECT order_id, order_version, type, cursor FROM stockcore.order_events"
                " ORDER BY order_id, order_version"
            ):
                events[r["order_id"]].append(r)
            snap.events = dict(events)
            snap.cursors = [
                r["cursor"]
                for r in await conn.fetch(
                    "SELECT cursor FROM stockcore.order_events WHERE cursor IS NOT NULL ORDER BY cursor"
                )
            ]
            snap.unsequenced = await conn.fetchval(
                "SELECT count(*) FROM stockcore.order_events WHERE cursor IS NULL"
            )
            payments = {
                r["payment_id"]: r for r in await conn.fetch("SELECT * FROM stockcore.payments")
            }
            adjustments = {
                r["idempotency_key"]: r
                for r in await conn.fetch("SELECT * FROM stockcore.adjustments")
            }
            stock = {r["sku"]: r for r in await conn.fetch("SELECT * FROM stockcore.stock")}
            snap.late_holds = await conn.fetchval(
                "SELECT count(*) FROM stockcore.reservations"
                " WHERE status = 1 AND expires_at < now() - interval '2 seconds'"
            )
            snap.overdue_orders = await conn.fetchval(
                "SELECT count(*) FROM stockcore.orders"
                " WHERE status = 1 AND payment_deadline < now() - interval '2 seconds'"
            )
    finally:
        await conn.close()

    for order_id, order in snap.orders.items():
        status = OrderStatus(order["status"])
        hold = snap.reservations.get(order_id)
        assert hold is not None, f"order {order_id} has no hold"
        assert (list(hold["skus"]), list(hold["quantities"])) == (
            list(order["skus"]),
            list(order["quantities"]),
        ), order_id
        assert hold["expires_at"] == order["payment_deadline"], order_id
        paid = order["payment_id"] is not None
        wanted = HOLD_OF.get(
            status, ReservationStatus.COMMITTED if paid else ReservationStatus.RELEASED
        )
        assert ReservationStatus(hold["status"]) is wanted, (order_id, status, hold["status"])

        path = [OrderStatus(s) for s in order["path"]]
        assert [OrderStatus(h["to_status"]) for h in history[order_id]] == path, order_id
        assert [h["version"] for h in history[order_id]] == list(range(1, len(path) + 1))
        expected_events = [CREATED_EVENT] + [TRANSITIONS[a][b] for a, b in pairwise(path)]
        assert [(e["order_version"], e["type"]) for e in events[order_id]] == [
            (i + 1, int(t)) for i, t in enumerate(expected_events)
        ], order_id

        if paid:
            payment = payments.get(order["payment_id"])
            assert payment is not None and payment["order_id"] == order_id, order_id
            assert payment["amount_minor"] == order["total_minor"] == order["paid_minor"]
        if status is OrderStatus.CANCELLED and paid:
            assert order["refund_owed_minor"] == order["paid_minor"], order_id
            for sku, quantity in zip(order["skus"], order["quantities"], strict=True):
                returned = adjustments.get(f"order-cancel:{order_id}:{sku}")
                assert returned is not None and returned["applied_delta"] == quantity, order_id
        else:
            assert order["refund_owed_minor"] == 0, order_id
    assert len(payments) == sum(1 for o in snap.orders.values() if o["payment_id"] is not None)
    assert set(events) <= set(snap.orders), "events of orders that do not exist"

    # Stock: what adjustments put on hand minus what commits took; reserved = live holds.
    committed: dict[str, int] = defaultdict(int)
    held: dict[str, int] = defaultdict(int)
    for r in snap.reservations.values():
        for sku, quantity in zip(r["skus"], r["quantities"], strict=True):
            if r["status"] == ReservationStatus.COMMITTED:
                committed[sku] += quantity
            elif r["status"] == ReservationStatus.HELD:
                held[sku] += quantity
    adjusted: dict[str, int] = defaultdict(int)
    for a in adjustments.values():
        adjusted[a["sku"]] += a["applied_delta"]
    for sku, row in stock.items():
        assert row["on_hand"] == adjusted[sku] - committed[sku], sku
        assert row["reserved"] == held[sku], sku

    # Cursors are gap-free from 1.
    assert snap.cursors == list(range(1, len(snap.cursors) + 1))
    return snap
