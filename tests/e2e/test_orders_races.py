"""Races on one order are decided exactly once: two payments, a cancel against a payment,
expiry against a payment. Afterwards stock, holds, order status and events agree."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from stockcore.v1 import inventory_pb2 as ipb
from stockcore.v1 import orders_pb2 as pb
from stockcore.v1 import orders_pb2_grpc

from tests.e2e.order_invariants import check_orders_agree
from tests.support import connected, create_request, details_of, on_hand_reserved, put_stock
from tests.waiting import database_clock_offset, no_short_holds_left

Stub = orders_pb2_grpc.OrderServiceStub
ORDERS = 24
# A race test runs more rounds, up to this many, until both of its outcomes were seen.
ROUNDS = 5


def payment(oid: str, payment_id: str) -> pb.ConfirmPaymentRequest:
    return pb.ConfirmPaymentRequest(
        order_id=oid, payment_id=payment_id, amount_minor=300, currency_code="EUR"
    )


async def outcome(call) -> pb.Order | grpc.StatusCode:
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return reply.order


async def test_two_payments_of_one_order_are_decided_once(dsn: str, orders: Stub, stub) -> None:
    await put_stock(stub, "A", 1000)
    for i in range(ORDERS):
        await orders.CreateOrder(create_request(f"o-{i}"))
    results = await asyncio.gather(
        *(
            outcome(orders.ConfirmPayment(payment(f"o-{i}", f"p-{i}-{side}")))
            for i in range(ORDERS)
            for side in ("a", "b")
        )
    )
    for i in range(ORDERS):
        a, b = results[2 * i], results[2 * i + 1]
        won = [r for r in (a, b) if isinstance(r, pb.Order)]
        assert len(won) == 1, (a, b)
        assert grpc.StatusCode.FAILED_PRECONDITION in (a, b)
        order = (await orders.GetOrder(pb.GetOrderRequest(order_id=f"o-{i}"))).order
        assert (order.status, order.payment_id) == (pb.ORDER_STATUS_PAID, won[0].payment_id)
    assert await on_hand_reserved(stub, "A") == (1000 - 2 * ORDERS, 0)
    await check_orders_agree(dsn)


async def test_one_payment_sent_twice_at_once_succeeds_twice_and_pays_once(
    dsn: str, orders: Stub, stub
) -> None:
    await put_stock(stub, "A", 1000)
    for i in range(ORDERS):
        await orders.CreateOrder(create_request(f"o-{i}"))
    results = await asyncio.gather(
        *(
            outcome(orders.ConfirmPayment(payment(f"o-{i}", f"p-{i}")))
            for i in range(ORDERS)
            for _ in range(2)
        )
    )
    for i in range(ORDERS):
        a, b = results[2 * i], results[2 * i + 1]
        assert isinstance(a, pb.Order) and isinstance(b, pb.Order)
        assert a.payment_id == b.payment_id == f"p-{i}" and a.version == b.version == 2
    assert await on_hand_reserved(stub, "A") == (1000 - 2 * ORDERS, 0)
    await check_orders_agree(dsn)


async def test_a_cancel_racing_a_payment_is_decided_once(dsn: str, orders: Stub, stub) -> None:
    await put_stock(stub, "A", 1000 * ROUNDS)
    seen = {"paid first": 0, "cancelled first": 0}
    for round_ in range(ROUNDS):
        for i in range(ORDERS):
            await orders.CreateOrder(create_request(f"o-{round_}-{i}"))
        calls = []
        for i in range(ORDERS):
            oid = f"o-{round_}-{i}"
            cancel = orders.CancelOrder(pb.CancelOrderRequest(order_id=oid, reason="race"))
            pay = orders.ConfirmPayment(payment(oid, f"p-{oid}"))
            # Alternate who is sent first, so both orders of arrival are exercised.
            calls += [outcome(cancel), outcome(pay)] if i % 2 else [outcome(pay), outcome(cancel)]
        results = await asyncio.gather(*calls)
        for i in range(ORDERS):
            oid = f"o-{round_}-{i}"
            pair = results[2 * i : 2 * i + 2] if i % 2 else results[2 * i : 2 * i + 2][::-1]
            cancelled, paid = pair
            assert isinstance(cancelled, pb.Order)
            assert cancelled.status == pb.ORDER_STATUS_CANCELLED
            order = (await orders.GetOrder(pb.GetOrderRequest(order_id=oid))).order
            assert order.status == pb.ORDER_STATUS_CANCELLED
            if isinstance(paid, pb.Order):
                # The payment came first: the cancel then undid a paid order.
                seen["paid first"] += 1
                assert order.payment_id == f"p-{oid}" and order.refund_owed_minor == 300
            else:
                seen["cancelled first"] += 1
                assert paid == grpc.StatusCode.FAILED_PRECONDITION
                assert order.payment_id == "" and order.refund_owed_minor == 0
        if all(seen.values()):
            break
    # Both ways of deciding the race happened, each decided once.
    assert all(seen.values()), seen
    assert await on_hand_reserved(stub, "A") == (1000 * ROUNDS, 0)
    await check_orders_agree(dsn)


async def test_expiry_racing_a_payment_is_decided_once(dsn: str, orders: Stub, stub) -> None:
    await put_stock(stub, "A", 1000)
    # PostgreSQL's clock decides expiry, so payments are timed on it.
    offset = await database_clock_offset(dsn)

    async def pay_near_deadline(order: pb.Order, skew: float) -> pb.Order | grpc.StatusCode:
        deadline = order.payment_deadline.ToDatetime(tzinfo=UTC).timestamp()
        await asyncio.sleep(max(deadline + skew - offset - time.time(), 0))
        return await outcome(orders.ConfirmPayment(payment(order.order_id, f"p-{order.order_id}")))

    counts = {"paid": 0, "expired": 0}
    for round_ in range(ROUNDS):
        created = [
            (await orders.CreateOrder(create_request(f"o-{round_}-{i}", window=1))).order
            for i in range(ORDERS)
        ]
        # Payments land from a little before to a little after each deadline, while the
        # expiry sweep runs every 0.1 s.
        skews = [-0.25 + 0.5 * i / (ORDERS - 1) for i in range(ORDERS)]
        results = await asyncio.gather(
            *(pay_near_deadline(o, d) for o, d in zip(created, skews, strict=True))
        )
        await no_short_holds_left(dsn, 1, timeout=10)  # every hold left unpaid is swept
        for order, result in zip(created, results, strict=True):
            final = (await orders.GetOrder(pb.GetOrderRequest(order_id=order.order_id))).order
            if isinstance(result, pb.Order):
                assert final.status == pb.ORDER_STATUS_PAID
                counts["paid"] += 1
            else:
                assert result == grpc.StatusCode.FAILED_PRECONDITION
                assert final.status == pb.ORDER_STATUS_EXPIRED
                counts["expired"] += 1
        if all(counts.values()):
            break
    # The race happened: some payments beat their deadline's sweep and some lost to it.
    assert all(counts.values()), counts
    on_hand, reserved = await on_hand_reserved(stub, "A")
    assert (on_hand, reserved) == (1000 - 2 * counts["paid"], 0)
    await check_orders_agree(dsn)  # among the invariants: nothing left past its expiry


# --- races closed under the locks: each run TRIALS times over a real channel ------------

TRIALS = 40


async def rpc_outcome(call):
    """The reply, or the AioRpcError the call ended with."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        return exc


