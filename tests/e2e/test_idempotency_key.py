"""The `idempotency-key` metadata names the id of the RPCs that have one (Reserve's
reservation, CreateOrder's order, ConfirmPayment's payment, AdjustStock's key) exactly:
when the request names none the key's is used, and a request naming another is refused
with INVALID_ARGUMENT. Over a real TLS channel to the real server."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from stockcore.v1 import inventory_pb2, inventory_pb2_grpc

from tests.support import details_of


async def test_grpc_metadata_names_the_id_the_request_leaves_empty(
    stub: inventory_pb2_grpc.InventoryServiceStub,
) -> None:
    await stub.AdjustStock(
        inventory_pb2.AdjustStockRequest(sku="KEY-5", on_hand=3, reason="count"),
        metadata=(("idempotency-key", "count-key-5"),),
    )
    request = inventory_pb2.ReserveRequest(lines=[inventory_pb2.Line(sku="KEY-5", quantity=1)])
    held = await stub.Reserve(request, metadata=(("idempotency-key", "cart-5"),))
    assert held.reservation.reservation_id == "cart-5"


async def test_grpc_metadata_naming_another_id_is_invalid_argument(
    stub: inventory_pb2_grpc.InventoryServiceStub,
) -> None:
    await stub.AdjustStock(
        inventory_pb2.AdjustStockRequest(
            sku="KEY-6", on_hand=3, reason="count", idempotency_key="count-key-6"
        )
    )
    request = inventory_pb2.ReserveRequest(
        reservation_id="cart-6", lines=[inventory_pb2.Line(sku="KEY-6", quantity=1)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Reserve(request, metadata=(("idempotency-key", "cart-7"),))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(raised.value, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["reservation_id"]


async def test_grpc_metadata_given_twice_with_two_ids_is_invalid_argument(
    stub: inventory_pb2_grpc.InventoryServiceStub,
) -> None:
    await stub.AdjustStock(
        inventory_pb2.AdjustStockRequest(
            sku="KEY-6", on_hand=3, reason="count", idempotency_key="count-key-6"
        )
    )
    request = inventory_pb2.ReserveRequest(lines=[inventory_pb2.Line(sku="KEY-6", quantity=1)])
    twice = (("idempotency-key", "cart-8"), ("idempotency-key", "cart-9"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Reserve(request, metadata=twice)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
