"""A server past its ceiling on calls in flight refuses the excess at once with RESOURCE_EXHAUSTED and a RetryInfo, changes
nothing for a refused call, and the typed client gets every operation through by waiting
as told."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc

from clients.errors import StatusCode, from_rpc_error
from clients.inventory import InventoryClient, RetryPolicy
from server.app import App
from server.config import Settings

BOUND = 4
CALLERS = 300


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, max_in_flight=BOUND).validate()


async def _stock(stub: inventory_pb2_grpc.InventoryServiceStub, units: int) -> None:
    await stub.AdjustStock(
        pb.AdjustStockRequest(sku="HOT", on_hand=units, reason="restock", idempotency_key="s1")
    )


async def test_the_excess_is_refused_at_once_with_retry_info_and_nothing_done(
    stub: inventory_pb2_grpc.InventoryServiceStub,
) -> None:
    await _stock(stub, CALLERS)

    async def reserve(i: int) -> grpc.StatusCode:
        request = pb.ReserveRequest(reservation_id=f"r{i}", lines=[pb.Line(sku="HOT", quantity=1)])
        try:
            await stub.Reserve(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            refused.append((i, exc))
            return exc.code()
        return grpc.StatusCode.OK

    refused: list[tuple[int, grpc.aio.AioRpcError]] = []
    codes = await asyncio.gather(*(reserve(i) for i in range(CALLERS)))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert refused, f"{CALLERS} calls at once against a bound of {BOUND}: none was refused"
    for _, exc in refused:
        error = from_rpc_error(exc)
        assert error.code is StatusCode.RESOURCE_EXHAUSTED
        assert error.retry_delay is not None and 0 < error.retry_delay <= 2.0
        assert error.error_info is not None and error.error_info.reason == "OVERLOADED"
        assert "at capacity" in error.message

    # A refused call changed nothing: its hold does not exist, and the level counts only
    # the admitted ones.
    (level,) = (await stub.GetStock(pb.GetStockRequest(skus=["HOT"]))).levels
    assert level.reserved == codes.count(grpc.StatusCode.OK)
    for i, _ in refused[:20]:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetReservation(pb.GetReservationRequest(reservation_id=f"r{i}"))
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND


async def test_the_typed_client_gets_every_call_through_by_waiting_as_told(
    app: App, stub: inventory_pb2_grpc.InventoryServiceStub, caller_credentials
) -> None:
    await _stock(stub, CALLERS)
    async with InventoryClient(
        f"127.0.0.1:{app.port}",
        credentials=caller_credentials,
        default_timeout=30,
        retry=RetryPolicy(max_attempts=50),
    ) as client:
        held = await asyncio.gather(*(client.reserve(f"c{i}", {"HOT": 1}) for i in range(CALLERS)))
        assert len({h.reservation_id for h in held}) == CALLERS
        (level,) = await client.get_stock(["HOT"])
    assert (level.reserved, level.available) == (CALLERS, 0)