async def test_one_payment_id_sent_for_two_orders_at_once_pays_exactly_one(
    dsn: str, orders: Stub, stub
) -> None:
    await put_stock(stub, "A", 10_000)
    for i in range(TRIALS):
        for side in "ab":
            await orders.CreateOrder(create_request(f"o-{i}-{side}"))
    results = await asyncio.gather(
        *(
            rpc_outcome(orders.ConfirmPayment(payment(f"o-{i}-{side}", f"P-{i}")))
            for i in range(TRIALS)
            for side in "ab"
        )
    )
    for i in range(TRIALS):
        pair = results[2 * i : 2 * i + 2]
        won = [r for r in pair if isinstance(r, pb.ConfirmPaymentResponse)]
        lost = [r for r in pair if isinstance(r, grpc.aio.AioRpcError)]
        assert len(won) == 1 and len(lost) == 1, pair
        winner = won[0].order.order_id
        assert lost[0].code() == grpc.StatusCode.ALREADY_EXISTS
        (owner,) = details_of(lost[0], error_details_pb2.ResourceInfo)
        assert (owner.resource_name, owner.owner) == (f"P-{i}", f"order {winner}")
        loser = f"o-{i}-{'b' if winner.endswith('a') else 'a'}"
        assert (await orders.GetOrder(pb.GetOrderRequest(order_id=loser))).order.status == (
            pb.ORDER_STATUS_PENDING_PAYMENT
        )
    assert await on_hand_reserved(stub, "A") == (10_000 - 2 * TRIALS, 2 * TRIALS)
    await check_orders_agree(dsn)


