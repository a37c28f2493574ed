"""OrderService over a real gRPC channel: every transition of the status table, legal
or not, and every RPC's answers to good, bad and unknown input."""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stockcore.v1 import inventory_pb2 as ipb
from stockcore.v1 import orders_pb2 as pb
from stockcore.v1 import orders_pb2_grpc

from server.app import ORDER_SERVICE
from server.domain.orders import (
    INITIAL_STATUS,
    TRANSITIONS,
    Actor,
    CancelOrder,
    OrderStatus,
    allowed_next,
)
from server.metrics import REGISTRY
from tests import callers
from tests.e2e.order_invariants import check_orders_agree
from tests.support import (
    create_request,
    details_of,
    now_stamp,
    on_hand_reserved,
    put_stock,
    rpc_error,
)

Stub = orders_pb2_grpc.OrderServiceStub


def _paths() -> dict[OrderStatus, tuple[OrderStatus, ...]]:
    """A shortest way from creation to each status, found through the table itself."""
    paths = {INITIAL_STATUS: (INITIAL_STATUS,)}
    queue = deque([INITIAL_STATUS])
    while queue:
        status = queue.popleft()
        for target in TRANSITIONS[status]:
            if target not in paths:
                paths[target] = (*paths[status], target)
                queue.append(target)
    return paths


PATHS = _paths()
PAIRS = [(current, wanted) for current in OrderStatus for wanted in OrderStatus]


async def get(orders: Stub, order_id: str) -> pb.Order:
    return (await orders.GetOrder(pb.GetOrderRequest(order_id=order_id))).order


async def attempt(
    orders: Stub, order: pb.Order, wanted: OrderStatus, create: pb.CreateOrderRequest
) -> pb.Order:
    """Ask for `wanted` the way a caller would; EXPIRED is asked for by letting the
    payment deadline pass."""
    oid = order.order_id
    match wanted:
        case OrderStatus.PENDING_PAYMENT:
            return (await orders.CreateOrder(create)).order
        case OrderStatus.PAID:
            request = pb.ConfirmPaymentRequest(
                order_id=oid,
                payment_id=f"pay-{oid}",
                amount_minor=order.total_minor,
                currency_code=order.currency_code,
            )
            return (await orders.ConfirmPayment(request)).order
        case OrderStatus.CANCELLED:
            return (
                await orders.CancelOrder(pb.CancelOrderRequest(order_id=oid, reason="test"))
            ).order
        case OrderStatus.SHIPPED:
            request = pb.ShipOrderRequest(
                order_id=oid, carrier="dhl", tracking_no=f"T-{oid}", carrier_ack_id="ack-1"
            )
            return (await orders.ShipOrder(request)).order
        case OrderStatus.IN_TRANSIT:
            request = pb.RecordInTransitRequest(order_id=oid, event_time=now_stamp())
            return (await orders.RecordInTransit(request)).order
        case OrderStatus.DELIVERED:
            request = pb.RecordDeliveryRequest(order_id=oid, event_time=now_stamp())
            return (await orders.RecordDelivery(request)).order
        case OrderStatus.EXPIRED:
            # An unpaid order must expire soon after its deadline (allowing for a busy
            # machine); any other must still be as it was well after it.
            unpaid = order.status == pb.ORDER_STATUS_PENDING_PAYMENT
            wait = timedelta(seconds=6 if unpaid else 1.5)
            deadline = order.payment_deadline.ToDatetime(tzinfo=UTC) + wait
            while True:
                current = await get(orders, oid)
                if current.status == pb.ORDER_STATUS_EXPIRED or datetime.now(UTC) > deadline:
                    return current
                await asyncio.sleep(0.1)
    raise AssertionError(wanted)


