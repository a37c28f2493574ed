"""Line refunds (RefundLine) over the real stack: the simulated payment provider as a real
HTTP server, stockcore's webhook receiver, the refund sender, the reconciler, the server
over TLS, PostgreSQL and Redis. A line of a paid two-line order is refunded: the provider
pays it back, the order gets its REFUND_REQUESTED and REFUNDED events and keeps its status
and history, the reconciler states the refund matched, and the invariants hold. More than
a line has left is refused, a repeat refunds once, and a cancel after owes only the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from clients.credentials import Credentials
from clients.errors import AlreadyExists, FailedPrecondition, NotFound
from clients.inventory import InventoryClient
from clients.orders import EventType, Order, OrderClient, OrderEvent, OrderStatus, RefundReason
from payments.reconciler.reconciliation import Reconciler
from payments.reconciler.service import opened
from server.app import App
from server.auth import scopes
from server.config import Settings
from tests.e2e.payments_stack import Provider
from tests.e2e.test_payment_webhooks import rows
from tests.e2e.test_reconciliation import reconciler_settings, statements
from tests.e2e.test_refunds import invariants_hold, running_sender, sender_settings
from tests.waiting import until

SHIRT, SCARF = "LR-SHIRT", "LR-SCARF"
# Two shirts at 1500 and a scarf at 2999: 5999 paid.
SHIRT_PRICE, SCARF_PRICE = 1500, 2999
TOTAL = 2 * SHIRT_PRICE + SCARF_PRICE
PAID = OrderStatus.ORDER_STATUS_PAID
REQUESTED, REFUNDED = EventType.EVENT_TYPE_REFUND_REQUESTED, EventType.EVENT_TYPE_REFUNDED
LINE_REFUNDED = RefundReason.REFUND_REASON_LINE_REFUNDED
MATCHED = 1


async def paid_order(app: App, provider: Provider, order_id: str) -> tuple[Order, str]:
    """A two-line order paid through the provider's webhook; its charge id."""
    target = f"127.0.0.1:{app.port}"
    async with InventoryClient(target) as inventory:
        for sku in (SHIRT, SCARF):
            await inventory.adjust_stock(
                sku, delta=2, reason="line refunds", idempotency_key=f"{order_id}-{sku}"
            )
    async with OrderClient(target) as orders:
        order = await orders.create_order(
            order_id, "cust-1", [(SHIRT, 2, SHIRT_PRICE), (SCARF, 1, SCARF_PRICE)], "EUR", 600.0
        )
        charge = await provider.charge(order.order_id, order.total_minor)

        async def paid() -> bool:
            return (await orders.get_order(order_id))[0].status == PAID

        await until(paid, f"{order_id} paid", 20)
    return order, str(charge["id"])


async def refunds_of(dsn: str, order_id: str) -> list[dict[str, Any]]:
    """The order's refunds, oldest first."""
    return await rows(
        dsn,
        "SELECT * FROM stockcore.refunds WHERE order_id = $1 ORDER BY created_at, refund_id",
        order_id,
    )


async def all_refunded(dsn: str, order_id: str, count: int) -> list[dict[str, Any]]:
    """Wait until the order has `count` refunds, each REFUNDED; them."""
    found: list[dict[str, Any]] = []

    async def settled() -> bool:
        found[:] = await refunds_of(dsn, order_id)
        return len(found) == count and all(r["state"] == 3 for r in found)

    await until(settled, f"{count} refunds of {order_id} refunded", 20)
    return found


async def refunded_at_provider(provider: Provider, charge_id: str) -> int:
    """What the provider refunded of a charge."""
    _, charge = await provider.call("GET", f"/v1/charges/{charge_id}")
    return int(charge["amount_refunded"])


async def refund_events(
    app: App, order_id: str, count: int, credentials: Credentials | None = None
) -> list[OrderEvent]:
    """The order's first `count` refund events, as WatchOrders streams them (to the caller
    of `credentials`, the service's by default)."""
    found: list[OrderEvent] = []
    async with OrderClient(f"127.0.0.1:{app.port}", credentials=credentials) as orders:

        async def read() -> None:
            async for event in orders.watch(order_id=order_id, types=[REQUESTED, REFUNDED]):
                found.append(event)
                if len(found) == count:
                    return

        await asyncio.wait_for(read(), 20)
    return found


