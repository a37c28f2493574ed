"""A cart over the real stack: a reservation held, changed line by line
(SetReservationLine) and made into its order once (CreateOrder with reservation_id), over
a TLS channel with real tokens and through the HTTP/JSON gateway; idempotency, the errors
each field and state answers with, and a customer's token confined to its own carts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from stockcore.v1 import inventory_pb2 as ipb
from stockcore.v1 import inventory_pb2_grpc, orders_pb2_grpc
from stockcore.v1 import orders_pb2 as pb

from devstack.credentials import DevCredentials
from gateway.envoy import Gateway
from server.app import App
from server.auth import scopes
from tests import callers
from tests.e2e.conftest import GatewayCaller
from tests.invariants import assert_invariants_hold
from tests.support import connected, details_of, put_stock, rpc_error, stock_levels

SHOPPER = [scopes.CUSTOMER, scopes.INVENTORY_READ, scopes.INVENTORY_HOLD, scopes.ORDERS_CREATE]


def set_line(
    rid: str, sku: str, quantity: int, change_id: str, ttl_s: int | None = None
) -> ipb.SetReservationLineRequest:
    request = ipb.SetReservationLineRequest(
        reservation_id=rid, sku=sku, quantity=quantity, change_id=change_id
    )
    if ttl_s is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl_s))
    return request


def order_of(rid: str, *lines: tuple[str, int, int], customer: str = "alice", order_id: str = ""):
    return pb.CreateOrderRequest(
        order_id=order_id,
        reservation_id=rid,
        customer_id=customer,
        currency_code="EUR",
        lines=[pb.OrderLine(sku=s, quantity=q, unit_price_minor=p) for s, q, p in lines],
    )


def reason_of(error: grpc.aio.AioRpcError) -> str:
    (info,) = details_of(error, error_details_pb2.ErrorInfo)
    return str(info.reason)


def fields_of(error: grpc.aio.AioRpcError) -> set[str]:
    (bad,) = details_of(error, error_details_pb2.BadRequest)
    return {v.field for v in bad.field_violations}


async def test_a_cart_changed_three_times_becomes_one_order_and_a_retry_gives_the_same(
    stub: inventory_pb2_grpc.InventoryServiceStub,
    orders: orders_pb2_grpc.OrderServiceStub,
    dsn: str,
) -> None:
    await put_stock(stub, "A", 10)
    await put_stock(stub, "B", 10)
    held = await stub.Reserve(
        ipb.ReserveRequest(reservation_id="cart-1", lines=[ipb.Line(sku="A", quantity=1)])
    )

    await stub.SetReservationLine(set_line("cart-1", "B", 3, "cart-1/1"))
    await stub.SetReservationLine(set_line("cart-1", "A", 2, "cart-1/2"))
    last = await stub.SetReservationLine(set_line("cart-1", "B", 1, "cart-1/3", ttl_s=600))
    # A late retry of the first change is answered, and changes nothing.
    retried = await stub.SetReservationLine(set_line("cart-1", "B", 3, "cart-1/1"))
    created = await orders.CreateOrder(order_of("cart-1", ("A", 2, 100), ("B", 1, 50)))
    again = await orders.CreateOrder(order_of("cart-1", ("A", 2, 100), ("B", 1, 50)))
    paid = await orders.ConfirmPayment(
        pb.ConfirmPaymentRequest(
            order_id="cart-1", payment_id="psp-1", amount_minor=250, currency_code="EUR"
        )
    )

    assert [(x.sku, x.quantity) for x in last.reservation.lines] == [("A", 2), ("B", 1)]
    assert last.reservation.expire_time.ToSeconds() - held.reservation.expire_time.ToSeconds() > 250
    assert retried.reservation == last.reservation
    assert created.order.order_id == "cart-1" and created.order.total_minor == 250
    assert created.order.payment_deadline == last.reservation.expire_time or (
        created.order.payment_deadline.ToSeconds() >= created.order.create_time.ToSeconds() + 299
    )
    assert again.order == created.order
    assert paid.order.status == pb.ORDER_STATUS_PAID
    assert await stock_levels(stub, "A", "B") == {"A": (8, 0, 8), "B": (9, 0, 9)}
    async with connected(dsn) as conn:
        assert await conn.fetchval("SELECT count(*) FROM stockcore.orders") == 1
        assert await conn.fetchval("SELECT count(*) FROM stockcore.order_events") == 2
        await assert_invariants_hold(conn)


async def test_a_bad_change_is_refused_with_what_is_wrong_and_changes_nothing(
    stub: inventory_pb2_grpc.InventoryServiceStub,
    orders: orders_pb2_grpc.OrderServiceStub,
) -> None:
    await put_stock(stub, "A", 5)
    await stub.Reserve(
        ipb.ReserveRequest(reservation_id="cart-1", lines=[ipb.Line(sku="A", quantity=2)])
    )
    await stub.Reserve(
        ipb.ReserveRequest(reservation_id="gone", lines=[ipb.Line(sku="A", quantity=1)])
    )
    await stub.Release(ipb.ReleaseRequest(reservation_id="gone"))
    await orders.CreateOrder(
        pb.CreateOrderRequest(
            order_id="o-1",
            customer_id="c",
            currency_code="EUR",
            lines=[pb.OrderLine(sku="A", quantity=1, unit_price_minor=1)],
        )
    )

    malformed = await rpc_error(
        stub.SetReservationLine(
            ipb.SetReservationLineRequest(
                reservation_id="a//b", sku="", quantity=-1, change_id="", ttl={"seconds": 0}
            )
        )
    )
    short = await rpc_error(stub.SetReservationLine(set_line("cart-1", "A", 6, "c-1")))
    unknown_sku = await rpc_error(stub.SetReservationLine(set_line("cart-1", "Z", 1, "c-2")))
    unknown = await rpc_error(stub.SetReservationLine(set_line("nope", "A", 1, "c-3")))
    released = await rpc_error(stub.SetReservationLine(set_line("gone", "A", 2, "c-4")))
    an_order = await rpc_error(stub.SetReservationLine(set_line("o-1", "A", 2, "c-5")))
    await stub.SetReservationLine(set_line("cart-1", "A", 3, "c-6"))
    reused = await rpc_error(stub.SetReservationLine(set_line("cart-1", "A", 4, "c-6")))

    assert malformed.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(malformed) == {"reservation_id", "sku", "quantity", "change_id", "ttl"}
    assert short.code() is grpc.StatusCode.FAILED_PRECONDITION
    (shortages,) = details_of(short, ipb.StockShortages)
    # What the cart could hold of A: its own 2 and the 2 neither it nor o-1 holds.
    assert [(s.sku, s.available, s.requested) for s in shortages.shortages] == [("A", 4, 6)]
    assert (unknown_sku.code(), unknown.code()) == (grpc.StatusCode.NOT_FOUND,) * 2
    assert (released.code(), reason_of(released)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ILLEGAL_TRANSITION",
    )
    assert an_order.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert reused.code() is grpc.StatusCode.ALREADY_EXISTS
    assert await stock_levels(stub, "A") == {"A": (5, 4, 1)}


async def test_an_order_of_a_cart_must_be_of_its_lines_its_id_and_a_held_cart(
    stub: inventory_pb2_grpc.InventoryServiceStub,
    orders: orders_pb2_grpc.OrderServiceStub,
    dsn: str,
) -> None:
    await put_stock(stub, "A", 5)
    await stub.Reserve(
        ipb.ReserveRequest(reservation_id="cart-1", lines=[ipb.Line(sku="A", quantity=2)])
    )
    await stub.Reserve(
        ipb.ReserveRequest(
            reservation_id="cart-2", lines=[ipb.Line(sku="A", quantity=1)], ttl={"seconds": 1}
        )
    )

    other_id = await rpc_error(
        orders.CreateOrder(order_of("cart-1", ("A", 2, 100), order_id="o-9"))
    )
    changed = await rpc_error(orders.CreateOrder(order_of("cart-1", ("A", 1, 100))))
    unknown = await rpc_error(orders.CreateOrder(order_of("nope", ("A", 1, 100))))
    async with connected(dsn) as conn:
        await conn.execute(
            "SELECT pg_sleep(greatest(0, extract(epoch FROM expires_at - now())) + 0.05)"
            " FROM stockcore.reservations WHERE reservation_id = 'cart-2'"
        )
    lapsed = await rpc_error(orders.CreateOrder(order_of("cart-2", ("A", 1, 100))))

    assert other_id.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(other_id) == {"order_id"}
    assert (changed.code(), reason_of(changed)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESERVATION_LINES",
    )
    (failure,) = details_of(changed, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject) for v in failure.violations] == [("RESERVATION_LINES", "cart-1")]
    assert "A x 2" in failure.violations[0].description
    assert unknown.code() is grpc.StatusCode.NOT_FOUND
    assert (lapsed.code(), reason_of(lapsed)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ILLEGAL_TRANSITION",
    )
    async with connected(dsn) as conn:
        assert await conn.fetchval("SELECT count(*) FROM stockcore.orders") == 0


@pytest.fixture
async def page_stubs(
    app: App, credentials: DevCredentials
) -> AsyncIterator[
    dict[str, tuple[inventory_pb2_grpc.InventoryServiceStub, orders_pb2_grpc.OrderServiceStub]]
]:
    """Stubs of two checkout pages' tokens, alice's and bob's, by customer."""
    found = {}
    channels = []
    for customer in ("alice", "bob"):
        bearer = callers.token(credentials, "checkout-page", SHOPPER, customer_id=customer)
        channel = callers.secure_channel(f"127.0.0.1:{app.port}", credentials, bearer)
        channels.append(channel)
        found[customer] = (
            inventory_pb2_grpc.InventoryServiceStub(channel),
            orders_pb2_grpc.OrderServiceStub(channel),
        )
    try:
        yield found
    finally:
        for channel in channels:
            await channel.close()


