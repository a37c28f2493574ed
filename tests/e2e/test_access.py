"""Who may call what, over a real TLS channel: every RPC against every kind of caller, a
refused call changing nothing, a customer's token confined to that customer's orders,
and the audit trail naming the token's subject."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2
from stockcore.v1 import inventory_pb2 as ipb
from stockcore.v1 import inventory_pb2_grpc, orders_pb2_grpc, reconciliation_pb2_grpc
from stockcore.v1 import orders_pb2 as pb
from stockcore.v1 import reconciliation_pb2 as rpb

from clients.tokens import issue_token, load_signing_key, new_signing_key
from devstack.credentials import DevCredentials
from server.app import App
from server.auth import scopes
from server.rpc.access import RULES
from tests import callers
from tests.support import connected, create_request, details_of, now_stamp

ALICE = "alice"
BOB = "bob"

# What a refused call must leave untouched: every row of stock, holds, movements, orders,
# their history, payments, refunds and events (the relay's publication marks aside: they
# move on their own).
_STATE = {
    "stock": "SELECT sku, on_hand, reserved FROM stockcore.stock",
    "reservations": "SELECT * FROM stockcore.reservations",
    "movements": "SELECT * FROM stockcore.movements",
    "adjustments": "SELECT * FROM stockcore.adjustments",
    "orders": "SELECT * FROM stockcore.orders",
    "order_history": "SELECT * FROM stockcore.order_history",
    "payments": "SELECT * FROM stockcore.payments",
    "refunds": "SELECT * FROM stockcore.refunds",
    "order_events": "SELECT event_id, order_id, order_version, type FROM stockcore.order_events",
    "reconciliation_exceptions": "SELECT * FROM stockcore.reconciliation_exceptions",
}


async def state(dsn: str) -> dict[str, list[str]]:
    async with connected(dsn) as conn:
        return {
            name: sorted(str(tuple(row)) for row in await conn.fetch(query))
            for name, query in _STATE.items()
        }


@dataclass
class Stubs:
    inventory: inventory_pb2_grpc.InventoryServiceStub
    orders: orders_pb2_grpc.OrderServiceStub
    reconciliation: reconciliation_pb2_grpc.ReconciliationServiceStub

    def method(self, name: str) -> Callable[..., object]:
        for service in (self.inventory, self.orders, self.reconciliation):
            if hasattr(service, name):
                return getattr(service, name)  # type: ignore[no-any-return]
        raise AttributeError(name)


@pytest.fixture
async def bare(app: App, credentials: DevCredentials) -> AsyncIterator[Stubs]:
    """Stubs on a TLS channel that sends no token of its own: each call brings one."""
    async with callers.secure_channel(f"127.0.0.1:{app.port}", credentials, None) as channel:
        yield Stubs(
            inventory_pb2_grpc.InventoryServiceStub(channel),
            orders_pb2_grpc.OrderServiceStub(channel),
            reconciliation_pb2_grpc.ReconciliationServiceStub(channel),
        )


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else (("authorization", f"Bearer {token}"),)


async def setup(stubs: Stubs, service: str) -> None:
    """Stock, two holds and orders of alice in each state a call below needs."""
    md = bearer(service)
    inv, orders = stubs.inventory, stubs.orders
    await inv.AdjustStock(
        ipb.AdjustStockRequest(sku="A", on_hand=100, reason="restock", idempotency_key="k"),
        metadata=md,
    )
    for rid in ("r-1", "r-2"):
        await inv.Reserve(
            ipb.ReserveRequest(reservation_id=rid, lines=[ipb.Line(sku="A", quantity=1)]),
            metadata=md,
        )
    for oid in ("o-open", "o-paid", "o-shipped", "o-moving"):
        await orders.CreateOrder(create_request(oid, customer=ALICE), metadata=md)
    for oid in ("o-paid", "o-shipped", "o-moving"):
        await orders.ConfirmPayment(
            pb.ConfirmPaymentRequest(
                order_id=oid, payment_id=f"pay-{oid}", amount_minor=300, currency_code="EUR"
            ),
            metadata=md,
        )
    for oid in ("o-shipped", "o-moving"):
        await orders.ShipOrder(
            pb.ShipOrderRequest(
                order_id=oid, carrier="dhl", tracking_no=f"T-{oid}", carrier_ack_id="ack"
            ),
            metadata=md,
        )
    await orders.RecordInTransit(
        pb.RecordInTransitRequest(order_id="o-moving", event_time=now_stamp()), metadata=md
    )
    await orders.CreateOrder(create_request("o-bob", customer=BOB), metadata=md)


async def setup_money(dsn: str) -> None:
    """What the reconciler would have found about o-paid's payment (an open exception,
    number 1), and a provider charge of it in the ledger, posted on 2020-01-01."""
    async with connected(dsn) as conn:
        await conn.execute(
            "ALTER TABLE stockcore.reconciliation_exceptions"
            " ALTER COLUMN exception_id RESTART WITH 1"
        )
        statement = await conn.fetchval(
            "INSERT INTO stockcore.reconciliation_statements (subject_kind, subject_id,"
            " order_id, verdict, ours_amount, ours_currency, fact_at)"
            " VALUES (1, 'pay-o-paid', 'o-paid', 2, 300, 'EUR', now()) RETURNING statement_id"
        )
        await conn.execute(
            "INSERT INTO stockcore.reconciliation_exceptions (statement_id, reason) VALUES ($1, 2)",
            statement,
        )
        await conn.execute(
            "INSERT INTO stockcore.settlement_transactions (txn_id, cursor, type, source_id,"
            " charge_id, order_id, amount_minor, currency, created_at, available_on)"
            " VALUES ('txn_1', 1, 'charge', 'pay-o-paid', 'pay-o-paid', 'o-paid', 300, 'EUR',"
            " '2020-01-01T12:00Z', '2020-01-01T12:00Z')"
        )
        await conn.execute(
            "INSERT INTO stockcore.ledger_transfers (kind, source_id, order_id, debit_account,"
            " credit_account, amount_minor, currency) VALUES (4, 'txn_1', 'o-paid', 5, 1, 300,"
            " 'EUR')"
        )


# One well-formed request per RPC, about alice's data: a service with the scope may make
# it; bob's token may not. (The Reserve is a repeat of the service's own r-1: from bob's
# page, which reserves for bob, it is another request under a taken id.)
REQUESTS: dict[str, object] = {
    "Reserve": ipb.ReserveRequest(reservation_id="r-1", lines=[ipb.Line(sku="A", quantity=1)]),
    "SetReservationLine": ipb.SetReservationLineRequest(
        reservation_id="r-1", sku="A", quantity=2, change_id="c-1"
    ),
    "Commit": ipb.CommitRequest(reservation_id="r-1"),
    "Release": ipb.ReleaseRequest(reservation_id="r-2"),
    "GetReservation": ipb.GetReservationRequest(reservation_id="r-1"),
    "GetStock": ipb.GetStockRequest(skus=["A"]),
    "AdjustStock": ipb.AdjustStockRequest(
        sku="A", delta=5, reason="found", idempotency_key="k-found"
    ),
    "CreateOrder": create_request("o-new", customer=ALICE),
    "GetOrder": pb.GetOrderRequest(order_id="o-paid"),
    "ListOrders": pb.ListOrdersRequest(customer_id=ALICE),
    "ConfirmPayment": pb.ConfirmPaymentRequest(
        order_id="o-open", payment_id="pay-o-open", amount_minor=300, currency_code="EUR"
    ),
    "CancelOrder": pb.CancelOrderRequest(order_id="o-open", reason="changed mind"),
    "RefundLine": pb.RefundLineRequest(
        order_id="o-shipped", sku="A", quantity=1, reason="arrived torn", line_refund_id="lr-1"
    ),
    "ShipOrder": pb.ShipOrderRequest(
        order_id="o-paid", carrier="dhl", tracking_no="T-o-paid", carrier_ack_id="ack"
    ),
    # Carrier events are stamped when sent (call): one may not predate its order.
    "RecordInTransit": pb.RecordInTransitRequest(order_id="o-shipped"),
    "RecordDelivery": pb.RecordDeliveryRequest(order_id="o-moving"),
    "WatchOrders": pb.WatchOrdersRequest(customer_id=ALICE),
    "GetStatement": rpb.GetStatementRequest(id="o-paid"),
    "ListExceptions": rpb.ListExceptionsRequest(),
    "ResolveException": rpb.ResolveExceptionRequest(
        exception_id=1, resolution=rpb.RESOLUTION_ACCEPTED, why="accepted"
    ),
    "GetDailyClose": rpb.GetDailyCloseRequest(currency_code="EUR", day="2020-01-01"),
}


# The scope each RPC needs, as the README promises it: of a service's token, and of a
# token bound to one customer (None: such a token may not make the call at all). With
# `customer` alone it confines the caller to that customer's orders; GetStock and
# CreateOrder need a scope more, which a checkout page's token carries.
SCOPE_OF = {
    "Reserve": ("inventory:hold", "inventory:hold"),
    "SetReservationLine": ("inventory:hold", "inventory:hold"),
    "Commit": ("inventory:hold", None),
    "Release": ("inventory:hold", "inventory:hold"),
    "GetReservation": ("inventory:read", None),
    "GetStock": ("inventory:read", "inventory:read"),
    "AdjustStock": ("stock:adjust", None),
    "CreateOrder": ("orders:create", "orders:create"),
    "GetOrder": ("orders:read", "customer"),
    "ListOrders": ("orders:read", "customer"),
    "ConfirmPayment": ("orders:pay", None),
    "CancelOrder": ("orders:cancel", "customer"),
    "RefundLine": ("orders:refund", None),
    "ShipOrder": ("orders:fulfil", None),
    "RecordInTransit": ("orders:fulfil", None),
    "RecordDelivery": ("orders:fulfil", None),
    "WatchOrders": ("orders:watch", "customer"),
    "GetStatement": ("finance:read", None),
    "ListExceptions": ("finance:read", None),
    "ResolveException": ("finance:resolve", None),
    "GetDailyClose": ("finance:read", None),
}
# What a checkout page's token carries beside `customer` (devstack/page_session.py).
SHOPPER = [scopes.CUSTOMER, scopes.INVENTORY_READ, scopes.INVENTORY_HOLD, scopes.ORDERS_CREATE]


def test_the_access_table_names_every_rpc_with_its_scope() -> None:
    table = {m.rsplit("/", 1)[1]: (r.scope, r.customer_scope) for m, r in RULES.items()}
    assert table == SCOPE_OF
    assert set(REQUESTS) == set(SCOPE_OF)


def rule_of(name: str):
    (rule,) = [r for method, r in RULES.items() if method.endswith("/" + name)]
    return rule


async def call(stubs: Stubs, name: str, token: str | None) -> object:
    """Make the call; a stream's first event stands for its answer."""
    method = stubs.method(name)
    request = REQUESTS[name]
    if isinstance(request, pb.RecordInTransitRequest | pb.RecordDeliveryRequest):
        request = type(request)(order_id=request.order_id, event_time=now_stamp())
    if name != "WatchOrders":
        return await method(request, metadata=bearer(token), timeout=10)  # type: ignore[misc]
    stream = method(request, metadata=bearer(token), timeout=10)
    try:
        return await stream.read()  # type: ignore[attr-defined]
    finally:
        stream.cancel()  # type: ignore[attr-defined]