async def stated(reconciler: Reconciler, dsn: str, refund_ids: list[str]) -> dict[str, Any]:
    """Run the reconciler until each provider refund has a statement; the latest of each."""
    latest: dict[str, Any] = {}

    async def done() -> bool:
        await reconciler.step()
        latest.update({s["subject_id"]: s for s in await statements(dsn)})
        return all(r in latest for r in refund_ids)

    await until(done, f"refunds {refund_ids} stated", 20)
    return {r: latest[r] for r in refund_ids}


@pytest.fixture
async def reconciler(app: App, settings: Settings, provider: Provider, payer: Credentials) -> Any:
    """A reconciler on the test stack."""
    async with opened(reconciler_settings(settings, app, provider), payer) as started:
        yield started


async def test_a_line_refunded_is_paid_back_with_its_events_and_stated_matched(
    app: App,
    provider: Provider,
    reconciler: Reconciler,
    dsn: str,
    credentials_for: Callable[..., Credentials],
) -> None:
    order, charge_id = await paid_order(app, provider, "lr-one")
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        _, history_before = await orders.get_order(order.order_id)
        after, refund = await orders.refund_line(
            order.order_id, SHIRT, 1, "arrived torn", line_refund_id="lr-one-shirt"
        )
        again, same = await orders.refund_line(
            order.order_id, SHIRT, 1, "arrived torn", line_refund_id="lr-one-shirt"
        )

    # Money only: the order keeps its status, version and history; the line shows it.
    assert (after.status, after.version, after.refund_owed_minor) == (PAID, 2, 0)
    assert [(x.sku, x.refunded_quantity) for x in after.lines] == [(SCARF, 0), (SHIRT, 1)]
    assert after.line_refunds_minor == SHIRT_PRICE
    assert (refund.reason, refund.amount_minor, refund.charge_id) == (
        LINE_REFUNDED,
        SHIRT_PRICE,
        charge_id,
    )
    assert (refund.sku, refund.quantity, refund.line_refund_id, refund.note) == (
        SHIRT,
        1,
        "lr-one-shirt",
        "arrived torn",
    )
    # The same request again is the same refund: no second one is owed.
    assert same.refund_id == refund.refund_id and again.line_refunds_minor == SHIRT_PRICE

    async with running_sender(sender_settings(dsn, provider)):
        [row] = await all_refunded(dsn, order.order_id, 1)

    assert row["refund_id"] == refund.refund_id and row["provider_refund_id"]
    assert await refunded_at_provider(provider, charge_id) == SHIRT_PRICE
    events = await refund_events(app, order.order_id, 2)
    assert [(e.type, e.refund and e.refund.refund_id) for e in events] == [
        (REQUESTED, refund.refund_id),
        (REFUNDED, refund.refund_id),
    ]
    assert all(e.change is None and e.order_version == 2 for e in events)
    assert events[-1].refund is not None and (
        events[-1].refund.sku,
        events[-1].refund.quantity,
    ) == (
        SHIRT,
        1,
    )
    # The shopper sees the line refunded, not the provider's ids nor the service's id.
    shopper = credentials_for("shop-web", scopes=[scopes.CUSTOMER], customer_id="cust-1")
    seen = (await refund_events(app, order.order_id, 2, shopper))[-1].refund
    assert seen is not None and (seen.sku, seen.quantity, seen.note) == (SHIRT, 1, "arrived torn")
    assert (seen.charge_id, seen.provider_refund_id, seen.line_refund_id) == ("", "", "")
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        now, history = await orders.get_order(order.order_id)
    assert history == history_before and now.status == PAID
    [line] = (await stated(reconciler, dsn, [row["provider_refund_id"]])).values()
    assert (line["verdict"], line["exception_id"], line["order_id"]) == (
        MATCHED,
        None,
        order.order_id,
    )
    assert (line["ours_amount"], line["theirs_amount"]) == (SHIRT_PRICE, SHIRT_PRICE)
    await invariants_hold(dsn)