async def test_a_shoppers_token_holds_changes_and_orders_its_own_cart_only(
    stub: inventory_pb2_grpc.InventoryServiceStub, page_stubs, dsn: str
) -> None:
    await put_stock(stub, "A", 10)
    (alice_inv, alice_orders), (bob_inv, bob_orders) = page_stubs["alice"], page_stubs["bob"]
    await alice_inv.Reserve(
        ipb.ReserveRequest(reservation_id="cart-a", lines=[ipb.Line(sku="A", quantity=1)])
    )
    await stub.Reserve(
        ipb.ReserveRequest(reservation_id="svc", lines=[ipb.Line(sku="A", quantity=1)])
    )

    refusals = [
        await rpc_error(bob_inv.SetReservationLine(set_line("cart-a", "A", 5, "b-1"))),
        await rpc_error(bob_inv.Release(ipb.ReleaseRequest(reservation_id="cart-a"))),
        await rpc_error(bob_orders.CreateOrder(order_of("cart-a", ("A", 1, 100), customer="bob"))),
        await rpc_error(alice_inv.SetReservationLine(set_line("svc", "A", 2, "a-0"))),
        await rpc_error(alice_orders.CreateOrder(order_of("svc", ("A", 1, 100)))),
    ]
    # The same id and content from bob's page is another customer's request.
    taken = await rpc_error(
        bob_inv.Reserve(
            ipb.ReserveRequest(reservation_id="cart-a", lines=[ipb.Line(sku="A", quantity=1)])
        )
    )
    committing = await rpc_error(alice_inv.Commit(ipb.CommitRequest(reservation_id="cart-a")))
    changed = await alice_inv.SetReservationLine(set_line("cart-a", "A", 2, "a-1"))
    made = await alice_orders.CreateOrder(order_of("cart-a", ("A", 2, 100), customer=""))

    assert [(e.code(), reason_of(e)) for e in refusals] == [
        (grpc.StatusCode.PERMISSION_DENIED, "OTHER_CUSTOMER")
    ] * 5
    assert taken.code() is grpc.StatusCode.ALREADY_EXISTS
    assert (committing.code(), reason_of(committing)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "CUSTOMER_TOKEN",
    )
    assert [(x.sku, x.quantity) for x in changed.reservation.lines] == [("A", 2)]
    assert (made.order.order_id, made.order.customer_id) == ("cart-a", "alice")
    assert await stock_levels(stub, "A") == {"A": (10, 3, 7)}
    async with connected(dsn) as conn:
        await assert_invariants_hold(conn)