async def call_as(stubs: Stubs, name: str, metadata: tuple[tuple[str, str], ...]) -> object:
    """A unary call of the matrix with the metadata given."""
    return await stubs.method(name)(REQUESTS[name], metadata=metadata, timeout=10)  # type: ignore[misc]


async def refusal(awaitable: Awaitable[object]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await awaitable
    error = raised.value
    (info,) = details_of(error, error_details_pb2.ErrorInfo)
    assert info.domain == "stockcore.v1"
    return error.code(), info.reason, dict(info.metadata)


def tokens(credentials: DevCredentials, name: str) -> dict[str, str | None]:
    """The callers of the matrix, by case."""
    required = rule_of(name).scope
    real_kid = load_signing_key(credentials.signing_key)["kid"]
    forged, _ = new_signing_key(real_kid)  # the right key id, another key
    return {
        "no token": None,
        "expired": callers.token(credentials, now=time.time() - 7200, ttl_s=600),
        "wrong signature": issue_token(forged, callers.SUBJECT, scopes.SERVICE_SCOPES),
        # Every other scope, and no alias standing for this one.
        "wrong scope": callers.token(
            credentials,
            scopes=[
                s
                for s in (*scopes.SERVICE_SCOPES, *scopes.ALIASES)
                if required not in scopes.conferred({s})
            ],
        ),
        "other customer": callers.token(
            credentials, "shop-web", [scopes.CUSTOMER], customer_id=BOB
        ),
        "other shopper's page": callers.token(
            credentials, "checkout-page", SHOPPER, customer_id=BOB
        ),
        "right scope": callers.token(credentials, scopes=[required]),
    }


Refusal = tuple[grpc.StatusCode, str, dict[str, str]]


def expected_refusal(name: str, case: str) -> Refusal | None:
    """The code, ErrorInfo reason and metadata the call is refused with (None: served)."""
    service_scope, customer_scope = SCOPE_OF[name]
    if case == "no token":
        return grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING", {}
    if case == "expired":
        return grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", {}
    if case == "wrong signature":
        return grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID", {}
    if case == "wrong scope":
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            "SCOPE_MISSING",
            {"required_scope": service_scope},
        )
    granted = {"other customer": [scopes.CUSTOMER], "other shopper's page": SHOPPER}[case]
    if customer_scope is None:
        return grpc.StatusCode.PERMISSION_DENIED, "CUSTOMER_TOKEN", {}
    if customer_scope not in granted:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            "SCOPE_MISSING",
            {"required_scope": customer_scope},
        )
    if name == "GetStock":
        return None  # stock levels are no customer's
    if name == "Reserve":
        # A shopper's page reserves for its own customer: an id held for another is taken.
        return grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS", {}
    return grpc.StatusCode.PERMISSION_DENIED, "OTHER_CUSTOMER", {}