@pytest.mark.parametrize(
    ("current", "wanted"), PAIRS, ids=[f"{a.name}-to-{b.name}" for a, b in PAIRS]
)
async def test_every_transition_of_the_table_is_allowed_or_refused_as_the_table_says(
    dsn: str, stub, orders: Stub, current: OrderStatus, wanted: OrderStatus
) -> None:
    await put_stock(stub, "A", 10)
    # A short window lets EXPIRED be reached (or be shown not to happen) in the test; an
    # order that must be paid or cancelled first gets a few seconds for that, as a loaded
    # machine can take more than one.
    needs_expiry = OrderStatus.EXPIRED in (current, wanted)
    acts_first = any(
        step not in (OrderStatus.PENDING_PAYMENT, OrderStatus.EXPIRED) for step in PATHS[current]
    )
    window = (3 if acts_first else 1) if needs_expiry else None
    create = create_request("o-1", window=window)
    order = (await orders.CreateOrder(create)).order
    for step in PATHS[current][1:]:
        order = await attempt(orders, order, step, create)
        assert order.status == step
    before = await get(orders, "o-1")

    if wanted in TRANSITIONS[current]:
        after = await attempt(orders, before, wanted, create)
        assert after.status == wanted
        assert after.version == before.version + 1
        reply = await orders.GetOrder(pb.GetOrderRequest(order_id="o-1"))
        last = reply.history[-1]
        assert (last.from_status, last.to_status) == (current, wanted)
    elif wanted in PATHS[current] or wanted is current:
        # A transition already made: the order comes back as it is.
        again = await attempt(orders, before, wanted, create)
        assert again == before
    elif wanted is OrderStatus.EXPIRED:
        # Only the clock asks for expiry: a deadline passing changes nothing here.
        assert await attempt(orders, before, wanted, create) == before
    else:
        error = await rpc_error(attempt(orders, before, wanted, create))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        allowed = [s.name for s in allowed_next(current)]
        assert current.name in error.details()
        (failure,) = details_of(error, error_details_pb2.PreconditionFailure)
        (violation,) = failure.violations
        assert violation.subject == "o-1"
        assert violation.description == f"status is {current.name}" + (
            f"; allowed next: {', '.join(allowed)}" if allowed else ""
        )
        assert await get(orders, "o-1") == before
    await check_orders_agree(dsn)


async def test_create_holds_stock_and_payment_commits_it(dsn: str, stub, orders: Stub) -> None:
    await put_stock(stub, "A", 10)
    await put_stock(stub, "B", 5)
    order = (await orders.CreateOrder(create_request("o-1", ("B", 1, 999), ("A", 3, 250)))).order
    assert order.status == pb.ORDER_STATUS_PENDING_PAYMENT
    assert [(x.sku, x.quantity, x.line_total_minor) for x in order.lines] == [
        ("A", 3, 750),
        ("B", 1, 999),
    ]
    assert (order.total_minor, order.version) == (1749, 1)
    assert order.payment_deadline.ToDatetime() - order.create_time.ToDatetime() == timedelta(
        seconds=300
    )
    assert await on_hand_reserved(stub, "A") == (10, 3)
    paid = (
        await orders.ConfirmPayment(
            pb.ConfirmPaymentRequest(
                order_id="o-1", payment_id="p-1", amount_minor=1749, currency_code="EUR"
            )
        )
    ).order
    assert (paid.status, paid.payment_id, paid.paid_minor) == (pb.ORDER_STATUS_PAID, "p-1", 1749)
    assert await on_hand_reserved(stub, "A") == (7, 0)
    assert await on_hand_reserved(stub, "B") == (4, 0)
    await check_orders_agree(dsn)


async def test_history_records_the_token_subject_reason_and_request_id(orders: Stub, stub) -> None:
    await put_stock(stub, "A", 10)
    # A name the call asserts about itself is not who it is: the token's subject is.
    metadata = (("stockcore-caller", "checkout"), ("x-request-id", "req-42"))
    await orders.CreateOrder(create_request("o-1"), metadata=metadata)
    await orders.CancelOrder(pb.CancelOrderRequest(order_id="o-1", reason="changed mind"))
    reply = await orders.GetOrder(pb.GetOrderRequest(order_id="o-1"))
    first, second = reply.history
    assert (first.from_status, first.to_status, first.caller, first.request_id) == (
        pb.ORDER_STATUS_UNSPECIFIED,
        pb.ORDER_STATUS_PENDING_PAYMENT,
        callers.SUBJECT,
        "req-42",
    )
    assert (second.to_status, second.reason) == (pb.ORDER_STATUS_CANCELLED, "changed mind")
    assert second.caller == callers.SUBJECT and len(second.request_id) == 32
    assert reply.order.cancel_reason == "changed mind"


async def test_a_repeated_create_returns_the_stored_order_and_other_content_is_already_exists(
    orders: Stub, stub
) -> None:
    await put_stock(stub, "A", 10)
    first = (await orders.CreateOrder(create_request("o-1"))).order
    await orders.CancelOrder(pb.CancelOrderRequest(order_id="o-1", reason="test"))
    again = (await orders.CreateOrder(create_request("o-1"))).order
    assert again.status == pb.ORDER_STATUS_CANCELLED and again.create_time == first.create_time
    for changed in (
        create_request("o-1", ("A", 3, 150)),
        create_request("o-1", ("A", 2, 151)),
        create_request("o-1", customer="cust-2"),
        create_request("o-1", currency="USD"),
    ):
        error = await rpc_error(orders.CreateOrder(changed))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, changed
    assert await on_hand_reserved(stub, "A") == (10, 0)


