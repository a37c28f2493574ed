"""OrderStore against a real PostgreSQL: every order change is one call of an order
function that decides by the status machine under the order's lock and writes the order,
history, outbox and ledger rows; reads, keyset pages, and the rules the schema enforces."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from stockcore.v1 import orders_pb2 as pb

from server.domain.inventory import AdjustCommand, Finish, ReservationStatus
from server.domain.order_queries import PagePosition, list_orders, watch_filter
from server.domain.orders import (
    TRANSITIONS,
    Actor,
    CreateOrder,
    EventType,
    OrderStatus,
    cancel_order,
    carrier_report,
    confirm_payment,
    create_order,
    refund_line,
    ship_order,
)
from server.rpc.orders_convert import stored_event
from server.storage.orders_pg import ChangeCode, CreateCode, LineRefundCode, OrderStore
from server.storage.outbox_pg import OutboxSession
from server.storage.postgres import FinishCode, StockStore
from tests.conftest import SHARDS, Servers
from tests.invariants import assert_invariants_hold
from tests.support import connected
from tests.waiting import until

ACTOR = Actor("tests", "req-1")
T0 = datetime(2030, 1, 1, tzinfo=UTC)
LIMITS = {"default_ttl_s": 300.0, "min_ttl_s": 1.0, "max_ttl_s": 86_400.0}
EXPIRY = "stockcore-expiry"
CARRIERS = ("dhl", "ups")


@pytest.fixture
async def orders(store: StockStore) -> OrderStore:
    """An OrderStore over the test database, with 1,000 units of A and B."""
    for sku in "AB":
        await store.adjust(AdjustCommand(sku, None, 1000, "initial", f"init-{sku}", "tests"))
    return OrderStore(store)


def order_request(
    order_id: str, customer: str = "c-1", window: float | None = None, price: int = 150
) -> CreateOrder:
    return create_order(order_id, customer, [("A", 2, price)], "EUR", window, ACTOR, **LIMITS)


async def create(orders: OrderStore, *requests: CreateOrder) -> None:
    created, _ = await orders.create(list(requests))
    assert [c.code for c in created] == [CreateCode.CREATED] * len(requests), created


async def pay(orders: OrderStore, order_id: str, payment_id: str, amount: int = 300):
    (outcome,), _ = await orders.pay(
        [confirm_payment(order_id, payment_id, amount, "EUR", ACTOR)], EXPIRY
    )
    return outcome


async def units(db: asyncpg.Connection, sku: str) -> tuple[int, int]:
    row = await db.fetchrow("SELECT on_hand, reserved FROM stockcore.stock WHERE sku = $1", sku)
    return row["on_hand"], row["reserved"]


async def events_of(db: asyncpg.Connection, order_id: str) -> list[tuple[str, int]]:
    rows = await db.fetch(
        "SELECT event_id, type FROM stockcore.order_events WHERE order_id = $1 ORDER BY id",
        order_id,
    )
    return [(r["event_id"], r["type"]) for r in rows]


async def test_the_status_machine_is_copied_into_the_database(db: asyncpg.Connection) -> None:
    rows = await db.fetch(
        "SELECT from_status, to_status, event_type FROM stockcore.order_transitions"
    )
    assert {(r["from_status"], r["to_status"], r["event_type"]) for r in rows} == {
        (int(a), int(b), int(e)) for a, targets in TRANSITIONS.items() for b, e in targets.items()
    }


async def test_a_created_order_is_stored_with_its_hold_history_and_an_unsequenced_event(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    request = order_request("o-1")
    (created,), levels = await orders.create([request])

    assert created.code is CreateCode.CREATED and created.order is not None
    order = created.order
    assert (order.status, order.version, order.total_minor) == (OrderStatus.PENDING_PAYMENT, 1, 300)
    assert order.fingerprint == request.fingerprint
    assert order.payment_deadline - order.created_at == timedelta(minutes=5)
    assert await units(db, "A") == (1000, 2)
    assert [(lv.sku, lv.reserved) for lv in levels] == [("A", 2)]
    found = (await orders.with_history(["o-1"]))["o-1"]
    assert found[0] == order
    assert [(c.from_status, c.to_status, c.reason, c.caller) for c in found[1]] == [
        (None, OrderStatus.PENDING_PAYMENT, "created", "tests")
    ]
    row = await db.fetchrow("SELECT * FROM stockcore.order_events")
    assert (row["event_id"], row["cursor"], row["published_at"]) == ("o-1/1", None, None)


async def test_creating_again_returns_the_order_and_other_content_conflicts(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, order_request("o-1"))
    (again, other), _ = await orders.create([order_request("o-1"), order_request("o-2")])
    (dearer,), _ = await orders.create([order_request("o-1", price=151)])

    assert again.code is CreateCode.REPEAT and again.order is not None
    assert again.order.version == 1
    assert other.code is CreateCode.CREATED
    # Same lines and window, so the same hold; another price is another order.
    assert dearer.code is CreateCode.CONFLICT
    assert await units(db, "A") == (1000, 4)
    assert await db.fetchval("SELECT count(*) FROM stockcore.order_events") == 2


async def test_an_order_short_of_stock_is_rejected_whole(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    big = create_order("o-1", "c-1", [("A", 999, 1), ("B", 1001, 1)], "EUR", None, ACTOR, **LIMITS)
    ghost = create_order("o-2", "c-1", [("A", 1, 1), ("GHOST", 1, 1)], "EUR", None, ACTOR, **LIMITS)
    (short, unknown), _ = await orders.create([big, ghost])

    assert short.code is CreateCode.REJECTED and short.order is None
    assert [(s.sku, s.requested, s.available) for s in short.shortages] == [("B", 1001, 1000)]
    assert (unknown.code, unknown.unknown_skus) == (CreateCode.REJECTED, ("GHOST",))
    assert await units(db, "A") == (1000, 0)
    assert await db.fetchval("SELECT count(*) FROM stockcore.orders") == 0


async def test_payment_commits_the_hold_and_records_payment_history_and_event(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, order_request("o-1"))

    paid = await pay(orders, "o-1", "p-1")

    assert paid.code is ChangeCode.DONE and paid.order is not None
    assert (paid.order.status, paid.order.payment_id, paid.order.paid_minor) == (
        OrderStatus.PAID,
        "p-1",
        300,
    )
    assert await units(db, "A") == (998, 0)
    assert await db.fetchval(
        "SELECT status FROM stockcore.reservations WHERE reservation_id = 'o-1'"
    ) == int(ReservationStatus.COMMITTED)
    assert await db.fetchval(
        "SELECT order_id FROM stockcore.payments WHERE payment_id = 'p-1'"
    ) == ("o-1")
    history = (await orders.with_history(["o-1"]))["o-1"][1]
    assert (history[-1].from_status, history[-1].to_status, history[-1].reason) == (
        OrderStatus.PENDING_PAYMENT,
        OrderStatus.PAID,
        "payment p-1",
    )
    assert await events_of(db, "o-1") == [("o-1/1", 1), ("o-1/2", int(EventType.ORDER_PAID))]


async def test_the_same_payment_again_is_a_repeat_and_another_payment_is_refused(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, order_request("o-1"))
    await pay(orders, "o-1", "p-1")

    again = await pay(orders, "o-1", "p-1")
    other = await pay(orders, "o-1", "p-2")

    assert again.code is ChangeCode.REPEAT and again.order is not None
    assert again.order.version == 2
    assert (other.code, other.detail) == (ChangeCode.PAID_BY_OTHER, None)
    assert await db.fetchval("SELECT count(*) FROM stockcore.payments") == 1


@pytest.mark.parametrize(("amount", "currency"), [(299, "EUR"), (301, "EUR"), (300, "USD")])
async def test_a_payment_that_differs_from_the_order_changes_nothing(
    orders: OrderStore, db: asyncpg.Connection, amount: int, currency: str
) -> None:
    await create(orders, order_request("o-1"))
    (outcome,), _ = await orders.pay(
        [confirm_payment("o-1", "p-1", amount, currency, ACTOR)], EXPIRY
    )
    assert outcome.code is ChangeCode.MISMATCH
    assert await units(db, "A") == (1000, 2)
    assert await db.fetchval("SELECT count(*) FROM stockcore.payments") == 0


async def test_one_payment_pays_one_order_also_within_one_batch(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, order_request("o-1"), order_request("o-2"), order_request("o-3"))
    first, second = (
        await orders.pay(
            [
                confirm_payment("o-2", "P", 300, "EUR", ACTOR),
                confirm_payment("o-1", "P", 300, "EUR", ACTOR),
            ],
            EXPIRY,
        )
    )[0]
    later = await pay(orders, "o-3", "P")

    # Batches are decided in order id order: o-1 takes P.
    assert (second.code, first.code) == (ChangeCode.DONE, ChangeCode.PAYMENT_TAKEN)
    assert (first.detail, later.code, later.detail) == ("o-1", ChangeCode.PAYMENT_TAKEN, "o-1")
    assert await db.fetchval("SELECT count(*) FROM stockcore.orders WHERE status = 2") == 1
    assert await units(db, "A") == (998, 4)


async def test_a_payment_after_the_deadline_expires_the_order_instead(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, order_request("o-1", window=1))
    await until(lambda: _lapsed(db, "o-1"), "the order's hold lapses", timeout=10)

    late = await pay(orders, "o-1", "p-1")

    assert (late.code, late.detail) == (ChangeCode.LAPSED, None)
    assert late.order is not None and late.order.status is OrderStatus.EXPIRED
    assert await units(db, "A") == (1000, 0)
    assert await events_of(db, "o-1") == [("o-1/1", 1), ("o-1/2", int(EventType.ORDER_EXPIRED))]
    history = (await orders.with_history(["o-1"]))["o-1"][1]
    assert (history[-1].caller, history[-1].reason) == (EXPIRY, "payment window closed")


async def test_a_payment_id_an_order_of_the_batch_could_not_use_pays_the_next(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    # The payment id is taken for o-1 before anything is decided; o-1's hold has lapsed,
    # so o-2 pays with it. An order asked for twice pays with its second payment id
    # when its first one belongs to another order.
    await create(orders, order_request("o-1", window=1))
    await until(lambda: _lapsed(db, "o-1"), "the order's hold lapses", timeout=10)
    await create(orders, order_request("o-2"), order_request("o-3"), order_request("o-4"))
    await pay(orders, "o-4", "p-4")

    changed, _ = await orders.pay(
        [
            confirm_payment("o-1", "P", 300, "EUR", ACTOR),
            confirm_payment("o-2", "P", 300, "EUR", ACTOR),
            confirm_payment("o-3", "p-4", 300, "EUR", ACTOR),
            confirm_payment("o-3", "p-3", 300, "EUR", ACTOR),
        ],
        EXPIRY,
    )

    assert [(c.code, c.detail) for c in changed] == [
        (ChangeCode.LAPSED, None),
        (ChangeCode.DONE, None),
        (ChangeCode.PAYMENT_TAKEN, "o-4"),
        (ChangeCode.DONE, None),
    ]
    payments = await db.fetch(
        "SELECT payment_id, order_id, request_id FROM stockcore.payments ORDER BY 1"
    )
    assert [tuple(p) for p in payments] == [
        ("P", "o-2", ACTOR.request_id),
        ("p-3", "o-3", ACTOR.request_id),
        ("p-4", "o-4", ACTOR.request_id),
    ]
    await assert_invariants_hold(db)


async def test_payment_ids_of_refused_requests_are_left_free(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, order_request("o-1"), order_request("o-2"))
    await pay(orders, "o-2", "p-2")

    changed, _ = await orders.pay(
        [
            confirm_payment("o-1", "p-1", 299, "EUR", ACTOR),
            confirm_payment("o-2", "p-x", 300, "EUR", ACTOR),
            confirm_payment("o-9", "p-9", 300, "EUR", ACTOR),
        ],
        EXPIRY,
    )

    assert [c.code for c in changed] == [
        ChangeCode.MISMATCH,
        ChangeCode.PAID_BY_OTHER,
        ChangeCode.UNKNOWN,
    ]
    assert await db.fetchval("SELECT array_agg(payment_id) FROM stockcore.payments") == ["p-2"]
    assert (await pay(orders, "o-1", "p-x")).code is ChangeCode.DONE


async def _lapsed(db: asyncpg.Connection, order_id: str) -> bool:
    return bool(
        await db.fetchval(
            "SELECT expires_at <= now() FROM stockcore.reservations WHERE reservation_id = $1",
            order_id,
        )
    )


async def test_cancelling_an_unpaid_order_gives_its_hold_back(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, order_request("o-1"))

    (cancelled,), levels = await orders.cancel([cancel_order("o-1", "changed mind", ACTOR)], EXPIRY)
    (again,), _ = await orders.cancel([cancel_order("o-1", "changed mind", ACTOR)], EXPIRY)

    assert cancelled.code is ChangeCode.DONE and cancelled.order is not None
    assert (cancelled.order.status, cancelled.order.refund_owed_minor) == (OrderStatus.CANCELLED, 0)
    assert cancelled.order.cancel_reason == "changed mind"
    assert again.code is ChangeCode.REPEAT
    assert await units(db, "A") == (1000, 0)
    assert [(lv.sku, lv.on_hand, lv.reserved) for lv in levels] == [("A", 1000, 0)]


async def test_cancelling_a_paid_order_returns_its_units_and_owes_its_payment_back(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, order_request("o-1"))
    await pay(orders, "o-1", "p-1")

    (cancelled,), _ = await orders.cancel([cancel_order("o-1", "refund", ACTOR)], EXPIRY)

    assert cancelled.order is not None
    assert (cancelled.order.status, cancelled.order.refund_owed_minor) == (
        OrderStatus.CANCELLED,
        300,
    )
    assert await units(db, "A") == (1000, 0)
    adjustment = await db.fetchrow(
        "SELECT * FROM stockcore.adjustments WHERE sku = 'A' AND applied_delta = 2"
    )
    # The order's own row, in no caller's key namespace.
    assert (adjustment["order_id"], adjustment["idempotency_key"]) == ("o-1", None)
    moves = await db.fetch(
        "SELECT kind, on_hand_delta FROM stockcore.movements WHERE order_id = 'o-1'"
    )
    assert [(m["kind"], m["on_hand_delta"]) for m in moves] == [("adjust", 2)]


def two_lines(order_id: str) -> CreateOrder:
    """An order of 2 A at 150 and 1 B at 1000: 1300 in all."""
    return create_order(
        order_id, "c-1", [("A", 2, 150), ("B", 1, 1000)], "EUR", None, ACTOR, **LIMITS
    )


async def refunded_rows(db: asyncpg.Connection) -> list[tuple[object, ...]]:
    """(reason, source, order, SKU, units, amount) of every refund, and of every refund owed
    in the ledger (kind, source, order, amount), by source."""
    refunds = await db.fetch(
        "SELECT reason, source_id, order_id, sku, quantity, amount_minor FROM stockcore.refunds"
        " ORDER BY source_id"
    )
    owed = await db.fetch(
        "SELECT kind, source_id, order_id, amount_minor FROM stockcore.ledger_transfers"
        " WHERE kind IN (2, 9) ORDER BY source_id"
    )
    return [tuple(r) for r in refunds] + [tuple(t) for t in owed]


async def test_a_line_refund_owes_its_units_at_the_lines_price_and_moves_no_stock(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, two_lines("o-1"))
    await pay(orders, "o-1", "p-1", 1300)
    stock_before = await units(db, "A")
    events_before = await events_of(db, "o-1")

    (done,) = await orders.refund_lines([refund_line("o-1", "A", 1, "torn", "lr-1", ACTOR)])
    (again,) = await orders.refund_lines([refund_line("o-1", "A", 1, "torn", "lr-1", ACTOR)])
    (other,) = await orders.refund_lines([refund_line("o-1", "A", 1, "other", "lr-1", ACTOR)])

    assert done.code is LineRefundCode.REFUNDED and done.order and done.refund
    assert (done.order.status, done.order.version) == (OrderStatus.PAID, 2)
    assert [(x.sku, x.refunded_quantity) for x in done.order.lines] == [("A", 1), ("B", 0)]
    assert (done.order.line_refunds_minor, done.order.refund_owed_minor) == (150, 0)
    assert (done.refund.amount_minor, done.refund.charge_id, done.refund.line_refund_id) == (
        150,
        "p-1",
        "lr-1",
    )
    assert again.code is LineRefundCode.REPEAT and again.refund == done.refund
    assert other.code is LineRefundCode.CONFLICT
    assert await refunded_rows(db) == [(3, "lr-1", "o-1", "A", 1, 150), (9, "lr-1", "o-1", 150)]
    # Money only: the stock, the status history and the order events are as they were.
    assert await units(db, "A") == stock_before
    assert await events_of(db, "o-1") == events_before
    assert len((await orders.with_history(["o-1"]))["o-1"][1]) == 2
    await assert_invariants_hold(db)


async def test_a_line_is_refunded_at_most_its_units_also_within_one_batch(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, two_lines("o-1"))
    await pay(orders, "o-1", "p-1", 1300)

    outcomes = await orders.refund_lines(
        [
            refund_line("o-1", "A", 1, "torn", "lr-1", ACTOR),
            refund_line("o-1", "A", 2, "torn", "lr-2", ACTOR),
            refund_line("o-1", "A", 1, "torn", "lr-3", ACTOR),
            refund_line("o-1", "A", 1, "torn", "lr-1", ACTOR),
            refund_line("o-1", "A", 1, "again", "lr-3", ACTOR),
        ]
    )

    assert [(o.code, o.bought, o.refunded) for o in outcomes] == [
        (LineRefundCode.REFUNDED, 0, 0),
        (LineRefundCode.EXCEEDS_LINE, 2, 2),
        (LineRefundCode.REFUNDED, 0, 0),
        (LineRefundCode.REPEAT, 0, 0),
        (LineRefundCode.CONFLICT, 0, 0),
    ]
    assert outcomes[3].refund == outcomes[0].refund
    (full,) = await orders.refund_lines([refund_line("o-1", "A", 1, "torn", "lr-4", ACTOR)])
    assert (full.code, full.bought, full.refunded) == (LineRefundCode.EXCEEDS_LINE, 2, 2)
    await assert_invariants_hold(db)


async def test_a_line_refund_is_refused_for_an_order_unpaid_cancelled_unknown_or_free_line(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    free = create_order("o-free", "c-1", [("A", 1, 150), ("B", 1, 0)], "EUR", None, ACTOR, **LIMITS)
    await create(orders, two_lines("o-pending"), two_lines("o-cancelled"), free)
    await pay(orders, "o-cancelled", "p-c", 1300)
    await pay(orders, "o-free", "p-f", 150)
    await orders.cancel([cancel_order("o-cancelled", "changed mind", ACTOR)], EXPIRY)

    outcomes = await orders.refund_lines(
        [
            refund_line("o-pending", "A", 1, "r", "lr-1", ACTOR),
            refund_line("o-cancelled", "A", 1, "r", "lr-2", ACTOR),
            refund_line("o-nope", "A", 1, "r", "lr-3", ACTOR),
            refund_line("o-free", "B", 1, "r", "lr-4", ACTOR),
            refund_line("o-free", "C", 1, "r", "lr-5", ACTOR),
        ]
    )

    assert [(o.code, o.order and o.order.status) for o in outcomes] == [
        (LineRefundCode.NOT_REFUNDABLE, OrderStatus.PENDING_PAYMENT),
        (LineRefundCode.NOT_REFUNDABLE, OrderStatus.CANCELLED),
        (LineRefundCode.UNKNOWN, None),
        (LineRefundCode.FREE_LINE, OrderStatus.PAID),
        (LineRefundCode.NO_SUCH_LINE, OrderStatus.PAID),
    ]
    assert await db.fetchval("SELECT count(*) FROM stockcore.refunds WHERE reason = 3") == 0
    await assert_invariants_hold(db)


async def test_a_cancel_after_lines_refunded_owes_only_the_rest_and_returns_every_unit(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, two_lines("o-1"), two_lines("o-2"))
    await pay(orders, "o-1", "p-1", 1300)
    await pay(orders, "o-2", "p-2", 1300)
    await orders.refund_lines(
        [
            refund_line("o-1", "B", 1, "broken", "lr-1", ACTOR),
            refund_line("o-2", "A", 2, "torn", "lr-2", ACTOR),
            refund_line("o-2", "B", 1, "broken", "lr-3", ACTOR),
        ]
    )

    changed, _ = await orders.cancel(
        [cancel_order("o-1", "changed mind", ACTOR), cancel_order("o-2", "changed mind", ACTOR)],
        EXPIRY,
    )

    assert [(c.code, c.order and c.order.refund_owed_minor) for c in changed] == [
        (ChangeCode.DONE, 300),
        (ChangeCode.DONE, 0),
    ]
    assert await refunded_rows(db) == [
        (3, "lr-1", "o-1", "B", 1, 1000),
        (3, "lr-2", "o-2", "A", 2, 300),
        (3, "lr-3", "o-2", "B", 1, 1000),
        (1, "o-1", "o-1", None, None, 300),
        (9, "lr-1", "o-1", 1000),
        (9, "lr-2", "o-2", 300),
        (9, "lr-3", "o-2", 1000),
        (2, "o-1", "o-1", 300),
    ]
    # A line refund moves no stock: a paid order cancelled gives every unit back.
    assert await units(db, "A") == (1000, 0)
    (late,) = await orders.refund_lines([refund_line("o-1", "A", 1, "torn", "lr-9", ACTOR)])
    assert late.code is LineRefundCode.NOT_REFUNDABLE
    await assert_invariants_hold(db)


async def test_one_line_refund_id_sent_for_two_orders_at_once_refunds_one(
    orders: OrderStore, clean: Servers, db: asyncpg.Connection
) -> None:
    await create(orders, two_lines("o-1"), two_lines("o-2"))
    await pay(orders, "o-1", "p-1", 1300)
    await pay(orders, "o-2", "p-2", 1300)
    stores = [
        await StockStore.connect(clean.pg_dsn, shard_count=SHARDS, pool_size=1, timeout=5)
        for _ in range(2)
    ]
    try:
        # Each batch claims both ids, in id order, whatever order its requests come in.
        results = await asyncio.gather(
            OrderStore(stores[0]).refund_lines(
                [
                    refund_line("o-1", "A", 1, "r", "lr-x", ACTOR),
                    refund_line("o-1", "B", 1, "r", "lr-y", ACTOR),
                ]
            ),
            OrderStore(stores[1]).refund_lines(
                [
                    refund_line("o-2", "B", 1, "r", "lr-y", ACTOR),
                    refund_line("o-2", "A", 1, "r", "lr-x", ACTOR),
                ]
            ),
        )
    finally:
        for opened in stores:
            await opened.close()

    codes = sorted(o.code for batch in results for o in batch)
    assert codes == [LineRefundCode.REFUNDED] * 2 + [LineRefundCode.CONFLICT] * 2, results
    assert await db.fetchval("SELECT count(*) FROM stockcore.refunds WHERE reason = 3") == 2
    await assert_invariants_hold(db)


async def test_shipping_and_carrier_reports_keep_carrier_times_and_the_last_sync_time(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, order_request("o-1"))
    await pay(orders, "o-1", "p-1")
    ship = ship_order("o-1", "dhl", "T-1", "ack-1", ACTOR, carriers=CARRIERS)

    (shipped,) = await orders.ship([ship])
    (again,) = await orders.ship([ship])
    (other,) = await orders.ship([replace(ship, carrier="ups", tracking_no="T-2")])
    assert shipped.order is not None
    scanned = shipped.order.created_at  # the earliest time a carrier may report
    (moving,) = await orders.record_carrier(
        OrderStatus.IN_TRANSIT, [carrier_report("o-1", scanned, ACTOR, now=datetime.now(UTC))]
    )
    arrived = datetime.now(UTC)
    (done,) = await orders.record_carrier(
        OrderStatus.DELIVERED, [carrier_report("o-1", arrived, ACTOR, now=arrived)]
    )
    (late,) = await orders.record_carrier(
        OrderStatus.IN_TRANSIT, [carrier_report("o-1", arrived, ACTOR, now=arrived)]
    )

    assert shipped.code is ChangeCode.DONE and shipped.order and shipped.order.shipment
    assert (shipped.order.shipment.carrier, shipped.order.shipment.tracking_no) == ("dhl", "T-1")
    assert again.code is ChangeCode.REPEAT
    assert (other.code, other.detail) == (ChangeCode.OTHER_PARCEL, None)
    assert moving.order and moving.order.shipment and moving.order.last_sync_at
    assert moving.order.shipment.in_transit_at == scanned
    assert moving.order.last_sync_at > shipped.order.last_sync_at  # type: ignore[operator]
    assert done.order and done.order.shipment and done.order.shipment.delivered_at == arrived
    assert done.order.path == (
        OrderStatus.PENDING_PAYMENT,
        OrderStatus.PAID,
        OrderStatus.SHIPPED,
        OrderStatus.IN_TRANSIT,
        OrderStatus.DELIVERED,
    )
    assert late.code is ChangeCode.REPEAT
    history = (await orders.with_history(["o-1"]))["o-1"][1]
    assert history[-1].reason == f"carrier reported DELIVERED at {arrived.isoformat()}"


async def test_a_carrier_time_before_the_orders_creation_is_refused_and_changes_nothing(
    orders: OrderStore,
) -> None:
    for order_id in ("o-1", "o-2"):
        await create(orders, order_request(order_id))
        await pay(orders, order_id, f"p-{order_id}")
        await orders.ship(
            [ship_order(order_id, "dhl", f"T-{order_id}", "a", ACTOR, carriers=CARRIERS)]
        )
    (before,) = (await orders.with_history(["o-1"])).values()
    created = before[0].created_at
    now = datetime.now(UTC)

    def report(order_id: str, at: datetime):
        return carrier_report(order_id, at, ACTOR, now=now)

    early, fine = await orders.record_carrier(
        OrderStatus.IN_TRANSIT,
        [report("o-1", created - timedelta(microseconds=1)), report("o-2", now)],
    )
    (delivered_early,) = await orders.record_carrier(
        OrderStatus.DELIVERED, [report("o-1", datetime(2000, 1, 1, tzinfo=UTC))]
    )
    (at_creation,) = await orders.record_carrier(OrderStatus.IN_TRANSIT, [report("o-1", created)])
    (repeat_early,) = await orders.record_carrier(
        OrderStatus.IN_TRANSIT, [report("o-1", created - timedelta(days=1))]
    )

    assert (early.code, fine.code) == (ChangeCode.BEFORE_CREATION, ChangeCode.DONE)
    assert early.order is not None and early.order == before[0]
    assert delivered_early.code is ChangeCode.BEFORE_CREATION
    assert at_creation.code is ChangeCode.DONE and at_creation.order is not None
    assert at_creation.order.shipment and at_creation.order.shipment.in_transit_at == created
    # A repeat names a time too: one before the order is refused, not taken as a repeat.
    assert repeat_early.code is ChangeCode.BEFORE_CREATION
    assert (await orders.with_history(["o-1"]))["o-1"][0].status is OrderStatus.IN_TRANSIT


async def test_unknown_orders_are_reported_unknown_by_every_change(orders: OrderStore) -> None:
    (paid,), _ = await orders.pay([confirm_payment("nope", "p", 1, "EUR", ACTOR)], EXPIRY)
    (cancelled,), _ = await orders.cancel([cancel_order("nope", "r", ACTOR)], EXPIRY)
    (shipped,) = await orders.ship([ship_order("nope", "dhl", "T", "a", ACTOR, carriers=CARRIERS)])
    assert {paid.code, cancelled.code, shipped.code} == {ChangeCode.UNKNOWN}


async def test_a_sweep_expires_unpaid_orders_with_their_holds_but_not_orders_being_decided(
    orders: OrderStore, store: StockStore, db: asyncpg.Connection, clean: Servers
) -> None:
    await create(orders, order_request("o-1", window=1), order_request("o-2", window=1))
    await until(lambda: _lapsed(db, "o-2"), "the holds lapse", timeout=10)
    # Another transaction is deciding o-2 (holds its row lock): the sweep leaves it.
    async with connected(clean.pg_dsn) as other:
        async with other.transaction():
            await other.execute("SELECT 1 FROM stockcore.orders WHERE order_id = 'o-2' FOR UPDATE")
            sweep = await asyncio.wait_for(store.expire_due(10, EXPIRY, "sweep-1"), 5)
    assert (sweep.due, sweep.holds_expired, sweep.orders_expired) == (2, 1, 1)
    found = await orders.find(["o-1", "o-2"])
    assert (found["o-1"].status, found["o-2"].status) == (
        OrderStatus.EXPIRED,
        OrderStatus.PENDING_PAYMENT,
    )
    sweep = await store.expire_due(10, EXPIRY, "sweep-2")
    assert (sweep.holds_expired, sweep.orders_expired) == (1, 1)
    assert await units(db, "A") == (1000, 0)
    assert await events_of(db, "o-2") == [("o-2/1", 1), ("o-2/2", int(EventType.ORDER_EXPIRED))]


async def test_commit_and_release_of_an_orders_hold_are_refused(
    orders: OrderStore, store: StockStore, db: asyncpg.Connection
) -> None:
    await create(orders, order_request("o-1"))
    for finish in (Finish.COMMIT, Finish.RELEASE):
        (result,), levels = await store.finish_batch(["o-1"], finish, ["tests"])
        assert result.code is FinishCode.ORDER_OWNED and levels == []
    assert await units(db, "A") == (1000, 2)


async def test_history_is_append_only(orders: OrderStore, db: asyncpg.Connection) -> None:
    await create(orders, order_request("o-1"))
    for statement in (
        "UPDATE stockcore.order_history SET reason = 'rewritten'",
        "DELETE FROM stockcore.order_history",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.execute(statement)


async def test_events_change_only_by_getting_a_cursor_once_and_being_published(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, order_request("o-1"))
    await db.execute("UPDATE stockcore.order_events SET cursor = 1")
    await db.execute("UPDATE stockcore.order_events SET published_at = now()")
    for statement in (
        "UPDATE stockcore.order_events SET cursor = 2",
        "UPDATE stockcore.order_events SET body = '{}'::jsonb",
        "UPDATE stockcore.order_events SET payload = ''::bytea",
        "DELETE FROM stockcore.order_events",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.execute(statement)


async def test_the_schema_refuses_a_shipped_order_without_a_parcel(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, order_request("o-1"))
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "UPDATE stockcore.orders SET status = 3, path = '{1,2,3}', version = 3, payment_id = 'p'"
        )


async def created_at(db: asyncpg.Connection, order_id: str, at: datetime) -> None:
    """Back-date an order (creation times come from the database clock)."""
    await db.execute(
        "UPDATE stockcore.orders SET created_at = $2 WHERE order_id = $1", order_id, at
    )


async def test_pages_run_newest_first_with_ties_broken_by_id_and_never_shift(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    # Three orders share each creation time, as orders of one batch do.
    ids = [f"o-{i:02}" for i in range(12)]
    await create(orders, *(order_request(i) for i in ids), order_request("x-1", customer="c-2"))
    for i, order_id in enumerate(ids):
        await created_at(db, order_id, T0 + timedelta(seconds=i // 3))
    expected = sorted(ids, key=lambda i: (T0 + timedelta(seconds=int(i[2:]) // 3), i), reverse=True)

    seen: list[str] = []
    query = list_orders("c-1", 0, None, None, 5, "")
    while True:
        page, last = await orders.page(query)
        seen += [o.order_id for o in page]
        # A newer order arriving between pages lands before every page handed out.
        await create(orders, order_request(f"new-{len(seen)}"))
        await created_at(db, f"new-{len(seen)}", T0 + timedelta(days=1))
        if last is None:
            break
        query = list_orders("c-1", 0, None, None, 5, query.token(last))
    assert seen == expected


async def test_pages_filter_by_status_and_creation_range_and_batch_many_queries(
    orders: OrderStore, db: asyncpg.Connection
) -> None:
    await create(orders, *(order_request(f"o-{i}") for i in range(6)))
    for i in range(6):
        await created_at(db, f"o-{i}", T0 + timedelta(hours=i))
    await orders.cancel([cancel_order("o-2", "r", ACTOR)], EXPIRY)

    window = list_orders("c-1", 0, T0 + timedelta(hours=1), T0 + timedelta(hours=4), 50, "")
    cancelled = list_orders("c-1", int(OrderStatus.CANCELLED), None, None, 50, "")
    nobody = list_orders("c-9", 0, None, None, 50, "")
    (by_status, _), (in_window, last), (empty, none) = await orders.pages(
        [cancelled, window, nobody]
    )
    assert [o.order_id for o in by_status] == ["o-2"]
    assert ([o.order_id for o in in_window], last) == (["o-3", "o-2", "o-1"], None)
    assert (empty, none) == ([], None)
    _, last = await orders.page(replace(window, page_size=2))
    assert last == PagePosition(T0 + timedelta(hours=2), "o-2")


async def test_events_after_a_cursor_follow_the_filter_and_decode_to_the_wire_form(
    orders: OrderStore, clean: Servers
) -> None:
    await create(
        orders, order_request("o-1"), order_request("o-2", customer="c-2"), order_request("o-3")
    )
    session = await OutboxSession.open(clean.pg_dsn, 5)
    try:
        assert [p.event.cursor for p in await session.next_events(100)] == [1, 2, 3]
    finally:
        await session.close()
    everything = await orders.events(watch_filter("", "", [], 0), 0, 3, 10)
    assert [e.cursor for e in everything] == [1, 2, 3]
    mine = await orders.events(watch_filter("c-1", "", [], 0), 0, 3, 10)
    wire = [stored_event(e) for e in mine]
    assert [(w.order_id, w.cursor, w.type) for w in wire] == [
        ("o-1", 1, pb.EVENT_TYPE_ORDER_CREATED),
        ("o-3", 3, pb.EVENT_TYPE_ORDER_CREATED),
    ]
    assert (wire[0].order.total_minor, wire[0].change.reason, wire[0].event_id) == (
        300,
        "created",
        "o-1/1",
    )
    after = await orders.events(watch_filter("", "o-3", [1], 0), 1, 3, 10)
    assert [e.cursor for e in after] == [3]
    assert await orders.events(watch_filter("", "", [2], 0), 0, 3, 10) == []
    assert await orders.last_cursor() == 3