CASES = [
    "no token",
    "expired",
    "wrong signature",
    "wrong scope",
    "other customer",
    "other shopper's page",
]


@pytest.mark.parametrize("name", list(REQUESTS))
async def test_every_rpc_refuses_bad_callers_without_a_change_and_serves_the_right_one(
    bare: Stubs, credentials: DevCredentials, service_token: str, dsn: str, name: str
) -> None:
    await setup(bare, service_token)
    await setup_money(dsn)
    callers_by_case = tokens(credentials, name)
    before = await state(dsn)

    for case in CASES:
        expected = expected_refusal(name, case)
        if expected is None:
            served = await call(bare, name, callers_by_case[case])
            assert served is not None and served is not grpc.aio.EOF, case
            continue
        assert await refusal(call(bare, name, callers_by_case[case])) == expected, case

    assert await state(dsn) == before
    answer = await call(bare, name, callers_by_case["right scope"])
    assert answer is not None and answer is not grpc.aio.EOF


async def test_orders_write_still_grants_creating_paying_and_cancelling(
    bare: Stubs, credentials: DevCredentials, service_token: str
) -> None:
    """Tokens issued before the split carry orders:write: it stands for all three."""
    await setup(bare, service_token)
    writer = bearer(callers.token(credentials, "old-checkout", [scopes.ORDERS_WRITE]))

    created = await bare.orders.CreateOrder(create_request("o-w", customer=ALICE), metadata=writer)
    paid = await bare.orders.ConfirmPayment(
        pb.ConfirmPaymentRequest(
            order_id="o-w", payment_id="pay-o-w", amount_minor=300, currency_code="EUR"
        ),
        metadata=writer,
    )
    cancelled = await bare.orders.CancelOrder(
        pb.CancelOrderRequest(order_id="o-open", reason="changed mind"), metadata=writer
    )

    assert created.order.status == pb.ORDER_STATUS_PENDING_PAYMENT
    assert paid.order.status == pb.ORDER_STATUS_PAID
    assert cancelled.order.status == pb.ORDER_STATUS_CANCELLED


