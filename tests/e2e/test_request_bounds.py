"""What a caller with an ordinary token can make the server do with one request is bounded: every
repeated field has a maximum, refused before any per-entry work; a refusal lists at most
20 violations and counts the rest; a request bigger than the largest valid one is refused
by gRPC before it is decoded. Over a real TLS channel with a customer's token, and with
the scope a checkout page's token carries."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from stockcore.v1 import orders_pb2 as pb
from stockcore.v1 import orders_pb2_grpc

from devstack.credentials import DevCredentials
from server.app import App
from server.auth import scopes
from server.config import Settings
from tests import callers
from tests.support import details_of

CUSTOMER = "alice"


@pytest.fixture
async def checkout(
    app: App, credentials: DevCredentials
) -> AsyncIterator[orders_pb2_grpc.OrderServiceStub]:
    """An order stub with what a checkout page's token carries: one customer, orders:create."""
    token = callers.token(
        credentials, "checkout-page", [scopes.CUSTOMER, scopes.ORDERS_CREATE], customer_id=CUSTOMER
    )
    async with callers.secure_channel(f"127.0.0.1:{app.port}", credentials, token) as channel:
        yield orders_pb2_grpc.OrderServiceStub(channel)


@pytest.fixture
async def shopper(
    app: App, credentials: DevCredentials
) -> AsyncIterator[orders_pb2_grpc.OrderServiceStub]:
    """An order stub on TLS with a token bound to one customer."""
    token = callers.token(credentials, CUSTOMER, [scopes.CUSTOMER], customer_id=CUSTOMER)
    async with callers.secure_channel(f"127.0.0.1:{app.port}", credentials, token) as channel:
        yield orders_pb2_grpc.OrderServiceStub(channel)


async def watch_refusal(
    stub: orders_pb2_grpc.OrderServiceStub, request: pb.WatchOrdersRequest
) -> grpc.aio.AioRpcError:
    stream = stub.WatchOrders(request, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream.read()
    return raised.value


async def test_watch_types_over_the_maximum_are_refused_whole(
    shopper: orders_pb2_grpc.OrderServiceStub,
) -> None:
    # 30,000 entries, all unknown: before the bound, each was checked and reported.
    request = pb.WatchOrdersRequest(customer_id=CUSTOMER, types=[99] * 30_000)
    error = await watch_refusal(shopper, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(error, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("types", "must hold at most 16 entries, got 30000")
    ]


async def test_watch_types_at_the_maximum_are_served(
    shopper: orders_pb2_grpc.OrderServiceStub,
) -> None:
    request = pb.WatchOrdersRequest(customer_id=CUSTOMER, types=[1, 2, 3, 4, 5, 6, 7] * 2 + [1, 2])
    assert len(request.types) == 16
    stream = shopper.WatchOrders(request, timeout=10)
    try:
        # Nothing to send yet: the stream is open (a refusal would end it at once).
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stream.read()
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        stream.cancel()


async def test_a_refusal_lists_twenty_violations_and_counts_them_all(
    checkout: orders_pb2_grpc.OrderServiceStub,
) -> None:
    # 100 lines (the maximum), each with a bad SKU and a bad quantity: 200 violations.
    lines = [pb.OrderLine(sku="", quantity=0, unit_price_minor=1) for _ in range(100)]
    request = pb.CreateOrderRequest(
        order_id="o-bad", customer_id=CUSTOMER, lines=lines, currency_code="EUR"
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await checkout.CreateOrder(request, timeout=10)
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(error, error_details_pb2.BadRequest)
    assert len(bad.field_violations) == 20
    (info,) = details_of(error, error_details_pb2.ErrorInfo)
    assert int(info.metadata["violations"]) > 20
    assert info.metadata["listed"] == "20"
    assert f"({info.metadata['violations']} violations)" in (error.details() or "")


async def test_too_many_lines_are_refused_before_any_line_is_read(
    checkout: orders_pb2_grpc.OrderServiceStub,
) -> None:
    lines = [pb.OrderLine(sku="", quantity=0) for _ in range(5_000)]
    request = pb.CreateOrderRequest(
        order_id="o-many", customer_id=CUSTOMER, lines=lines, currency_code="EUR"
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await checkout.CreateOrder(request, timeout=10)
    (bad,) = details_of(raised.value, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("lines", "must hold at most 100 entries, got 5000")
    ]


async def test_a_request_bigger_than_the_largest_valid_one_is_not_decoded(
    shopper: orders_pb2_grpc.OrderServiceStub, settings: Settings
) -> None:
    limit = settings.max_request_bytes
    request = pb.WatchOrdersRequest(customer_id=CUSTOMER, types=[1] * (limit + 1))
    assert request.ByteSize() > limit
    error = await watch_refusal(shopper, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