async def test_an_id_already_used_by_a_plain_reservation_is_already_exists(
    orders: Stub, stub
) -> None:
    await put_stock(stub, "A", 10)
    await stub.Reserve(
        ipb.ReserveRequest(reservation_id="o-1", lines=[ipb.Line(sku="A", quantity=2)])
    )
    error = await rpc_error(orders.CreateOrder(create_request("o-1")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_short_stock_fails_naming_each_short_sku_and_creates_nothing(
    orders: Stub, stub
) -> None:
    await put_stock(stub, "A", 1)
    await put_stock(stub, "B", 5)
    error = await rpc_error(orders.CreateOrder(create_request("o-1", ("A", 2, 1), ("B", 1, 1))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    (failure,) = details_of(error, error_details_pb2.PreconditionFailure)
    assert [(v.subject, v.description) for v in failure.violations] == [
        ("A", "available 1, requested 2")
    ]
    (figures,) = details_of(error, ipb.StockShortages)
    assert [(s.sku, s.available, s.requested) for s in figures.shortages] == [("A", 1, 2)]
    assert (await rpc_error(get(orders, "o-1"))).code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(orders.CreateOrder(create_request("o-2", ("NOPE", 1, 1))))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "NOPE" in error.details()


async def test_an_amount_or_currency_mismatch_fails_and_leaves_the_hold(
    dsn: str, orders: Stub, stub
) -> None:
    await put_stock(stub, "A", 10)
    await orders.CreateOrder(create_request("o-1"))
    for amount, currency in ((299, "EUR"), (301, "EUR"), (300, "USD")):
        error = await rpc_error(
            orders.ConfirmPayment(
                pb.ConfirmPaymentRequest(
                    order_id="o-1", payment_id="p-1", amount_minor=amount, currency_code=currency
                )
            )
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        (failure,) = details_of(error, error_details_pb2.PreconditionFailure)
        assert failure.violations[0].type == "PAYMENT_MISMATCH"
    assert (await get(orders, "o-1")).status == pb.ORDER_STATUS_PENDING_PAYMENT
    assert await on_hand_reserved(stub, "A") == (10, 2)
    await check_orders_agree(dsn)


async def test_payment_is_idempotent_on_its_id(dsn: str, orders: Stub, stub) -> None:
    await put_stock(stub, "A", 10)
    await orders.CreateOrder(create_request("o-1"))
    await orders.CreateOrder(create_request("o-2"))
    pay = pb.ConfirmPaymentRequest(
        order_id="o-1", payment_id="p-1", amount_minor=300, currency_code="EUR"
    )
    first = (await orders.ConfirmPayment(pay)).order
    assert (await orders.ConfirmPayment(pay)).order == first
    other = pb.ConfirmPaymentRequest(
        order_id="o-1", payment_id="p-2", amount_minor=300, currency_code="EUR"
    )
    error = await rpc_error(orders.ConfirmPayment(other))
    assert (
        error.code() == grpc.StatusCode.FAILED_PRECONDITION and "another payment" in error.details()
    )
    reused = pb.ConfirmPaymentRequest(
        order_id="o-2", payment_id="p-1", amount_minor=300, currency_code="EUR"
    )
    assert (await rpc_error(orders.ConfirmPayment(reused))).code() == grpc.StatusCode.ALREADY_EXISTS
    assert await on_hand_reserved(stub, "A") == (8, 2)
    await check_orders_agree(dsn)


async def test_cancelling_a_paid_order_returns_its_stock_and_owes_a_refund(
    dsn: str, orders: Stub, stub
) -> None:
    await put_stock(stub, "A", 10)
    await put_stock(stub, "B", 10)
    await orders.CreateOrder(create_request("o-1", ("A", 2, 150), ("B", 1, 50)))
    await orders.ConfirmPayment(
        pb.ConfirmPaymentRequest(
            order_id="o-1", payment_id="p-1", amount_minor=350, currency_code="EUR"
        )
    )
    assert await on_hand_reserved(stub, "A") == (8, 0)
    cancelled = (
        await orders.CancelOrder(pb.CancelOrderRequest(order_id="o-1", reason="refund"))
    ).order
    assert (cancelled.status, cancelled.refund_owed_minor) == (pb.ORDER_STATUS_CANCELLED, 350)
    assert await on_hand_reserved(stub, "A") == (10, 0)
    assert await on_hand_reserved(stub, "B") == (10, 0)
    again = (await orders.CancelOrder(pb.CancelOrderRequest(order_id="o-1", reason="refund"))).order
    assert again == cancelled
    assert await on_hand_reserved(stub, "A") == (10, 0)
    # The Redis mirror heard of the returned units: the gate admits them again.
    await orders.CreateOrder(create_request("o-2", ("A", 10, 1)))
    await check_orders_agree(dsn)


def _money(name: str, currency: str) -> float:
    return REGISTRY.get_sample_value(name, {"currency": currency}) or 0.0


async def test_revenue_counts_each_payment_once_and_each_refund_owed_by_currency(
    orders: Stub, stub
) -> None:
    paid, owed = "stockcore_order_paid_minor_total", "stockcore_order_refunds_owed_minor_total"
    before = {name: _money(name, "SEK") for name in (paid, owed)}
    await put_stock(stub, "A", 10)
    for order_id in ("o-1", "o-2"):
        await orders.CreateOrder(create_request(order_id, ("A", 2, 150), currency="SEK"))
        pay = pb.ConfirmPaymentRequest(
            order_id=order_id, payment_id=f"p-{order_id}", amount_minor=300, currency_code="SEK"
        )
        await orders.ConfirmPayment(pay)
        await orders.ConfirmPayment(pay)  # a repeat moves no money
    await orders.CancelOrder(pb.CancelOrderRequest(order_id="o-2", reason="refund"))

    assert _money(paid, "SEK") - before[paid] == 600
    assert _money(owed, "SEK") - before[owed] == 300


async def test_no_adjustment_key_a_caller_sends_can_block_a_paid_orders_cancel(
    dsn: str, orders: Stub, stub
) -> None:
    await put_stock(stub, "A", 10)
    await orders.CreateOrder(create_request("o-1"))
    # Before the order is cancelled, a caller adjusts under the key a cancel of its line
    # once took for itself, and under that key's prefix.
    for key in ("order-cancel:o-1:A", "order-cancel:o-1"):
        await stub.AdjustStock(
            ipb.AdjustStockRequest(sku="A", delta=1, reason="count", idempotency_key=key)
        )
    await orders.ConfirmPayment(
        pb.ConfirmPaymentRequest(
            order_id="o-1", payment_id="p-1", amount_minor=300, currency_code="EUR"
        )
    )

    cancel = pb.CancelOrderRequest(order_id="o-1", reason="refund")
    cancelled = (await orders.CancelOrder(cancel)).order

    assert (cancelled.status, cancelled.refund_owed_minor) == (pb.ORDER_STATUS_CANCELLED, 300)
    assert await on_hand_reserved(stub, "A") == (12, 0)
    # The caller's keys are still the caller's: a repeat is a repeat.
    again = await stub.AdjustStock(
        ipb.AdjustStockRequest(
            sku="A", delta=1, reason="count", idempotency_key="order-cancel:o-1:A"
        )
    )
    assert (again.applied_delta, again.level.on_hand) == (1, 11)
    await check_orders_agree(dsn)


async def test_cancels_of_paid_orders_whose_ids_hold_colons_do_not_collide(
    dsn: str, orders: Stub, stub
) -> None:
    # Order "a:b" of SKU "c" and order "a" of SKU "b:c": one key once named both lines.
    await put_stock(stub, "c", 10)
    await put_stock(stub, "b:c", 10)
    for oid, sku in (("a:b", "c"), ("a", "b:c")):
        await orders.CreateOrder(create_request(oid, (sku, 2, 150)))
        await orders.ConfirmPayment(
            pb.ConfirmPaymentRequest(
                order_id=oid, payment_id=f"p-{oid}", amount_minor=300, currency_code="EUR"
            )
        )

    for oid in ("a:b", "a"):
        cancel = pb.CancelOrderRequest(order_id=oid, reason="refund")
        assert (await orders.CancelOrder(cancel)).order.status == pb.ORDER_STATUS_CANCELLED

    assert await on_hand_reserved(stub, "c") == (10, 0)
    assert await on_hand_reserved(stub, "b:c") == (10, 0)
    await check_orders_agree(dsn)


async def paid_order(orders: Stub, stub, oid: str = "o-1") -> None:
    await put_stock(stub, "A", 10)
    await orders.CreateOrder(create_request(oid))
    await orders.ConfirmPayment(
        pb.ConfirmPaymentRequest(
            order_id=oid, payment_id=f"p-{oid}", amount_minor=300, currency_code="EUR"
        )
    )


@pytest.mark.parametrize(
    ("carrier", "tracking", "ack", "fields"),
    [
        ("pigeon", "T-1", "ack", ["carrier"]),
        ("dhl", "", "ack", ["tracking_no"]),
        ("dhl", "T 1", "ack", ["tracking_no"]),
        ("dhl", "T-1", "", ["carrier_ack_id"]),
        ("", "", "", ["carrier", "tracking_no", "carrier_ack_id"]),
    ],
)
async def test_shipping_needs_an_allowed_carrier_a_tracking_number_and_an_ack(
    orders: Stub, stub, carrier: str, tracking: str, ack: str, fields: list[str]
) -> None:
    await paid_order(orders, stub)
    request = pb.ShipOrderRequest(
        order_id="o-1", carrier=carrier, tracking_no=tracking, carrier_ack_id=ack
    )
    error = await rpc_error(orders.ShipOrder(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(error, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == fields
    assert (await get(orders, "o-1")).status == pb.ORDER_STATUS_PAID


async def test_shipping_again_with_another_parcel_is_refused(orders: Stub, stub) -> None:
    await paid_order(orders, stub)
    first = pb.ShipOrderRequest(
        order_id="o-1", carrier="dhl", tracking_no="T-1", carrier_ack_id="a"
    )
    shipped = (await orders.ShipOrder(first)).order
    assert (await orders.ShipOrder(first)).order == shipped
    other = pb.ShipOrderRequest(
        order_id="o-1", carrier="ups", tracking_no="T-2", carrier_ack_id="a"
    )
    assert (await rpc_error(orders.ShipOrder(other))).code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_carrier_events_keep_the_carrier_times_and_the_last_sync_time(
    orders: Stub, stub
) -> None:
    await paid_order(orders, stub)
    await orders.ShipOrder(
        pb.ShipOrderRequest(
            order_id="o-1", carrier="sf-express", tracking_no="SF1", carrier_ack_id="a"
        )
    )
    scanned = (await get(orders, "o-1")).create_time  # the earliest a carrier may report
    moving = (
        await orders.RecordInTransit(pb.RecordInTransitRequest(order_id="o-1", event_time=scanned))
    ).order
    assert moving.shipment.in_transit_time == scanned
    delivered_at = now_stamp(timedelta(minutes=4))  # carrier clocks run a little ahead
    done = (
        await orders.RecordDelivery(
            pb.RecordDeliveryRequest(order_id="o-1", event_time=delivered_at)
        )
    ).order
    assert done.status == pb.ORDER_STATUS_DELIVERED
    assert done.shipment.delivered_time == delivered_at
    assert done.shipment.last_sync_time.ToDatetime() >= moving.shipment.last_sync_time.ToDatetime()
    assert done.shipment.last_sync_time == done.update_time


async def test_a_carrier_time_before_the_order_was_created_is_refused_and_changes_nothing(
    orders: Stub, stub
) -> None:
    await paid_order(orders, stub)
    ship = pb.ShipOrderRequest(
        order_id="o-1", carrier="sf-express", tracking_no="SF1", carrier_ack_id="a"
    )
    shipped = (await orders.ShipOrder(ship)).order
    created = shipped.create_time.ToDatetime(tzinfo=UTC)
    early = timestamp_pb2.Timestamp()
    early.FromDatetime(created - timedelta(seconds=1))

    for call in (
        orders.RecordInTransit(pb.RecordInTransitRequest(order_id="o-1", event_time=early)),
        orders.RecordDelivery(pb.RecordDeliveryRequest(order_id="o-1", event_time=early)),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        (info,) = details_of(error, error_details_pb2.ErrorInfo)
        assert info.reason == "EVENT_BEFORE_ORDER"
        (failure,) = details_of(error, error_details_pb2.PreconditionFailure)
        assert [(v.type, v.subject) for v in failure.violations] == [("EVENT_TIME", "o-1")]
    assert await get(orders, "o-1") == shipped

    in_1970 = timestamp_pb2.Timestamp()
    in_1970.FromDatetime(datetime(1970, 1, 1, tzinfo=UTC))
    error = await rpc_error(
        orders.RecordDelivery(pb.RecordDeliveryRequest(order_id="o-1", event_time=in_1970))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(error, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["event_time"]
    assert await get(orders, "o-1") == shipped


async def test_raw_commit_or_release_of_an_order_hold_is_refused(orders: Stub, stub) -> None:
    await put_stock(stub, "A", 10)
    await orders.CreateOrder(create_request("o-1"))
    await stub.Reserve(
        ipb.ReserveRequest(reservation_id="cart-1", lines=[ipb.Line(sku="A", quantity=1)])
    )
    for call in (
        stub.Commit(ipb.CommitRequest(reservation_id="o-1")),
        stub.Release(ipb.ReleaseRequest(reservation_id="o-1")),
    ):
        error = await rpc_error(call)
        assert (
            error.code() == grpc.StatusCode.FAILED_PRECONDITION
            and "OrderService" in error.details()
        )
    # Plain reservations are untouched by the guard.
    await stub.Commit(ipb.CommitRequest(reservation_id="cart-1"))
    assert (await get(orders, "o-1")).status == pb.ORDER_STATUS_PENDING_PAYMENT
    assert await on_hand_reserved(stub, "A") == (9, 2)


UNKNOWN = [
    ("GetOrder", pb.GetOrderRequest(order_id="nope")),
    (
        "ConfirmPayment",
        pb.ConfirmPaymentRequest(
            order_id="nope", payment_id="p", amount_minor=1, currency_code="EUR"
        ),
    ),
    ("CancelOrder", pb.CancelOrderRequest(order_id="nope", reason="r")),
    (
        "RefundLine",
        pb.RefundLineRequest(
            order_id="nope", sku="A", quantity=1, reason="r", line_refund_id="lr-nope"
        ),
    ),
    (
        "ShipOrder",
        pb.ShipOrderRequest(order_id="nope", carrier="dhl", tracking_no="T", carrier_ack_id="a"),
    ),
    ("RecordInTransit", pb.RecordInTransitRequest(order_id="nope", event_time=now_stamp())),
    ("RecordDelivery", pb.RecordDeliveryRequest(order_id="nope", event_time=now_stamp())),
]


@pytest.mark.parametrize(("method", "request_"), UNKNOWN, ids=[m for m, _ in UNKNOWN])
async def test_an_unknown_order_is_not_found(orders: Stub, method: str, request_) -> None:
    error = await rpc_error(getattr(orders, method)(request_))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "nope" in error.details()


def _line(sku: str = "A", quantity: int = 1, price: int = 1) -> pb.OrderLine:
    return pb.OrderLine(sku=sku, quantity=quantity, unit_price_minor=price)


def _create(**changes) -> pb.CreateOrderRequest:
    fields = {"order_id": "o", "customer_id": "c", "currency_code": "EUR", "lines": [_line()]}
    fields.update(changes)
    return pb.CreateOrderRequest(**fields)


def _refund(**changes) -> pb.RefundLineRequest:
    fields = {"order_id": "o", "sku": "A", "quantity": 1, "reason": "torn", "line_refund_id": "l"}
    fields.update(changes)
    return pb.RefundLineRequest(**fields)


BAD_REQUESTS = [
    ("CreateOrder", _create(order_id=""), "order_id"),
    ("CreateOrder", _create(order_id="has space"), "order_id"),
    ("CreateOrder", _create(customer_id=""), "customer_id"),
    ("CreateOrder", _create(lines=[]), "lines"),
    ("CreateOrder", _create(lines=[_line(f"S{i}") for i in range(101)]), "lines"),
    ("CreateOrder", _create(lines=[_line(quantity=0)]), "lines[0].quantity"),
    ("CreateOrder", _create(lines=[_line("bad sku")]), "lines[0].sku"),
    ("CreateOrder", _create(lines=[_line(price=-1)]), "lines[0].unit_price_minor"),
    ("CreateOrder", _create(lines=[_line(price=10**10 + 1)]), "lines[0].unit_price_minor"),
    ("CreateOrder", _create(lines=[_line(price=1), _line(price=2)]), "lines[1].unit_price_minor"),
    ("CreateOrder", _create(currency_code="eur"), "currency_code"),
    ("CreateOrder", _create(currency_code=""), "currency_code"),
    ("CreateOrder", _create(payment_window=duration_pb2.Duration(seconds=0)), "payment_window"),
    (
        "CreateOrder",
        _create(payment_window=duration_pb2.Duration(seconds=90_000)),
        "payment_window",
    ),
    ("GetOrder", pb.GetOrderRequest(order_id=""), "order_id"),
    ("ListOrders", pb.ListOrdersRequest(customer_id=""), "customer_id"),
    ("ListOrders", pb.ListOrdersRequest(customer_id="c", page_size=-1), "page_size"),
    ("ListOrders", pb.ListOrdersRequest(customer_id="c", page_size=501), "page_size"),
    ("ListOrders", pb.ListOrdersRequest(customer_id="c", status=99), "status"),  # type: ignore[arg-type]
    ("ListOrders", pb.ListOrdersRequest(customer_id="c", page_token="junk"), "page_token"),
    (
        "ListOrders",
        pb.ListOrdersRequest(
            customer_id="c", created_after=now_stamp(), created_before=now_stamp(timedelta(days=-1))
        ),
        "created_before",
    ),
    (
        "ConfirmPayment",
        pb.ConfirmPaymentRequest(order_id="", payment_id="p", amount_minor=1, currency_code="EUR"),
        "order_id",
    ),
    (
        "ConfirmPayment",
        pb.ConfirmPaymentRequest(order_id="o", payment_id="", amount_minor=1, currency_code="EUR"),
        "payment_id",
    ),
    (
        "ConfirmPayment",
        pb.ConfirmPaymentRequest(
            order_id="o", payment_id="p", amount_minor=-1, currency_code="EUR"
        ),
        "amount_minor",
    ),
    (
        "ConfirmPayment",
        pb.ConfirmPaymentRequest(order_id="o", payment_id="p", amount_minor=1, currency_code="E"),
        "currency_code",
    ),
    ("CancelOrder", pb.CancelOrderRequest(order_id="", reason="r"), "order_id"),
    ("CancelOrder", pb.CancelOrderRequest(order_id="o", reason=""), "reason"),
    ("CancelOrder", pb.CancelOrderRequest(order_id="o", reason="x" * 201), "reason"),
    ("CancelOrder", pb.CancelOrderRequest(order_id="o", reason="late\x00payment"), "reason"),
    ("CancelOrder", pb.CancelOrderRequest(order_id="o", reason="two\nlines"), "reason"),
    ("RefundLine", _refund(order_id=""), "order_id"),
    ("RefundLine", _refund(sku="bad sku"), "sku"),
    ("RefundLine", _refund(quantity=0), "quantity"),
    ("RefundLine", _refund(quantity=1_000_001), "quantity"),
    ("RefundLine", _refund(reason=""), "reason"),
    ("RefundLine", _refund(line_refund_id=""), "line_refund_id"),
    ("RefundLine", _refund(line_refund_id="x/../y"), "line_refund_id"),
    (
        "ShipOrder",
        pb.ShipOrderRequest(order_id="", carrier="dhl", tracking_no="T", carrier_ack_id="a"),
        "order_id",
    ),
    (
        "ShipOrder",
        pb.ShipOrderRequest(order_id="o", carrier="pigeon", tracking_no="T", carrier_ack_id="a"),
        "carrier",
    ),
    (
        "ShipOrder",
        pb.ShipOrderRequest(order_id="o", carrier="dhl", tracking_no="", carrier_ack_id="a"),
        "tracking_no",
    ),
    (
        "ShipOrder",
        pb.ShipOrderRequest(order_id="o", carrier="dhl", tracking_no="T", carrier_ack_id=""),
        "carrier_ack_id",
    ),
    ("RecordInTransit", pb.RecordInTransitRequest(order_id="o"), "event_time"),
    (
        "RecordInTransit",
        pb.RecordInTransitRequest(order_id="o", event_time=now_stamp(timedelta(hours=1))),
        "event_time",
    ),
    ("RecordInTransit", pb.RecordInTransitRequest(order_id="", event_time=now_stamp()), "order_id"),
    (
        "RecordInTransit",
        pb.RecordInTransitRequest(order_id="o", event_time=timestamp_pb2.Timestamp(seconds=0)),
        "event_time",
    ),
    ("RecordDelivery", pb.RecordDeliveryRequest(order_id="o"), "event_time"),
    (
        "RecordDelivery",
        pb.RecordDeliveryRequest(order_id="o", event_time=now_stamp(timedelta(hours=1))),
        "event_time",
    ),
    ("RecordDelivery", pb.RecordDeliveryRequest(order_id="", event_time=now_stamp()), "order_id"),
]


@pytest.mark.parametrize(
    ("method", "request_", "field"), BAD_REQUESTS, ids=[f"{m}-{f}" for m, _, f in BAD_REQUESTS]
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    orders: Stub, method, request_, field
) -> None:
    error = await rpc_error(getattr(orders, method)(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(error, error_details_pb2.BadRequest)
    assert field in [v.field for v in bad.field_violations], bad


# Ids go into partners' URLs as one path segment: none of these may become an order.
NOT_ONE_SEGMENT = [
    "x/../victim",
    "..",
    ".",
    "x/./victim",
    "a//b",
    "/victim",
    "victim/",
    "x%2F..%2Fvictim",
    "victim?x=1",
    "victim#x",
    "x" * 129,
]


@pytest.mark.parametrize("order_id", NOT_ONE_SEGMENT)
async def test_an_order_id_that_is_not_one_clean_path_segment_is_refused_and_holds_nothing(
    orders: Stub, stub, order_id: str
) -> None:
    await put_stock(stub, "A", 10)
    error = await rpc_error(orders.CreateOrder(create_request(order_id)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(error, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["order_id"], bad
    assert await on_hand_reserved(stub, "A") == (10, 0)


async def test_an_id_with_dot_or_empty_segments_is_refused_in_every_id_field(
    orders: Stub, stub
) -> None:
    await put_stock(stub, "A", 10)
    error = await rpc_error(orders.CreateOrder(create_request("o-1", customer="shop/../other")))
    (bad,) = details_of(error, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["customer_id"]
    assert "'..'" in bad.field_violations[0].description
    await orders.CreateOrder(create_request("o-1"))
    pay = pb.ConfirmPaymentRequest(
        order_id="o-1", payment_id="psp//1", amount_minor=300, currency_code="EUR"
    )
    (bad,) = details_of(await rpc_error(orders.ConfirmPayment(pay)), error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["payment_id"]
    held = await rpc_error(stub.Reserve(ipb.ReserveRequest(reservation_id="..", lines=[])))
    (bad,) = details_of(held, error_details_pb2.BadRequest)
    assert "reservation_id" in [v.field for v in bad.field_violations]
    assert (await get(orders, "o-1")).status == pb.ORDER_STATUS_PENDING_PAYMENT


async def test_a_128_character_id_of_named_segments_is_an_order_under_that_exact_id(
    orders: Stub, stub
) -> None:
    order_id = ("shop.eu/2024:07/" + "x" * 128)[:127] + "."
    assert len(order_id) == 128
    await put_stock(stub, "A", 10)
    created = (await orders.CreateOrder(create_request(order_id))).order
    assert created.order_id == order_id
    assert (await get(orders, order_id)).order_id == order_id


BAD_WATCHES = [
    (pb.WatchOrdersRequest(after_cursor=-1), "after_cursor"),
    (pb.WatchOrdersRequest(types=[99]), "types[0]"),  # type: ignore[list-item]
    (pb.WatchOrdersRequest(types=[pb.EVENT_TYPE_UNSPECIFIED]), "types[0]"),
    (pb.WatchOrdersRequest(customer_id="bad id"), "customer_id"),
    (pb.WatchOrdersRequest(order_id="bad id"), "order_id"),
]


@pytest.mark.parametrize(("request_", "field"), BAD_WATCHES, ids=[f for _, f in BAD_WATCHES])
async def test_a_bad_watch_is_invalid_argument_naming_the_field(
    orders: Stub, request_, field
) -> None:
    async def first() -> None:
        async for _ in orders.WatchOrders(request_):
            break

    error = await rpc_error(first())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(error, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == [field]


async def test_list_orders_pages_stay_stable_while_new_orders_arrive(orders: Stub, stub) -> None:
    await put_stock(stub, "A", 1000)
    for i in range(23):
        await orders.CreateOrder(create_request(f"o-{i:02}"))
    await orders.CreateOrder(create_request("other", customer="cust-2"))
    await orders.CancelOrder(pb.CancelOrderRequest(order_id="o-05", reason="r"))

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await orders.ListOrders(
            pb.ListOrdersRequest(customer_id="cust-1", page_size=5, page_token=token)
        )
        seen += [o.order_id for o in page.orders]
        pages += 1
        # Orders created meanwhile are newer than every page handed out.
        await orders.CreateOrder(create_request(f"new-{pages}"))
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"o-{i:02}" for i in reversed(range(23))]
    assert pages == 5

    cancelled = await orders.ListOrders(
        pb.ListOrdersRequest(customer_id="cust-1", status=pb.ORDER_STATUS_CANCELLED)
    )
    assert [o.order_id for o in cancelled.orders] == ["o-05"]
    newest = await orders.ListOrders(pb.ListOrdersRequest(customer_id="cust-1", page_size=500))
    assert len(newest.orders) == 23 + pages and not newest.next_page_token
    middle = newest.orders[10].create_time
    after = await orders.ListOrders(
        pb.ListOrdersRequest(customer_id="cust-1", created_after=middle, page_size=500)
    )
    before = await orders.ListOrders(
        pb.ListOrdersRequest(customer_id="cust-1", created_before=middle, page_size=500)
    )
    assert len(after.orders) + len(before.orders) == len(newest.orders)
    assert all(o.create_time.ToDatetime() >= middle.ToDatetime() for o in after.orders)
    first = await orders.ListOrders(pb.ListOrdersRequest(customer_id="cust-1", page_size=5))
    elsewhere = pb.ListOrdersRequest(
        customer_id="cust-2", page_size=5, page_token=first.next_page_token
    )
    assert (
        await rpc_error(orders.ListOrders(elsewhere))
    ).code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_order_service_health_is_served(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(20):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=ORDER_SERVICE))
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("OrderService never reported SERVING")


async def test_a_request_the_database_would_refuse_fails_alone_not_its_whole_batch(
    orders: Stub, stub, app
) -> None:
    await put_stock(stub, "A", 100)
    for i in range(8):
        await orders.CreateOrder(create_request(f"o-{i}"))
    # Reach past validation, as a request the database refuses would: NUL cannot be
    # stored in a text column.
    poisoned = CancelOrder("o-3", "bad\x00reason", Actor("tests", "req"))
    replies = await asyncio.gather(
        *(
            app.orders.cancel_order(CancelOrder(f"o-{i}", "fine", Actor("tests", "req")))
            if i != 3
            else app.orders.cancel_order(poisoned)
            for i in range(8)
        ),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in replies].count("CharacterNotInRepertoireError") == 1
    assert isinstance(replies[3], Exception)
    assert all(r.status is OrderStatus.CANCELLED for i, r in enumerate(replies) if i != 3)
    assert (await get(orders, "o-3")).status == pb.ORDER_STATUS_PENDING_PAYMENT