async def test_a_shoppers_token_creates_orders_for_its_own_customer_only(
    bare: Stubs, credentials: DevCredentials, service_token: str, dsn: str
) -> None:
    await setup(bare, service_token)
    alice = bearer(callers.token(credentials, "checkout-page", SHOPPER, customer_id=ALICE))

    named = await bare.orders.CreateOrder(create_request("o-a1", customer=ALICE), metadata=alice)
    unnamed = await bare.orders.CreateOrder(create_request("o-a2", customer=""), metadata=alice)
    before = await state(dsn)
    for_bob = await refusal(
        bare.orders.CreateOrder(create_request("o-b1", customer=BOB), metadata=alice)
    )
    paying = await refusal(call_as(bare, "ConfirmPayment", alice))
    refunding = await refusal(call_as(bare, "RefundLine", alice))
    peeking = await refusal(call_as(bare, "GetReservation", alice))

    assert named.order.customer_id == ALICE
    # A request that names no customer is about the token's own.
    assert unnamed.order.customer_id == ALICE
    assert for_bob[:2] == (grpc.StatusCode.PERMISSION_DENIED, "OTHER_CUSTOMER")
    # Paying is the payment provider's, not the shopper's browser.
    assert paying[:2] == (grpc.StatusCode.PERMISSION_DENIED, "CUSTOMER_TOKEN")
    # Nor is money back, even of the shopper's own order: the merchant's word, as a paid
    # order's cancel is.
    assert refunding[:2] == (grpc.StatusCode.PERMISSION_DENIED, "CUSTOMER_TOKEN")
    # Another order's hold (its lines) is not the shopper's to read.
    assert peeking[:2] == (grpc.StatusCode.PERMISSION_DENIED, "CUSTOMER_TOKEN")
    assert await state(dsn) == before