async def test_more_than_a_line_has_left_is_refused_and_the_whole_never_exceeds_the_payment(
    app: App, provider: Provider, dsn: str
) -> None:
    order, charge_id = await paid_order(app, provider, "lr-bound")
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        await orders.refund_line(order.order_id, SHIRT, 1, "torn", line_refund_id="lr-b-1")
        with pytest.raises(FailedPrecondition) as beyond:
            await orders.refund_line(order.order_id, SHIRT, 2, "torn", line_refund_id="lr-b-2")
        with pytest.raises(AlreadyExists):
            await orders.refund_line(order.order_id, SHIRT, 2, "torn", line_refund_id="lr-b-1")
        with pytest.raises(NotFound) as no_line:
            await orders.refund_line(order.order_id, "LR-HAT", 1, "gone", line_refund_id="lr-b-3")
        await orders.refund_line(order.order_id, SHIRT, 1, "torn", line_refund_id="lr-b-4")
        last, _ = await orders.refund_line(
            order.order_id, SCARF, 1, "faded", line_refund_id="lr-b-5"
        )
        with pytest.raises(FailedPrecondition) as all_gone:
            await orders.refund_line(order.order_id, SCARF, 1, "faded", line_refund_id="lr-b-6")
        async with InventoryClient(f"127.0.0.1:{app.port}") as inventory:
            await inventory.adjust_stock(SHIRT, delta=1, reason="more", idempotency_key="lr-more")
        unpaid = await orders.create_order("lr-unpaid", "cust-1", [(SHIRT, 1, SHIRT_PRICE)], "EUR")
        with pytest.raises(FailedPrecondition) as not_paid:
            await orders.refund_line(unpaid.order_id, SHIRT, 1, "x", line_refund_id="lr-b-7")

    info = beyond.value.error_info
    assert info is not None and info.reason == "LINE_REFUND_EXCEEDED"
    assert dict(info.metadata) == {"bought": "2", "refunded": "1", "left": "1"}
    assert [(v.type, v.subject) for v in beyond.value.precondition_violations] == [
        ("LINE_REFUND", SHIRT)
    ]
    assert no_line.value.error_info is not None and "its lines" in no_line.value.message
    assert all_gone.value.error_info is not None
    assert dict(all_gone.value.error_info.metadata)["left"] == "0"
    assert not_paid.value.error_info is not None
    assert not_paid.value.error_info.reason == "NOT_REFUNDABLE"
    # Every line refunded: all that was paid is owed back, and not a cent more.
    assert (last.line_refunds_minor, last.status) == (TOTAL, PAID)

    async with running_sender(sender_settings(dsn, provider)):
        made = await all_refunded(dsn, order.order_id, 3)

    assert sorted(r["amount_minor"] for r in made) == sorted([SHIRT_PRICE] * 2 + [SCARF_PRICE])
    assert await refunded_at_provider(provider, charge_id) == TOTAL
    # The provider, too, refunds a charge no further than it captured.
    await provider.refund(charge_id, "lr-bound-beyond", 1, expect=400)
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        cancelled = await orders.cancel_order(order.order_id, "all of it came back")
    # Its lines owe it all already: the cancel owes nothing more.
    assert (cancelled.status, cancelled.refund_owed_minor) == (
        OrderStatus.ORDER_STATUS_CANCELLED,
        0,
    )
    assert len(await refunds_of(dsn, order.order_id)) == 3
    await invariants_hold(dsn)


async def test_a_cancel_after_a_line_refunded_refunds_only_the_rest(
    app: App, provider: Provider, reconciler: Reconciler, dsn: str
) -> None:
    order, charge_id = await paid_order(app, provider, "lr-rest")
    target = f"127.0.0.1:{app.port}"
    async with OrderClient(target) as orders:
        await orders.refund_line(order.order_id, SCARF, 1, "faded", line_refund_id="lr-rest-1")
        cancelled = await orders.cancel_order(order.order_id, "the rest goes back too")
    async with InventoryClient(target) as inventory:
        levels = await inventory.get_stock([SCARF, SHIRT])

    assert (cancelled.status, cancelled.refund_owed_minor, cancelled.line_refunds_minor) == (
        OrderStatus.ORDER_STATUS_CANCELLED,
        TOTAL - SCARF_PRICE,
        SCARF_PRICE,
    )
    # A line refund moves no stock: the cancel returns every unit.
    assert [(lv.sku, lv.on_hand) for lv in levels] == [(SCARF, 2), (SHIRT, 2)]

    async with running_sender(sender_settings(dsn, provider)):
        made = await all_refunded(dsn, order.order_id, 2)

    assert [(r["reason"], r["amount_minor"]) for r in made] == [
        (3, SCARF_PRICE),
        (1, TOTAL - SCARF_PRICE),
    ]
    assert await refunded_at_provider(provider, charge_id) == TOTAL
    events = await refund_events(app, order.order_id, 4)
    assert sorted((e.refund.refund_id, e.type) for e in events if e.refund) == sorted(
        (r["refund_id"], t) for r in made for t in (REQUESTED, REFUNDED)
    )
    lines = await stated(reconciler, dsn, [r["provider_refund_id"] for r in made])
    assert [(s["verdict"], s["ours_amount"]) for s in lines.values()] == [
        (MATCHED, SCARF_PRICE),
        (MATCHED, TOTAL - SCARF_PRICE),
    ]
    await invariants_hold(dsn)