async def test_a_release_racing_the_create_of_its_order_never_frees_the_orders_hold(
    dsn: str, orders: Stub, stub
) -> None:
    await put_stock(stub, "A", 10_000)
    calls = []
    for i in range(TRIALS):
        create = orders.CreateOrder(create_request(f"o-{i}"))
        release = stub.Release(ipb.ReleaseRequest(reservation_id=f"o-{i}"))
        calls += [rpc_outcome(create), rpc_outcome(release)]
    results = await asyncio.gather(*calls)
    for i in range(TRIALS):
        created, released = results[2 * i], results[2 * i + 1]
        assert isinstance(created, pb.CreateOrderResponse), created
        # Before the order commits its hold is unknown; after, it is the order's.
        assert isinstance(released, grpc.aio.AioRpcError), released
        assert released.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
        if released.code() == grpc.StatusCode.FAILED_PRECONDITION:
            assert "hold of order" in released.details()
        # GetReservation refuses an order's hold: read it in the table.
        async with connected(dsn) as conn:
            status = await conn.fetchval(
                "SELECT status FROM stockcore.reservations WHERE reservation_id = $1", f"o-{i}"
            )
        assert status == ipb.RESERVATION_STATUS_HELD
    assert await on_hand_reserved(stub, "A") == (10_000, 2 * TRIALS)
    await check_orders_agree(dsn)


async def test_a_commit_racing_the_expiry_of_its_hold_is_decided_once(dsn: str, stub) -> None:
    await put_stock(stub, "A", 10_000)
    held = []
    for i in range(TRIALS):
        reply = await stub.Reserve(
            ipb.ReserveRequest(
                reservation_id=f"r-{i}",
                lines=[ipb.Line(sku="A", quantity=1)],
                ttl=duration_pb2.Duration(seconds=1),
            )
        )
        held.append(reply.reservation)
    offset = await database_clock_offset(dsn)

    async def commit_near_expiry(reservation, skew: float):
        expires = reservation.expire_time.ToDatetime(tzinfo=UTC).timestamp()
        await asyncio.sleep(max(expires + skew - offset - time.time(), 0))
        return await rpc_outcome(
            stub.Commit(ipb.CommitRequest(reservation_id=reservation.reservation_id))
        )

    # Commits land from a little before to a little after each expiry, while the
    # sweep runs every 0.1 s.
    skews = [-0.2 + 0.4 * i / (TRIALS - 1) for i in range(TRIALS)]
    results = await asyncio.gather(
        *(commit_near_expiry(r, s) for r, s in zip(held, skews, strict=True))
    )
    await no_short_holds_left(dsn, 1, timeout=10)
    committed = expired = 0
    for reservation, result in zip(held, results, strict=True):
        final = (
            await stub.GetReservation(
                ipb.GetReservationRequest(reservation_id=reservation.reservation_id)
            )
        ).reservation
        if isinstance(result, ipb.CommitResponse):
            assert final.status == ipb.RESERVATION_STATUS_COMMITTED
            committed += 1
        else:
            assert result.code() == grpc.StatusCode.FAILED_PRECONDITION, result
            assert final.status == ipb.RESERVATION_STATUS_EXPIRED
            expired += 1
    # The race happened: commits landed on both sides of the sweep.
    assert committed and expired, (committed, expired)
    assert await on_hand_reserved(stub, "A") == (10_000 - committed, 0)
    await check_orders_agree(dsn)


async def test_the_same_create_order_sent_three_times_at_once_makes_one_order(
    dsn: str, orders: Stub, stub
) -> None:
    await put_stock(stub, "A", 10_000)
    results = await asyncio.gather(
        *(
            rpc_outcome(orders.CreateOrder(create_request(f"o-{i}", ("A", 3, 100))))
            for i in range(TRIALS)
            for _ in range(3)
        ),
        *(
            rpc_outcome(orders.CreateOrder(create_request(f"o-{i}", ("A", 4, 100))))
            for i in range(TRIALS)
        ),
    )
    same, other = results[: 3 * TRIALS], results[3 * TRIALS :]
    for i in range(TRIALS):
        replies = same[3 * i : 3 * i + 3]
        differing = other[i]
        created = [r for r in (*replies, differing) if isinstance(r, pb.CreateOrderResponse)]
        # Whichever content came first made the order; the rest agree with it or conflict.
        assert {r.order.version for r in created} == {1}
        assert len({tuple(line.quantity for line in r.order.lines) for r in created}) == 1
        refused = [r for r in (*replies, differing) if isinstance(r, grpc.aio.AioRpcError)]
        assert all(r.code() == grpc.StatusCode.ALREADY_EXISTS for r in refused)
        assert len(created) in (1, 3)
    async with connected(dsn) as conn:
        assert await conn.fetchval("SELECT count(*) FROM stockcore.orders") == TRIALS
        assert await conn.fetchval("SELECT count(*) FROM stockcore.order_events") == TRIALS
        reserved = await conn.fetchval("SELECT sum(quantities[1]) FROM stockcore.reservations")
    assert await on_hand_reserved(stub, "A") == (10_000, reserved)
    await check_orders_agree(dsn)