async def test_a_customer_reads_its_own_orders_without_payment_ids(
    bare: Stubs, credentials: DevCredentials, service_token: str
) -> None:
    await setup(bare, service_token)
    alice = bearer(callers.token(credentials, "shop-web", [scopes.CUSTOMER], customer_id=ALICE))

    reply = await bare.orders.GetOrder(pb.GetOrderRequest(order_id="o-paid"), metadata=alice)
    listed = await bare.orders.ListOrders(pb.ListOrdersRequest(), metadata=alice)

    assert reply.order.status == pb.ORDER_STATUS_PAID and reply.order.payment_id == ""
    assert not any("pay-" in change.reason for change in reply.history)
    assert {o.order_id for o in listed.orders} == {"o-open", "o-paid", "o-shipped", "o-moving"}
    assert all(o.payment_id == "" and o.customer_id == ALICE for o in listed.orders)
    # The same order through a service's token carries its payment id.
    full = await bare.orders.GetOrder(
        pb.GetOrderRequest(order_id="o-paid"), metadata=bearer(service_token)
    )
    assert full.order.payment_id == "pay-o-paid"


async def test_a_customer_cancels_its_own_unpaid_order_but_not_a_paid_one(
    bare: Stubs, credentials: DevCredentials, service_token: str, dsn: str
) -> None:
    await setup(bare, service_token)
    alice = bearer(callers.token(credentials, "shop-web", [scopes.CUSTOMER], customer_id=ALICE))

    cancelled = await bare.orders.CancelOrder(
        pb.CancelOrderRequest(order_id="o-open", reason="changed mind"), metadata=alice
    )
    before = await state(dsn)
    code, reason, _ = await refusal(
        bare.orders.CancelOrder(
            pb.CancelOrderRequest(order_id="o-paid", reason="x"), metadata=alice
        )
    )
    missing = await refusal(
        bare.orders.CancelOrder(pb.CancelOrderRequest(order_id="nope", reason="x"), metadata=alice)
    )

    assert cancelled.order.status == pb.ORDER_STATUS_CANCELLED
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PAID_ORDER")
    # An order that does not exist looks like another customer's: nothing is learned.
    assert missing[:2] == (grpc.StatusCode.PERMISSION_DENIED, "OTHER_CUSTOMER")
    assert await state(dsn) == before
    async with connected(dsn) as conn:
        callers_of = await conn.fetchval(
            "SELECT caller FROM stockcore.order_history WHERE order_id = 'o-open'"
            " ORDER BY changed_at DESC LIMIT 1"
        )
    assert callers_of == f"shop-web for customer {ALICE}"