async def test_the_page_holds_changes_and_orders_its_cart_through_the_gateway(
    gateway: Gateway, api: GatewayCaller
) -> None:
    import asyncio

    def run() -> None:
        reply = api.request(
            "POST",
            "/v1/stock/A:adjust",
            json={"onHand": "10", "reason": "count", "idempotencyKey": "count-A"},
        )
        assert reply.status_code == 200, reply.text
        session = api.page_session()
        page = api.with_token(session["token"])
        held = page.request(
            "POST",
            "/v1/reservations",
            json={"lines": [{"sku": "A", "quantity": "1"}], "ttl": "120s"},
            headers={"Idempotency-Key": "web-cart"},
        )
        assert held.status_code == 200, held.text
        for attempt in range(2):  # the same change twice: applied once
            changed = page.request(
                "POST",
                "/v1/reservations/web-cart:setLine",
                json={"sku": "A", "quantity": "3", "ttl": "120s"},
                headers={"Idempotency-Key": "web-cart/1"},
            )
            assert changed.status_code == 200, (attempt, changed.text)
        reservation = changed.json()["reservation"]
        assert reservation["lines"] == [{"sku": "A", "quantity": "3"}]
        assert reservation["expireTime"]
        made = page.request(
            "POST",
            "/v1/orders",
            json={
                "reservationId": "web-cart",
                "customerId": session["customerId"],
                "lines": [{"sku": "A", "quantity": "3", "unitPriceMinor": "100"}],
                "currencyCode": "EUR",
            },
            headers={"Idempotency-Key": "web-cart"},
        )
        assert made.status_code == 200, made.text
        assert made.json()["order"]["orderId"] == "web-cart"
        levels = api.request("GET", "/v1/stock?skus=A&consistency=CONSISTENCY_STRONG").json()
        assert levels["levels"][0]["reserved"] == "3"

    await asyncio.to_thread(run)