async def test_a_customer_sees_who_changed_its_order_only_as_customer_or_merchant(
    bare: Stubs, credentials: DevCredentials, service_token: str
) -> None:
    await setup(bare, service_token)
    alice = bearer(callers.token(credentials, "shop-web", [scopes.CUSTOMER], customer_id=ALICE))
    mine = (*alice, ("x-request-id", "alice-cancel-1"))
    await bare.orders.CancelOrder(
        pb.CancelOrderRequest(order_id="o-open", reason="changed mind"), metadata=mine
    )

    seen = await bare.orders.GetOrder(pb.GetOrderRequest(order_id="o-open"), metadata=alice)
    full = await bare.orders.GetOrder(
        pb.GetOrderRequest(order_id="o-open"), metadata=bearer(service_token)
    )

    # The service sees the callers and request ids as recorded.
    assert [c.caller for c in full.history] == [callers.SUBJECT, f"shop-web for customer {ALICE}"]
    assert all(c.request_id for c in full.history)
    # The customer: its own change as "customer" with its own request id; the
    # merchant's creation without the internal caller or request id.
    assert [(c.caller, c.request_id) for c in seen.history] == [
        ("merchant", ""),
        ("customer", "alice-cancel-1"),
    ]
    paid = await bare.orders.GetOrder(pb.GetOrderRequest(order_id="o-paid"), metadata=alice)
    assert {c.caller for c in paid.history} == {"merchant"}
    assert {c.request_id for c in paid.history} == {""}


async def test_a_customer_watch_carries_only_its_own_orders_without_payment_ids(
    bare: Stubs, credentials: DevCredentials, service_token: str
) -> None:
    await setup(bare, service_token)
    alice = bearer(callers.token(credentials, "shop-web", [scopes.CUSTOMER], customer_id=ALICE))
    await bare.orders.CreateOrder(
        create_request("o-last", customer=ALICE), metadata=bearer(service_token)
    )

    seen: list[pb.OrderEvent] = []
    stream = bare.orders.WatchOrders(pb.WatchOrdersRequest(), metadata=alice, timeout=20)
    try:
        async for event in stream:
            seen.append(event)
            if event.order_id == "o-last":
                break
    finally:
        stream.cancel()

    assert {e.order_id for e in seen} == {"o-open", "o-paid", "o-shipped", "o-moving", "o-last"}
    assert all(e.order.customer_id == ALICE and e.order.payment_id == "" for e in seen)
    assert not any("pay-" in e.change.reason for e in seen)


async def test_the_audit_trail_names_the_token_subject_never_a_name_the_call_asserts(
    bare: Stubs, credentials: DevCredentials, dsn: str
) -> None:
    checkout = callers.token(credentials, "checkout")
    claimed = (*bearer(checkout), ("stockcore-caller", "someone-else"))
    await bare.inventory.AdjustStock(
        ipb.AdjustStockRequest(sku="A", on_hand=10, reason="restock", idempotency_key="k"),
        metadata=claimed,
    )
    await bare.inventory.Reserve(
        ipb.ReserveRequest(reservation_id="r-1", lines=[ipb.Line(sku="A", quantity=1)]),
        metadata=claimed,
    )
    await bare.orders.CreateOrder(create_request("o-1"), metadata=claimed)
    stream = bare.orders.WatchOrders(pb.WatchOrdersRequest(), metadata=claimed, timeout=10)
    try:
        event = await asyncio.wait_for(stream.read(), 10)
    finally:
        stream.cancel()

    async with connected(dsn) as conn:
        movements = {
            r["caller"] for r in await conn.fetch("SELECT caller FROM stockcore.movements")
        }
        history = {
            r["caller"] for r in await conn.fetch("SELECT caller FROM stockcore.order_history")
        }
    assert movements == history == {"checkout"}
    assert event.change.caller == "checkout"
